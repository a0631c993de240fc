"""The wire contract: names, argument shapes, framing, and the error vocabulary."""

import errno
import json
import sqlite3

import pytest

from hyperhive import verbs, wire


@pytest.mark.parametrize("name", ["a", "alice", "a-1", "x" * 31, "b2b"])
def test_valid_names(name):
    assert wire.check_name(name) == name


@pytest.mark.parametrize("name", ["", "A", "1abc", "-a", "a_b", "a.b", "../etc", "a/b", "x" * 32,
                                  "alice\n", " alice", "ä"])
def test_invalid_names_are_refused_by_name(name):
    with pytest.raises(wire.HiveError) as e:
        wire.check_name(name)
    assert "not valid" in str(e.value)


@pytest.mark.parametrize("name", ["manager", "operator", "core"])
def test_reserved_names_cannot_be_agents(name):
    with pytest.raises(wire.HiveError, match="reserved"):
        wire.check_agent_name(name)


def test_parse_known_verb_with_defaults():
    assert verbs.parse_request({"cmd": "inbox"}, "host") == ("inbox", {"limit": 20, "before": None, "unread": False,
                                                                      "only_from": None})
    assert verbs.parse_request({"cmd": "destroy", "name": "a"}, "host") == ("destroy", {"name": "a", "purge": False})


def test_unknown_keys_are_ignored():
    assert verbs.parse_request({"cmd": "list", "extra": [1, 2]}, "host") == ("list", {})


def test_unknown_verb_names_the_surface():
    with pytest.raises(wire.HiveError) as e:
        verbs.parse_request({"cmd": "spawn", "name": "a"}, "agent")
    assert e.value.code == "unknown_verb" and "agent socket" in str(e.value)


@pytest.mark.parametrize("obj, fragment", [
    ({"cmd": "send", "to": "a"}, "missing argument 'body'"),
    ({"cmd": "send", "to": 3, "body": "x"}, "must be a string"),
    ({"cmd": "send", "to": "a", "body": "  "}, "must not be empty"),
    ({"cmd": "set_paused", "name": "a", "paused": "yes"}, "true or false"),
    ({"cmd": "inbox", "limit": "ten"}, "must be a number"),
    ({"cmd": "inbox", "limit": 0}, "between 1 and 1000"),
    ({"cmd": "start", "scope": {"agent_names": []}}, "never 'everything'"),
    ({"cmd": "start", "scope": ["a"]}, "agent_names"),
    ({"cmd": "start", "scope": {"agent_names": ["../x"]}}, "not valid"),
    ({"cmd": 5}, "\"cmd\" string"),
])
def test_bad_arguments_get_a_sentence(obj, fragment):
    with pytest.raises(wire.HiveError) as e:
        verbs.parse_request(obj, "host")
    assert fragment in str(e.value)


def test_recv_limits_are_clamped_not_refused():
    assert verbs.parse_request({"cmd": "recv", "wait_seconds": 9999, "max": 500}, "agent") == \
        ("recv", {"wait_seconds": 180, "max": 32})
    assert verbs.parse_request({"cmd": "recv", "wait_seconds": -5, "max": 0}, "agent") == \
        ("recv", {"wait_seconds": 0, "max": 1})


def test_body_size_limit():
    with pytest.raises(wire.HiveError, match="limit"):
        verbs.parse_request({"cmd": "send", "to": "a", "body": "x" * (wire.MAX_BODY + 1)}, "host")


def test_framing_is_compact_and_byte_compatible():
    assert wire.request("list") == b'{"cmd":"list"}\n'
    assert wire.encode(wire.ok()) == b'{"version":1,"ok":true}\n'
    assert wire.encode(wire.ok(agents=["a"])) == b'{"version":1,"ok":true,"agents":["a"]}\n'


@pytest.mark.parametrize("line, fragment", [
    (b"not json\n", "not valid JSON"),
    (b"[1,2]\n", "JSON object"),
    (b"\xff\xfe\n", "not UTF-8"),
    (b"[" * 100000 + b"\n", "not valid JSON"),
    (b"x" * (wire.MAX_LINE + 1), "1 MiB"),
])
def test_decode_errors(line, fragment):
    with pytest.raises(wire.HiveError) as e:
        wire.decode(line)
    assert e.value.code == "bad_frame" and fragment in str(e.value)


def test_result_raises_the_servers_sentence():
    with pytest.raises(wire.HiveError) as e:
        wire.result(json.loads(wire.encode(wire.error("no such agent", "not_found"))))
    assert str(e.value) == "no such agent" and e.value.code == "not_found" and e.value.status == 404


@pytest.mark.parametrize("raw, lo, hi, number", [
    ("5", 0, wire.MAX_INT, 5), (" 7 ", 0, wire.MAX_INT, 7), ("+3", 1, wire.MAX_INT, 3), ("1_000", 0, 1000, 1000),
    ("0", 0, wire.MAX_INT, 0), (4, 1, wire.MAX_INT, 4), (str(wire.MAX_INT), 1, wire.MAX_INT, wire.MAX_INT),
])
def test_a_typed_whole_number_is_read(raw, lo, hi, number):
    got = wire.whole_number(raw, "n", lo, hi)
    assert got == number and type(got) is int


@pytest.mark.parametrize("raw, lo, hi, sentence", [
    ("x", 0, wire.MAX_INT, "after must be a whole number of 0 or more, got 'x'"),
    ("", 0, wire.MAX_INT, "after must be a whole number of 0 or more, got ''"),
    ("1.5", 0, wire.MAX_INT, "after must be a whole number of 0 or more, got '1.5'"),
    ("-1", 0, wire.MAX_INT, "after must be a whole number of 0 or more, got '-1'"),
    ("0", 1, wire.MAX_INT, "after must be a whole number of 1 or more, got '0'"),
    (0, 1, wire.MAX_INT, "after must be a whole number of 1 or more, got 0"),
    ("²", 0, wire.MAX_INT, "after must be a whole number of 0 or more, got '²'"),  # a digit int() does not read
    ("1001", 1, 1000, "after must be a whole number of 1 or more and at most 1000, got '1001'"),
    ("lots", 1, 1000, "after must be a whole number of 1 or more and at most 1000, got 'lots'"),
    (str(wire.MAX_INT + 1), 0, wire.MAX_INT,  # past SQLite's integers: the bound is named only then
     "after must be a whole number of 0 or more and at most 9223372036854775807, got '9223372036854775808'"),
    ("9" * 5000, 1, wire.MAX_INT,  # past int()'s 4300 digits: no number at all, quoted cut
     f"after must be a whole number of 1 or more, got '{'9' * 40}…'"),
    (True, 0, wire.MAX_INT, "after must be a whole number of 0 or more, got a boolean"),
    (None, 0, wire.MAX_INT, "after must be a whole number of 0 or more, got null"),
    ([1], 0, wire.MAX_INT, "after must be a whole number of 0 or more, got a list"),
    (1.0, 0, wire.MAX_INT, "after must be a whole number of 0 or more, got a number"),
])
def test_a_typed_whole_number_is_refused_in_one_sentence(raw, lo, hi, sentence):
    with pytest.raises(wire.HiveError) as e:
        wire.whole_number(raw, "after", lo, hi)
    assert str(e.value) == sentence and e.value.code == "bad_argument"


def test_every_surface_verb_has_a_shape():
    for surface, names in verbs.SURFACES.items():
        for verb in names:
            assert verb in verbs.VERBS, (surface, verb)


def test_iso_times_are_rfc3339_utc():
    assert wire.iso(0) == "1970-01-01T00:00:00.000Z"
    assert wire.iso(1700000000123) == "2023-11-14T22:13:20.123Z"
    assert wire.iso(None) is None


@pytest.mark.parametrize("exc, says", [
    (sqlite3.OperationalError("database or disk is full"), "is full"),
    (OSError(errno.ENOSPC, "No space left on device"), "is full"),
    (sqlite3.OperationalError("attempt to write a readonly database"), "is read-only"),
    (OSError(errno.EROFS, "Read-only file system"), "is read-only"),
    (sqlite3.OperationalError("disk I/O error"), "I/O error"),
])
def test_a_refused_write_is_named_as_the_disk_with_what_to_do(exc, says):
    e = wire.storage_failure(exc)
    assert e.code == "unavailable" and says in str(e) and "free space or make it writable" in str(e)


@pytest.mark.parametrize("exc", [KeyError("x"), sqlite3.OperationalError("no such table: message"),
                                 OSError(errno.ENOENT, "No such file")])
def test_other_failures_are_not_blamed_on_the_disk(exc):
    assert wire.storage_failure(exc) is None


def _chained_full_disk():
    """What peewee raises when sqlite's COMMIT fails on a full disk: its rollback's error, chained."""
    import peewee

    try:
        try:
            try:
                raise sqlite3.OperationalError("database or disk is full")
            except sqlite3.OperationalError as e:
                raise peewee.OperationalError(*e.args) from e
        except peewee.OperationalError:
            raise peewee.OperationalError("cannot rollback - no transaction is active")
    except peewee.OperationalError as top:
        return top


def test_a_full_disk_down_the_exception_chain_is_still_the_disk():
    exc = _chained_full_disk()
    assert "cannot rollback" in str(exc) and wire._disk_state(exc) is None
    e = wire.storage_failure(exc)
    assert e.code == "unavailable" and "state disk is full" in str(e)
    assert "database or disk is full" in str(e)  # the link that said so, not the rollback's words


def test_our_own_disk_sentence_is_recognised_as_is():
    # a harness reads the core's answer as a HiveError: it must stay the disk, not become a bug
    first = wire.storage_failure(sqlite3.OperationalError("database or disk is full"))
    assert wire.storage_failure(wire.HiveError(str(first), "unavailable")).args == first.args


def test_a_chain_that_loops_ends():
    a, b = RuntimeError("a"), RuntimeError("b")
    a.__context__, b.__context__ = b, a
    assert wire.storage_failure(a) is None


@pytest.fixture
def tiny_disk(tmp_path):
    import subprocess

    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); this test needs root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def test_a_real_commit_on_a_full_disk_is_named_as_the_disk(tiny_disk):
    import peewee

    db = peewee.SqliteDatabase(str(tiny_disk / "x.db"), pragmas={"journal_mode": "wal", "synchronous": "normal"})

    class Row(peewee.Model):
        body = peewee.TextField()

        class Meta:
            database = db

    db.connect()
    db.create_tables([Row])
    with open(tiny_disk / "filler", "ab", buffering=0) as f:
        for size in (1 << 16, 1 << 12, 1):
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError as e:
                assert e.errno == errno.ENOSPC, e
    failures = []
    for _ in range(50):
        try:
            with db.atomic():
                Row.create(body="x" * 4096)
        except peewee.PeeweeException as e:
            failures.append(e)
    db.close()
    assert failures, "50 rows of 4 KiB fitted on a full 1 MiB disk"
    for e in failures:
        assert wire.storage_failure(e) is not None, f"{e!r} (caused by {e.__cause__ or e.__context__!r})"
