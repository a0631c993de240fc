"""hyperhive/postgres.py on a real server: one connection lent to one greenlet at a time, a hub that runs
while the server works, a lost connection refused once and opened again, and a listener that comes back."""

import logging

import gevent
import psycopg2
import pytest

from hyperhive import postgres, schema, wire


@pytest.fixture
def db(pg_url):
    opened = schema.open_core(pg_url)
    yield opened
    opened.close()


def test_a_transaction_holds_the_connection_so_no_other_greenlets_statement_lands_inside_it(db):
    db.execute_sql("CREATE TABLE pair (n int)")
    seen = []

    def writer():
        with schema.core_db.atomic():
            db.execute_sql("INSERT INTO pair VALUES (1)")
            gevent.sleep(0.05)  # the others run meanwhile, and must wait for the commit
            db.execute_sql("INSERT INTO pair VALUES (2)")

    def reader():
        for _ in range(20):
            seen.append(db.execute_sql("SELECT count(*) FROM pair").fetchone()[0])
            gevent.sleep(0.005)

    gevent.joinall([gevent.spawn(writer)] + [gevent.spawn(reader) for _ in range(3)], raise_error=True)
    assert set(seen) <= {0, 2} and 2 in seen, seen  # never half a transaction, nor an error


def test_the_hub_runs_while_the_server_works_on_a_statement(db):
    ticks = []

    def ticker():
        while True:
            ticks.append(1)
            gevent.sleep(0.01)

    t = gevent.spawn(ticker)
    db.execute_sql("SELECT pg_sleep(0.3)")
    t.kill()
    assert len(ticks) >= 10, len(ticks)  # a blocking driver would leave the ticker at 1


def drop_connection(db, pg_url):
    """The server ends db's connection (as a restart or an administrator would); returns its backend pid."""
    (pid,) = db.execute_sql("SELECT pg_backend_pid()").fetchone()
    other = psycopg2.connect(pg_url)
    other.autocommit = True
    other.cursor().execute("SELECT pg_terminate_backend(%s)", (pid,))
    other.close()
    return pid


def test_a_connection_the_server_dropped_is_refused_once_as_unavailable_then_opened_again(db, pg_url, caplog):
    caplog.set_level(logging.WARNING, logger="hyperhive.postgres")
    pid = drop_connection(db, pg_url)
    with pytest.raises(wire.HiveError) as e:
        db.execute_sql("SELECT 1")
    assert e.value.code == "unavailable" and "reconnects by itself" in str(e.value), str(e.value)
    assert db.execute_sql("SELECT 1").fetchone() == (1,)
    assert db.execute_sql("SELECT pg_backend_pid()").fetchone()[0] != pid
    said = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("lost the connection to the database") for m in said), said
    assert any(m.startswith("reconnected to the database after") for m in said), said


def test_a_transaction_begun_on_a_dropped_connection_is_refused_as_unavailable_and_the_next_one_runs(db, pg_url):
    drop_connection(db, pg_url)
    with pytest.raises(wire.HiveError) as e:
        with schema.core_db.atomic():
            db.execute_sql("SELECT 1")
    assert e.value.code == "unavailable", str(e.value)
    with schema.core_db.atomic():
        assert db.execute_sql("SELECT 2").fetchone() == (2,)
    assert not db.lock._is_owned()


def test_the_listener_hears_notices_and_after_a_restart_comes_back_by_itself_and_says_so(tmp_path, caplog):
    import pgcluster
    from conftest import green_wait, pg_missing_or_fail

    pg_missing_or_fail()
    caplog.set_level(logging.INFO, logger="hyperhive.postgres")
    heard = []
    with pgcluster.Cluster() as cluster:
        url = cluster.url("postgres")
        postgres.green()
        listener = postgres.Listener(url, ["hive_test"], lambda channel, payload: heard.append((channel, payload)))
        listener.start()
        try:
            green_wait(lambda: (None, None) in heard, "the listener's first connect")
            tell = psycopg2.connect(url)
            tell.autocommit = True
            tell.cursor().execute("NOTIFY hive_test, 'one'")
            green_wait(lambda: ("hive_test", "one") in heard, "the first notice")
            tell.close()
            cluster.restart()  # in this thread: the server dies with the thread that started it (pdeathsig)
            green_wait(lambda: heard.count((None, None)) == 2, "the listener back after the restart", timeout=30)
            tell = psycopg2.connect(url)
            tell.autocommit = True
            tell.cursor().execute("NOTIFY hive_test, 'two'")
            green_wait(lambda: ("hive_test", "two") in heard, "a notice after the restart")
            tell.close()
        finally:
            listener.stop()
    said = [r.getMessage() for r in caplog.records]
    assert any("lost the connection the other cores' notices come on" in m for m in said), said
    assert any("listening for the other cores' notices again after" in m for m in said), said


def test_a_statement_the_server_refuses_leaves_the_connection_as_it_was(db, pg_url, caplog):
    caplog.set_level(logging.WARNING, logger="hyperhive.postgres")
    (pid,) = db.execute_sql("SELECT pg_backend_pid()").fetchone()
    db.execute_sql("SET lock_timeout = '100ms'")
    other = psycopg2.connect(pg_url)
    try:
        other.cursor().execute("LOCK TABLE node IN ACCESS EXCLUSIVE MODE")  # held: other's transaction is open
        with pytest.raises(wire.HiveError) as e:
            db.execute_sql("SELECT count(*) FROM node")
        assert e.value.code == "unavailable" and "lock timeout" in str(e.value), str(e.value)
    finally:
        other.close()
    assert db.execute_sql("SELECT pg_backend_pid()").fetchone() == (pid,)  # the same connection
    assert not [r for r in caplog.records if "lost the connection" in r.getMessage()]
