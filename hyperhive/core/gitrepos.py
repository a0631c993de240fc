"""Every agent's config repos, and the only module in hyperhive that runs git.

Owns `<root>/proposed/<name>` (the manager commits there) and
`<root>/applied/<name>` (core only), the tag trail of the approval flow
(proposal/ → approved/ → building/ → deployed/ | failed/ | denied/, all
`<kind>/<approval id>`), and the rule that applied `main` only ever
fast-forwards, and only together with a `deployed/<id>` tag, and the push of an
applied repo to the forge (its mirror, scheduled by core/forge.py). Every git call goes
through `sh` with a fixed identity and none of the user's git config; a failed
call becomes a `wire.HiveError` naming what was attempted and git's own words.
"""

import contextlib
import os
import re
import shutil
import stat
import sys
import tempfile

import sh

from hyperhive import resources, wire
from hyperhive.core import trees

IDENTITY = ("hive-c0re", "hive-c0re@localhost")
KINDS = ("proposal", "approved", "building", "deployed", "failed", "denied", "cancelled")
TEMPLATES = ("agent.nix", "hive.json")
SHA_RE = re.compile(r"[0-9a-fA-F]{7,40}")
TAG_RE = re.compile(rf"(?:{'|'.join(KINDS)})/[0-9]+")
# Where proposed's branches land in applied; `+` because the manager may rewrite them.
FETCH_SPEC = "+refs/heads/*:refs/remotes/proposal-src/*"
# Command-line config outranks the repo's own .git/config, which in proposed the
# manager can write: never run its hooks or an fsmonitor command as core.
SAFE_CONFIG = ("-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false")
# What of a proposed repo's .git the core reads (a snapshot of it, see Repos.snapshot): the history and
# the refs, never its config, hooks or alternates.
HISTORY = ("HEAD", "packed-refs", "shallow", "refs", "objects")
MAX_SNAPSHOT_BYTES = 256 * 1024 * 1024
# An approval's diff is stored, streamed to every dashboard and printed by `pending`: a file past
# DIFF_FILE_BYTES shows as "Binary files … differ" (git's bigFileThreshold), and the whole is cut at
# DIFF_BYTES with a line saying where the rest is.
DIFF_FILE_BYTES = 256 * 1024
DIFF_BYTES = 1024 * 1024
PROPOSED = "the proposed config repos"


def _env():
    # Inherited GIT_* (GIT_DIR, GIT_INDEX_FILE from a hook, a user's GIT_AUTHOR_*)
    # would redirect or re-sign our calls, so start from an environment without them.
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_CONFIG_GLOBAL="/dev/null", GIT_CONFIG_NOSYSTEM="1", GIT_TERMINAL_PROMPT="0",
               GIT_AUTHOR_NAME=IDENTITY[0], GIT_AUTHOR_EMAIL=IDENTITY[1],
               GIT_COMMITTER_NAME=IDENTITY[0], GIT_COMMITTER_EMAIL=IDENTITY[1])
    return env


def _tail(stderr, lines=3):
    """git's reason in a line: its last fatal:/error: lines, else the last lines (hints bury the cause)."""
    text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else str(stderr or "")
    kept = [line.strip() for line in text.splitlines() if line.strip()]
    key = [line for line in kept if line.startswith(("fatal:", "error:"))]
    return " / ".join((key or kept)[-lines:]) or "git gave no reason"


def _git(repo, *args, doing, code="internal", env=None, **opts):
    """Run `git -C repo args`, with `env` added to its environment; returns stdout text (or the command
    with `_return_cmd`)."""
    try:
        git = sh.Command("git")
    except sh.CommandNotFound:
        raise wire.HiveError(f"could not {doing}: git is not installed (not on PATH)", "unavailable") from None

    def run():
        # sh gives commands a TTY by default: git would start a pager and colour its output.
        return git("-C", repo, *SAFE_CONFIG, *args, _env=dict(_env(), **(env or {})), _tty_out=False,
                   _decode_errors="replace", **opts)

    try:
        return off_the_hub(run)
    except sh.ErrorReturnCode as e:
        raise wire.HiveError(f"could not {doing}: {_tail(e.stderr)}", code) from None


def off_the_hub(fn):
    """Run fn in gevent's thread pool when called from the hub's thread, so the
    sockets keep serving while git works; directly anywhere else."""
    import threading

    gevent = sys.modules.get("gevent")
    if gevent is None or threading.current_thread() is not threading.main_thread():
        return fn()
    return gevent.get_hub().threadpool.apply(fn)


def _verify(repo, rev, doing):
    """The full sha `rev` names in repo, or None (`--verify -q` exits 1 for 'no such object')."""
    out = _git(repo, "rev-parse", "--verify", "-q", "--end-of-options", rev, doing=doing, _ok_code=[0, 1])
    return out.strip() or None


def _bounded(diff, whole):
    """The diff, or its first DIFF_BYTES (by characters, at a line's end) and a line saying how to see it whole."""
    if len(diff) <= DIFF_BYTES:
        return diff
    kept = diff[:diff.rfind("\n", 0, DIFF_BYTES) + 1]
    return (f"{kept}# … the diff is cut here: {len(diff)} characters in all, {len(kept)} shown; `{whole}` on the "
            "host shows it whole\n")


def _is_repo(path):
    return os.path.isdir(os.path.join(path, ".git"))


def _tag_name(kind, approval_id):
    if kind not in KINDS:
        raise wire.HiveError(f"tag kind {kind!r} is not one of {', '.join(KINDS)}")
    if isinstance(approval_id, bool) or not (
            (isinstance(approval_id, int) and approval_id >= 0)
            or (isinstance(approval_id, str) and re.fullmatch(r"[0-9]+", approval_id))):
        raise wire.HiveError(f"approval id {approval_id!r} must be a whole number of 0 or more")
    return f"{kind}/{int(approval_id)}"


class Repos:
    """The config repos of every agent under one root directory."""

    def __init__(self, root, proposed_owner=None, refs_changed=None):
        self.root = os.path.abspath(root)
        # refs_changed(name), after an applied repo's main or tags moved: the forge mirror pushes it
        self.refs_changed = refs_changed or (lambda name: None)
        # Separate roots: the manager gets all of proposed/ and none of applied/.
        self.proposed_root = os.path.join(self.root, "proposed")
        # The core's alone: where a repo is built before it is renamed into place, and where a proposed
        # repo is copied to be read (never inside proposed/, which the manager writes).
        self.staging = os.path.join(self.root, "staging")
        # (uid, gid) the manager's sandbox writes as, when it has its own: new proposed repos are its
        self.proposed_owner = proposed_owner

    def proposed(self, name):
        return os.path.join(self.proposed_root, wire.check_name(name))

    def applied(self, name):
        return os.path.join(self.root, "applied", wire.check_name(name))

    def applied_names(self):
        """Every agent with an applied config repo (what the forge mirrors)."""
        where = os.path.join(self.root, "applied")
        return sorted(n for n in os.listdir(where) if _is_repo(os.path.join(where, n))) if os.path.isdir(where) else []

    def exists(self, name):
        return self._is_proposed(name) and _is_repo(self.applied(name))

    def _is_proposed(self, name):
        """Whether name's proposed repo is there, a plain directory with a plain .git (links refused)."""
        try:
            self._check_proposed(name)
        except wire.HiveError as e:
            if e.code == "not_found":
                return False
            raise
        return True

    def _check_proposed(self, name):
        """name's proposed repo, once no link leads to it or to its .git (the manager writes them all)."""
        path = self.proposed(name)
        trees.checked_dir(self.proposed_root, path, PROPOSED)
        git_dir = os.path.join(path, ".git")
        try:
            st = os.lstat(git_dir)
        except FileNotFoundError:
            raise wire.HiveError(f"{path} is not a git repo", "not_found") from None
        if not stat.S_ISDIR(st.st_mode):
            raise trees.refusal(git_dir, "it is not a plain directory (a link, or a gitfile naming another "
                                "repository)", PROPOSED)
        return path

    def _need(self, name, which="applied"):
        if which == "proposed":
            try:
                return self._check_proposed(name)
            except wire.HiveError as e:
                if e.code != "not_found":
                    raise
        elif _is_repo(self.applied(name)):
            return self.applied(name)
        raise wire.HiveError(f"agent {name!r} has no {which} config repo; was its config initialised?",
                             "not_found")

    @contextlib.contextmanager
    def snapshot(self, name):
        """A private copy of name's proposed history to run git on; gone when the block ends.

        The manager writes its proposed repo, and git, run by the core on it,
        would follow whatever it planted: a .git/packed-refs linked to
        /etc/shadow comes back in git's error message, an alternates file or
        a linked objects dir reads another agent's applied repo, a config
        include parses any file. So the core reads none of it in place: it
        copies the refs and objects (HEAD, packed-refs, refs/, objects/; never
        the config, hooks or objects/info) into a directory of its own,
        opening each file without following a link and refusing a link, a
        special file, or a file with a second name it does not own.
        """
        src = self._need(name, "proposed")
        os.makedirs(self.staging, mode=0o700, exist_ok=True)
        dest = tempfile.mkdtemp(prefix=f"{name}-proposed-", dir=self.staging)
        try:
            fd = trees.open_dir(self.proposed_root, os.path.join(src, ".git"), PROPOSED, os.O_RDONLY)
            try:
                # objects/info is left out: alternates live there, naming another repo's objects
                trees.copy_tree(fd, dest, f"{name}'s proposed config repo", HISTORY, PROPOSED,
                                MAX_SNAPSHOT_BYTES, skip={"objects": {"info"}}, prefix=".git")
            finally:
                os.close(fd)
            with open(os.path.join(dest, "config"), "w") as f:
                f.write("[core]\n\trepositoryformatversion = 0\n\tbare = true\n")
            yield dest
        finally:
            shutil.rmtree(dest, ignore_errors=True)

    def _commit_in(self, name, repo, ref, which="applied"):
        """check_commit_ref, then the full sha of that commit in repo, or not_found."""
        sha = _verify(repo, f"{self.check_commit_ref(ref)}^{{commit}}", f"look up {ref} in {name}'s {which} repo")
        if not sha:
            raise wire.HiveError(f"{ref} is not a commit in {name}'s {which} config repo (unknown, ambiguous "
                                 "or not a commit)", "not_found")
        return sha

    # -- setting up --------------------------------------------------------------

    def init_agent(self, name, files=None):
        """Create both repos if missing (existing ones are left alone); returns applied main's sha."""
        proposed, applied = self.proposed(name), self.applied(name)
        if files is None:
            files = {f: resources.text(f"assets/templates/{f}").replace("{name}", name) for f in TEMPLATES}
        if not self._is_proposed(name):
            self._build(name, proposed, lambda tmp: self._seed_proposed(name, tmp, files), self.proposed_owner)
        if not _is_repo(applied):
            shutil.rmtree(applied + ".new", ignore_errors=True)  # where an older core built it
            self._build(name, applied, lambda tmp: self._seed_applied(name, tmp))
            self.refs_changed(name)
        return self.deployed_sha(name)

    def _build(self, name, path, fill, owner=None):
        # Built aside, in the core's own staging dir, and renamed into place: a crash never leaves a
        # half-made repo that a later init would mistake for a finished one, and the manager (who writes
        # proposed/) never sees one half-made, to swap a file of it for a link the core would then write
        # through. The finished repo becomes `owner`'s (uid, gid) before it appears.
        if os.path.lexists(path):
            raise wire.HiveError(f"{path} exists but is not a git repo; move it away and try again", "conflict")
        os.makedirs(self.staging, mode=0o700, exist_ok=True)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f"{name}-", dir=self.staging)
        try:
            fill(tmp)
            os.chmod(tmp, 0o755)  # mkdtemp's 0700 would keep the agent from its own (read-only) repo
            if owner is not None:
                fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
                try:
                    trees.hand_over(fd, *owner, f"{name}'s new config repo", readable=True)
                finally:
                    os.close(fd)
            try:
                os.rename(tmp, path)
            except OSError as e:
                raise wire.HiveError(f"cannot put {name}'s new config repo at {path}: {e.strerror} (something "
                                     "else appeared there meanwhile); move it away and try again", "conflict") from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    @staticmethod
    def _seed_proposed(name, repo, files):
        _git(repo, "init", "-q", "-b", "main", doing=f"create {name}'s proposed config repo")
        for rel, text in files.items():
            parts = os.path.normpath(rel).split(os.sep)
            if os.path.isabs(rel) or ".." in parts:
                raise wire.HiveError(f"config file path {rel!r} must stay inside the repo")
            target = os.path.join(repo, *parts)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "w") as f:
                f.write(text)
        _git(repo, "add", "-A", doing=f"stage {name}'s initial config")
        _git(repo, "commit", "-q", "--allow-empty", "-m", f"initial config for {name}",
             doing=f"commit {name}'s initial config")

    def _seed_applied(self, name, repo):
        _git(repo, "init", "-q", "-b", "main", doing=f"create {name}'s applied config repo")
        with self.snapshot(name) as proposed:
            _git(repo, "fetch", "-q", "--no-tags", proposed, FETCH_SPEC, doing=f"fetch {name}'s proposed config")
        sha = _verify(repo, "refs/remotes/proposal-src/main^{commit}", f"find {name}'s proposed main")
        if not sha:
            raise wire.HiveError(f"{name}'s proposed config repo has no main branch to start from", "not_found")
        _git(repo, "tag", "deployed/0", sha, doing=f"tag {name}'s initial config deployed/0")
        _git(repo, "merge", "-q", "--ff-only", sha, doing=f"check out {name}'s initial config")

    def purge(self, name):
        """Remove both repos."""
        shutil.rmtree(self.proposed(name), ignore_errors=True)
        shutil.rmtree(self.applied(name), ignore_errors=True)

    # -- proposals ---------------------------------------------------------------

    @staticmethod
    def check_commit_ref(ref):
        """A commit sha as given by the manager: 7-40 hex characters, returned lowercased."""
        if not isinstance(ref, str) or not SHA_RE.fullmatch(ref):
            shown = repr(ref) if not isinstance(ref, str) or len(ref) <= 50 else repr(ref[:50] + "…")
            raise wire.HiveError(f"commit_ref {shown} must be a commit sha (7 to 40 hex characters, as "
                                 "`git rev-parse HEAD` prints), never a branch or tag name")
        return ref.lower()

    def resolve(self, name, ref):
        """The full sha of the commit `ref` names in the proposed repo."""
        self.check_commit_ref(ref)
        with self.snapshot(name) as proposed:
            return self._commit_in(name, proposed, ref, "proposed")

    def proposed_main(self, name):
        """The full sha proposed's main names now: what a spawn starts on unless told otherwise."""
        with self.snapshot(name) as proposed:
            sha = _verify(proposed, "refs/heads/main^{commit}", f"find {name}'s proposed main")
        if not sha:
            raise wire.HiveError(f"{name}'s proposed config repo has no main branch; commit the config on main "
                                 "or name the commit with commit_ref", "not_found")
        return sha

    def pin_proposal(self, name, approval_id, ref):
        """Copy the manager's commit into applied and pin it as proposal/<id>; returns its sha."""
        applied = self._need(name)
        with self.snapshot(name) as proposed:
            sha = self._commit_in(name, proposed, ref, "proposed")
            # A bare sha is no refspec (fetch wants a remote ref name), so bring over every
            # branch; --no-tags, or tags the manager made would arrive in applied as if ours.
            _git(applied, "fetch", "-q", "--no-tags", proposed, FETCH_SPEC,
                 doing=f"fetch {name}'s proposed config into the applied repo")
        if not _verify(applied, f"{sha}^{{commit}}", f"look up {sha[:12]} in {name}'s applied repo"):
            raise wire.HiveError(f"commit {sha[:12]} is on no branch of {name}'s proposed repo; commit it on "
                                 "a branch (e.g. main) and ask again", "not_found")
        self.tag(name, "proposal", approval_id, sha)
        return sha

    def diff(self, name, sha):
        """Unified diff from what is deployed (applied main) to sha, bounded (DIFF_BYTES)."""
        applied = self._need(name)
        sha = self._commit_in(name, applied, sha)
        return _bounded(_git(applied, "-c", f"core.bigFileThreshold={DIFF_FILE_BYTES}", "diff", "--no-color",
                             "--no-ext-diff", "--no-textconv", "refs/heads/main", sha, "--",
                             doing=f"diff {name}'s deployed config against {sha[:12]}"),
                        f"git -C {applied} diff main {sha[:12]}")

    def spawn_diff(self, name, sha):
        """What a spawn on sha starts with, for the operator: the diff against applied main (the
        template) or, when there is none, every file of the config as added lines under a line saying so."""
        diff = self.diff(name, sha)
        if diff.strip():
            return diff
        applied = self._need(name)
        # git knows the empty tree without it being stored: diffing from it shows each file whole
        empty = _git(applied, "hash-object", "-t", "tree", "/dev/null", doing="name the empty tree").strip()
        whole = _bounded(_git(applied, "-c", f"core.bigFileThreshold={DIFF_FILE_BYTES}", "diff", "--no-color",
                              "--no-ext-diff", "--no-textconv", empty, sha, "--",
                              doing=f"list {name}'s config at {sha[:12]}"),
                         f"git -C {applied} show {sha[:12]}")
        return (f"# no change from {name}'s applied main ({self.deployed_sha(name)[:12]}); "
                f"it starts with these files:\n{whole}")

    # -- the tag trail -------------------------------------------------------------

    def tag(self, name, kind, approval_id, sha, message=None):
        """Tag <kind>/<id> at sha in applied, annotated with message when given."""
        applied = self._need(name)
        ref = _tag_name(kind, approval_id)
        sha = self._commit_in(name, applied, sha)
        existing = _verify(applied, f"refs/tags/{ref}^{{commit}}", f"look up tag {ref} of {name}")
        if existing == sha:
            return  # already there: a retry after a crash between tagging and recording it
        if existing:
            raise wire.HiveError(f"{name}'s tag {ref} already marks {existing[:12]}, not {sha[:12]}", "conflict")
        # verbatim: an error's lines starting with '#' would otherwise be stripped as comments
        note = ("-a", "--cleanup=verbatim", "-m", str(message)) if message is not None else ()
        _git(applied, "tag", *note, ref, sha, doing=f"tag {name}'s config {ref}")
        self.refs_changed(name)

    def check_fast_forward(self, name, sha):
        """The full sha, when applied main can fast-forward to it; else a conflict naming both."""
        applied = self._need(name)
        sha = self._commit_in(name, applied, sha)
        ancestor = _git(applied, "merge-base", "--is-ancestor", "refs/heads/main", sha, _ok_code=[0, 1],
                        _return_cmd=True, doing=f"compare {sha[:12]} with {name}'s deployed config")
        if ancestor.exit_code != 0:
            raise wire.HiveError(f"{sha[:12]} does not build on {name}'s deployed config "
                                 f"({self.deployed_sha(name)[:12]}); refusing a non-fast-forward deploy",
                                 "conflict")
        return sha

    def deploy(self, name, approval_id, sha):
        """Tag deployed/<id> and fast-forward applied main to sha: the one way main moves."""
        applied = self._need(name)
        sha = self.check_fast_forward(name, sha)
        self.tag(name, "deployed", approval_id, sha)
        _git(applied, "merge", "-q", "--ff-only", sha, doing=f"fast-forward {name}'s applied main to {sha[:12]}")
        self.refs_changed(name)

    def push(self, name, url, header=None):
        """Push applied main and every tag of its trail to url (the agent's repo on the forge); returns the
        sha of main pushed. No force: tags never move and main only fast-forwards, so a refusal means the
        forge holds history this repo does not, which the core will not overwrite (see docs/approvals.md).
        `header` (the credential) reaches this one git through its environment: never the repo's config,
        which the manager can read, nor a command line, which every user of the host can."""
        applied = self._need(name)
        sha = self.deployed_sha(name)  # pushed by its sha: what the row says was pushed is what was
        secret = {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "http.extraHeader", "GIT_CONFIG_VALUE_0": header}
        # a forge that stalls gives up after a minute; a redirect never takes the credential elsewhere
        _git(applied, "-c", "http.lowSpeedLimit=1", "-c", "http.lowSpeedTime=60", "-c", "http.followRedirects=false",
             "push", "-q", "--no-verify", "--", url, f"{sha}:refs/heads/main", "refs/tags/*:refs/tags/*",
             env=secret if header else None, code="unavailable", doing=f"push {name}'s applied config repo to {url}")
        return sha

    def deployed_sha(self, name):
        """applied main's sha. Every status row asks, so the ref is read from
        the repo's files (loose ref, then packed-refs) instead of forking git."""
        applied = self.applied(name)
        if not _is_repo(applied):
            return None
        git_dir = os.path.join(applied, ".git")
        try:
            with open(os.path.join(git_dir, "refs", "heads", "main")) as f:
                return f.read().strip() or None
        except FileNotFoundError:
            pass
        try:
            with open(os.path.join(git_dir, "packed-refs")) as f:
                for line in f:
                    sha, _, ref = line.strip().partition(" ")
                    if ref == "refs/heads/main":
                        return sha
        except FileNotFoundError:
            pass
        return _verify(applied, "refs/heads/main", f"read {name}'s deployed config")

    def read(self, name, path, rev="main", repo="applied"):
        """A file's text at rev in the applied (or proposed) repo."""
        if repo not in ("applied", "proposed"):
            raise wire.HiveError(f"repo must be 'applied' or 'proposed', got {repo!r}")
        if not isinstance(rev, str) or not rev or rev.startswith("-") or not isinstance(path, str) or not path:
            self._need(name, repo)
            raise wire.HiveError(f"cannot read {path!r} at {rev!r}: give a file path and a revision")
        # cat-file, not show: a directory must be 'not found', not a tree listing
        if repo == "proposed":
            with self.snapshot(name) as where:
                return _git(where, "cat-file", "blob", f"{rev}:{path}", code="not_found",
                            doing=f"read {path} at {rev} in {name}'s {repo} config repo")
        return _git(self._need(name, repo), "cat-file", "blob", f"{rev}:{path}", code="not_found",
                    doing=f"read {path} at {rev} in {name}'s {repo} config repo")


    def files(self, name, rev="main", limit=64, max_bytes=256 * 1024):
        """{path: text} of the config at rev in the applied repo: what the operator reviews."""
        where = self._need(name)
        if not isinstance(rev, str) or not rev or rev.startswith("-"):
            raise wire.HiveError(f"cannot list {name}'s config at {rev!r}: give a revision")
        listing = _git(where, "ls-tree", "-r", "-l", "-z", rev, code="not_found",
                       doing=f"list {name}'s config at {rev}")
        out = {}
        for entry in [e for e in listing.split("\0") if e][:limit]:
            meta, _, path = entry.partition("\t")
            size = meta.split()[3]
            if size == "-":  # a submodule: nothing to show
                continue
            if int(size) > max_bytes:
                out[path] = f"({size} bytes; too large to show here)"
                continue
            out[path] = self.read(name, path, rev=rev)
        return out


class WorkTree:
    """Plain commits in a repo the core owns whole (the meta flake): what MetaFlake needs."""

    def init(self, path):
        """Make path a git repo on main; a repo already there is left alone."""
        os.makedirs(path, exist_ok=True)
        if not _is_repo(path):
            _git(path, "init", "-q", "-b", "main", doing=f"create a git repo at {path}")

    def commit_all(self, path, message):
        """Stage everything (deletions too) and commit; None when nothing changed, else the sha."""
        _git(path, "add", "-A", doing=f"stage the changes in {path}")
        staged = _git(path, "diff", "--cached", "--quiet", doing=f"look for changes in {path}",
                      _ok_code=[0, 1], _return_cmd=True)
        if staged.exit_code == 0:
            return None
        _git(path, "commit", "-q", "--no-verify", "-m", message, doing=f"commit in {path}")
        return _verify(path, "HEAD", f"read {path}'s HEAD")

    def restore(self, path, relpath):
        """Put one file back to HEAD, in the index and the working tree."""
        _git(path, "checkout", "HEAD", "--", relpath, doing=f"restore {relpath} in {path}")
