"""The meta flake: one core-owned flake at `<state>/meta/` pinning every agent's applied config.

Owns three files in that git repo and nothing else: `agents.json` (which
agents exist, where their applied repo is, and the rev each is pinned to),
`flake.nix` (generated from it: one `agent-<name>` input per agent and one
`nixosConfigurations.<name>` per agent) and `flake.lock`. The container
backend builds `<meta>#<name>`, so the lock is the record of what every
container runs, and the git log of this repo is the history of it.

Every change is one operation at a time, in two phases around the build the
caller runs between them: `prepare` (save the three files' bytes, then move
the lock), then `finalize` (commit) or `abort` (put the saved bytes back, so
git is clean and the old lock is exactly as it was). A marker in `.git/`
records the operation, so a core that died mid-build rolls it back at the
next `sync`.

`prepare(name, rev)` pins the input to that commit in flake.nix
(`?rev=<sha>&allRefs=1`): an approved commit is built before applied's
`main` moves to it (it is only tagged `building/<id>` then), so following
HEAD would build the old config. `prepare(name)` goes back to following HEAD.
`prepare_all` (the `update` approval) moves nixpkgs and every unpinned input.

With a container source (the core's --container-source: a directory holding
hyperhive.pyz and nix/templates/), the flake has a `hyperhive` input on it
(`path:`, flake = false) and every configuration adds the harness template
(agent-base.nix, or manager.nix for the manager) and sets hyperhive.name and
hyperhive.pyz, so host and containers run the same build. agents.json
records the source each agent was last built from; `stale(name)` says when
that is not the current one (the package was upgraded) and the container
needs a rebuild to catch up.

Needs Nix >= 2.19 (or Lix): the lock is moved with `nix flake update <input>`.
The older spelling, `nix flake lock --update-input <input>`, is deprecated
there and gone in Lix, so only the current one is used.
"""

import json
import logging
import os
import platform
import re

from hyperhive import files, wire
from hyperhive.core import trees

log = logging.getLogger(__name__)

FILES = ("agents.json", "flake.nix", "flake.lock")
ALL = None  # the operation key of `prepare_all`: every input at once
_SYNC = object()  # sync's key: no finalize/abort from outside can ever name it
# Characters a path may have and still go unquoted into a git+file URL.
SAFE_PATH = re.compile(r"/[A-Za-z0-9._/@+-]*")
REV = re.compile(r"[0-9a-f]{40}")
SOURCE_INPUT = "hyperhive"  # never an agent's: theirs are all agent-<name>


def _code(e):
    return e.code if isinstance(e, wire.HiveError) else "internal"


def input_name(name):
    return f"agent-{wire.check_name(name)}"


def _nix_string(s):
    """A Nix string literal; only ever fed checked names and paths, escaped anyway."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("${", "\\${") + '"'


def render(agents, nixpkgs, system, source=None):
    """flake.nix for {name: {"path", "rev"}}: every attribute name quoted, since
    an agent may be called `if` or `in`. With `source`, each configuration also
    gets the harness template and the pyz from there (the `hyperhive` input)."""
    inputs = [f"    {_nix_string('nixpkgs')} = {{ url = {_nix_string(nixpkgs)}; }};"]
    hive = "${inputs." + _nix_string(SOURCE_INPUT) + "}"
    if source:
        # flake = false: the installed package's share/hyperhive, not a flake
        inputs.append(f"    {_nix_string(SOURCE_INPUT)} = {{ url = {_nix_string('path:' + source)}; flake = false; }};")
    configs = []
    for name in sorted(agents):
        url = "git+file://" + agents[name]["path"]
        if agents[name].get("rev"):
            # allRefs: the rev under review is tagged building/<id>, not yet on main
            url += f"?rev={agents[name]['rev']}&allRefs=1"
        # flake = false: an applied repo is a directory holding agent.nix, not a flake
        inputs.append(f"    {_nix_string(input_name(name))} = {{ url = {_nix_string(url)}; flake = false; }};")
        harness, base = "", ""
        if source:
            harness = (f"\n            hyperhive.name = {_nix_string(name)};"
                       f"\n            hyperhive.uid = {trees.ids(name)[0]};"
                       f"\n            hyperhive.pyz = \"{hive}/hyperhive.pyz\";")
            template = "manager.nix" if name == wire.MANAGER else "agent-base.nix"
            base = f"\n          \"{hive}/nix/templates/{template}\""
        configs.append(f"""      {_nix_string(name)} = nixpkgs.lib.nixosSystem {{
        system = {_nix_string(system)};
        modules = [
          "${{inputs.{_nix_string(input_name(name))}}}/agent.nix"
          ({{ lib, ... }}: {{
            boot.isContainer = true;
            networking.hostName = lib.mkDefault {_nix_string("h-" + name)};{harness}
          }}){base}
        ];
      }};""")
    return "\n".join([
        "# Generated by hyperhive from agents.json; edits here are overwritten.",
        "{",
        '  description = "hyperhive meta flake: every agent\'s applied config, pinned";',
        "  inputs = {", *inputs, "  };",
        "  outputs = { self, nixpkgs, ... }@inputs: {",
        "    nixosConfigurations = {", *configs, "    };",
        "  };",
        "}",
        ""])


class MetaFlake:
    """The meta flake repo at `path`; `nix(*args, cwd=)` runs nix, `git` is the git module."""

    def __init__(self, path, nix, git, nixpkgs="nixpkgs", system=None, source=None):
        self.path, self.nix, self.git = os.path.abspath(path), nix, git
        # "nixpkgs" is the host's registry entry: on NixOS that is the host's own pinned nixpkgs
        self.nixpkgs = nixpkgs
        self.system = system or f"{platform.machine()}-linux"
        self.source = os.path.abspath(source) if source else None
        if self.source and not SAFE_PATH.fullmatch(self.source):
            raise wire.HiveError(f"the container source {self.source!r} has characters a flake URL cannot carry "
                                 "unquoted; use letters, digits and . _ / @ + -")
        self._op = None  # {"key", "doing", "saved": {file: bytes or None}} of the operation in flight
        self._marker = os.path.join(self.path, ".git", "hyperhive-op.json")

    # -- reading -----------------------------------------------------------------------

    def _file(self, name):
        return os.path.join(self.path, name)

    def _read(self, name):
        try:
            with open(self._file(name), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def agents(self):
        """{name: {"path": applied repo, "rev": pinned sha or None}} as last written."""
        raw = self._read("agents.json")
        return json.loads(raw) if raw else {}

    def stale(self, name):
        """Whether `name`'s container was last built from another container source than the current one."""
        return self.source is not None and self.agents().get(name, {}).get("source") != self.source

    def _render(self, agents):
        return render(agents, self.nixpkgs, self.system, self.source).encode()

    def _rewrite(self, agents):
        """Write agents.json and flake.nix for `agents` where they differ (inside an operation)."""
        data = (json.dumps(agents, indent=2, sort_keys=True) + "\n").encode()
        if data != self._read("agents.json"):
            self._write("agents.json", data)
        text = self._render(agents)
        if text != self._read("flake.nix"):
            self._write("flake.nix", text)

    def locked_revs(self):
        """{input: locked rev} from flake.lock (what each container is built from)."""
        raw = self._read("flake.lock")
        if not raw:
            return {}
        nodes = json.loads(raw).get("nodes", {})
        return {k: v.get("locked", {}).get("rev") for k, v in nodes.items() if k != "root"}

    # -- the one operation in flight ------------------------------------------------------

    def _begin(self, key, doing):
        if self._op is not None:
            raise wire.HiveError(f"the meta flake is busy {self._op['doing']}; {doing} must wait until "
                                 "that finishes", "conflict")
        self._op = {"key": key, "doing": doing}
        self._save()

    def _save(self):
        """Take the files as they are now (always a committed state) as what a rollback returns to."""
        saved = self._op["saved"] = {f: self._read(f) for f in FILES}
        with open(self._marker, "w") as f:
            json.dump({"op": self._op["doing"], "existed": [f for f in FILES if saved[f] is not None]}, f)

    def _end(self):
        self._op = None
        try:
            os.unlink(self._marker)
        except FileNotFoundError:
            pass

    def _rollback(self):
        for name, data in self._op["saved"].items():
            if data is None:
                try:
                    os.unlink(self._file(name))
                except FileNotFoundError:
                    pass
            elif self._read(name) != data:
                self._write(name, data)
        self._end()

    def _write(self, name, data):
        files.replace(self._file(name), data)

    def _held(self, key, verb):
        if self._op is None or self._op["key"] != key:
            what = "every input" if key is ALL else repr(key)
            raise wire.HiveError(f"cannot {verb} the meta flake for {what}: no such operation is in flight",
                                 "conflict")

    def recover(self):
        """Roll back an operation a previous core left half done (it died mid-build)."""
        if self._op is not None or not os.path.exists(self._marker):
            return False
        with open(self._marker) as f:
            existed = json.load(f).get("existed", [])
        for name in FILES:
            if name in existed:
                self.git.restore(self.path, name)  # the op began from a committed state
            elif os.path.exists(self._file(name)):
                os.unlink(self._file(name))
        os.unlink(self._marker)
        return True

    # -- operations ------------------------------------------------------------------------

    def _run_nix(self, doing, after, *args):
        try:
            return self.nix(*args, cwd=self.path)
        except Exception as e:  # whatever the runner raised, the files go back and a sentence comes out
            self._rollback()
            raise wire.HiveError(f"could not {doing}; {after}. {e}", _code(e)) from None

    def sync(self, agents):
        """Make the flake list exactly `agents` ({name: applied repo path}); lock new inputs; commit.

        A known agent keeps its pinned rev unless its path changed. Two
        commits: the agent list first (nix reads only files git tracks), then
        the lock. Returns whether anything changed.
        """
        paths = {}
        for name, path in agents.items():
            wire.check_name(name)
            paths[name] = os.path.abspath(path)
            if not SAFE_PATH.fullmatch(paths[name]):
                raise wire.HiveError(f"{name!r}'s applied repo path {paths[name]!r} has characters a flake URL "
                                     "cannot carry unquoted; use letters, digits and . _ / @ + -")
        if not os.path.isdir(os.path.join(self.path, ".git")):
            os.makedirs(self.path, exist_ok=True)
            self.git.init(self.path)
        self.recover()
        old = self.agents()
        new = {}
        for name, path in paths.items():
            kept = old.get(name, {}) if old.get(name, {}).get("path") == path else {}
            new[name] = {"path": path, "rev": kept.get("rev")}
            if kept.get("source"):
                new[name]["source"] = kept["source"]  # what its container was built from
        data = (json.dumps(new, indent=2, sort_keys=True) + "\n").encode()
        text = self._render(new)
        if data == self._read("agents.json") and text == self._read("flake.nix") and self._read("flake.lock"):
            return False
        self._begin(_SYNC, "syncing the agent list")
        if data != self._read("agents.json") or text != self._read("flake.nix"):
            self._write("agents.json", data)
            self._write("flake.nix", text)
            self._commit("sync agents: " + (", ".join(sorted(new)) or "none"))
            self._save()
        # lock new inputs and drop removed ones, moving none of the others
        self._run_nix("lock the meta flake's new inputs",
                      "the agent list is saved and they get locked at their next rebuild", "flake", "lock")
        if self._read("flake.lock") != self._op["saved"]["flake.lock"]:
            self._commit("lock new inputs")
        self._end()
        return True

    def prepare(self, name, rev=None):
        """Phase one of a rebuild: move agent-<name> to `rev` (a full sha) or to its applied HEAD."""
        key = wire.check_name(name)
        if rev is not None and not REV.fullmatch(rev):
            raise wire.HiveError(f"rev {rev!r} is not a full 40-character commit sha")
        agents = self.agents()
        if key not in agents:
            raise wire.HiveError(f"the meta flake has no input for {name!r}; sync the agent list first",
                                 "not_found")
        self._begin(key, f"rebuilding {name!r}")
        agents[key]["rev"] = rev
        if self.source:
            agents[key]["source"] = self.source
        # also where a moved container source reaches flake.nix: nix re-locks an input whose url changed
        self._rewrite(agents)
        self._run_nix(f"update the meta flake's input for {name!r}", "the meta flake is unchanged",
                      "flake", "update", input_name(key))

    def prepare_all(self):
        """Phase one of the `update` approval: move every input (nixpkgs, unpinned agents)."""
        if self._read("flake.nix") is None:
            raise wire.HiveError("the meta flake has no agents yet; sync the agent list first", "not_found")
        self._begin(ALL, "updating every input")
        if self.source:
            agents = self.agents()
            for entry in agents.values():
                entry["source"] = self.source
            self._rewrite(agents)
        self._run_nix("update the meta flake's inputs", "the meta flake is unchanged", "flake", "update")

    def finalize(self, name, message):
        """Phase two after a good build: commit what was prepared (`name` ALL after prepare_all)."""
        self._held(name, "finalize")
        self._commit(message)
        self._end()

    def abort(self, name):
        """Phase two after a failed build: the three files back to their exact bytes; git stays clean.

        Returns False when nothing was in flight for `name` (safe in cleanup paths).
        """
        if self._op is None or self._op["key"] != name:
            return False
        self._rollback()
        return True

    def _commit(self, message):
        try:
            self.git.commit_all(self.path, message)
        except Exception as e:  # the git module's failure, whatever its type, must end as a sentence
            existed = [f for f, data in self._op["saved"].items() if data is not None]
            self._rollback()
            for name in existed:  # commit_all may have staged the new bytes; put the index back too
                try:
                    self.git.restore(self.path, name)
                except Exception as again:
                    log.error("could not reset %s in %s after a failed commit: %s", name, self.path, again)
            raise wire.HiveError(f"could not commit the meta flake ({message}); it is unchanged. {e}",
                                 _code(e)) from None
