"""hive-c0re, the core daemon: owns the database, the sockets and every agent's life.

Usage:
  hyperhive serve [--state-dir DIR] [--run-dir DIR] [--backend NAME] [--claude PATH]
                  [--container-source DIR] [--pass-env NAME]... [--dashboard-port PORT]
                  [--listen ADDR] [--log-level LEVEL] [--domain NAME] [--forge-url URL]
                  [--forge-credential-file PATH] [--claude-mode MODE] [--hang-seconds N]
                  [--recycle-turns N] [--recycle-rss-mb N] [--recycle-idle N]
                  [--database URL] [--node NAME]
  hyperhive serve -h | --help

Options:
  --state-dir DIR     where the hive keeps its database, agents and config repos
                      (env HIVE_STATE_DIR; as root /var/lib/hyperhive, else
                      ~/.local/state/hyperhive)
  --run-dir DIR       where the sockets live (default: <state-dir>/run)
  --backend NAME      agent containers: auto, nixos, bwrap, process [default: auto]
  --claude PATH       the claude binary the harnesses run (env HIVE_CLAUDE_BIN, else claude)
  --container-source DIR  what the nixos backend builds containers from:
                      hyperhive.pyz and nix/templates/ (default: the directory
                      hyperhive.pyz runs from)
  --pass-env NAME     forward this environment variable to every harness (repeatable)
  --dashboard-port PORT  the dashboard's TCP port; 0 picks a free one, off serves
                      none [default: 7000]
  --listen ADDR       the address the dashboard listens on [default: 127.0.0.1]
  --log-level LEVEL   debug, info, warning or error [default: info]
  --domain NAME       the hive's public domain name, as `urls` answers it
  --forge-url URL     mirror each agent's applied config repo to <URL>/<name>.git
                      (http or https), at start and after every change to it
  --forge-credential-file PATH  the file holding user:token for the forge, mode
                      0600 (read at each push, never stored in a repo)
  --claude-mode MODE  session: one long-lived claude per agent, turns written to
                      it; spawn: one claude per turn, for a CLI without
                      stream-json input [default: session]
  --hang-seconds N    a turn with no output from claude for N seconds is ended
                      as hung and its messages come again [default: 300]
  --recycle-turns N   a session's claude is replaced (resuming its conversation)
                      between turns after N turns [default: 200]
  --recycle-rss-mb N  ... or above N MiB resident [default: 2048]
  --recycle-idle N    ... or after N seconds idle [default: 21600]
  --database URL      the hive's database: sqlite:///PATH, or postgresql://…
                      shared by several cores (a password belongs in
                      PGPASSFILE, never the URL)
                      (default: sqlite:///<state-dir>/hive.db)
  --node NAME         this core's name in a hive of several; it runs only its
                      own agents (default: the name it ran under before, kept
                      in the state dir, else the host's name)
"""

import errno
import fcntl
import logging
import os
import signal
import socket
import stat
import sys
import time

import gevent
from docopt import docopt
from gevent.event import Event

from hyperhive import binaries, events, jsonline, resources, settings, wire
from hyperhive.core import containers, notices, planted, renderer
from hyperhive.core.approvals import Approvals
from hyperhive.core.auth import Auth
from hyperhive.core.broker import Broker
from hyperhive.core.forge import Forge
from hyperhive.core.gitrepos import Repos
from hyperhive.core.helperevents import HelperEvents
from hyperhive.core.layout import HarnessCommand, Layout
from hyperhive.core.lifecycle import Lifecycle
from hyperhive.core.nodes import HEARTBEAT_SECONDS, Nodes, default_name, keep_name
from hyperhive.core.notices import Notices
from hyperhive.core.questions import Questions
from hyperhive.core.references import References
from hyperhive.core.reminders import Reminders
from hyperhive.core.surfaces import Surfaces
from hyperhive.core.sweeps import Sweeper
from hyperhive.core.views import Views
from hyperhive.fanout import Fanout
from hyperhive.schema import checkpoint, core_db, database_path, is_postgres, open_core

log = logging.getLogger("hive-c0re")
SWEEP_SECONDS = 3600.0
CHECKPOINT_SECONDS = 1.0
QUESTION_TTL_SECONDS = 5.0  # how often the ttl watchdog closes questions nobody answered in time
REMINDER_SECONDS = 5.0  # how often due reminders are delivered
# Below this many open descriptors the core warns at start: 32 per agent socket, the dashboard's
# waiting connections and the operator's, the database. nix/modules/hive-c0re.nix grants 65536.
MIN_DESCRIPTORS = 4096


# Connections one agent's (or the manager's) socket serves at once. Its harness needs a few
# (the turn loop's one recv, the MCP server's calls, status reports); past the cap a
# connection is refused with a sentence, so an agent opening thousands holds 32 descriptors.
AGENT_SOCKET_CONNECTIONS = 32


class Sockets:
    """The per-agent socket servers, opened and closed as agents come and go.

    An agent's socket directory is bound read-write into its sandbox: what the
    core keeps there (the directory itself, the socket, the page secret) is
    checked at every open and cleared when it is not the core's (`planted`),
    so one agent's plant fails at worst that agent's start, with a sentence."""

    def __init__(self, layout, dispatcher):
        # dispatcher(surface, name) -> the handler of one agent's socket, asked as each socket opens
        self.layout, self.dispatcher = layout, dispatcher
        self.servers = {}
        self.bound = {}  # name -> (st_dev, st_ino) of the socket file this core bound

    def open(self, name, role):
        directory = os.path.dirname(self.layout.socket(name))
        try:
            self._open(name, role, directory)
        except OSError as e:
            where = f" ({e.filename})" if e.filename else ""
            raise wire.HiveError(f"could not set up {name}'s socket directory {directory}: {e.strerror or e}"
                                 f"{where}; the core clears what it keeps there at every start, so start "
                                 f"{name} again, and if this repeats move the directory away", "unavailable") \
                from None

    def _open(self, name, role, directory):
        path = self.layout.socket(name)
        replaced = planted.own_dir(directory, 0o750)
        if replaced:
            log.warning("%s: %s", name, replaced)
        found = planted.lstat_in(directory, os.path.basename(path))
        server = self.servers.get(name)
        ours = (server is not None and found is not None and stat.S_ISSOCK(found.st_mode)
                and (found.st_dev, found.st_ino) == self.bound.get(name))
        if not ours:
            # The last run's socket, or whatever the agent put in its place: the path is the core's.
            cleared = planted.clear(directory, os.path.basename(path))
            if cleared:
                stale = server is None and found is not None and stat.S_ISSOCK(found.st_mode)  # the last run's
                (log.info if stale else log.warning)("%s: %s; its socket is bound anew", name, cleared)
            self.close(name)
        # the agent's page secret lives beside its socket, before its harness can look for it
        Auth.agent_secret(directory)
        if ours:
            return
        surface = "manager" if role == "manager" else "agent"
        server = jsonline.Server(path, self.dispatcher(surface, name), mode=0o660, name=f"{name}.sock",
                                 max_connections=AGENT_SOCKET_CONNECTIONS)
        found = os.lstat(path)
        self.bound[name] = (found.st_dev, found.st_ino)
        self.servers[name] = server.start()

    def close(self, name):
        server = self.servers.pop(name, None)
        self.bound.pop(name, None)
        if server is not None:
            try:
                server.stop()
            except OSError as e:  # it stopped serving; what now lies at its path is the agent's
                log.warning("%s: the socket server stopped, but its path was not removed: %s", name, e)

    def close_all(self):
        for name in list(self.servers):
            self.close(name)


def raise_descriptor_limit():
    """Lift the soft limit on open descriptors to the hard one: every agent's connections, the
    dashboard's and the database's come out of it, and systemd's soft default is 1024."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as e:
            log.warning("cannot raise the open-descriptor limit from %d to %s: %s", soft, hard, e)
            return soft
        log.info("raised the open-descriptor limit from %d to %d", soft, hard)
        soft = hard
    if soft != resource.RLIM_INFINITY and soft < MIN_DESCRIPTORS:
        log.warning("the core may open only %d descriptors (its hard limit); a busy hive needs more: raise "
                    "it (LimitNOFILE=65536 in its systemd unit, as the NixOS module sets)", soft)
    return soft


def lock_state_dir(layout):
    """Hold an exclusive lock on the state dir for the daemon's life, or refuse."""
    fd = os.open(layout.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EAGAIN, errno.EACCES):
            raise
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise wire.HiveError(f"another hive-c0re (pid {holder}) is already serving {layout.state_dir}; "
                             "stop it first or pick another --state-dir", "conflict") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def every(seconds, step, stopping):
    """Run step every `seconds` until stopping is set; a failing step is logged, not fatal."""

    def loop():
        while not stopping.wait(seconds):
            try:
                step()
            except Exception:
                log.exception("%s failed; trying again in %gs", getattr(step, "__name__", step), seconds)

    return gevent.spawn(loop)


class Core:
    """The daemon's parts wired together: `start()` serves, `stop()` winds everything down."""

    def __init__(self, layout, backend, harness, dashboard=("127.0.0.1", 7000), clock=time.time, forge=(None, None),
                 domain=None, node=None, database=None):
        # Each part is built once, from parts built before it (constructor arguments only). The one
        # edge the other way: an agent's socket, opened by lifecycle, hands its requests to the
        # surfaces built last; `Sockets` asks this core for them when a socket opens, which no
        # part does before `start()`. Likewise the repos tell the forge mirror, built after them from them,
        # of every change to an applied repo's refs, which none makes before `start()`; and the lifecycle
        # tells the approvals, built after it, of a harness it takes down, which none does before `start()`.
        self.layout = layout
        self.domain = domain
        self.dashboard_at = dashboard  # (address, port), or None for no dashboard
        self.url = None  # the dashboard's, once it serves
        self.stopping = Event()
        # a hive of several cores hears the others through PostgreSQL; on sqlite this core is the hive
        if is_postgres() and database is None:
            database = core_db.obj.url
        self.notices = Notices(database if is_postgres() else None)
        if is_postgres():
            from hyperhive.core.eventlog import EventLog

            self.hub = EventLog(events.DASHBOARD, self.notices, database, shown=renderer.event_shown)
        else:
            self.hub = Fanout(events.DASHBOARD, shown=renderer.event_shown)
        self.nodes = Nodes(node or default_name(layout.state_dir), self.notices, clock=clock, url=lambda: self.url,
                           state_dir=layout.state_dir)
        self.references = References(layout, backend)
        self.broker = Broker(self.hub, refs_of=self.references.file_refs, clock=clock)
        self.notices.on(notices.MESSAGE, self.broker.wake)
        self.notices.caught_up(self.broker.wake_all)
        self.auth = Auth(clock=clock)
        self.helper_events = HelperEvents(self.broker, clock=clock)
        # the manager's sandbox writes the proposed repos as its own uid, when the backend gives it one
        self.repos = Repos(layout.config_dir, proposed_owner=backend.ids(wire.MANAGER),
                           refs_changed=lambda name: self.forge.changed(name))
        self.forge = Forge(self.repos, *forge, clock=clock)  # (url, credential file)
        self.sockets = Sockets(layout, self.dispatcher)
        self.lifecycle = Lifecycle(layout, backend, self.broker, self.hub, harness, self.sockets, self.repos,
                                   clock=clock, forge=self.forge,
                                   turn_over=lambda name, why: self.approvals.turn_over(name, why))
        self.lifecycle.node = self.nodes.name
        self.nodes.hub = self.hub
        self.lifecycle.nodes_rows = self.nodes.rows
        self.lifecycle.registry_changed = lambda name: self.notices.tell(notices.AGENTS, name)
        self.notices.on(notices.AGENTS, self.lifecycle.forget_names)
        self.approvals = Approvals(self.repos, self.lifecycle, self.broker, self.hub, clock=clock, node=self.nodes.name)
        self.questions = Questions(self.broker, self.hub, self.lifecycle, clock=clock)
        self.reminders = Reminders(self.broker, self.lifecycle, self.references, clock=clock)
        self.sweeper = Sweeper(clock=clock)
        self.surfaces = Surfaces(self.broker, self.lifecycle, self.hub, self.approvals, self.questions, self.reminders,
                                 self.auth, self.helper_events, urls=self.urls, login_url=self.login_url, clock=clock,
                                 nodes=self.nodes)
        self.nodes.dispatcher = self.surfaces.dispatcher
        self.views = Views(self.lifecycle, self.broker, self.approvals, self.questions, self.repos, self.references)
        self.host = None
        self.loops = []
        self.dashboard = self.web = None

    def dispatcher(self, surface, name):
        return self.surfaces.dispatcher(surface, name)

    def urls(self):
        """What the `urls` verb answers: the dashboard's URL once it serves, the forge's and the domain (null
        where not configured)."""
        return {"domain": self.domain, "home": self.url, "forge": self.forge.url}

    def login_url(self):
        """A one-time URL that logs a browser in to the dashboard."""
        if self.url is None:
            raise wire.HiveError("this core serves no dashboard (it was started with --dashboard-port off)",
                                 "unavailable")
        return f"{self.url}/login?token={self.auth.mint()}"

    def make_dashboard(self):
        from hyperhive.core.dashboard import Dashboard

        return Dashboard(self.views, self.hub, self.surfaces.dispatcher("host", wire.OPERATOR), self.auth)

    def start(self):
        self.host = jsonline.Server(self.layout.host_socket, self.surfaces.dispatcher("host", wire.OPERATOR),
                                    mode=0o660, name="host.sock").start()
        if self.dashboard_at is not None:
            self.serve_dashboard(*self.dashboard_at)
        self.nodes.join()
        self.notices.start()
        self.approvals.sweep_unfinished()
        self.lifecycle.boot()
        # nixos asks `nixos-container status` per agent: it watches every 10 s
        self.loops = [every(self.lifecycle.backend.watch_seconds, self.lifecycle.watch.step, self.stopping),
                      every(SWEEP_SECONDS, self.sweeper.step, self.stopping),
                      every(SWEEP_SECONDS, self.auth.sweep, self.stopping),
                      every(HEARTBEAT_SECONDS, self.nodes.beat, self.stopping),
                      every(SWEEP_SECONDS, self.nodes.sweep, self.stopping),
                      every(QUESTION_TTL_SECONDS, self.questions.expire_step, self.stopping),
                      every(REMINDER_SECONDS, self.reminders.step, self.stopping),
                      every(REMINDER_SECONDS, self.helper_events.step, self.stopping)]
        if is_postgres():
            self.loops.append(every(SWEEP_SECONDS, self.hub.sweep, self.stopping))
        else:
            self.loops.append(every(CHECKPOINT_SECONDS, self.checkpoint, self.stopping))
        if self.forge.url is not None:
            self.loops.append(gevent.spawn(self.forge.run, self.stopping))
        log.info("serving %s as node %s (backend %s, sockets in %s)", self.layout.state_dir, self.nodes.name,
                 self.lifecycle.backend.name, self.layout.run_dir)
        if self.forge.url is not None:
            log.info("mirroring every applied config repo to %s/<name>.git", self.forge.url)

    def serve_dashboard(self, address, port):
        from hyperhive import web

        self.dashboard = self.make_dashboard()
        try:
            # a request the guard let through carried a live session: its connection is the operator's
            self.web = web.server((address, port), self.dashboard.app,
                                  trusted=lambda environ: environ.get("hive.session") is not None,
                                  log=None, error_log=logging.getLogger("hive-c0re.http"))
            self.web.start()
        except OSError as e:
            raise wire.HiveError(f"the dashboard cannot listen on {address}:{port}: {e.strerror or e}; "
                                 "pick another --dashboard-port or --listen", "unavailable") from None
        host = address if address not in ("0.0.0.0", "::", "") else socket.getfqdn()
        self.url = f"http://{'[' + host + ']' if ':' in host else host}:{self.web.server_port}"
        log.info("dashboard on %s (`hyperhive login-url` prints a link that logs a browser in)", self.url)

    def checkpoint(self):
        """Fold the WAL into the db file in a worker thread, off every request's path."""
        gevent.get_hub().threadpool.apply(checkpoint, (self.layout.db_path,))

    def stop(self):
        log.info("shutting down")
        self.stopping.set()
        if self.host is not None:
            self.host.stop()
        if self.web is not None:
            self.web.stop(timeout=1)
        self.lifecycle.shutdown()
        self.sockets.close_all()
        gevent.killall(self.loops)
        self.notices.stop()
        if is_postgres():
            if not self.hub.flush(timeout=5):
                log.warning("the last dashboard events did not reach the hive's log within 5 s; the pages miss them")
            self.hub.close()


def engine_env(args):
    """What the harnesses are told of serve's engine options, checked here so a typo fails at start."""
    mode = args["--claude-mode"]
    if mode not in wire.CLAUDE_MODES:
        raise wire.HiveError(f"--claude-mode must be one of {', '.join(wire.CLAUDE_MODES)}, got {mode!r}")
    env = {wire.CLAUDE_MODE_ENV: mode}
    for _, key, option, least, _ in wire.ENGINE_LIMITS:
        env[key] = str(wire.whole_number(args[option], option, least))
    return env


def dashboard_address(listen, port):
    if port == "off":
        return None
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not 0 <= number <= 65535:
        raise wire.HiveError(f"--dashboard-port must be a port number (0 for any free one) or off, got {port!r}")
    return listen, number


def main(argv, clock=time.time, started=None):
    """`clock` (unix seconds) is every timer's now; `started(core)` runs once it serves (tests step it)."""
    args = docopt(__doc__, argv=argv)
    logging.basicConfig(level=args["--log-level"].upper(), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("sh").setLevel(logging.WARNING)  # it logs every command it starts
    raise_descriptor_limit()
    layout = Layout(args["--state-dir"] or settings.default_state_dir(), args["--run-dir"])
    try:
        layout.makedirs()
        lock = lock_state_dir(layout)
        backend = containers.pick(args["--backend"], layout.state_dir, args["--container-source"])
        claude = args["--claude"] or os.environ.get("HIVE_CLAUDE_BIN") or "claude"
        missing = binaries.locate_claude(claude, os.environ) if not backend.own_claude else None
        if missing:  # nixos containers bring their own claude; elsewhere the harnesses run this one
            log.warning("%s: every agent's turns wait until it is there", missing)
        harness = HarnessCommand(resources.entry(), claude=claude, pass_env=args["--pass-env"],
                                 engine=engine_env(args))
        dashboard = dashboard_address(args["--listen"], args["--dashboard-port"])
        database = args["--database"] or f"sqlite://{os.path.abspath(layout.db_path)}"
        node = wire.check_name(args["--node"] or default_name(layout.state_dir), "--node")
        keep_name(layout.state_dir, node)
        open_core(database, background_checkpoint=True)
        if database_path(database) not in (None, os.path.abspath(layout.db_path)):
            layout.db_path = database_path(database)  # what the checkpoint folds
        core = Core(layout, backend, harness, dashboard, clock=clock, domain=args["--domain"],
                    forge=(args["--forge-url"], args["--forge-credential-file"]), node=node, database=database)
        # Handlers only set the flag, and go in before anything serves: the
        # host socket answers while boot is still starting agents.
        for sig in (signal.SIGTERM, signal.SIGINT):
            gevent.signal_handler(sig, core.stopping.set)
        core.start()
        if started is not None:
            started(core)
    except wire.HiveError as e:
        print(f"hive-c0re: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"hive-c0re: cannot use {layout.state_dir}: {e}", file=sys.stderr)
        return 1
    core.stopping.wait()
    core.stop()
    os.close(lock)
    log.info("stopped")
    return 0
