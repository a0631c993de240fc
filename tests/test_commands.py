"""The command rows one core hands another (core/nodes.py), stepped in-process on a sqlite file."""

import gevent

from hyperhive import wire
from hyperhive.core.nodes import Nodes
from hyperhive.core.notices import Notices
from hyperhive.schema import Command, Node, core_db, now_ms, open_core


def hive_of_two(tmp_path):
    open_core(tmp_path / "hive.db")
    nodes = Nodes("n1", Notices(None), state_dir=str(tmp_path))
    nodes.join()
    Node.create(name="n2", heartbeat_at=now_ms(), place="another host:/var/lib/hyperhive")
    return nodes


def test_an_asker_woken_without_an_answer_waits_again_and_never_spins(tmp_path, monkeypatch):
    nodes = hive_of_two(tmp_path)
    reads, read = [], Command.get_by_id
    monkeypatch.setattr(Command, "get_by_id", lambda i: (reads.append(i), read(i))[1])
    asker = gevent.spawn(nodes.carry, "n2", "host", wire.OPERATOR, {"cmd": "stop", "name": "b"}, "stop of b")
    try:
        gevent.sleep(0.05)
        nodes._caught_up()  # a reconnect wakes every asker: n2 has not answered
        reads.clear()
        gevent.sleep(0.5)
        assert len(reads) <= 1, f"{len(reads)} reads of the command in half a second"
        assert not asker.ready()
    finally:
        asker.kill()
        core_db.close()


def test_an_answer_written_by_the_other_node_is_the_askers_answer(tmp_path):
    nodes = hive_of_two(tmp_path)
    asker = gevent.spawn(nodes.carry, "n2", "host", wire.OPERATOR, {"cmd": "stop", "name": "b"}, "stop of b")
    try:
        gevent.sleep(0.05)
        [command] = Command.select()
        assert (command.node, command.asked_by, command.caller) == ("n2", "n1", wire.OPERATOR)
        answer = wire.error("there is no agent named 'b'", "not_found")
        Command.update(begun_at=now_ms(), done_at=now_ms(), answer=wire.encode(answer).decode()).execute()
        nodes._answered(str(command.id))
        assert asker.get(timeout=5) == answer
    finally:
        asker.kill()
        core_db.close()


def test_a_node_gone_silent_is_refused_with_how_long(tmp_path):
    nodes = hive_of_two(tmp_path)
    Node.update(heartbeat_at=now_ms() - 95_000).where(Node.name == "n2").execute()
    try:
        nodes.carry("n2", "host", wire.OPERATOR, {"cmd": "kill", "name": "b"}, "kill of b")
    except wire.HiveError as e:
        assert e.code == "unavailable" and "node n2, which has been silent for 1 minute" in str(e), str(e)
    else:
        raise AssertionError("a silent node's command was taken")
    assert Command.select().count() == 0  # refused before any row was written
    core_db.close()
