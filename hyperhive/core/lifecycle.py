"""Agents' lives: spawn, start, stop, restart, rebuild, kill, destroy, pause, and their status rows.

Owns the `agent` table, the transient state of an agent mid-operation (one
operation per agent at a time), each agent's row as computed now, and what
each start is made of: its dirs, its config read from the applied repo
(hive.json, checked by `agentconfig`) and its `Launch`. Its parts: where
things are (`layout`), the watch that publishes rows (`watch`) and the
restart policy for a harness that died on its own (`restarts`). Container
calls go through the backend handed in, git through `repos`, sockets
through the `sockets` seam.
"""

import json
import logging
import os
import stat
import time

import gevent
from gevent.lock import RLock

from hyperhive import files, permissions, states, wire
from hyperhive.core import aftermath, planted, reminders, trees
from hyperhive.core.agentconfig import check_config
from hyperhive.core.containers import Launch
from hyperhive.core.restarts import Restarts
from hyperhive.core.watch import Watch
import peewee as pw

from hyperhive.schema import Agent, core_db, found

log = logging.getLogger(__name__)
MODEL_FILE = wire.MODEL_FILE
PRONOUNS_ENV = wire.PRONOUNS_ENV
class Lifecycle:
    def __init__(self, layout, backend, broker, hub, harness, sockets, repos, clock=time.time, forge=None,
                 turn_over=None):
        self.layout, self.backend, self.broker, self.hub = layout, backend, broker, hub
        # (name, why): the harness's running turn ends here, so what it waits on (its tool calls the
        # operator has not decided) is cancelled first; the approvals, built after this, say how
        self.turn_over = turn_over or (lambda name, why: 0)
        self.clock = clock  # unix seconds: the watch's now
        self.restarts = Restarts(self)  # a harness that died on its own is started again, with backoff
        self.harness = harness
        self.repos = repos  # the git module: each agent's proposed and applied config
        self.forge = forge  # the mirror of the applied repos: its state(name) is a row's `forge`
        self.sockets = sockets  # open(name, role) / close(name)
        self.transients = {}  # name -> what it is doing now
        self._names = None  # every send asks `known`; the set is kept in memory (`forget_names` on a change)
        self.node = None  # this core's node: it runs the agents the registry gives it (None: every agent)
        self.registry_changed = lambda name: None  # tells the other cores of a spawn or destroy
        self.nodes_rows = lambda: []  # every node of the hive with its liveness (`nodes.Nodes.rows`)
        # Under nixos every create, build, destroy and sync goes through the one
        # meta flake, which takes one operation at a time: queue them here.
        self._meta_lock = RLock()
        self.watch = Watch(self)  # publishes each row that changed, and minds the restart policy

    # -- queries -------------------------------------------------------------------

    def names(self):
        """Every agent of the hive, on whichever node."""
        return [a.name for a in Agent.select().order_by(Agent.name)]

    def own(self):
        """The agents this core runs."""
        query = Agent.select().order_by(Agent.name)
        return query if self.node is None else query.where(Agent.node == self.node)

    def elsewhere(self, name):
        """(node, its dashboard URL or None) when the agent runs on another node of the hive, else None."""
        agent = Agent.get_or_none(Agent.name == name)
        if agent is None or self.node is None or agent.node in (None, self.node):
            return None
        return agent.node, next((n["url"] for n in self.nodes_rows() if n["name"] == agent.node), None)

    def forget_names(self, _=None):
        self._names = None

    def _registry_changed(self, name):
        self._names = None
        aftermath.after(f"telling the other nodes about {name}", self.registry_changed, name)

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
            "restart": self.restarts.row(agent.name),
            "forge": self.forge.state(agent.name) if self.forge is not None else None,
            "node": agent.node,
        }

    def rows(self):
        """Every agent's row: this node's read now, the others' as their nodes last published them."""
        return self.watch.cached_rows(fresh=True)

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

    def sweep(self, name):
        try:
            self.backend.sweep(name, self.layout.home(name))
        except wire.HiveError as e:
            log.error("%s: %s", name, e)

    def tell(self, to, body):
        """A helper event from the core; a disk that refuses it is logged, not the watch's end."""
        try:
            self.broker.send("core", to, body)
        except Exception as e:
            disk = wire.storage_failure(e)
            if disk is None:
                raise
            log.error("could not tell %s: %s; it was: %s", to, disk, body)

    # -- operations ---------------------------------------------------------------------

    def busy(self, name, doing):
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
        # the policy the harness decides each tool call with (checked with the rest of the config)
        policy = os.path.join(self.layout.home(name), "permissions.json")
        files.replace(policy, json.dumps(permissions.Policy.parse(config.get("permissions")).to_json(), indent=2))
        configs = self.repos.proposed_root if agent.role == "manager" else self.repos.proposed(name)
        env.update(self.harness.engine)
        env.update({
            "HIVE_NAME": name,
            "HIVE_ROLE": agent.role,
            "HIVE_SOCKET": self.layout.socket(name),
            "HIVE_STATE_DIR": state,
            "HIVE_PAUSE_FILE": self.layout.pause_marker(name),
            "HIVE_CLAUDE_BIN": self.harness.claude,
            "HIVE_EXTRA_MCP": extra,
            permissions.ENV: policy,
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

    def start_harness(self, agent, rev="main", apply_model=False):
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

    def turn_ends(self, name, how):
        """Its harness goes down: what its turn waits on is cancelled before, so a graceful stop is not held
        by a tool call nobody will decide. Its failure is logged: the stop goes on regardless."""
        try:
            self.turn_over(name, f"{name}'s turn ended ({how})")
        except Exception as e:
            log.error("could not cancel %s's tool calls waiting for the operator: %s", name,
                      wire.storage_failure(e) or e, exc_info=wire.storage_failure(e) is None)

    def _sync_meta(self, include=None, exclude=None):
        """Under nixos, the meta flake pins every agent's applied repo: add or drop one."""
        meta = self.backend.meta
        if meta is None:
            return
        with self._meta_lock:
            if include in meta.agents() and exclude is None:
                return
            names = ({a.name for a in self.own()} | {include}) - {exclude, None}
            meta.sync({n: self.repos.applied(n) for n in sorted(names) if self.repos.exists(n)})

    def spawn(self, name, parent=wire.OPERATOR, role="agent", sha=None, deploy=None):
        """Create and start an agent on its applied main, or on `sha` (a commit of its applied repo, its
        model applied), then call `deploy`. If it cannot start, or deploy fails, it is undone (see _unspawn)."""
        if role == "agent":
            wire.check_agent_name(name)
        if Agent.get_or_none(Agent.name == name) is not None:
            raise wire.HiveError(f"an agent named {name!r} already exists", "conflict")
        with self.busy(name, "spawning"):
            revived = os.path.isdir(self.layout.home(name))
            self.repos.init_agent(name)  # idempotent: a reviewed config is kept
            with core_db.atomic():
                agent = Agent.create(name=name, role=role, parent=parent, desired="running", node=self.node,
                                     paused=os.path.exists(self.layout.pause_marker(name)))
            self._registry_changed(name)
            self.broker.hold(name, agent.paused)
            try:
                self.start_harness(agent, rev=sha or "main", apply_model=sha is not None)
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
        self._registry_changed(name)
        try:
            self._sync_meta(exclude=name)
        except wire.HiveError as e:
            log.error("could not drop %s from the meta flake after its failed spawn: %s", name, e)
        if not revived:
            trees.discard(self.layout.home(name), f"{name}'s state")
        self.broker.hold(name, False)

    def ensure_manager(self):
        """The hive has one manager: the first core to start without one runs it."""
        if Agent.get_or_none(Agent.name == wire.MANAGER) is None:
            try:
                self.spawn(wire.MANAGER, parent="core", role="manager")
            except pw.IntegrityError:  # another node's core made it at the same moment
                log.info("another node made the manager first; it runs there")

    def boot(self):
        """At core start: open every socket, adopt or restart every agent meant to run.

        Each agent on its own: whatever fails for one (a plant in its dirs, a config that does not build,
        a bug) leaves that one failed, with the reason on its row and in the log, and the rest served."""
        for agent in list(self.own()):
            try:
                self._boot(agent)
            except Exception as e:
                self._boot_failed(agent, e)
        self.ensure_manager()
        self.watch.step()

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
            self.restarts.died(agent, self.clock(), f"it could not be started: {reason}")

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
            with self.busy(name, "starting"):
                self.start_harness(agent)

    def start(self, name):
        agent = self.get(name)
        with self.busy(name, "starting"):
            self.restarts.operator_acts(name)
            Agent.update(desired="running").where(Agent.name == name).execute()
            self.start_harness(agent)

    def stop(self, name, graceful=True):
        agent = self.get(name)
        with self.busy(name, "stopping"):
            self.restarts.operator_acts(name)
            Agent.update(desired="stopped").where(Agent.name == name).execute()
            self.turn_ends(name, "the operator stopped it")
            self.backend.stop(name, self.layout.home(name), graceful=graceful)
            agent.desired = "stopped"

    def restart(self, name):
        agent = self.get(name)
        with self.busy(name, "restarting"):
            self.restarts.operator_acts(name)
            self.turn_ends(name, "the operator restarted it")
            self.backend.stop(name, self.layout.home(name), graceful=True)
            Agent.update(desired="running").where(Agent.name == name).execute()
            self.start_harness(agent)

    def rebuild(self, name, sha=None, deploy=None):
        """Apply a config commit (default: the applied main) and restart on it.

        With `deploy`, the applied repo's main moves only after the new
        config is running; if it cannot start, the agent is brought back
        on the config it had and the error is raised.
        """
        agent = self.get(name)
        rev = sha or "main"
        with self.busy(name, "rebuilding"):
            self.restarts.operator_acts(name)
            with self._meta_lock:  # nixos: the container is rebuilt from the meta flake at that commit
                self.backend.build(name, rev=sha)
            self.turn_ends(name, "it restarts on a rebuilt config")
            self.backend.stop(name, self.layout.home(name), graceful=True)
            Agent.update(desired="running").where(Agent.name == name).execute()
            try:
                self.start_harness(agent, rev=rev, apply_model=True)
            except wire.HiveError as e:
                log.error("%s did not start on %s: %s; bringing it back on its deployed config", name, rev, e)
                self.start_harness(agent)
                raise
            if deploy is not None:
                deploy()

    def update_meta(self):
        if self.backend.meta is None:
            raise wire.HiveError(f"the {self.backend.name} backend has no meta flake", "conflict")
        with self._meta_lock:
            self.backend.update_all()
        self.hub.publish("meta_inputs_changed", meta_inputs=self.meta_inputs(), node=self.node)

    def kill(self, name):
        self.get(name)
        with self.busy(name, "being killed"):
            # desired stays as it was: a killed agent that was meant to run shows failed,
            # and stays down until an operator starts it
            self.restarts.operator_acts(name, held=True)
            self.turn_ends(name, "the operator killed it")
            self.backend.kill(name, self.layout.home(name))

    def destroy(self, name, purge=False):
        if name == wire.MANAGER:
            raise wire.HiveError("the manager is part of the hive and cannot be destroyed", "forbidden")
        self.get(name)
        with self.busy(name, "being destroyed"):
            self.turn_ends(name, "the operator destroyed it")
            self.backend.kill(name, self.layout.home(name))
            with self._meta_lock:  # nixos: the container itself goes
                self.backend.destroy(name)
            self.sockets.close(name)
            trees.discard(os.path.dirname(self.layout.socket(name)), f"{name}'s socket dir")
            with core_db.atomic():
                Agent.delete().where(Agent.name == name).execute()
            self._registry_changed(name)
            self.restarts.operator_acts(name)
            self._sync_meta(exclude=name)
            if purge:
                trees.discard(self.layout.home(name), f"{name}'s state")
                self.repos.purge(name)
            self.broker.hold(name, False)
        self._tombstones_changed()
        log.info("destroyed %s%s", name, " and purged its state" if purge else "; its state is kept")

    def _tombstones_changed(self):
        aftermath.after("updating the dashboard's tombstones", lambda: self.hub.publish(
            "tombstones_changed", tombstones=self.tombstones(), node=self.node))

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
        self.watch.changed(name)

    def shutdown(self, graceful=True):
        """At core stop: stop every harness of ours (their desired state is kept)."""
        mine = list(self.own())
        for agent in mine:
            self.turn_ends(agent.name, "the core stopped")
        greenlets = [gevent.spawn(self.backend.stop, a.name, self.layout.home(a.name), graceful, 10.0)
                     for a in mine]
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
        self.lifecycle.watch.changed(self.name)
