"""Issue 14, classes 4 and 6: an agent (or anything on the host's loopback) cannot spend the core's
descriptors or memory, whatever it sends and however many connections it opens.

Each test is the attack, on a real core running the built pyz, with the fix's bound as its assertion:
broken, the attack works and the test fails.

- Descriptors (class 4). The core runs on a budget of NOFILE descriptors (tests/tightcore.py sets the
  hard limit; the core lifts its soft limit to it). More idle TCP connections to the dashboard than
  that leave the operator's request prompt and her open stream live; a request trickled a byte at a
  time is dropped at the header deadline; more recv long-polls on one agent's socket than that leave
  the host socket and another agent's socket prompt, and each one refused says which cap and why.
- Memory (class 6). Six `inbox limit=1000` answers nobody reads over an inbox of big messages cost
  the core a few MiB, not gigabytes, and are dropped at the send deadline; a listing is bounded and
  says so; a recv hands over what fits, and a message bigger than a request line still arrives whole;
  what one agent may queue for another is a quota, and the operator's own sends are not refused.

One hive serves the module: alice and bob are spawned and stopped (their sockets stay, and no harness
competes for their queues).
"""

import json
import os
import resource
import socket
import threading
import time
import urllib.parse

import pytest

from conftest import ROOT, Hive, proof_scale, running, wait_until
from hyperhive import jsonline, web, wire
from hyperhive.core import broker as brokers
from hyperhive.core import daemon

NOFILE = 256  # the core's hard limit on open descriptors here: every flood below is bigger
HEADER_SECONDS = 1.0
READ_TIMEOUT = 5.0
SEND_TIMEOUT = 2.0
PROMPT = 3.0  # seconds within which the operator's request must answer while a flood holds on
BIG = 512 * 1024  # characters: the largest body a message may have
FILL = proof_scale(64, 1000)  # big messages in alice's inbox for the six-inbox attack


def tight_hive(base, **env):
    return Hive(base / "state", wrapper=os.path.join(ROOT, "tests", "tightcore.py"),
                env={"ANTHROPIC_API_KEY": "test-key", "HIVE_TEST_NOFILE": f"{NOFILE // 2}:{NOFILE}", **env},
                extra_args=["--pass-env", "ANTHROPIC_API_KEY"])


@pytest.fixture(scope="module", autouse=True)
def descriptors_for_the_floods():
    """This process holds the floods' other ends."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))


@pytest.fixture(scope="module")
def h(tmp_path_factory):
    """The module's hive: the dashboard's own header deadline (a flood outlives it only by eviction),
    the sockets' read and send deadlines short."""
    hive = tight_hive(tmp_path_factory.mktemp("limits"), HIVE_TEST_READ_TIMEOUT=str(READ_TIMEOUT),
                      HIVE_TEST_SEND_TIMEOUT=str(SEND_TIMEOUT))
    with running(hive):
        hive.call("spawn", name="alice")
        hive.call("spawn", name="bob")
        hive.call("stop", scope={"agent_names": ["alice", "bob"]})
        wait_until(lambda: not hive.row("alice")["running"] and not hive.row("bob")["running"], 30,
                   "alice and bob to stop")
        yield hive


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """A hive whose dashboard's header deadline is short, for the tests that wait it out."""
    with running(tight_hive(tmp_path_factory.mktemp("quick"), HIVE_TEST_HEADER_SECONDS=str(HEADER_SECONDS))) as hive:
        yield hive


def closing(socks):
    for s in socks:
        s.close()


def vm(pid, key):
    """A /proc/<pid>/status figure in MiB (VmRSS, VmHWM)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no {key} in /proc/{pid}/status")


def open_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def timed(action):
    t0 = time.monotonic()
    value = action()
    return value, time.monotonic() - t0


def drain_queue(h, name):
    """Pop everything waiting for `name` (on its own socket), so the next test starts from an empty queue."""
    while h.agent_call(name, "recv", max=wire.RECV_MAX_BATCH)["messages"]:
        pass


# -- descriptors -------------------------------------------------------------------------------

def test_the_core_lifts_its_descriptor_limit_to_the_hard_one(h):
    with open(f"/proc/{h.proc.pid}/limits") as f:
        row = next(line for line in f if line.startswith("Max open files"))
    assert row.split()[3:5] == [str(NOFILE), str(NOFILE)], row
    assert f"raised the open-descriptor limit from {NOFILE // 2} to {NOFILE}" in h.log()


def dashboard_port(h):
    return urllib.parse.urlsplit(h.url).port


def idle_connections(port, count):
    return [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(count)]


def read_some(sock, timeout=5.0):
    sock.settimeout(timeout)
    try:
        return sock.recv(65536)
    except TimeoutError:
        return None  # still open, nothing said


def test_idle_connections_to_the_dashboard_cannot_lock_the_operator_out(h):
    port = dashboard_port(h)
    session = h.session()
    # the operator's stream, open before the flood: it must live through it
    stream = socket.create_connection(("127.0.0.1", port), timeout=10)
    stream.sendall(f"GET /dashboard/stream?key={urllib.parse.quote(session['X-Hive-Key'])} HTTP/1.1\r\n"
                   f"Host: 127.0.0.1:{port}\r\nCookie: {session['Cookie']}\r\n\r\n".encode())
    assert b"200 OK" in read_some(stream)
    flood = idle_connections(port, max(web.PEER_WAITING_MAX, NOFILE) + 50)
    try:
        (status, state), took = timed(lambda: h.dashboard("GET", "/api/state"))
        assert status == 200 and "containers" in state and took < PROMPT, (status, took)
        h.call("send", to="bob", body="through the flood")
        wait_until(lambda: b"through the flood" in (read_some(stream, 1.0) or b""), 10,
                   "the operator's open stream to carry the event")
        # Those pushed out were told which cap, with the one error shape; the newest still wait.
        answers = [read_some(s, 0.2) for s in flood[:50]]
        for data in answers:
            head, _, body = data.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 503 "), data[:200]
            error = json.loads(body)
            assert error["ok"] is False and error["code"] == "unavailable", error
            assert f"more than {web.PEER_WAITING_MAX} connections from 127.0.0.1" in error["error"], error
        assert open_fds(h.proc.pid) < NOFILE - 50
    finally:
        closing(flood + [stream])
    drain_queue(h, "bob")


def test_a_request_trickled_byte_by_byte_is_dropped_at_the_header_deadline(quick):
    port = dashboard_port(quick)
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    request = b"GET /api/state HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"a" * 200
    t0 = time.monotonic()
    try:
        for i in range(len(request)):
            try:
                sock.sendall(request[i:i + 1])
            except (BrokenPipeError, ConnectionResetError):
                break
            if read_some(sock, 0.05) == b"":
                break  # closed on it
        else:
            raise AssertionError("the dashboard kept reading a request trickled for "
                                 f"{time.monotonic() - t0:.1f}s (its deadline is {HEADER_SECONDS:g}s)")
        assert time.monotonic() - t0 < HEADER_SECONDS + 2
    finally:
        sock.close()


def test_a_kept_alive_connection_may_idle_only_until_the_header_deadline(quick):
    port = dashboard_port(quick)
    session = quick.session()
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        sock.sendall(f"GET /api/state HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nCookie: {session['Cookie']}\r\n"
                     f"X-Hive-Key: {session['X-Hive-Key']}\r\n\r\n".encode())
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"HTTP/1.1 200")
        length = next(int(line.split(b":")[1]) for line in iter(reader.readline, b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        reader.read(length)
        t0 = time.monotonic()
        assert read_some(sock, HEADER_SECONDS + 5) == b"", "a kept-alive connection idled past the deadline"
        assert time.monotonic() - t0 >= HEADER_SECONDS * 0.9
    finally:
        sock.close()


def unix_connection(path):
    """A connection to a unix socket, waiting out a full backlog (the flood outruns the core's accepts)."""
    def attempt():
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        try:
            s.connect(path)
        except BlockingIOError:
            s.close()
            return None
        return s

    return wait_until(attempt, 10, f"a connection to {path}")


class Waiter:
    def __init__(self, name):
        self.name, self.told = name, None

    def evict(self, sentence):
        self.told = sentence

    def __repr__(self):
        return self.name


def test_the_gate_pushes_out_the_longest_waiting_stranger_per_peer_and_in_all():
    gate = web.Gate(per_peer=2, total=3, clock=lambda: 0.0)
    a1, a2, a3, b1, c1 = (Waiter(n) for n in ("a1", "a2", "a3", "b1", "c1"))
    gate.wait(a1, "a")
    gate.wait(a2, "a")
    gate.wait(a3, "a")  # a's third: a's oldest goes
    assert a1.told and "more than 2 connections from a" in a1.told and list(gate.waiting) == [a2, a3]
    gate.wait(b1, "b")
    gate.leave(a3)  # its request arrived: it waits no more
    gate.wait(c1, "c")
    assert not (a2.told or b1.told) and list(gate.waiting) == [a2, b1, c1]
    gate.wait(Waiter("d1"), "d")  # a fourth in all: the oldest anywhere goes
    assert "more than 3 connections in all" in a2.told and list(gate.peers) == ["b", "c", "d"]


def recv_flood(path, count):
    socks = []
    for _ in range(count):
        s = unix_connection(path)
        s.sendall(wire.request("recv", wait_seconds=wire.RECV_MAX_WAIT))
        socks.append(s)
    return socks


def answer_of(sock, timeout):
    sock.settimeout(timeout)
    try:
        line = sock.makefile("rb").readline()
    except TimeoutError:
        return None
    return json.loads(line) if line else {}


def test_recv_long_polls_on_one_agent_socket_starve_no_other_socket(h):
    flood = recv_flood(h.sock("alice"), NOFILE + 50)
    try:
        (agents, took) = timed(lambda: h.call("list", timeout=10)["agents"])
        assert "bob" in agents and took < PROMPT, took
        (me, took) = timed(lambda: h.agent_call("bob", "whoami", timeout=10)["name"])
        assert me == "bob" and took < PROMPT, took
        # Every poll but the newest was answered at once, and each says why.
        answers = [answer_of(s, 0.5) for s in flood]
        waiting = [i for i, a in enumerate(answers) if a is None]
        assert len(waiting) == 1, f"{len(waiting)} recv long-polls still wait on alice's socket"
        codes = {a["code"] for a in answers if a is not None}
        assert codes <= {"unavailable", "conflict"}, codes
        for a in answers:
            if a is not None and a["code"] == "unavailable":
                assert f"already has {daemon.AGENT_SOCKET_CONNECTIONS} connections open" in a["error"], a
            elif a is not None:
                assert "a newer recv on alice's socket took over" in a["error"], a
        assert open_fds(h.proc.pid) < NOFILE - 50
        # A harness reconnecting after its poll went dead is not locked out: its recv takes over.
        got = {}
        poll = threading.Thread(target=lambda: got.update(h.agent_call("alice", "recv", wait_seconds=30)))
        poll.start()
        assert answer_of(flood[waiting[0]], 10)["code"] == "conflict"
        mid = h.call("send", to="alice", body="for the new poll")["id"]
        poll.join(30)
        assert [m["id"] for m in got["messages"]] == [mid]
    finally:
        closing(flood)


def test_a_client_past_an_agent_sockets_cap_gets_the_sentence(h):
    # half a line each: held until the read deadline
    held = []
    try:
        for _ in range(daemon.AGENT_SOCKET_CONNECTIONS):
            s = unix_connection(h.sock("alice"))
            s.sendall(b'{"cmd":')
            held.append(s)
        with pytest.raises(wire.HiveError) as e:
            jsonline.call(h.sock("alice"), "whoami", timeout=10)
        assert e.value.code == "unavailable" and "alice.sock already has 32 connections open" in str(e.value)
        assert "refused" in h.log() and "past its cap of 32" in h.log()
        assert h.agent_call("bob", "whoami")["name"] == "bob"
    finally:
        closing(held)
    wait_until(lambda: h.agent_call("alice", "whoami")["name"] == "alice", READ_TIMEOUT + 10,
               "alice's socket to serve again once the half lines are dropped")


def test_a_request_line_trickled_byte_by_byte_is_dropped_at_the_read_deadline(h):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(h.sock("alice"))
    t0 = time.monotonic()
    try:
        answer = None
        for byte in b'{"cmd":"whoami","pad":"' + b"a" * 10_000:
            s.sendall(bytes([byte]))
            answer = answer_of(s, 0.1)
            if answer is not None:
                break
            assert time.monotonic() - t0 < READ_TIMEOUT + 5, "the socket kept reading a trickled line"
        assert answer["code"] == "bad_frame" and f"within {READ_TIMEOUT:g}s" in answer["error"], answer
    finally:
        s.close()


# -- memory ------------------------------------------------------------------------------------

def fill_inbox(h, name, count):
    """`name` fills its own inbox through its page's verb, reading as it goes (its quota allows no more)."""
    body = "x" * BIG
    for i in range(count):
        h.agent_call(name, "operator_msg", body=f"{i:06d}" + body[6:])
        if i % 50 == 49 or i == count - 1:
            drain_queue(h, name)


def test_inbox_answers_nobody_reads_cost_the_core_little_and_are_dropped(h):
    fill_inbox(h, "alice", FILL)
    pid = h.proc.pid
    before = vm(pid, "VmHWM")
    dropped_before = h.log().count("alice.sock: stopped writing to a client")
    socks = []
    try:
        for _ in range(6):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(h.sock("alice"))
            s.sendall(wire.request("inbox", limit=1000))
            socks.append(s)
        wait_until(lambda: h.log().count("alice.sock: stopped writing to a client") >= dropped_before + 6,
                   SEND_TIMEOUT + 20, "the core to drop six answers nobody reads")
        grew = vm(pid, "VmHWM") - before
        assert grew < 48, f"six unread inbox answers grew the core's peak memory by {grew:.0f} MiB"
    finally:
        closing(socks)
    # A client that reads gets a bounded listing that says what it left out.
    answer, raw = h.agent_call("alice", "inbox", limit=1000), None
    raw = wire.encode(answer)
    assert len(raw) < wire.ANSWER_BUDGET + 256 * 1024, len(raw)
    rows = answer["messages"]
    assert 1 < len(rows) < FILL and len(answer[wire.WARNINGS]) == 1
    assert f"stops after the newest {len(rows)} messages" in answer[wire.WARNINGS][0]
    assert all(r["body_chars"] == BIG and len(r["body"]) < wire.LISTED_BODY_MAX + 200 for r in rows)
    assert "the whole message is 524,288 characters" in rows[0]["body"]


def test_a_recv_hands_over_what_fits_and_a_message_too_big_for_a_line_arrives_whole(h):
    # 800 KB each in UTF-8: two fit the answer budget (in characters) and make an answer over a request line
    bodies = [f"{i}" + "é" * (400_000 - 1) for i in range(3)]
    for body in bodies:
        h.call("send", to="bob", body=body)
    got = h.agent_call("bob", "recv", max=wire.RECV_MAX_BATCH)
    assert [m["body"] for m in got["messages"]] == bodies[:2] and got["unread"] == 1
    assert len(wire.encode(got)) > wire.MAX_LINE
    assert [m["body"] for m in h.agent_call("bob", "recv", max=2)["messages"]] == bodies[2:]
    # A question and its answer, quoted line by line by the core, make one message far over a MiB:
    # its recipient's recv must still take it (a harness that cannot would die on it forever).
    qid = h.agent_call("alice", "ask", question="?\n" * (BIG // 2), to="bob")["id"]
    asked = h.agent_call("bob", "recv", max=1)["messages"][0]
    assert f"question {qid}" in asked["body"] and len(wire.encode(asked)) > wire.MAX_LINE
    h.agent_call("bob", "answer", id=qid, answer="!\n" * (BIG // 2))
    answered = h.agent_call("alice", "recv", max=1)["messages"][0]
    assert answered["body"].startswith("[question_answered]") and len(wire.encode(answered)) > 2 * wire.MAX_LINE


def test_what_one_agent_may_queue_for_another_is_a_quota(h):
    for i in range(brokers.SENDER_QUEUE_MAX):
        h.agent_call("alice", "send", to="bob", body=f"note {i}")
    refused = h.raw(h.sock("alice"), wire.request("send", to="bob", body="one too many"))
    assert refused.get("code") == "unavailable", refused
    assert (f"alice already has {brokers.SENDER_QUEUE_MAX} unread messages waiting for bob, the most one sender "
            "may queue for one recipient") in refused["error"]
    refused = h.raw(h.sock("alice"), wire.request("ask", question="and this?", to="bob"))
    assert refused["code"] == "unavailable", refused
    h.call("send", to="bob", body="the operator's own send always goes")
    # bob's page is his: it is quota'd as he is
    for i in range(brokers.SENDER_QUEUE_MAX - 1):
        h.agent_call("bob", "operator_msg", body=f"page {i}")
    refused = h.raw(h.sock("bob"), wire.request("operator_msg", body="one too many"))
    assert refused["code"] == "unavailable" and "the operator already has 100 unread" in refused["error"], refused
    assert h.agent_call("bob", "recv", max=1)["messages"][0]["from"] == "alice"
    assert h.agent_call("alice", "send", to="bob", body="bob read one")["id"]
    drain_queue(h, "bob")


def test_a_refused_send_on_a_closed_socket_still_reads_the_sentence(sockdir):
    """The client side of a cap: a server that answers and hangs up before reading gives its sentence."""
    import threading

    path = os.path.join(sockdir, "s.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)

    def refuse():
        conn, _ = listener.accept()
        conn.sendall(wire.encode(wire.error("at the cap; try again", "unavailable")))
        conn.close()

    thread = threading.Thread(target=refuse)
    thread.start()
    try:
        with pytest.raises(wire.HiveError) as e:
            jsonline.call(path, "send", to="bob", body="x" * (wire.MAX_BODY - 1))
        assert e.value.code == "unavailable" and "at the cap" in str(e.value)
    finally:
        thread.join()
        listener.close()


def test_the_docs_name_every_cap():
    with open(os.path.join(ROOT, "docs", "web.md")) as f:
        web_md = f.read()
    with open(os.path.join(ROOT, "docs", "architecture.md")) as f:
        arch = f.read()
    assert f"at most {web.PEER_WAITING_MAX} from one address, and {web.WAITING_MAX} from every" in web_md
    assert f"must all arrive within {web.HEADER_SECONDS:g} s" in web_md
    assert f"{daemon.AGENT_SOCKET_CONNECTIONS} connections open at once per agent" in arch
    assert (f"{brokers.SENDER_QUEUE_MAX} undelivered messages from one sender in one recipient's queue; "
            f"{brokers.QUEUE_MAX} in a queue") in arch
    assert f"past {wire.LISTED_BODY_MAX // 1024} KiB characters" in arch and f"within {jsonline.READ_TIMEOUT:g} s" in arch
