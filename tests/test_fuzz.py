"""Hypothesis fuzzing of every surface a real hive exposes: no input crashes it or gets an `internal` answer.

What this file proves, on a real core daemon (process backend, fake claude):

* The three JSON-line sockets (the operator's host.sock, an agent's agent.sock, the
  manager's manager.sock) answer every generated frame (random bytes, truncated and
  mutated requests, deep nesting, lines near and over wire.MAX_LINE, wrong argument
  types, unknown verbs, bad names, extra keys) with one JSON line: ok:true only for a
  request that was valid, otherwise the one error shape `wire.error(...)` with a known
  code that is never `internal`, and the very code the wire contract gives that frame
  (worked out here with `wire.decode`/`verbs.parse_request`). The daemon keeps serving.
* The MCP stdio server (`agent mcp` and `manager mcp`, on one long-lived pipe each)
  answers every request line exactly once and every malformed line with a JSON-RPC
  error, never an internal one, and keeps answering.
* Every route of the dashboard and of an agent's page on web.sock (both enumerated
  from their bottle apps, so a new route is fuzzed too): never a 500, a 503 only as
  `unavailable`, every error the one error shape with the status its code maps to;
  without the operator's cookie every matched route but /login is 401, without the
  page's secret every request is 403; a POST from another Origin is 403.

The fuzz must not change the hive under it: a frame or request that would spawn,
destroy, stop, restart or unpause an agent of the hive is never sent (`frame_is_harmless`,
`dashboard_request_is_harmless`); such verbs are fuzzed with names the hive does not have
and must be refused. Counts come from proof_scale: short in the everyday suite, the
issue's counts (10k frames per socket surface, 1k requests per route with and again
without auth) under HIVE_PROOF=full.
"""

import collections
import http.client
import io
import itertools
import json
import math
import os
import re
import sys
import threading
import time
import urllib.parse

import bottle
import pytest
from gevent.pywsgi import MAX_REQUEST_LINE
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from conftest import ROOT, Hive, proof_scale, running, wait_until
from fakecore import FakeCore, McpClient
from hyperhive import verbs, web, wire
from hyperhive.core.agentpage import UnixHTTPConnection
from hyperhive.core.dashboard import ACTIONS, Dashboard
from hyperhive.harness import mcp, tools, webui

FRAMES = proof_scale(600, 10_000)  # per socket surface, and per MCP role
REQUESTS = proof_scale(60, 1_000)  # per HTTP route, with auth and again without
HUGE = proof_scale(4, 24)  # frames of about a MiB per socket: slow to build and send, so few
CHECK_EVERY = 500  # frames between two checks that the daemon still serves
AGENT = "worker"
EXISTING = frozenset({wire.MANAGER, AGENT})
DEEP = 400  # brackets in a line past which the server's recursion limit may cut a parse that ours would not
WAIT = 30.0


# a switch that is 0 once in n draws (hypothesis's own st.integers(0, n - 1) gives 0 far more often)
ONE_IN = {n: st.sampled_from(range(n)) for n in (4, 6, 8, 10, 20)}


def weighted(*choices):
    """One of several strategies, each (strategy, weight): st.one_of drops a strategy given twice,
    so repeating one there does not weigh it."""
    return st.sampled_from([strategy for strategy, weight in choices for _ in range(weight)]).flatmap(lambda s: s)


def fuzz(strategy, check, count):
    """Run check on `count` examples of strategy: no example database, no deadline, no health checks
    (a real daemon is slow next to hypothesis's expectations, and filtering is the point)."""

    @settings(database=None, deadline=None, max_examples=count, suppress_health_check=list(HealthCheck))
    @given(strategy)
    def run(example):
        check(example)

    run()


class Tally:
    """How many inputs a fuzz sent, how they were answered, and how long it took."""

    def __init__(self):
        self.count, self.started, self.outcomes = 0, time.monotonic(), collections.Counter()

    def add(self, outcome):
        self.count += 1
        self.outcomes[outcome] += 1
        return self.count

    def report(self, what, target):
        assert self.count >= target, f"only {self.count} of {target} {what} were sent"
        # the counts and timings are the proof's record: `pytest -s` (or -rP) shows them
        seen = ", ".join(f"{key} {n}" for key, n in self.outcomes.most_common())
        print(f"\nfuzz {what}: {self.count} in {time.monotonic() - self.started:.1f}s ({seen})")


# -- the hive under fuzz ------------------------------------------------------------------

@pytest.fixture(scope="module")
def hive(tmp_path_factory):
    """One real hive for the module: the manager and AGENT, both paused so no turn runs under the fuzz."""
    h = Hive(tmp_path_factory.mktemp("fuzz") / "state", env={"ANTHROPIC_API_KEY": "test-key"},
             extra_args=["--pass-env", "ANTHROPIC_API_KEY"])
    with running(h):
        h.call("spawn", name=AGENT)
        for name in sorted(EXISTING):
            h.call("set_paused", name=name, paused=True)
        for name in sorted(EXISTING):  # the page tests talk to AGENT's page and hold up the manager's secret
            sock_dir = os.path.dirname(h.sock(name))
            wait_until(lambda: all(os.path.exists(os.path.join(sock_dir, f))
                                   for f in (webui.SOCKET_NAME, webui.SECRET_NAME)), 30, f"{name}'s page and secret")
        assert h.agent_call(AGENT, "whoami")["name"] == AGENT
        yield h


def page_socket(h):
    return os.path.join(os.path.dirname(h.sock(AGENT)), webui.SOCKET_NAME)


def page_secret_path(h):
    return os.path.join(os.path.dirname(h.sock(AGENT)), webui.SECRET_NAME)


class Logs:
    """The core's log and its agents' harness logs (their pages'), read on from where a batch began.

    An `internal` answer is logged with its traceback (jsonline, web.default_error) before
    it is sent, so a check right after each answer pins a crash on the input that caused it."""

    def __init__(self, h):
        paths = [h.log_path] + [h.log_of(name) for name in sorted(EXISTING)]
        self.offsets = {path: os.path.getsize(path) for path in paths}

    def assert_quiet(self):
        for path, offset in self.offsets.items():
            with open(path, "rb") as f:
                f.seek(offset)
                news = f.read()
            self.offsets[path] = offset + len(news)
            text = news.decode(errors="replace")
            assert "Traceback" not in text and "request failed" not in text, f"{path}:\n{text[-6000:]}"


def assert_serving(h, logs):
    """The daemon is up and unchanged, and nothing it logged since the last look is a crash."""
    assert h.proc.poll() is None, f"the core exited with {h.proc.returncode}"
    assert set(h.call("list")["agents"]) == EXISTING
    rows = {r["name"]: r for r in h.call("agent_status")["agent_statuses"]}
    for name in EXISTING:
        assert rows[name]["running"] and rows[name]["paused"], rows[name]
        assert h.agent_call(name, "whoami")["name"] == name
    logs.assert_quiet()


# -- values ------------------------------------------------------------------------------

SURROGATES = st.sampled_from(["\ud800", "a\udfffb", "\udc80\udc80", "\ud83d"])  # lone halves: not UTF-8-encodable
# lone surrogates are rare in hypothesis's text: given their own (small) share
TEXT = weighted((st.text(max_size=40), 4), (st.text(st.characters(exclude_categories=()), max_size=20), 1),
                (st.sampled_from(["", " ", "\n", "\x00", "\u2028", "null", "0", "-1", "../../etc/passwd"]), 1),
                (SURROGATES, 1))
LONG_TEXT = st.integers(1_000, 40_000).map(lambda n: "é" * n)
JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), TEXT)
JSON_VALUES = st.recursive(JSON_SCALARS, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                                 st.dictionaries(TEXT, kids, max_size=4)),
                           max_leaves=8)
EDGE_NUMBERS = st.sampled_from([0, -1, 1, 2 ** 31, 2 ** 53 + 1, 2 ** 63 - 1, 2 ** 63, -2 ** 63 - 1, 10 ** 30,
                                -10 ** 30, 0.5, -0.5, 1.0, 1e308, -1e308, 1e-300, math.inf, -math.inf, math.nan])
BAD_NAME_SAMPLES = ["", "../x", "..", ".", "a/b", "/", "Manager", "MANAGER", "manager ", " manager", "manager\n",
                    "a" * 65, "x" * 32, "-a", "1a", "a_b", "a.b", "ä", "名前", "\x00", "a\x00", "%2e%2e", "a b",
                    f"{AGENT}/", f"{AGENT}\n"]
BAD_NAMES = st.one_of(st.sampled_from(BAD_NAME_SAMPLES), SURROGATES,
                      st.text(max_size=70).filter(lambda s: not wire.NAME_RE.fullmatch(s)))
ABSENT_NAMES = st.from_regex(r"nobody-[a-z0-9]{1,8}", fullmatch=True)  # valid, and never in the hive
NAMES = st.one_of(BAD_NAMES, ABSENT_NAMES, st.sampled_from(sorted(EXISTING)),
                  st.sampled_from(sorted(wire.RESERVED_NAMES)))
HOSTILE = st.one_of(st.none(), st.booleans(), EDGE_NUMBERS, st.integers(), st.floats(), TEXT, BAD_NAMES,
                    st.lists(JSON_SCALARS, max_size=3), st.dictionaries(TEXT, JSON_SCALARS, max_size=3), JSON_VALUES)
ZONES = ("Z", "+00:00", "-12:00", "+14:00", "")  # the last: no zone, which the wire refuses
TIMES = st.one_of(st.tuples(st.datetimes(), st.sampled_from(ZONES)).map(lambda p: p[0].isoformat() + p[1]),
                  st.sampled_from(["2026-01-31T09:00:00Z", "tomorrow", "Z", "", "z", "9999-12-31T23:59:59+00:00",
                                   "0001-01-01T00:00:00+14:00"]),
                  st.floats(), st.integers())


def arg_values(verb, arg):
    """Values for one argument: plausible ones of its kind and hostile ones of any kind."""
    if (verb, arg.name) in (("recv", "wait_seconds"), ("ask_tool_use", "wait_seconds")):
        # never a positive wait: a long-poll would stall the fuzz (a clamp is never refused)
        return st.one_of(st.integers(max_value=0), st.floats(max_value=0.99), st.just(math.inf), TEXT, st.none(),
                         st.booleans(), st.lists(JSON_SCALARS, max_size=2))
    plausible = {
        "name": NAMES,
        "text": weighted((TEXT, 4), (LONG_TEXT, 1)),
        "str": weighted((TEXT, 4), (LONG_TEXT, 1)),
        "int": st.one_of(st.integers(-3, 1_200), EDGE_NUMBERS),
        "clamp": st.one_of(st.integers(-3, 300), EDGE_NUMBERS),
        "bool": st.booleans(),
        "scope": st.one_of(st.fixed_dictionaries({"agent_names": st.lists(NAMES, max_size=3)}),
                           st.fixed_dictionaries({"agent_names": HOSTILE}), st.lists(NAMES, max_size=2)),
        "options": st.lists(st.one_of(TEXT, JSON_SCALARS), max_size=12),
        "when": TIMES,
        "choice": st.one_of(st.sampled_from(arg.choices or ("x",)), TEXT),
        "ids": st.one_of(st.lists(st.one_of(st.integers(-3, 1_200), EDGE_NUMBERS), max_size=40), TEXT),
        "object": st.one_of(st.dictionaries(TEXT, JSON_VALUES, max_size=4),
                            st.fixed_dictionaries({"command": weighted((TEXT, 4), (LONG_TEXT, 1))})),
    }[arg.kind]
    return weighted((plausible, 2), (HOSTILE, 1))


# -- socket frames -------------------------------------------------------------------------

UNKNOWN_VERBS = st.one_of(st.sampled_from(["", "LIST", "list ", " list", "frobnicate", "do_list", "__init__",
                                           "send\n", "recv\x00", "dispatcher", "list\u200b"]), TEXT)
ALL_ARG_NAMES = {arg.name for args, _ in verbs.VERBS.values() for arg in args} | {"cmd"}
EXTRA_KEYS = TEXT.filter(lambda k: k not in ALL_ARG_NAMES)


def surface_args(surface, verb):
    return verbs.SURFACE_ARGS.get((surface, verb), verbs.VERBS[verb][0] if verb in verbs.VERBS else ())


@st.composite
def requests(draw, surface):
    """A request object: a verb of this surface, of another, or none; each argument plausible, hostile,
    missing or null; sometimes a `cmd` that is not a string, sometimes extra keys."""
    own = st.sampled_from(verbs.SURFACES[surface])
    verb = draw(weighted((own, 4), (st.sampled_from(sorted(verbs.VERBS)), 1), (UNKNOWN_VERBS, 1)))
    obj = {}
    shape = draw(ONE_IN[20])
    if shape == 0:
        obj["cmd"] = draw(HOSTILE)
    elif shape != 1:
        obj["cmd"] = verb
    for arg in surface_args(surface, verb):
        how = draw(st.sampled_from(["value", "value", "value", "missing", "null"]))
        if how == "value":
            obj[arg.name] = draw(arg_values(verb, arg))
        elif how == "null":
            obj[arg.name] = None
    obj.update(draw(st.dictionaries(EXTRA_KEYS, JSON_VALUES, max_size=2)))
    return obj


def to_json(draw, obj):
    text = json.dumps(obj, ensure_ascii=draw(st.booleans()),
                      separators=draw(st.sampled_from([(",", ":"), (", ", ": ")])))
    return text.encode("utf-8", "surrogatepass")  # a lone surrogate goes out as the bytes no UTF-8 decoder takes


@st.composite
def encoded_requests(draw, surface):
    ending = draw(st.sampled_from([b"\n", b"\n", b"\n", b"\r\n", b" \t\n", b"", b"\n{\"cmd\":\"list\"}\n",
                                   b"\ntrailing junk"]))
    return to_json(draw, draw(requests(surface))) + ending


@st.composite
def truncated_requests(draw, surface):
    data = to_json(draw, draw(requests(surface)))
    return data[:draw(st.integers(0, len(data) - 1))] + draw(st.sampled_from([b"", b"\n"]))


@st.composite
def mutated_requests(draw, surface):
    data = to_json(draw, draw(requests(surface)))
    at = draw(st.integers(0, len(data)))
    return data[:at] + draw(st.binary(max_size=3)) + data[at + draw(st.integers(0, 3)):] + b"\n"


@st.composite
def duplicate_keys(draw, surface):
    # json keeps the last of a repeated key: the frame says one thing twice
    pairs = [("cmd", draw(st.sampled_from(verbs.SURFACES[surface])))]
    for _ in range(draw(st.integers(1, 3))):
        pairs.append((draw(st.sampled_from(["cmd", "name", "to", "limit"])), draw(JSON_SCALARS)))
    text = "{" + ",".join(f"{json.dumps(k)}:{json.dumps(v)}" for k, v in pairs) + "}\n"
    return text.encode("utf-8", "surrogatepass")


@st.composite
def deep_frames(draw, surface):
    depth = draw(st.one_of(st.integers(1, 300), st.integers(900, 1_100), st.integers(5_000, 100_000)))
    opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"k":', b"}")]))
    nest = opener * depth + (b"0" if opener != b"[" else b"") + closer * depth
    verb = draw(st.sampled_from(verbs.SURFACES[surface]))
    key = draw(st.sampled_from([a.name for a in surface_args(surface, verb)] + ["extra"]))
    shape = draw(st.sampled_from(["bare", "arg", "cmd", "unclosed"]))
    if shape == "bare":
        return nest + b"\n"
    if shape == "cmd":
        return b'{"cmd":' + nest + b"}\n"
    if shape == "unclosed":
        return opener * depth + b"\n"
    return b'{"cmd":' + json.dumps(verb).encode() + b"," + json.dumps(key).encode() + b":" + nest + b"}\n"


JUNK = st.tuples(st.binary(max_size=400), st.sampled_from([b"", b"\n"])).map(lambda p: p[0] + p[1])
NOT_OBJECTS = JSON_VALUES.filter(lambda v: not isinstance(v, dict)).map(
    lambda v: json.dumps(v).encode("utf-8", "surrogatepass") + b"\n")


@st.composite
def clean_requests(draw, surface):
    return json.dumps(draw(requests(surface))).encode() + b"\n"  # escaped: UTF-8 whatever the strings hold


def frames(surface):
    # about two thirds are well-framed requests, so the argument checks and handlers see most of the fuzz
    return weighted((clean_requests(surface), 12), (encoded_requests(surface), 1), (truncated_requests(surface), 1),
                    (mutated_requests(surface), 1), (duplicate_keys(surface), 1), (deep_frames(surface), 1),
                    (JUNK, 1), (NOT_OBJECTS, 1))


# -- what the server must make of a frame ----------------------------------------------------

def unlimited(fn):
    """fn() run with room for any nesting (a big thread stack, a high recursion limit): the parse a
    frame has when no recursion limit cuts it short."""
    out = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as e:  # handed back to the caller below
            out["error"] = e

    old_limit, old_size = sys.getrecursionlimit(), threading.stack_size(1 << 29)
    sys.setrecursionlimit(1_000_000)
    try:
        thread = threading.Thread(target=run)
        thread.start()
        thread.join()
    finally:
        threading.stack_size(old_size)
        sys.setrecursionlimit(old_limit)
    if "error" in out:
        raise out["error"]
    return out["value"]


def first_line(data):
    """The line the server reads: up to and with the first newline, at most MAX_LINE + 1 bytes."""
    head = data[:wire.MAX_LINE + 1]
    end = head.find(b"\n")
    return head if end < 0 else head[:end + 1]


class Verdict:
    """The wire contract's word on a frame: refused with `code`, or the request (verb, args).

    `deep` frames may hit the server's recursion limit before their verdict: they may also be
    refused as bad_frame. `crash` is a frame the contract itself fails on (the server's answer
    will say `internal`, which the checks refuse)."""

    def __init__(self, data, surface):
        line = first_line(data)
        self.deep = line.count(b"[") + line.count(b"{") > DEEP
        self.code = self.verb = self.args = self.crash = None

        def judge():
            if len(line) > wire.MAX_LINE or not line.endswith(b"\n"):
                raise wire.HiveError("cut off or too long", "bad_frame")
            return verbs.parse_request(wire.decode(line), surface)

        try:
            self.verb, self.args = unlimited(judge) if self.deep else judge()
        except wire.HiveError as e:
            self.code = e.code
        except Exception as e:
            self.crash = repr(e)

    @property
    def request(self):
        return self.verb is not None


# Verbs whose valid requests leave the hive as the fuzz needs it (messages, statuses, tokens,
# questions and reminders pile up; nothing starts, stops or goes away).
HARMLESS_VERBS = frozenset({
    "list", "agent_status", "subscribe_agent_status", "urls", "pending", "inbox", "tombstones", "questions",
    "login_url", "send", "operator_msg", "whoami", "recent", "get_loose_ends", "count_pending_reminders",
    "set_status", "ack_turn", "requeue_inflight", "answer", "cancel_question", "cancel_loose_end", "ask",
    "approve", "deny", "update_meta", "recv", "remind", "cancel_turn", "retry_cancelled", "sessions",
    "mark_read", "ask_tool_use"})
# Verbs sent valid only with names the hive does not have: they must be refused.
NAMED_VERBS = frozenset({"start", "stop", "restart", "rebuild", "kill", "set_paused", "destroy", "purge_tombstone"})
# Verbs never sent valid: each would add an agent, an approval, or flip an agent's login.
NEVER_VERBS = frozenset({"spawn", "request_spawn", "request_init_config", "request_apply_commit", "update",
                         "report_login", "logout"})  # logout: it would end the fuzz's own session


def test_every_verb_is_classified_for_the_fuzz():
    """A new verb must be put in one of the sets above before the fuzz may send it valid."""
    assert HARMLESS_VERBS | NAMED_VERBS | NEVER_VERBS == set(verbs.VERBS)
    assert not (HARMLESS_VERBS & NAMED_VERBS or HARMLESS_VERBS & NEVER_VERBS or NAMED_VERBS & NEVER_VERBS)


def frame_is_harmless(verdict):
    if not verdict.request:
        return True  # refused before any handler runs
    verb, args = verdict.verb, verdict.args
    if verb in ("recv", "ask_tool_use"):  # never a wait: it would stall the fuzz
        return args["wait_seconds"] == 0
    if verb == "remind":
        return args["file_path"] is None  # a reminder's file is written where the agent can reach
    if verb in HARMLESS_VERBS:
        return True
    if verb in NAMED_VERBS:
        return not set(args.get("scope") or [args.get("name")]) & EXISTING
    return False


def assert_error_shape(answer):
    """The one error shape, with a known code that is not `internal` and a sentence."""
    assert set(answer) == {"version", "ok", "error", "code"}, answer
    assert answer["version"] == wire.VERSION and answer["ok"] is False, answer
    assert answer["code"] in wire.ERROR_STATUS and answer["code"] != "internal", answer
    assert isinstance(answer["error"], str) and answer["error"].strip(), answer


def check_answer(answer, verdict):
    assert isinstance(answer, dict), answer
    assert verdict.crash is None, f"the wire contract itself fails on this frame: {verdict.crash}"
    if answer.get("ok") is True:
        assert verdict.request and verdict.verb in HARMLESS_VERBS, answer
        assert answer["version"] == wire.VERSION
        return
    assert_error_shape(answer)
    if verdict.code is not None:
        allowed = {verdict.code, "bad_frame"} if verdict.deep else {verdict.code}
        assert answer["code"] in allowed, (verdict.code, answer)
    elif verdict.verb in NAMED_VERBS:
        assert answer["code"] == "not_found", answer  # only names the hive lacks are sent


def fuzz_socket(h, surface, path, strategy, count):
    """Send `count` frames (a connection each, as the server expects); check every answer and,
    every CHECK_EVERY frames and at the end, that the daemon still serves."""
    logs, tally = Logs(h), Tally()

    def one(data):
        verdict = Verdict(data, surface)
        assume(frame_is_harmless(verdict))
        answer = h.raw(path, data)
        try:
            check_answer(answer, verdict)
            logs.assert_quiet()
        except AssertionError as e:
            raise AssertionError(f"{surface} answered {answer!r} to {data[:300]!r}: {e}") from None
        if tally.add("ok" if answer["ok"] else answer["code"]) % CHECK_EVERY == 0:
            assert_serving(h, logs)

    fuzz(strategy, one, count)
    assert_serving(h, logs)
    return tally


SOCKETS = {"host": lambda h: h.host_sock, "agent": lambda h: h.sock(AGENT), "manager": lambda h: h.sock(wire.MANAGER)}


@pytest.mark.parametrize("surface", sorted(SOCKETS))
def test_socket_frames(hive, surface):
    fuzz_socket(hive, surface, SOCKETS[surface](hive), frames(surface), FRAMES).report(f"{surface} socket frames",
                                                                                        FRAMES)


HUGE_SIZES = (wire.MAX_LINE - 1, wire.MAX_LINE, wire.MAX_LINE + 1, wire.MAX_LINE + 2, wire.MAX_LINE + 4096,
              3 * wire.MAX_LINE)


def huge_frame(size, shape):
    """A frame whose first line is `size` bytes, newline included (but for "no-newline")."""
    heads = {"pad": b'{"cmd":"list","pad":"', "body": b'{"cmd":"send","to":"manager","body":"',
             "verb": b'{"cmd":"', "no-newline": b'{"cmd":"list","pad":"', "junk": b""}
    head, tail = heads[shape], (b"" if shape == "junk" else b'"}') + (b"" if shape == "no-newline" else b"\n")
    fill = size - len(head) - len(tail)
    if shape == "body":  # two bytes a character: a body under MAX_BODY characters on a line near a MiB
        return head + "é".encode() * (fill // 2) + b"x" * (fill % 2) + tail
    return head + (b"\xff" if shape == "junk" else b"x") * fill + tail


@pytest.mark.parametrize("surface", sorted(SOCKETS))
def test_socket_frames_near_the_line_limit(hive, surface):
    strategy = st.tuples(st.sampled_from(HUGE_SIZES), st.sampled_from(["pad", "body", "verb", "no-newline", "junk"]))
    tally = fuzz_socket(hive, surface, SOCKETS[surface](hive), strategy.map(lambda p: huge_frame(*p)), HUGE)
    # few sizes and shapes: hypothesis may run out of new ones before HUGE
    tally.report(f"{surface} socket frames of about a MiB", min(HUGE, len(HUGE_SIZES) * 5))


# -- the MCP stdio server ---------------------------------------------------------------------

METHODS = weighted((st.sampled_from(["initialize", "ping", "tools/list", "tools/call", "tools/call", "tools/call",
                                      "notifications/initialized", "notifications/cancelled", "resources/list",
                                      "prompts/list", "logging/setLevel", "Ping", "tools/call "]), 4),
                   (TEXT, 1), (HOSTILE, 1))
BAD_IDS = st.one_of(st.none(), st.booleans(), st.floats(), EDGE_NUMBERS, st.lists(JSON_SCALARS, max_size=2),
                    st.dictionaries(TEXT, JSON_SCALARS, max_size=2))
RPC_IDS = weighted((st.integers(), 4), (TEXT, 3), (BAD_IDS, 1)).filter(
    lambda i: not (isinstance(i, str) and i.startswith("probe-")))  # the test's own pings are "probe-<n>"


def schema_values(prop):
    plausible = {"string": st.one_of(TEXT, st.sampled_from(prop.get("enum", ["x"])), LONG_TEXT),
                 "integer": st.one_of(st.integers(-3, 300), EDGE_NUMBERS),
                 "array": st.lists(st.one_of(TEXT, JSON_SCALARS), max_size=12),
                 "boolean": st.booleans()}[prop["type"]]
    return weighted((plausible, 2), (HOSTILE, 1))


@st.composite
def tool_arguments(draw, role):
    mine = tools.tools_for(role)
    name = draw(weighted((st.sampled_from(sorted(mine)), 4), (st.sampled_from([t.name for t in tools.TOOLS]), 1),
                         (TEXT, 1), (HOSTILE, 1)))
    params = {"name": name}
    tool = mine.get(name) if isinstance(name, str) else None
    if tool is not None and draw(ONE_IN[10]):
        args = {}
        for key, prop in tool.input_schema["properties"].items():
            if draw(ONE_IN[4]):
                args[key] = draw(schema_values(prop))
        args.update(draw(st.dictionaries(TEXT, JSON_SCALARS, max_size=1)))
        params["arguments"] = args
    elif draw(st.booleans()):
        params["arguments"] = draw(HOSTILE)
    return params


@st.composite
def rpc_objects(draw, role):
    msg = {}
    # mostly a well-formed envelope, so the methods and tools see most lines
    if draw(ONE_IN[20]):
        msg["jsonrpc"] = "2.0" if draw(ONE_IN[10]) else draw(st.one_of(
            st.sampled_from(["1.0", "2", "2.0 ", "", 2.0]), HOSTILE))
    if draw(ONE_IN[10]):
        msg["id"] = draw(RPC_IDS)
    method = draw(METHODS)
    if draw(ONE_IN[10]):
        msg["method"] = method
    if method == "tools/call" and draw(ONE_IN[8]):
        msg["params"] = draw(tool_arguments(role))
    elif draw(st.booleans()):
        msg["params"] = draw(st.one_of(st.dictionaries(st.sampled_from(["protocolVersion", "name", "arguments",
                                                                         "capabilities", "x"]), JSON_VALUES,
                                                       max_size=3), HOSTILE))
    if not draw(ONE_IN[10]):
        msg[draw(st.sampled_from(["result", "error"]))] = draw(JSON_VALUES)
    msg.update(draw(st.dictionaries(TEXT.filter(lambda k: k not in ("jsonrpc", "id", "method", "params",
                                                                     "result", "error")),
                                    JSON_SCALARS, max_size=1)))
    return msg


@st.composite
def rpc_deep(draw, role):
    """A request that always gets exactly one answer, with deep nesting inside: its own, or a parse error."""
    depth = draw(st.one_of(st.integers(1, 300), st.integers(900, 1_100), st.integers(5_000, 100_000)))
    nest = b"[" * depth + b"]" * depth
    method = draw(st.sampled_from(["tools/call", "initialize", "ping", "nope"]))
    where = draw(st.sampled_from([b'"params":{"name":', b'"params":{"name":"send","arguments":{"to":',
                                  b'"params":', b'"extra":']))
    closing = b"}" * (where.count(b"{") + 1)
    ident = json.dumps(f"deep-{draw(st.integers(0, 10 ** 6))}").encode()
    return (b'{"jsonrpc":"2.0","id":' + ident + b',"method":' + json.dumps(method).encode() + b"," + where + nest
            + closing + b"\n")


def rpc_lines(role):
    objects = rpc_objects(role)
    raw = objects.map(lambda m: json.dumps(m, ensure_ascii=False).encode("utf-8", "surrogatepass") + b"\n")
    return weighted((objects.map(lambda m: json.dumps(m).encode() + b"\n"), 5), (raw, 1), (cut_lines(objects), 1),
                    (rpc_deep(role), 1), (JUNK.map(lambda b: b + b"\n"), 1), (NOT_OBJECTS, 1))


@st.composite
def cut_lines(draw, objects):
    line = json.dumps(draw(objects)).encode("utf-8", "surrogatepass")
    return line[:draw(st.integers(0, len(line)))] + b"\n"


def rpc_id(msg_id):
    """The id the server answers with: a string or an integer, else null."""
    return msg_id if isinstance(msg_id, (str, int)) and not isinstance(msg_id, bool) else None


RPC_METHODS = ("initialize", "ping", "tools/list", "tools/call")


def rpc_expected(line):
    """The answers the JSON-RPC contract owes one line, as (id, allowed error codes, result allowed)."""
    if not line.strip():
        return []
    try:
        msg = json.loads(line)
    except (ValueError, RecursionError):
        return [(None, {mcp.PARSE_ERROR}, False)]
    if not isinstance(msg, dict) or msg.get("jsonrpc") != "2.0":
        return [(rpc_id(msg.get("id")) if isinstance(msg, dict) else None, {mcp.INVALID_REQUEST}, False)]
    if "method" not in msg and ("result" in msg or "error" in msg):
        return []  # an answer to a request the server never made
    if "id" not in msg:
        return []  # a notification
    msg_id, method = msg["id"], msg.get("method")
    if rpc_id(msg_id) is None or not isinstance(method, str):
        return [(rpc_id(msg_id), {mcp.INVALID_REQUEST}, False)]
    if method not in RPC_METHODS:
        return [(msg_id, {mcp.METHOD_NOT_FOUND}, False)]
    return [(msg_id, {mcp.INVALID_PARAMS}, True)]


def same_id(a, b):
    return type(a) is type(b) and a == b


def answers(expected, reply):
    msg_id, codes, result_ok = expected
    if not same_id(reply.get("id"), msg_id):
        return False
    return ("result" in reply and result_ok) or ("error" in reply and reply["error"]["code"] in codes)


def settles(owed, reply):
    if owed[0] == "either":
        return answers(owed[1], reply) or answers(owed[2], reply)
    return answers(owed, reply)


def assert_rpc_shape(reply):
    assert reply.get("jsonrpc") == "2.0" and "id" in reply, reply
    assert ("result" in reply) != ("error" in reply), reply
    if "error" in reply:
        error = reply["error"]
        assert set(error) == {"code", "message"}, reply
        assert error["code"] in (mcp.PARSE_ERROR, mcp.INVALID_REQUEST, mcp.METHOD_NOT_FOUND, mcp.INVALID_PARAMS), reply
        assert isinstance(error["message"], str) and error["message"].strip(), reply
    elif isinstance(reply["result"], dict) and "content" in reply["result"]:
        result = reply["result"]  # a tool's answer: one text, and whether the core refused
        assert [c["type"] for c in result["content"]] == ["text"] and isinstance(result["isError"], bool), reply


@pytest.mark.parametrize("role", tools.ROLES)
def test_mcp_lines(sockdir, role):
    core = FakeCore(sockdir / "hive.sock")
    client = McpClient(core.path, role=role)
    tally, probes = Tally(), itertools.count()
    try:
        assert client.initialize()["result"]["serverInfo"]["name"] == tools.SERVER_NAME

        def one(data):
            assert data.endswith(b"\n")  # a line left open would swallow the probe after it
            lines = [piece + b"\n" for piece in data.split(b"\n")[:-1]]
            deep = data.count(b"[") + data.count(b"{") > DEEP
            expected = []
            for line in lines:
                owed = unlimited(lambda: rpc_expected(line)) if deep else rpc_expected(line)
                if deep:
                    # cut short by the server's recursion limit, the line is a parse error instead
                    assume(len(owed) == 1)
                    owed = [("either", owed[0], (None, {mcp.PARSE_ERROR}, False))]
                expected += owed
            kinds = []
            probe = f"probe-{next(probes)}"  # never reused: a late answer cannot pass for a new one
            # a ping after the line: once it is answered, every answer but a tool call's is out
            client.send_raw(data + json.dumps({"jsonrpc": "2.0", "id": probe, "method": "ping"}).encode() + b"\n")
            probed = False
            while not probed or expected:
                reply = client.read(WAIT)
                assert_rpc_shape(reply)
                if same_id(reply.get("id"), probe):
                    assert reply["result"] == {}, reply
                    probed = True
                    continue
                for owed in expected:
                    if settles(owed, reply):
                        expected.remove(owed)
                        kinds.append(f"error {reply['error']['code']}" if "error" in reply else "result")
                        break
                else:
                    raise AssertionError(f"unexpected answer {reply!r} to {data[:300]!r}; still owed {expected!r}")
            tally.add(" + ".join(sorted(kinds)) or "no answer owed")

        fuzz(rpc_lines(role), one, FRAMES)
        assert client.request("ping")["result"] == {} and client.proc.poll() is None
        client.close_stdin()
        assert client.wait() == 0
        errors = client.stderr.rest().decode(errors="replace")
        assert "failed" not in errors and "Traceback" not in errors, errors[-4000:]
    finally:
        client.kill()
        core.stop()
    tally.report(f"MCP {role} lines", FRAMES)


# -- HTTP ------------------------------------------------------------------------------------

def dashboard_app():
    """The dashboard's bottle app, built here only to list its routes and match paths (never called)."""
    return Dashboard.__new__(Dashboard)._build()


def page_app():
    """An agent page's bottle app, built here only to list its routes and match paths (never called)."""
    return webui.Page.__new__(webui.Page)._routes(web.app("the page"))


DASHBOARD = dashboard_app()
PAGE = page_app()
# POST routes, each looked at for what a valid request does (see dashboard_request_is_harmless):
# a new POST route must be added here, after deciding how the fuzz may send it.
DASHBOARD_POSTS = {"/op-send", "/spawn", "/approve/<approval_id>", "/deny/<approval_id>",
                   "/answer-question/<question_id>", "/cancel-question/<question_id>", "/destroy/<name>",
                   "/meta-update",
                   f"/<action:re:{'|'.join(ACTIONS)}>/<name>", "/agent/<name>/<path:path>", "/logout",
                   "/logout/<session_id>", "/inbox/read"}
PAGE_POSTS = {"/send", "/api/cancel", "/api/retry", "/api/compact", "/api/new-session", "/api/model", "/login/start",
              "/login/code", "/login/cancel", "/api/loose-ends/cancel"}
COMPACTIONS = 3  # valid POST /api/compact run the fake claude: a few prove the route, more only load the box


def routes(app):
    return sorted({(r.method, r.rule) for r in app.routes})


def test_every_post_route_is_classified_for_the_fuzz():
    assert {rule for method, rule in routes(DASHBOARD) if method == "POST"} == DASHBOARD_POSTS
    assert {rule for method, rule in routes(PAGE) if method == "POST"} == PAGE_POSTS


URL_TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e), max_size=60)
NUMBERISH = st.one_of(st.integers().map(str), EDGE_NUMBERS.map(str), URL_TEXT,
                      st.sampled_from(["0", "-1", "1", "1e3", "0x1f", " 1", "1 ", "١", "9" * 30, "9" * 5_000, "+1",
                                       "1_000", "", "NaN", "inf"]))
URL_NAMES = st.one_of(st.sampled_from([n for n in BAD_NAME_SAMPLES if n]), URL_TEXT, ABSENT_NAMES,
                      st.sampled_from(sorted(EXISTING | wire.RESERVED_NAMES)),
                      st.integers(32, 9_000).map(lambda n: "n" * n))  # past gevent's request line: its own 414
ASSETS = sorted(os.listdir(os.path.join(ROOT, "assets", "web")))
PAGE_PATHS = sorted({re.sub(r"<[^>]*>", "base.css", rule).lstrip("/") for _, rule in routes(PAGE)})
SEGMENTS = st.lists(st.one_of(URL_TEXT, st.sampled_from(["..", ".", "", "%", "%2e%2e", "static", "api"])),
                    min_size=1, max_size=4).map("/".join)
QUERY_KEYS = ["after", "before", "limit", "token", "v", "path", "window", "x"]
QUERIES = st.one_of(st.just(""), st.dictionaries(st.one_of(st.sampled_from(QUERY_KEYS), URL_TEXT),
                                                 st.one_of(NUMBERISH, URL_TEXT, st.sampled_from(["/", "/etc/passwd"])),
                                                 max_size=3).map(urllib.parse.urlencode),
                    URL_TEXT.map(lambda s: urllib.parse.quote(s, safe="=&")))
FIELDS = ["to", "body", "name", "reason", "answer", "purge", "model", "code", "kind", "id", "text"]
# The fields each POST route reads from its body: a body holds them most of the time, so the route gets past
# "is required" to the values' own checks.
ROUTE_FIELDS = {"/op-send": ("to", "body"), "/spawn": ("name",), "/deny/<approval_id>": ("reason",),
                "/answer-question/<question_id>": ("answer",), "/destroy/<name>": ("purge",), "/send": ("body",),
                "/api/model": ("model",), "/login/code": ("code",), "/api/loose-ends/cancel": ("kind", "id")}
LIKELY_VALUES = st.sampled_from(["manager", AGENT, "haiku", "sonnet", "question", "reminder", "1", "true"])
FIELD_VALUES = weighted((URL_TEXT, 2), (URL_NAMES, 1), (HOSTILE, 1), (st.integers(-2, 5), 1), (LIKELY_VALUES, 2))
FORM_VALUES = st.one_of(URL_TEXT, URL_NAMES, NUMBERISH, st.sampled_from(["manager", AGENT, "haiku", "reminder"]))
FIELD_NAMES = weighted((st.sampled_from(FIELDS), 4), (TEXT, 1))
ODD_TYPES = st.one_of(st.sampled_from(["text/plain", "application/octet-stream", "", "*/*", "application/json;;;",
                                       "multipart/form-data", "multipart/form-data;", "text/plain; charset"]),
                      HEADER_TEXT)
JSON_TYPES = st.sampled_from(["application/json", "application/json; charset=utf-8"])
METHODS_HTTP = ["GET", "POST", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS"]


@st.composite
def bodies(draw, rule):
    """(Content-Type or None, body or None): mostly a JSON or form body of the routes' own fields, sent as what it
    is; sometimes another type, random bytes, a broken multipart or JSON that is no object."""
    kind = draw(st.sampled_from(["none", "bytes", "json", "json", "json", "form", "form", "not-object", "multipart"]))
    odd = draw(ONE_IN[6]) == 0  # the body under another (or a malformed) Content-Type
    if kind == "none":
        return (draw(ODD_TYPES) if odd else None), None
    if kind == "bytes":
        return draw(st.one_of(st.none(), ODD_TYPES)), draw(st.binary(max_size=400))
    own = {name: draw(FIELD_VALUES) for name in ROUTE_FIELDS.get(rule, ()) if draw(ONE_IN[6])}
    if kind == "json":
        body = to_json(draw, dict(draw(st.dictionaries(FIELD_NAMES, FIELD_VALUES, max_size=3)), **own))
        return draw(ODD_TYPES if odd else JSON_TYPES), body
    if kind == "form":
        names = FIELD_NAMES.map(lambda k: k.encode("utf-8", "replace").decode())  # a URL carries no lone surrogate
        own = {name: draw(FORM_VALUES) for name in own}
        body = urllib.parse.urlencode(dict(draw(st.dictionaries(names, FORM_VALUES, max_size=3)), **own)).encode()
        # bottle reads any body that is not JSON or multipart as a form, a Content-Type or none
        return (draw(ODD_TYPES) if odd else draw(st.sampled_from(["application/x-www-form-urlencoded", None]))), body
    if kind == "multipart":
        field, value = draw(st.sampled_from(FIELDS)), draw(URL_TEXT).encode()
        body = (b"--xyz\r\nContent-Disposition: form-data; name=\"" + field.encode() + b"\"\r\n\r\n" + value
                + draw(st.sampled_from([b"\r\n--xyz--\r\n", b"", b"\r\n--xyz"])))
        return (draw(ODD_TYPES) if odd else "multipart/form-data; boundary=xyz"), body
    return "application/json", to_json(draw, draw(JSON_VALUES.filter(lambda v: not isinstance(v, dict))))


def param_values(name, kind, config):
    """Values for one URL parameter of a route, by its filter and its name."""
    if kind == "re":
        return st.one_of(st.sampled_from(config.split("|")), URL_TEXT)
    if kind == "path":
        return st.one_of(st.sampled_from(PAGE_PATHS + ASSETS + ["events/stream", "api/file"]), SEGMENTS)
    if name == "name":
        return URL_NAMES
    if name.endswith("_id") or name == "index":
        return NUMBERISH
    return URL_TEXT


PARAM = re.compile(r"<(\w+)(?::(\w*)(?::([^>]*))?)?>")  # bottle's <name:filter:config>


@st.composite
def http_requests(draw, method, rule):
    """One request aimed at a route: mostly its own method, its parameters filled and quoted, any query,
    Origin, content type and body."""
    method = draw(st.sampled_from([method] * 12 + METHODS_HTTP))

    def fill(match):
        name, kind, config = match.groups()
        value = draw(param_values(name, kind, config))
        return urllib.parse.quote(value, safe="/" if kind == "path" else "")

    path = PARAM.sub(fill, rule)
    query = draw(QUERIES)
    headers = {}
    origin = draw(st.sampled_from(["own"] * 5 + [None, "http://evil.example", "null", "own/", "localhost"]))
    if origin is not None:
        headers["Origin"] = origin
    if not draw(ONE_IN[6]):
        headers["Accept"] = "text/event-stream"
    if not draw(ONE_IN[8]):
        headers[draw(st.sampled_from(["If-None-Match", "Last-Event-ID", "Accept"]))] = draw(HEADER_TEXT)
    kind, body = draw(bodies(rule)) if method in ("POST", "PUT", "PATCH") or not draw(ONE_IN[10]) else (None, None)
    if method == "HEAD":
        body = None  # gevent's server refuses a HEAD with a body itself, a bare 400 before any app sees it
    if kind is not None:
        headers["Content-Type"] = kind
    return {"method": method, "path": path, "target": path + (f"?{query}" if query else ""), "headers": headers,
            "body": body}


def decoded_path(path):
    """PATH_INFO as bottle routes it: percent-decoded, then read as UTF-8 dropping what is not."""
    return urllib.parse.unquote_to_bytes(path).decode("utf-8", "ignore")


def matched(app, request):
    """The route a request reaches and its arguments, or None when the router refuses it."""
    return routed(app, request)[0]


def routed(app, request):
    """(route and arguments, None), or (None, the status of the router's refusal): web.app answers a
    404 as not_found and a 405 as bad_argument, a 400."""
    try:
        return app.router.match({"PATH_INFO": decoded_path(request["path"]), "REQUEST_METHOD": request["method"]}), None
    except bottle.HTTPError as e:
        return None, 404 if e.status_code == 404 else 400


def local_fields(request):
    """The request's fields as the dashboard reads them (web.body), worked out here."""
    body = request["body"] or b""
    environ = {"REQUEST_METHOD": request["method"], "CONTENT_TYPE": request["headers"].get("Content-Type") or "",
               "CONTENT_LENGTH": str(len(body)), "wsgi.input": io.BytesIO(body)}
    bottle.request.bind(environ)
    try:
        return web.body()
    except (wire.HiveError, bottle.HTTPError):  # a bad JSON body; a broken multipart one (bottle's own 400)
        return {}


def too_long(request):
    """A request line gevent's server refuses itself (a bare 414) before any app sees it."""
    return len(f"{request['method']} {request['target']} HTTP/1.1\r\n") >= MAX_REQUEST_LINE


def exchange(conn, request, headers):
    """One request on a fresh connection; an event stream is left unread (its status and headers say enough)."""
    try:
        conn.request(request["method"], request["target"], body=request["body"], headers=headers)
        response = conn.getresponse()
        kind = response.getheader("Content-Type") or ""
        data = b"" if "text/event-stream" in kind else response.read()
        return response.status, kind, data
    finally:
        conn.close()


def assert_http_error(status, kind, data, method):
    assert kind == "application/json", (status, kind, data[:300])
    if method == "HEAD":
        return  # no body to read
    answer = json.loads(data)
    assert_error_shape(answer)
    assert wire.ERROR_STATUS[answer["code"]] == status, (status, answer)
    return answer


def assert_http_answer(status, kind, data, method):
    """Never a 500; a 503 only as `unavailable`; every error the one shape; a 2xx JSON answer parses."""
    if status >= 400:
        answer = assert_http_error(status, kind, data, method)
        if status >= 500:
            assert status == 503 and (answer is None or answer["code"] == "unavailable"), (status, answer)
        return answer
    if kind.startswith("application/json") and method != "HEAD" and status != 304:
        json.loads(data)
    return None


def dashboard_request_is_harmless(request):
    """False for a request that, logged in and from the dashboard's own Origin, would change the hive."""
    found = matched(DASHBOARD, request)
    if found is None or found[0].method != "POST":
        return True  # refused by the router, or a GET: reads only
    route, args = found
    if route.rule.startswith("/logout"):
        return False  # it would end the session every request of the fuzz carries
    if route.rule == "/spawn":
        name = local_fields(request).get("name")
        try:
            wire.check_agent_name(name)
        except wire.HiveError:
            return True
        return False
    return args.get("name") not in EXISTING


def dashboard_host(h):
    return urllib.parse.urlsplit(h.url).netloc


def judge(h, logs, tally, request, headers, answered, expect):
    """Check one HTTP answer: the rules every route shares, then `expect(status, answer)`, the route's own."""
    status, kind, data = answered
    if too_long(request):
        assert status == 414, (status, data[:300])
        tally.add(status)
        return
    try:
        logs.assert_quiet()
        expect(status, assert_http_answer(status, kind, data, request["method"]))
    except AssertionError as e:
        raise AssertionError(f"{request['method']} {request['target'][:200]} ({headers}) answered {status} "
                             f"{data[:300]!r}: {e}") from None
    if tally.add(status) % CHECK_EVERY == 0:
        assert_serving(h, logs)


def fuzz_dashboard(h, method, rule, logged_in):
    cookie, key = h.cookie(), h.session()["X-Hive-Key"]
    host = dashboard_host(h)
    logs, tally = Logs(h), Tally()
    wrong_cookies = st.one_of(st.none(), st.just("hive_session=wrong"), st.just("hive_session="),
                              st.just(cookie + "x"), st.just(cookie.upper()), HEADER_TEXT)
    # beside another app's cookies, one of them a name Python's cookie parser refuses
    cookies = st.sampled_from([cookie, f"theme=dark; {cookie}", f"{cookie}; other=1", f"a<b=1; {cookie}"]) \
        if logged_in else wrong_cookies

    def one(pair):
        request, cookie_header = pair
        headers = dict(request["headers"])
        own = headers.get("Origin") == "own"
        if "Origin" in headers:
            headers["Origin"] = {"own": h.url, "own/": h.url + "/", "localhost": h.url.replace("127.0.0.1", "localhost")
                                 }.get(headers["Origin"], headers["Origin"])
        if cookie_header is not None:
            headers["Cookie"] = cookie_header
        headers.setdefault("X-Hive-Key", key)  # the session's key: without the cookie it opens nothing
        if logged_in and own:
            assume(dashboard_request_is_harmless(request))

        def expect(status, answer):
            found, refusal = routed(DASHBOARD, request)
            if found is None:
                assert status == refusal, (status, refusal)  # no route: the router answers before any guard
            elif not logged_in and found[0].rule != "/login":
                assert status == 401 and (answer is None or answer["code"] == "unauthorized"), (status, answer)
            elif logged_in and request["method"] not in ("GET", "HEAD") and not own:
                assert status == 403 and (answer is None or answer["code"] == "forbidden"), (status, answer)

        judge(h, logs, tally, request, headers,
              exchange(http.client.HTTPConnection(host, timeout=WAIT), request, headers), expect)

    fuzz(st.tuples(http_requests(method, rule), cookies), one, REQUESTS)
    assert_serving(h, logs)
    return tally


@pytest.mark.parametrize("logged_in", [True, False], ids=["cookie", "no-cookie"])
@pytest.mark.parametrize("method,rule", routes(DASHBOARD))
def test_dashboard_route(hive, method, rule, logged_in):
    fuzz_dashboard(hive, method, rule, logged_in).report(
        f"dashboard {method} {rule} requests ({'cookie' if logged_in else 'no cookie'})", REQUESTS)


def fuzz_page(h, method, rule, with_secret):
    with open(page_secret_path(h)) as f:
        secret = f.read().strip()
    path = page_socket(h)
    logs, tally, compactions = Logs(h), Tally(), [0]
    with open(os.path.join(os.path.dirname(h.sock(wire.MANAGER)), webui.SECRET_NAME)) as f:
        other = f.read().strip()  # the manager's page secret: not this page's
    secrets = st.just(secret) if with_secret else st.one_of(
        st.none(), st.just(""), st.just(secret + "x"), st.just(secret[:-1]), st.just(secret.upper()), st.just(other),
        HEADER_TEXT)  # (not " " + secret: HTTP strips the blanks around a header's value)

    def one(pair):
        request, given_secret = pair
        headers = {k: v for k, v in request["headers"].items() if k != "Origin"}  # the page has no Origin rule
        if given_secret is not None:
            headers[webui.SECRET_HEADER] = given_secret
        found, refusal = routed(PAGE, request)
        if with_secret and found is not None and found[0].rule == "/api/compact":
            compactions[0] += 1
            assume(compactions[0] <= COMPACTIONS)

        def expect(status, answer):
            if not with_secret:
                assert status == 403 and (answer is None or answer["code"] == "forbidden"), (status, answer)
            elif found is None:
                assert status == refusal, (status, refusal)

        judge(h, logs, tally, request, headers, exchange(UnixHTTPConnection(path, WAIT), request, headers), expect)

    fuzz(st.tuples(http_requests(method, rule), secrets), one, REQUESTS)
    assert_serving(h, logs)
    return tally


@pytest.mark.parametrize("with_secret", [True, False], ids=["secret", "no-secret"])
@pytest.mark.parametrize("method,rule", routes(PAGE))
def test_page_route(hive, method, rule, with_secret):
    fuzz_page(hive, method, rule, with_secret).report(
        f"{AGENT}'s page {method} {rule} requests ({'secret' if with_secret else 'no secret'})", REQUESTS)


# -- what the fuzz found: each of these was an `internal` answer, a 500 or a dead server --------------

BIG = str(2 ** 70)


@pytest.mark.parametrize("surface,frame,code", [
    # int() of an infinity (1e400 is valid JSON for one) raised OverflowError
    ("host", b'{"cmd":"inbox","limit":1e400}\n', "bad_argument"),
    ("host", b'{"cmd":"inbox","limit":-Infinity}\n', "bad_argument"),
    ("agent", b'{"cmd":"recv","wait_seconds":-Infinity}\n', "ok"),  # a clamp: -inf waits 0 s
    ("agent", b'{"cmd":"recent","limit":Infinity}\n', "bad_argument"),
    # ids past SQLite's integers failed in the query
    ("host", b'{"cmd":"approve","id":' + BIG.encode() + b"}\n", "bad_argument"),
    ("host", b'{"cmd":"cancel_question","id":9223372036854775808}\n', "bad_argument"),
    ("manager", b'{"cmd":"cancel_loose_end","kind":"reminder","id":1e30}\n', "bad_argument"),
    # a lone surrogate is valid JSON but no text: SQLite (and UTF-8) refused it
    ("host", b'{"cmd":"send","to":"manager","body":"\\ud800"}\n', "bad_argument"),
    ("agent", b'{"cmd":"set_status","text":"\\udfff"}\n', "bad_argument"),
    ("manager", b'{"cmd":"ask","question":"a\\ud83d"}\n', "bad_argument"),
])
def test_frames_the_fuzz_found(hive, surface, frame, code):
    answer = hive.raw(SOCKETS[surface](hive), frame)
    if code == "ok":
        assert answer["ok"] is True, answer
    else:
        assert_error_shape(answer)
        assert answer["code"] == code, answer


def test_wire_encode_escapes_a_lone_surrogate():
    """A request or answer holding one is still sent, as one UTF-8 line, instead of raising."""
    line = wire.encode({"cmd": "send", "body": "é\ud800"})
    assert line.endswith(b"\n") and line.decode() == '{"cmd":"send","body":"\\u00e9\\ud800"}\n'
    assert wire.decode(line)["body"] == "é\ud800"
    assert wire.encode({"body": "é"}) == '{"body":"é"}\n'.encode()  # the usual line is unchanged


def test_mcp_lines_the_fuzz_found(sockdir):
    core = FakeCore(sockdir / "hive.sock")
    client = McpClient(core.path)
    try:
        client.initialize()
        # an id with a lone surrogate could not be written back: the server died on it
        client.send_raw(b'{"jsonrpc":"2.0","id":"\\ud800","method":"nope"}\n')
        reply = client.read()
        assert reply["id"] == "\ud800" and reply["error"]["code"] == mcp.METHOD_NOT_FOUND
        # arguments with one could not be encoded for the core (an internal error once): now the core's own
        # check refuses them before they are sent, with its sentence
        reply = client.call("send", {"to": "manager", "body": "\udfff"})
        assert reply["error"]["code"] == mcp.INVALID_PARAMS and "lone UTF-16 surrogate" in reply["error"]["message"]
        assert core.requests == []
        assert client.request("ping")["result"] == {}
    finally:
        client.kill()
        core.stop()


def http_call(h, method, target, headers=None, body=None, cookie=True):
    headers = dict(headers or {}, Origin=h.url)
    if cookie:
        headers.setdefault("Cookie", h.cookie())
        headers.setdefault("X-Hive-Key", h.session()["X-Hive-Key"])
    request = {"method": method, "target": target, "body": body}
    return exchange(http.client.HTTPConnection(dashboard_host(h), timeout=WAIT), request, headers)


def test_dashboard_requests_the_fuzz_found(hive):
    # a Cookie header Python's parser refuses (a name with "<") failed every route with a 500
    status, _, data = http_call(hive, "GET", "/api/state", {"Cookie": "<="})
    assert status == 401 and json.loads(data)["code"] == "unauthorized"
    status, _, data = http_call(hive, "GET", "/api/state", {"Cookie": f"a<b=1; {hive.cookie()}"})
    assert status == 200 and json.loads(data)["containers"]  # such a cookie beside ours: still logged in
    # ids past SQLite's integers failed in the query
    for method, target in (("POST", f"/approve/{BIG}"), ("POST", f"/deny/{BIG}"), ("GET", f"/approval/{BIG}/diff"),
                           ("GET", f"/file-ref/{BIG}/0"), ("GET", f"/dashboard/history?after={BIG}")):
        status, kind, data = http_call(hive, method, target)
        assert status == 400 and "at most" in assert_http_error(status, kind, data, method)["error"], target
    # a Content-Type parameter without "=" failed bottle's form parser
    status, kind, data = http_call(hive, "POST", "/op-send", {"Content-Type": "multipart/form-data;"}, b"to=x")
    assert status == 400 and assert_http_error(status, kind, data, "POST")["code"] == "bad_frame"
    # a lone surrogate in a body failed in SQLite
    body = b'{"to":"manager","body":"\\ud800"}'
    status, kind, data = http_call(hive, "POST", "/op-send", {"Content-Type": "application/json"}, body)
    assert status == 400 and "surrogate" in assert_http_error(status, kind, data, "POST")["error"]


def page_call(h, method, target, headers=None, body=None):
    with open(page_secret_path(h)) as f:
        headers = dict(headers or {}, **{webui.SECRET_HEADER: f.read().strip()})
    request = {"method": method, "target": target, "body": body}
    return exchange(UnixHTTPConnection(page_socket(h), WAIT), request, headers)


def test_page_requests_the_fuzz_found(hive):
    status, kind, data = page_call(hive, "GET", f"/events/history?after={BIG}")
    assert status == 400 and "at most" in assert_http_error(status, kind, data, "GET")["error"]
    status, kind, data = page_call(hive, "POST", "/send", {"Content-Type": "text/plain; charset"}, b"body=x")
    assert status == 400 and assert_http_error(status, kind, data, "POST")["code"] == "bad_frame"
    # a lone surrogate could not be encoded for the core: a 500 instead of the core's refusal
    json_type = {"Content-Type": "application/json"}
    status, kind, data = page_call(hive, "POST", "/api/loose-ends/cancel", json_type, b'{"kind":"\\ud800","id":1}')
    assert status == 400 and "must be one of" in assert_http_error(status, kind, data, "POST")["error"]
    status, kind, data = page_call(hive, "POST", "/send", json_type, b'{"body":"\\ud800"}')
    assert status == 400 and "surrogate" in assert_http_error(status, kind, data, "POST")["error"]
    # a form's id of digits int() cannot read: past its 4300-digit limit, or a superscript
    for item in ("9" * 5_000, "²"):
        form = urllib.parse.urlencode({"kind": "reminder", "id": item}).encode()
        status, kind, data = page_call(hive, "POST", "/api/loose-ends/cancel", {}, form)
        assert status == 400 and "whole number" in assert_http_error(status, kind, data, "POST")["error"], item
