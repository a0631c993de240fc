"""Agents' lives: spawn, start, stop, restart, rebuild, kill, destroy, pause, and their status rows.

Owns the on-disk layout of every agent, the `agent` table, the transient
state of an agent mid-operation (one operation per agent at a time), the
config each start reads from the agent's applied repo (hive.json), and the
watch that notices a harness that died on its own and starts it again with
backoff. Container calls go through the backend handed in, git through
`repos`, sockets through the `sockets` seam.
"""

import json
import logging
import os
import re
import signal
import stat
import sys
import time

import gevent
from gevent.lock import RLock

from hyperhive import files, states, wire
from hyperhive.core import aftermath, planted, reminders, trees
from hyperhive.core.containers import Launch
from hyperhive.schema import Agent, core_db, found

log = logging.getLogger(__name__)
MODEL_FILE = wire.MODEL_FILE
PRONOUNS_ENV = wire.PRONOUNS_ENV
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# A harness that died on its own is started again: 2 s after its first
# death, doubling per death in a row up to 5 min, so a hive never sits with
# messages stalled behind a dead harness and a harness that cannot live
# costs a start every few minutes, not a loop. One that then runs this long
# has its streak forgotten: its next death is news again.
RESTART_BACKOFF = (2.0, 300.0)
STABLE_SECONDS = 600.0


def restart_delay(deaths):
    """Seconds from the `deaths`-th death in a row to the start that follows it."""
    first, most = RESTART_BACKOFF
    return min(first * 2 ** (deaths - 1), most)


class Streak:
    """One agent's deaths in a row: how many, why the last, when the next start is due."""

    def __init__(self):
        self.deaths = 0
        self.reason = ""
        self.next_at = None  # when the next start is due (lifecycle clock); None while it runs
        self.up_since = None  # when the core last started it again

    def row(self):
        return {"deaths": self.deaths, "reason": self.reason,
                "next_at": wire.iso(int(self.next_at * 1000)) if self.next_at is not None else None}


# What hive.json's "env" may not set, and why: the hive's own variables, and every one that chooses what
# code a program runs before or besides its own (a loader's preload or search path, an interpreter's
# startup hook or module path, a shell's startup file). The harness, INIT and the MCP server are hive
# code that runs with this env; a config that wants a program in the sandbox names it in extra_mcp.
REFUSED_ENV = {
    "HOME": "the hive sets it: the agent's state dir",
    "PATH": "the hive sets it",
    "NODE_OPTIONS": "node runs its --require and --import modules first; claude is a node program",
    "NODE_PATH": "where node finds modules: a bare require could load any file",
    "PERL5OPT": "perl runs its -M modules first", "PERL5LIB": "where perl finds modules",
    "PERLLIB": "where perl finds modules", "PERL5DB": "perl runs it as its debugger",
    "RUBYOPT": "ruby runs its -r libraries first", "RUBYLIB": "where ruby finds libraries",
    "JAVA_TOOL_OPTIONS": "the JVM loads its -javaagent first", "_JAVA_OPTIONS": "the JVM loads its -javaagent first",
    "JDK_JAVA_OPTIONS": "the java launcher loads its -javaagent first",
    "BASH_ENV": "bash runs the file it names before every script (claude's Bash tool is bash)",
    "ENV": "sh runs the file it names at startup",
    "SHELLOPTS": "turns on bash's xtrace, which with PS4 runs code", "BASHOPTS": "bash options at startup",
    "PS4": "bash expands it, command substitutions included, on every traced line",
    "PROMPT_COMMAND": "bash runs it before every prompt",
    "GCONV_PATH": "glibc loads character-set modules (shared objects) from it",
    "LOCPATH": "glibc reads locale data from it", "GLIBC_TUNABLES": "changes glibc's allocator and loader",
    "HOSTALIASES": "rewrites the host names glibc resolves",
    "OPENSSL_CONF": "OpenSSL loads the engines and providers (shared objects) it names",
    "OPENSSL_ENGINES": "where OpenSSL loads engines from", "OPENSSL_MODULES": "where OpenSSL loads providers from",
    "GIT_EXEC_PATH": "where git finds the programs it runs", "GIT_CONFIG_PARAMETERS": "git config, hooks included",
    "GIT_CONFIG_GLOBAL": "git config, hooks included", "GIT_CONFIG_SYSTEM": "git config, hooks included",
}
REFUSED_ENV_PREFIXES = {
    "HIVE_": "the hive's own",
    "LD_": "a dynamic loader variable: LD_PRELOAD, LD_LIBRARY_PATH and LD_AUDIT put shared objects in every program",
    "DYLD_": "a dynamic loader variable",
    "PYTHON": "a Python variable: PYTHONPATH, PYTHONSTARTUP and PYTHONHOME choose code the harness imports",
    "LUA_INIT": "lua runs it at startup",
    "GIT_CONFIG_": "git config, hooks included",
}


def refused_env(key):
    """Why hive.json may not set `key` (None when it may)."""
    return REFUSED_ENV.get(key) or next((why for p, why in REFUSED_ENV_PREFIXES.items() if key.startswith(p)), None)


def check_config(name, config):
    """hive.json as the non-Nix backends read it: {model, env, extra_mcp, packages_note}."""
    where = f"{name}'s hive.json"
    if not isinstance(config, dict):
        raise wire.HiveError(f"{where} must be a JSON object")
    model = config.get("model")
    if model is not None and (not isinstance(model, str) or not re.fullmatch(r"[A-Za-z0-9._\[\]-]{1,64}", model)):
        raise wire.HiveError(f"{where}: \"model\" must be a model name like \"sonnet\", got {model!r}")
    env = config.get("env") or {}
    if not isinstance(env, dict) or not all(isinstance(k, str) and ENV_NAME.fullmatch(k) and isinstance(v, str)
                                            for k, v in env.items()):
        raise wire.HiveError(f"{where}: \"env\" must map variable names to strings")
    refused = [f"{k} ({why})" for k in sorted(env) for why in [refused_env(k)] if why]
    if refused:
        raise wire.HiveError(f"{where}: \"env\" may not set {'; '.join(refused)}. A config says what runs in "
                             "plain sight (extra_mcp's commands), never through a variable that reaches hive "
                             "code; drop these from hive.json")
    extra = config.get("extra_mcp") or {}
    if not isinstance(extra, dict) or not all(isinstance(e, dict) and isinstance(e.get("command"), str)
                                              for e in extra.values()) or "hyperhive" in extra:
        raise wire.HiveError(f"{where}: \"extra_mcp\" must map server names (not \"hyperhive\") to "
                             "{command, args, env, allowedTools}")
    return config


class Layout:
    """Where everything of a hive lives on the host."""

    def __init__(self, state_dir, run_dir=None):
        self.state_dir = os.path.abspath(state_dir)
        self.run_dir = os.path.abspath(run_dir or os.path.join(self.state_dir, "run"))
        self.agents_dir = os.path.join(self.state_dir, "agents")
        self.db_path = os.path.join(self.state_dir, "hive.db")
        self.lock_path = os.path.join(self.state_dir, "hive.lock")
        self.host_socket = os.path.join(self.run_dir, "host.sock")
        self.config_dir = os.path.join(self.state_dir, "config")
        # read-write for every agent: where they leave files for each other and the operator
        self.shared_dir = os.path.join(self.state_dir, "shared")

    def home(self, name):
        """The agent's host-side directory: its state dir, log, pidfile, markers."""
        return os.path.join(self.agents_dir, wire.check_name(name))

    def state(self, name):
        """The directory the harness owns (its cwd; /state inside a container)."""
        return os.path.join(self.home(name), "state")

    def socket(self, name):
        # A directory of its own per socket: a sandbox binds the directory, so
        # the socket a restarted core binds anew shows up inside (a bound file
        # would pin the dead socket's inode).
        if name == wire.MANAGER:
            return os.path.join(self.run_dir, "manager", "manager.sock")
        return os.path.join(self.run_dir, "agents", wire.check_name(name), "agent.sock")

    def log(self, name):
        return os.path.join(self.home(name), "harness.log")

    def pause_marker(self, name):
        return os.path.join(self.home(name), "paused")

    def makedirs(self):
        for d in (self.state_dir, self.agents_dir, self.run_dir, os.path.join(self.run_dir, "agents"),
                  self.shared_dir):
            os.makedirs(d, exist_ok=True)
        os.chmod(self.state_dir, 0o700)


class Harness:
    """How to launch a harness: the entry file, the claude binary, the env to forward."""

    def __init__(self, entry, claude="claude", pass_env=(), python=sys.executable):
        self.entry, self.claude, self.pass_env, self.python = entry, claude, tuple(pass_env), python


class Lifecycle:
    def __init__(self, layout, backend, broker, hub, harness, sockets, repos, clock=time.time, forge=None):
        self.layout, self.backend, self.broker, self.hub = layout, backend, broker, hub
        self.clock = clock  # unix seconds: the watch's now
        self.streaks = {}  # name -> Streak, for a harness that died on its own
        self.held = set()  # names an operator killed: not started again until an operator says so
        self.harness = harness
        self.repos = repos  # the git module: each agent's proposed and applied config
        self.forge = forge  # the mirror of the applied repos: its state(name) is a row's `forge`
        self.sockets = sockets  # open(name, role) / close(name)
        self.transients = {}  # name -> what it is doing now
        self._names = None  # every send asks `known`; the set is kept in memory
        # Under nixos every create, build, destroy and sync goes through the one
        # meta flake, which takes one operation at a time: queue them here.
        self._meta_lock = RLock()
        self._last_rows = {}
        self._behind = {}  # name -> the applied sha the manager was told the agent runs behind

    # -- queries -------------------------------------------------------------------

    def names(self):
        return [a.name for a in Agent.select().order_by(Agent.name)]

    def get(self, name):
        return found(Agent, Agent.name == name, f"agent named {name!r}")

    def known(self, name):
        if self._names is None:
            self._names = set(self.names())
        return name == wire.OPERATOR or name in self._names

    def tombstones(self):
        """Agent dirs kept after a destroy without purge."""
        if not os.path.isdir(self.layout.agents_dir):
            return []
        alive = set(self.names())
        return sorted(d for d in os.listdir(self.layout.agents_dir)
                      if d not in alive and wire.NAME_RE.fullmatch(d))

    def running(self, name):
        return self.backend.running(name, self.layout.home(name))

    def active_model(self, name):
        # The agent owns this file: a link it planted there is not followed, a fifo not waited on.
        try:
            fd = os.open(os.path.join(self.layout.state(name), MODEL_FILE), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            return None
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # on the fd: fdopen raises on a directory, failing every row
            os.close(fd)
            return None
        with os.fdopen(fd, errors="replace") as f:
            return f.read(256).strip() or None

    def row(self, agent):
        running = self.running(agent.name)
        applied = self.repos.deployed_sha(agent.name)
        failed = agent.desired == "running" and not running and agent.name not in self.transients
        return {
            "name": agent.name,
            "state": states.agent_state(running, failed, agent.paused),
            "running": running,
            "failed": failed,
            "needs_update": bool(applied and agent.running_sha and applied != agent.running_sha),
            "needs_login": agent.needs_login,
            "paused": agent.paused,
            "parent": agent.parent,
            "deployed_sha": (agent.running_sha or applied or "")[:12] or None,
            "active_model": self.active_model(agent.name),
            "status_text": agent.status_text if running else None,
            "status_set_at": wire.iso(agent.status_set_at) if running else None,
            "url": f"/agent/{agent.name}/",
            "pending_reminders": reminders.pending_count(agent.name),
            "role": agent.role,
            "last_turn_at": wire.iso(agent.last_turn_at),
            "claude_missing": agent.claude_missing,
            # while it keeps dying: how often in a row, why, and when the core starts it next
            "restart": self.streaks[agent.name].row() if agent.name in self.streaks else None,
            "forge": self.forge.state(agent.name) if self.forge is not None else None,
        }

    def rows(self):
        return [self.row(a) for a in Agent.select().order_by(Agent.name)]

    def cached_rows(self):
        """Every row as the watch last saw it (the dashboard's cold load must not ask each backend)."""
        for name in self.names():
            if name not in self._last_rows:
                self.changed(name)
        rows = sorted(self._last_rows.values(), key=lambda r: (r["role"] != "manager", r["name"]))
        return [dict(r) for r in rows]

    def meta_inputs(self):
        """The meta flake's locked inputs under nixos (None on backends without one)."""
        meta = self.backend.meta
        if meta is None:
            return None
        try:
            return meta.locked_revs()
        except (OSError, ValueError) as e:
            log.warning("cannot read the meta flake's lock: %s", e)
            return None

    # -- the watch -------------------------------------------------------------------

    def changed(self, name, agent=None):
        """Re-read one agent's row and tell subscribers if it differs.

        Called after an agent's change is committed: a row that cannot be
        read now is the dashboard's loss, noted, never the change's."""
        aftermath.after(f"updating {name}'s row on the dashboard", self._changed, name, agent)

    def _changed(self, name, agent=None):
        agent = agent or Agent.get_or_none(Agent.name == name)
        if agent is None:
            if self._last_rows.pop(name, None) is not None:
                self.hub.publish("container_removed", name=name)
            return
        row = self.row(agent)
        before = self._last_rows.get(name)
        if before != row:
            self._last_rows[name] = row
            self.hub.publish("container_state_changed", container=row)
        self._tell_if_behind(name, row, first=before is None)

    def _tell_if_behind(self, name, row, first):
        """Tell the manager once per applied commit that an agent runs an older config than its applied
        main (a deploy that failed, a meta update): the original's NeedsUpdate. Not mid-operation (a
        deploy is behind until its restart), and not for what the core saw at its start: the manager was
        told before the core restarted."""
        if not row["needs_update"]:
            self._behind.pop(name, None)
            return
        applied = self.repos.deployed_sha(name)
        if name in self.transients or self._behind.get(name) == applied:
            return
        self._behind[name] = applied
        if not first:
            self._tell(wire.MANAGER, f"[helper event] needs_update: {name} runs config {row['deployed_sha']}, "
                       f"behind its applied main {applied[:12]}; `rebuild {name}` puts it on applied main, "
                       "or the operator's `rebuild` on the dashboard.")

    def watch_step(self, now=None):
        """One pass of the crash/change watch: publish every row that changed, start again what died.

        `now` is unix seconds (the lifecycle's clock by default); tests step it.
        """
        now = self.clock() if now is None else now
        for agent in list(Agent.select()):
            self.changed(agent.name, agent)
            gevent.sleep(0)  # a hive of many agents must not stall every socket for the whole pass
            row = self._last_rows.get(agent.name)  # none when its row could not be read (logged)
            if row is not None and self._mind(agent, row, now):
                self.changed(agent.name)

    def _mind(self, agent, row, now):
        """The restart policy for one agent at `now`; True if its streak moved."""
        name = agent.name
        streak = self.streaks.get(name)
        if row["running"]:
            if streak is not None and streak.up_since is not None and now - streak.up_since >= STABLE_SECONDS:
                log.info("%s has run for %s since the core started it again; its crash streak is over",
                         name, wire.duration(now - streak.up_since))
                del self.streaks[name]
                return True
            return False
        if not row["failed"] or name in self.held:
            return False  # meant to be stopped, mid-operation, or killed by the operator
        if streak is None or streak.next_at is None:
            self._died(agent, streak, now, self._why_dead(name))
            return True
        if now >= streak.next_at or streak.next_at - now > RESTART_BACKOFF[1]:  # due, or the clock went back
            self._start_again(agent, streak, now)
            return True
        return False

    def _died(self, agent, streak, now, reason):
        """A harness meant to run is not running, and nobody asked for that: a death of the streak."""
        name = agent.name
        first = streak is None
        if first:
            streak = self.streaks[name] = Streak()
        streak.deaths += 1
        streak.reason = reason
        streak.up_since, streak.next_at = None, now + restart_delay(streak.deaths)
        delay = wire.duration(restart_delay(streak.deaths))
        log.error("%s's harness died on its own (%s; death %d in a row); starting it again in %s; see %s",
                  name, streak.reason, streak.deaths, delay, self.layout.log(name))
        self._sweep(name)  # what it left running goes now, not at the start minutes later
        if first:  # once per streak: retrying in silence would hide it, telling every time would flood
            self._tell(wire.OPERATOR, f"[helper event] harness_crash: {name}'s harness stopped without an "
                       f"operator action ({streak.reason}). The core starts it again in {delay}, waiting "
                       f"longer after each death in a row (up to {wire.duration(RESTART_BACKOFF[1])}); the "
                       "dashboard shows when. `stop` it to keep it down; its journal may say more.")
            self._tell(wire.MANAGER, f"[helper event] container_crash: {name}'s harness stopped without an "
                       f"operator action ({streak.reason}). The core starts it again in {delay} and keeps "
                       "trying, backing off, while it dies; its journal has the reason.")

    def _start_again(self, agent, streak, now):
        name = agent.name
        try:
            with self._busy(name, "restarting"):
                self._start(agent)
        except Exception as e:
            streak.deaths += 1
            streak.reason = f"starting it again failed: {e}"
            streak.next_at = now + restart_delay(streak.deaths)
            if isinstance(e, wire.HiveError):
                log.error("%s: %s; next try in %s", name, streak.reason, wire.duration(restart_delay(streak.deaths)))
            else:
                log.exception("%s: starting it again failed; next try in %s", name,
                              wire.duration(restart_delay(streak.deaths)))
            return
        streak.up_since, streak.next_at = now, None
        log.info("started %s again after %d death(s) in a row", name, streak.deaths)

    def _why_dead(self, name):
        """The exit status and the log's last line, as far as the backend can tell."""
        said = []
        code = self.backend.exit_code(name)
        if code is not None and code < 0:
            try:
                said.append(f"killed by {signal.Signals(-code).name}")
            except ValueError:
                said.append(f"killed by signal {-code}")
        elif code is not None:
            said.append(f"exit code {code}")
        try:
            lines, _ = self.backend.log_tail(name, self.layout.home(name), lines=20)
        except (wire.HiveError, OSError) as e:
            log.warning("cannot read %s's log: %s", name, e)
            lines = []
        last = next((line.strip() for line in reversed(lines) if line.strip()), None)
        if last:
            said.append(f"its log's last line: {last[:300]}")
        return "; ".join(said) or "neither an exit code nor a log line says why"

    def _sweep(self, name):
        try:
            self.backend.sweep(name, self.layout.home(name))
        except wire.HiveError as e:
            log.error("%s: %s", name, e)

    def _tell(self, to, body):
        """A helper event from the core; a disk that refuses it is logged, not the watch's end."""
        try:
            self.broker.send("core", to, body)
        except Exception as e:
            disk = wire.storage_failure(e)
            if disk is None:
                raise
            log.error("could not tell %s: %s; it was: %s", to, disk, body)

    def _operator_acts(self, name, held=False):
        """An operator action takes the agent over from the restart policy (a kill holds it down)."""
        self.streaks.pop(name, None)
        if held:
            self.held.add(name)
        else:
            self.held.discard(name)

    # -- operations ---------------------------------------------------------------------

    def _busy(self, name, doing):
        """Run an operation as the agent's one transient, refusing a second at once."""
        assert doing in states.TRANSIENTS, doing
        if name in self.transients:
            raise wire.HiveError(f"agent {name!r} is busy {self.transients[name]}; "
                                 "try again once that finishes", "conflict")
        return _Transient(self, name, doing)

    def config(self, name, rev="main"):
        """The agent's hive.json at a commit of its applied repo ({} when it has none)."""
        if not self.repos.exists(name):
            return {}
        try:
            text = self.repos.read(name, "hive.json", rev=rev)
        except wire.HiveError as e:
            if e.code == "not_found":
                return {}
            raise
        try:
            config = json.loads(text)
        except ValueError as e:
            raise wire.HiveError(f"{name}'s hive.json at {rev[:12]} is not valid JSON: {e}") from None
        return check_config(name, config)

    def launch(self, agent, config, rev=None):
        name = agent.name
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TZ", "TMPDIR")}
        env.update({k: os.environ[k] for k in self.harness.pass_env if k in os.environ})
        if os.environ.get(PRONOUNS_ENV):  # the operator's, for every agent's prompt
            env[PRONOUNS_ENV] = os.environ[PRONOUNS_ENV]
        env.update(config.get("env") or {})
        state = self.layout.state(name)
        extra = os.path.join(self.layout.home(name), "extra-mcp.json")
        # a fresh temp name, never through a link (the home is the core's, but under the process backend
        # nothing stops the agent writing it)
        files.replace(extra, json.dumps(config.get("extra_mcp") or {}, indent=2))
        configs = self.repos.proposed_root if agent.role == "manager" else self.repos.proposed(name)
        env.update({
            "HIVE_NAME": name,
            "HIVE_ROLE": agent.role,
            "HIVE_SOCKET": self.layout.socket(name),
            "HIVE_STATE_DIR": state,
            "HIVE_PAUSE_FILE": self.layout.pause_marker(name),
            "HIVE_CLAUDE_BIN": self.harness.claude,
            "HIVE_EXTRA_MCP": extra,
            "HIVE_CONFIG_DIR": configs,
            "HIVE_SHARED_DIR": self.layout.shared_dir,
            "HOME": state,
            "PYTHONUNBUFFERED": "1",
        })
        argv = [self.harness.python, self.harness.entry, agent.role, "serve"]
        return Launch(name, agent.role, argv, env, state, self.layout.home(name), self.layout.log(name),
                      config_dir=configs, shared_dir=self.layout.shared_dir,
                      hidden_dirs=(self.layout.state_dir, self.layout.run_dir), rev=rev)

    def _dirs(self, name):
        """The agent's home and state dir, made when missing. Something else at either is refused with a
        sentence, never removed: the agent's files may be behind it, so the operator moves it."""
        for what, path in (("home", self.layout.home(name)), ("state dir", self.layout.state(name))):
            try:
                st = os.stat(path)  # followed: a link here is the operator's (it lies in a directory of the core's)
            except FileNotFoundError:
                st = None
            except OSError as e:
                raise wire.HiveError(f"{name}'s {what} {path} cannot be read ({e.strerror}); fix it and start "
                                     f"{name} again") from None
            if st is None:
                try:
                    os.makedirs(path, exist_ok=True)
                except OSError as e:  # a dangling link, say
                    raise wire.HiveError(f"{name}'s {what} {path} cannot be made ({e.strerror}); fix it and start "
                                         f"{name} again") from None
                continue
            if not stat.S_ISDIR(st.st_mode):
                raise wire.HiveError(f"{name}'s {what} {path} is {planted.kind(st)}, not a directory, so {name} "
                                     f"cannot start; the core does not remove it (it may hold {name}'s files): "
                                     f"move it away and start {name} again", "conflict")

    def _start(self, agent, rev="main", apply_model=False):
        name = agent.name
        self._dirs(name)
        self.sockets.open(name, agent.role)
        if self.running(name):
            return
        config = self.config(name, rev)
        self._sync_meta(include=name)
        state = self.layout.state(name)
        model_file = os.path.join(state, MODEL_FILE)
        if config.get("model") and (apply_model or not os.path.exists(model_file)):
            # a fresh temp name, never through a link: the state dir is the agent's to write
            moved = planted.clear(state, MODEL_FILE, only_dirs=True)
            if moved:  # a directory is the one thing os.replace cannot put the file over
                log.warning("%s: %s", name, moved)
            files.replace(model_file, config["model"] + "\n")
        with self._meta_lock:
            self.backend.start(self.launch(agent, config, rev=None if rev == "main" else rev))
        sha = self.repos.deployed_sha(name) if rev == "main" else rev
        Agent.update(running_sha=sha).where(Agent.name == name).execute()

    def _sync_meta(self, include=None, exclude=None):
        """Under nixos, the meta flake pins every agent's applied repo: add or drop one."""
        meta = self.backend.meta
        if meta is None:
            return
        with self._meta_lock:
            if include in meta.agents() and exclude is None:
                return
            names = (set(self.names()) | {include}) - {exclude, None}
            meta.sync({n: self.repos.applied(n) for n in sorted(names) if self.repos.exists(n)})

    def spawn(self, name, parent=wire.OPERATOR, role="agent", sha=None, deploy=None):
        """Create and start an agent on its applied main, or on `sha` (a commit of its applied repo, its
        model applied), then call `deploy`. If it cannot start, or deploy fails, it is undone (see _unspawn)."""
        if role == "agent":
            wire.check_agent_name(name)
        if Agent.get_or_none(Agent.name == name) is not None:
            raise wire.HiveError(f"an agent named {name!r} already exists", "conflict")
        with self._busy(name, "spawning"):
            revived = os.path.isdir(self.layout.home(name))
            self.repos.init_agent(name)  # idempotent: a reviewed config is kept
            with core_db.atomic():
                agent = Agent.create(name=name, role=role, parent=parent, desired="running",
                                     paused=os.path.exists(self.layout.pause_marker(name)))
            self._names = None
            self.broker.hold(name, agent.paused)
            try:
                self._start(agent, rev=sha or "main", apply_model=sha is not None)
                if deploy is not None:
                    deploy()
            except wire.HiveError as e:
                log.error("%s did not start%s: %s; undoing the spawn", name, f" on {sha[:12]}" if sha else "", e)
                self._unspawn(name, revived)
                raise
            if revived:
                self._tombstones_changed()
            log.info("%s %s (asked by %s)", "revived" if revived else "spawned", name, parent)

    def _unspawn(self, name, revived):
        """Take back a spawn that failed: no harness, container, socket or agent row is left, nor the
        home a fresh spawn made (a revived tombstone keeps its own). The config repos stay as they are,
        so the config can be fixed and the spawn asked for again."""
        try:
            self.backend.kill(name, self.layout.home(name))
            with self._meta_lock:  # nixos: a container created before its start failed
                self.backend.destroy(name)
        except wire.HiveError as e:
            log.error("could not stop what the failed spawn of %s started: %s", name, e)
        self.sockets.close(name)
        trees.discard(os.path.dirname(self.layout.socket(name)), f"{name}'s socket dir")
        with core_db.atomic():
            Agent.delete().where(Agent.name == name).execute()
        self._names = None
        try:
            self._sync_meta(exclude=name)
        except wire.HiveError as e:
            log.error("could not drop %s from the meta flake after its failed spawn: %s", name, e)
        if not revived:
            trees.discard(self.layout.home(name), f"{name}'s state")
        self.broker.hold(name, False)

    def ensure_manager(self):
        if Agent.get_or_none(Agent.name == wire.MANAGER) is None:
            self.spawn(wire.MANAGER, parent="core", role="manager")

    def boot(self):
        """At core start: open every socket, adopt or restart every agent meant to run.

        Each agent on its own: whatever fails for one (a plant in its dirs, a config that does not build,
        a bug) leaves that one failed, with the reason on its row and in the log, and the rest served."""
        for agent in list(Agent.select()):
            try:
                self._boot(agent)
            except Exception as e:
                self._boot_failed(agent, e)
        self.ensure_manager()
        self.watch_step()

    def _boot_failed(self, agent, error):
        """One agent's boot failed: logged, and when it was meant to run and does not, it is failed with the
        reason (the restart policy tries again, backing off)."""
        if isinstance(error, wire.HiveError):
            log.error("could not start %s at boot: %s", agent.name, error)
            reason = str(error)
        else:
            log.error("could not start %s at boot", agent.name, exc_info=error)
            reason = f"{type(error).__name__}: {error} (the core's log has the details)"
        try:
            down = agent.desired == "running" and not self.running(agent.name)
        except Exception:
            log.exception("cannot tell whether %s runs; the watch looks again", agent.name)
            return
        if down:
            self._died(agent, self.streaks.get(agent.name), self.clock(), f"it could not be started: {reason}")

    def _boot(self, agent):
        name = agent.name
        self.broker.hold(name, agent.paused)
        running = self.running(name)
        try:
            self.sockets.open(name, agent.role)
        except Exception:
            if running:  # it could never reach the core: down it goes, and the restart policy takes it
                self.backend.kill(name, self.layout.home(name))
            raise
        if running:
            log.info("adopted %s's running harness", name)
            applied = self.repos.deployed_sha(name)
            if applied and agent.running_sha and applied != agent.running_sha:
                log.info("%s runs %s but %s is deployed; rebuilding", name, agent.running_sha[:12], applied[:12])
                try:
                    self.rebuild(name)
                except wire.HiveError as e:
                    log.error("auto-update of %s failed: %s", name, e)
        elif agent.desired == "running":
            # a transient like any other: the host socket already serves
            with self._busy(name, "starting"):
                self._start(agent)

    def start(self, name):
        agent = self.get(name)
        with self._busy(name, "starting"):
            self._operator_acts(name)
            Agent.update(desired="running").where(Agent.name == name).execute()
            self._start(agent)

    def stop(self, name, graceful=True):
        agent = self.get(name)
        with self._busy(name, "stopping"):
            self._operator_acts(name)
            Agent.update(desired="stopped").where(Agent.name == name).execute()
            self.backend.stop(name, self.layout.home(name), graceful=graceful)
            agent.desired = "stopped"

    def restart(self, name):
        agent = self.get(name)
        with self._busy(name, "restarting"):
            self._operator_acts(name)
            self.backend.stop(name, self.layout.home(name), graceful=True)
            Agent.update(desired="running").where(Agent.name == name).execute()
            self._start(agent)

    def rebuild(self, name, sha=None, deploy=None):
        """Apply a config commit (default: the applied main) and restart on it.

        With `deploy`, the applied repo's main moves only after the new
        config is running; if it cannot start, the agent is brought back
        on the config it had and the error is raised.
        """
        agent = self.get(name)
        rev = sha or "main"
        with self._busy(name, "rebuilding"):
            self._operator_acts(name)
            with self._meta_lock:  # nixos: the container is rebuilt from the meta flake at that commit
                self.backend.build(name, rev=sha)
            self.backend.stop(name, self.layout.home(name), graceful=True)
            Agent.update(desired="running").where(Agent.name == name).execute()
            try:
                self._start(agent, rev=rev, apply_model=True)
            except wire.HiveError as e:
                log.error("%s did not start on %s: %s; bringing it back on its deployed config", name, rev, e)
                self._start(agent)
                raise
            if deploy is not None:
                deploy()

    def update_meta(self):
        if self.backend.meta is None:
            raise wire.HiveError(f"the {self.backend.name} backend has no meta flake", "conflict")
        with self._meta_lock:
            self.backend.update_all()
        self.hub.publish("meta_inputs_changed", meta_inputs=self.meta_inputs())

    def kill(self, name):
        self.get(name)
        with self._busy(name, "being killed"):
            # desired stays as it was: a killed agent that was meant to run shows failed,
            # and stays down until an operator starts it
            self._operator_acts(name, held=True)
            self.backend.kill(name, self.layout.home(name))

    def destroy(self, name, purge=False):
        if name == wire.MANAGER:
            raise wire.HiveError("the manager is part of the hive and cannot be destroyed", "forbidden")
        self.get(name)
        with self._busy(name, "being destroyed"):
            self.backend.kill(name, self.layout.home(name))
            with self._meta_lock:  # nixos: the container itself goes
                self.backend.destroy(name)
            self.sockets.close(name)
            trees.discard(os.path.dirname(self.layout.socket(name)), f"{name}'s socket dir")
            with core_db.atomic():
                Agent.delete().where(Agent.name == name).execute()
            self._names = None
            self._operator_acts(name)
            self._sync_meta(exclude=name)
            if purge:
                trees.discard(self.layout.home(name), f"{name}'s state")
                self.repos.purge(name)
            self.broker.hold(name, False)
        self._tombstones_changed()
        log.info("destroyed %s%s", name, " and purged its state" if purge else "; its state is kept")

    def _tombstones_changed(self):
        aftermath.after("updating the dashboard's tombstones", lambda: self.hub.publish(
            "tombstones_changed", tombstones=self.tombstones()))

    def purge_tombstone(self, name):
        wire.check_name(name)
        if name not in self.tombstones():
            raise wire.HiveError(f"there is no tombstone named {name!r}", "not_found")
        trees.discard(self.layout.home(name), f"{name}'s state")
        self.repos.purge(name)
        self._tombstones_changed()

    def set_paused(self, name, paused):
        self.get(name)
        marker = self.layout.pause_marker(name)
        if paused:
            with open(marker, "w") as f:
                f.write(f"{int(self.clock() * 1000)}\n")
        elif os.path.exists(marker):
            os.unlink(marker)
        Agent.update(paused=paused).where(Agent.name == name).execute()
        self.broker.hold(name, paused)
        self.changed(name)

    def shutdown(self, graceful=True):
        """At core stop: stop every harness of ours (their desired state is kept)."""
        greenlets = [gevent.spawn(self.backend.stop, a.name, self.layout.home(a.name), graceful, 10.0)
                     for a in Agent.select()]
        gevent.joinall(greenlets, raise_error=False)


class _Transient:
    def __init__(self, lifecycle, name, doing):
        self.lifecycle, self.name, self.doing = lifecycle, name, doing

    def __enter__(self):
        self.lifecycle.transients[self.name] = self.doing
        self.lifecycle.hub.publish("transient_set", name=self.name, transient=self.doing)

    def __exit__(self, *exc):
        self.lifecycle.transients.pop(self.name, None)
        self.lifecycle.hub.publish("transient_cleared", name=self.name)
        self.lifecycle.changed(self.name)
