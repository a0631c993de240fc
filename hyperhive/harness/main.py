"""hive-ag3nt / hive-m1nd, the harness: one agent's turn loop and live event bus.

Usage:
  hyperhive agent serve [--socket PATH] [--state-dir DIR] [--name NAME] [--claude PATH]
  hyperhive manager serve [--socket PATH] [--state-dir DIR] [--claude PATH]
  hyperhive (agent | manager) serve -h | --help

Options:
  --socket PATH     this agent's socket on the core (env HIVE_SOCKET)
  --state-dir DIR   the agent's own durable directory, claude's cwd (env HIVE_STATE_DIR)
  --name NAME       the agent's name, for its prompt and logs (env HIVE_NAME)
  --claude PATH     the claude binary (env HIVE_CLAUDE_BIN, else claude)

Other environment: HIVE_PAUSE_FILE (the core's pause marker for this agent),
HIVE_EXTRA_MCP (extra MCP servers JSON, else /etc/hyperhive/extra-mcp.json),
HIVE_SHARED_DIR (the hive's shared dir, which the page may preview files from),
HIVE_LOGIN_RECHECK (seconds between checks of claude's login while the loop is
parked on it, default 30), HIVE_CLAUDE_MODE (session: one long-lived claude,
the default; spawn: one claude per turn), HIVE_HANG_SECONDS (the hang
watchdog, default 300), HIVE_RECYCLE_TURNS, HIVE_RECYCLE_RSS_MB and
HIVE_RECYCLE_IDLE (when a session's claude is replaced between turns: after
200 turns, above 2048 MiB resident, after 21600 s idle), HIVE_PERMISSIONS
(the agent's tool permission policy, JSON).
"""

import logging
import os
import signal
import sys
import time

import gevent
import gevent.event
import gevent.lock
from docopt import docopt

from hyperhive import permissions, wire
from hyperhive.harness import engine as engines
from hyperhive.harness import login, turnloop, webui
from hyperhive.harness.bus import Bus
from hyperhive.harness.claude import Invocation, Outcome, load_extra_mcp
from hyperhive.harness.permits import Permits
from hyperhive.harness.session import Session
from hyperhive.schema import open_agent

log = logging.getLogger("harness")
EVENTS_DB = "hyperhive-events.sqlite"
EXTRA_MCP_DEFAULT = "/etc/hyperhive/extra-mcp.json"
PRUNE_SECONDS = 3600.0
TICK_SECONDS = 2.0  # how often the engine looks after its process between turns


class AgentRuntime:
    """One agent's harness at run time: its event bus, login, turn loop, page and pruner, built from the
    command line; `serve()` runs them until SIGTERM, finishing a running turn first."""

    def __init__(self, role, name, socket, state_dir, claude, pause_file=None, extra_mcp_path=None,
                 shared_dir=None, policy_path=None, mode="session"):
        self.role, self.name, self.socket = role, name, socket
        self.state_dir, self.shared_dir = state_dir, shared_dir  # what the page may preview files from
        open_agent(os.path.join(state_dir, EVENTS_DB))
        self.bus = Bus(state_dir)
        if not os.path.exists(os.path.join(state_dir, wire.MODEL_FILE)):
            self.bus.set_model(self.bus.model())  # persist the default so the core reports it
        policy = permissions.load(policy_path) if policy_path else permissions.Policy.parse(None)
        self.invocation = Invocation(claude, role, name, state_dir, socket, load_extra_mcp(extra_mcp_path),
                                     policy=policy, mode=mode)
        self.client = turnloop.CoreClient(socket, sleep=gevent.sleep, notify=self.bus.note)
        env = self.invocation.env()
        self.login = login.Login(claude, env, state_dir, self.client, self.bus, sleep=gevent.sleep,
                                 reprobe=login_recheck(), state_dir=state_dir)
        # claude keeps its transcripts under its HOME, named after its working dir (the state dir)
        self.session = Session(state_dir, home=env.get("HOME") or state_dir, cwd=state_dir)
        self.permits = Permits(policy, self.invocation.default_grants(), self.client, self.bus)
        self.engine = self._engine(mode)
        if mode == "spawn" and policy.ask:
            self.bus.note(f"claude runs once per turn here (spawn mode), where a tool call cannot wait for the "
                          f"operator: the policy's ask rules ({', '.join(policy.ask)}) deny instead")
        self.loop = turnloop.TurnLoop(self.client, self.bus, self.run_claude, self.compact, self.session,
                                      paused=turnloop.pause_marker(pause_file), sleep=gevent.sleep,
                                      turn_lock=gevent.lock.Semaphore(), login=self.login)

    def _engine(self, mode):
        limits = engines.Limits.from_env()
        common = dict(limits=limits, tell=self.tell_operator, on_session=self.session.save)
        if mode == "spawn":
            return engines.SpawnEngine(self.invocation, self.bus, self.bus.model, **common)
        return engines.SessionEngine(self.invocation, self.bus, self.bus.model, self.session, permit=self.permits,
                                     **common)

    @property
    def current(self):
        """The running turn (what the operator's cancel reaches), or None."""
        return self.engine.current

    def tell_operator(self, text):
        self.client.try_call("send", to=wire.OPERATOR, body=text)

    def run_claude(self, prompt, resume):
        return self.engine.run(prompt, resume)

    def compact(self):
        resume = self.loop.resume_id()
        if resume is None:
            return Outcome("failed", "compaction failed: there is no conversation to compact yet")
        return self.run_claude("/compact", resume)

    def serve(self):
        stopping = gevent.event.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            gevent.signal_handler(sig, stopping.set)
        worker = gevent.spawn(self.loop.run)
        pruner = gevent.spawn(self._prune_loop, stopping)
        ticker = gevent.spawn(self._tick_loop, stopping)
        page = self._start_page()
        log.info("%s %s serving (state %s)", self.role, self.name, self.invocation.state_dir)
        gevent.wait([stopping, worker], count=1)
        if worker.dead and not stopping.is_set():
            worker.get()  # the loop died on its own: raise its error
        self.loop.stopping = True
        if self.loop.in_turn:
            log.info("stopping after the running turn ends")
            worker.join()
        worker.kill()
        pruner.kill()
        ticker.kill()
        self.engine.close()
        self.login.close()
        if page is not None:
            page.stop()
        log.info("stopped")

    def _start_page(self):
        """The agent's web page; without it the agent still works, so a failure is logged, not fatal."""
        try:
            return webui.start(self)
        except (wire.HiveError, OSError) as e:
            log.error("the agent's web page could not start: %s; the turn loop runs without it", e)
            return None

    def _tick_loop(self, stopping):
        paused = self.loop.paused
        while not stopping.wait(TICK_SECONDS):
            try:
                self.engine.tick(time.monotonic(), lambda: self.login.logged_in is True and not paused()
                                 and not self.loop.stopping)
            except Exception:
                log.exception("looking after claude's process failed")

    def _prune_loop(self, stopping):
        while not stopping.wait(PRUNE_SECONDS):
            try:
                self.bus.prune()
            except Exception:
                log.exception("pruning the event history failed")


def login_recheck():
    raw = os.environ.get("HIVE_LOGIN_RECHECK")
    try:
        return max(1.0, float(raw)) if raw else login.REPROBE_SECONDS
    except ValueError:
        log.error("HIVE_LOGIN_RECHECK=%r is not a number of seconds; using %gs", raw, login.REPROBE_SECONDS)
        return login.REPROBE_SECONDS


def main(argv):
    args = docopt(__doc__, argv=argv)
    role = "manager" if args["manager"] else "agent"
    me = "hive-m1nd" if role == "manager" else "hive-ag3nt"
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    socket = args["--socket"] or os.environ.get("HIVE_SOCKET")
    state_dir = args["--state-dir"] or os.environ.get("HIVE_STATE_DIR")
    name = wire.MANAGER if role == "manager" else (args["--name"] or os.environ.get("HIVE_NAME"))
    claude = args["--claude"] or os.environ.get("HIVE_CLAUDE_BIN") or "claude"
    missing = [what for what, value in (("--socket or HIVE_SOCKET", socket),
                                        ("--state-dir or HIVE_STATE_DIR", state_dir),
                                        ("--name or HIVE_NAME", name)) if not value]
    if missing:
        print(f"{me}: missing {', '.join(missing)}", file=sys.stderr)
        return 2
    try:
        wire.check_name(name)
        os.makedirs(state_dir, exist_ok=True)
        harness = AgentRuntime(role, name, socket, state_dir, claude,
                               pause_file=os.environ.get("HIVE_PAUSE_FILE"),
                               shared_dir=os.environ.get("HIVE_SHARED_DIR") or None,
                               extra_mcp_path=os.environ.get("HIVE_EXTRA_MCP") or EXTRA_MCP_DEFAULT,
                               policy_path=os.environ.get(permissions.ENV) or None, mode=engines.mode_from_env())
    except (wire.HiveError, OSError) as e:
        print(f"{me}: {e}", file=sys.stderr)
        return 1
    harness.serve()
    return 0
