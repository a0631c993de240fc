"""The databases: WAL mode, the partial index the pop uses, idempotent migrations.

Idempotent migrations run on both engines (`db_url`); the rest is sqlite's own and runs on sqlite only:
its WAL and checkpoints, its query plans, the harness's own file (always sqlite), and files that older
versions of hyperhive wrote, in the exact DDL they wrote (tests/test_contract.py migrates an older
table on both engines).
"""

import sqlite3

from hyperhive import schema


def test_core_db_is_wal_with_the_undelivered_partial_index(tmp_path):
    path = tmp_path / "hive.db"
    schema.open_core(path).close()
    con = sqlite3.connect(path)
    assert con.execute("pragma journal_mode").fetchone() == ("wal",)
    (sql,) = con.execute("select sql from sqlite_master where name='message_undelivered'").fetchone()
    assert "WHERE delivered_at IS NULL" in sql
    from hyperhive.core import broker

    for sql, params in ((broker._POP, (0, "a", 1)), (broker._UNREAD, ("a",))):
        plan = " ".join(r[-1] for r in con.execute("explain query plan " + sql, params))
        assert "message_undelivered" in plan, plan


def test_migrations_are_idempotent_and_keep_rows(db_url):
    db = schema.open_core(db_url)
    schema.Message.create(sender="operator", recipient="a", body="kept")
    db.close()
    for _ in range(2):
        schema.open_core(db_url).close()
    db = schema.open_core(db_url)
    try:
        assert list(schema.Message.select(schema.Message.body).tuples()) == [("kept",)]
        assert list(schema.Meta.select(schema.Meta.key, schema.Meta.value).tuples()) == [
            ("schema_version", str(schema.SCHEMA_VERSION))]
    finally:
        db.close()


def test_background_checkpoint_folds_the_wal(tmp_path):
    path = tmp_path / "hive.db"
    db = schema.open_core(path, background_checkpoint=True)
    assert db.execute_sql("pragma wal_autocheckpoint").fetchone() == (0,)
    for i in range(200):
        schema.Message.create(sender="operator", recipient="a", body=f"m{i}")
    busy, log_pages, checkpointed = schema.checkpoint(path)
    assert busy == 0 and log_pages > 0 and checkpointed == log_pages
    db.close()


def test_agent_db_holds_events(tmp_path):
    db = schema.open_agent(tmp_path / "events.sqlite")
    schema.Event.create(seq=1, kind="note", data="{}")
    assert schema.Event.select().count() == 1
    db.close()


def test_an_older_file_gains_new_columns(tmp_path):
    path = tmp_path / "hive.db"
    con = sqlite3.connect(path)
    con.execute('CREATE TABLE "agent" ("name" VARCHAR(255) NOT NULL PRIMARY KEY, "role" VARCHAR(255) NOT NULL, '
                '"parent" VARCHAR(255) NOT NULL, "created_at" BIGINT NOT NULL, "desired" VARCHAR(255) NOT NULL, '
                '"paused" INTEGER NOT NULL, "needs_login" INTEGER NOT NULL)')
    con.execute("insert into agent values ('a', 'agent', 'operator', 0, 'running', 0, 0)")
    con.commit()
    con.close()
    schema.open_core(path).close()
    schema.open_core(path).close()
    agent = schema.Agent.get(schema.Agent.name == "a")
    assert agent.running_sha is None and agent.status_text is None


def test_an_older_approval_table_gains_the_tool_use_columns_and_one_row_per_call(tmp_path):
    import peewee
    import pytest

    path = tmp_path / "hive.db"
    con = sqlite3.connect(path)
    con.execute('CREATE TABLE "approval" ("id" INTEGER NOT NULL PRIMARY KEY, "agent" VARCHAR(255) NOT NULL, '
                '"kind" VARCHAR(255) NOT NULL, "commit_ref" VARCHAR(255), "fetched_sha" VARCHAR(255), '
                '"requested_at" BIGINT NOT NULL, "status" VARCHAR(255) NOT NULL, "resolved_at" BIGINT, "note" TEXT, '
                '"description" TEXT NOT NULL, "diff" TEXT NOT NULL)')
    con.execute("insert into approval values (1, 'a', 'apply_commit', 'abc1234', null, 0, 'pending', null, null, "
                "'kept', '')")
    con.commit()
    con.close()
    for _ in range(2):
        db = schema.open_core(path)
        db.close()
    db = schema.open_core(path)
    old = schema.Approval.get_by_id(1)
    assert old.description == "kept" and (old.tool, old.tool_input, old.rule, old.tool_use_id) == (None,) * 4
    schema.Approval.create(agent="a", kind="tool_use", tool="Bash", tool_input="{}", rule="Bash", tool_use_id="t1")
    schema.Approval.create(agent="b", kind="tool_use", tool="Bash", tool_input="{}", rule="Bash", tool_use_id="t1")
    with pytest.raises(peewee.IntegrityError):
        schema.Approval.create(agent="a", kind="tool_use", tool="Bash", tool_input="{}", rule="Bash", tool_use_id="t1")
    db.close()
