"""The trees a principal can write, as the core (root) must touch them: checked, and whose they are.

An agent writes its state dir and its socket dir, every agent the shared
dir, the manager the proposed config repos. A link planted there and
followed by the core (a bind, a chmod, a git call) would turn the core's
rights into the principal's, so every path the core takes out of such a tree
goes through `open_dir`: opened one component at a time from a root the core
owns, never through a symbolic link, and handed on as the descriptor of the
very directory that was checked (a bind takes `--bind-fd`), since a name can
be swapped after any check and a descriptor cannot.

Each sandboxed principal is its own unprivileged uid on the host
(`ids`), and what it must write is handed over to that uid before it
starts (`hand_over`), without following a link or giving away a file that
has a second name elsewhere.
"""

import logging
import os
import shutil
import stat
import zlib

import gevent

from hyperhive import wire

log = logging.getLogger(__name__)

# Each principal's uid (and gid) on the host: one per name, from a block no
# distribution or systemd hands out (0x70000000-0x7FFDFFFF is unused by
# systemd's ranges; nspawn's picked ranges end below it, its foreign range
# starts above this block). A name maps to the same ids on every host and
# after a purge, with nothing to store.
ID_BASE = 0x70000000
ID_SPAN = 0x01000000


def ids(name):
    """The (uid, gid) a sandboxed principal runs as on the host."""
    n = ID_BASE + zlib.crc32(wire.check_name(name).encode()) % ID_SPAN
    return n, n


def root_of(path, roots):
    """The one of `roots` (the hive's own directories) that holds path, or path's parent when none does."""
    path = os.path.abspath(path)
    return next((r for r in roots if path == r or path.startswith(r.rstrip("/") + "/")), os.path.dirname(path))


def refusal(path, why, tree):
    return wire.HiveError(f"refusing {path}: {why}; the core never follows a link planted in {tree} "
                          "(whoever can write there controls where it points). Remove or replace it with a "
                          "plain directory", "forbidden")


def open_dir(root, path, tree, mode=os.O_PATH):
    """A descriptor of directory `path`, reached from `root` one component at a time, none a link.

    `root` is the core's own (its ancestors may be the operator's links);
    everything below it, down to `path` itself, must be a plain directory.
    `mode` is O_PATH (for a bind) or O_RDONLY (for fchown and fchmod).
    Raises a HiveError naming the component that is not, and why.
    """
    root, path = os.path.abspath(root), os.path.abspath(path)
    if path != root and not path.startswith(root.rstrip("/") + "/"):
        raise wire.HiveError(f"refusing {path}: it is not under {root}, where {tree} lives", "forbidden")
    parts = [p for p in os.path.relpath(path, root).split("/") if p not in ("", ".")]
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise wire.HiveError(f"{root} does not exist", "not_found") from None
    try:
        here = root
        for i, part in enumerate(parts):
            here = os.path.join(here, part)
            last = i == len(parts) - 1
            try:
                # O_PATH|O_NOFOLLOW opens a link itself (to be told apart); O_NOFOLLOW alone refuses it
                nxt = os.open(part, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except FileNotFoundError:
                raise wire.HiveError(f"{here} does not exist", "not_found") from None
            try:
                st = os.fstat(nxt)
                if stat.S_ISLNK(st.st_mode):
                    raise refusal(here, f"it is a symbolic link (to {os.readlink(part, dir_fd=fd)!r})", tree)
                if not stat.S_ISDIR(st.st_mode):
                    raise refusal(here, "it is not a directory", tree)
                if last and mode != os.O_PATH:
                    # reopened for real through the checked descriptor: the same directory, not a name
                    real = os.open(".", mode | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=nxt)
                    os.close(nxt)
                    nxt = real
            except BaseException:
                os.close(nxt)
                raise
            os.close(fd)
            fd = nxt
        return fd
    except BaseException:
        os.close(fd)
        raise


def checked_dir(root, path, tree):
    """`path`, once `open_dir` accepts it: for callers that can only pass a name on (nspawn, git)."""
    os.close(open_dir(root, path, tree))
    return os.path.abspath(path)


def hand_over(fd, uid, gid, what, deep=True, readable=False):
    """Make the directory at `fd` (and, with `deep`, all below it) the principal's own: uid:gid.

    Walks by descriptors and never follows a link (links stay the core's:
    the principal may remove them all the same). A file with a second name
    (a hard link, maybe to a file of the host's, planted while the sandbox
    ran as root) is left as it is, and said so. With `readable`, what it
    hands over is also readable by all (what the core made under a umask of
    0007 is a repo other agents read). Returns how many entries changed
    owner; only a tree that is not its owner's yet is walked, so a start of
    an agent that ran before costs one fstat.
    """
    st = os.fstat(fd)
    if (st.st_uid, st.st_gid) == (uid, gid):
        return 0
    os.chown(fd, uid, gid)
    if readable:
        os.chmod(fd, stat.S_IMODE(st.st_mode) | 0o055)
    changed, kept = 1, []
    if deep:
        for _, dirs, files, dir_fd in os.fwalk(".", dir_fd=fd, follow_symlinks=False):
            for entry in dirs + files:
                try:
                    est = os.stat(entry, dir_fd=dir_fd, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if stat.S_ISLNK(est.st_mode) or (est.st_uid, est.st_gid) == (uid, gid):
                    continue
                if not stat.S_ISDIR(est.st_mode) and est.st_nlink > 1:
                    kept.append(entry)
                    continue
                os.chown(entry, uid, gid, dir_fd=dir_fd, follow_symlinks=False)
                if readable:  # not a link (skipped above), so chmod acts on the entry itself
                    more = 0o055 if stat.S_ISDIR(est.st_mode) or est.st_mode & 0o100 else 0o044
                    os.chmod(entry, stat.S_IMODE(est.st_mode) | more, dir_fd=dir_fd)
                changed += 1
    if kept:
        log.warning("%s: left %d file(s) with a second name elsewhere to their owner, not to uid %d: %s",
                    what, len(kept), uid, ", ".join(kept[:10]))
    return changed


def own_entry(dir_fd, name, uid, gid, mode=None, kinds=(stat.S_IFREG, stat.S_IFSOCK)):
    """Give one entry the core made in a principal's directory to uid:gid (and `mode`); never through a
    link, never a file with a second name. False when there is no such plain entry."""
    try:
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    try:
        st = os.fstat(fd)
        if stat.S_IFMT(st.st_mode) not in kinds or st.st_nlink != 1:
            log.warning("left %s alone: it is not a plain file or socket of its own (mode %o, %d names)",
                        name, st.st_mode, st.st_nlink)
            return False
        # through the descriptor's /proc name: the inode just checked, whatever the name points to by now
        path = f"/proc/self/fd/{fd}"
        if (st.st_uid, st.st_gid) != (uid, gid):
            os.chown(path, uid, gid)
        if mode is not None and stat.S_IMODE(st.st_mode) != mode:
            os.chmod(path, mode)
        return True
    finally:
        os.close(fd)


def copy_tree(src_fd, dest, what, keep, tree, max_bytes, skip=None, prefix="."):
    """Copy the entries `keep` of the directory at src_fd (a principal's, in `tree`) into dest, whole,
    opening nothing through a link: a link, a special file, or a file with a second name its owner does
    not own is refused, and so is more than max_bytes in all. `skip` maps a subdirectory to the names
    in it left out; `prefix` is how the copied directory is named in a refusal (e.g. `.git`)."""
    owner = os.fstat(src_fd).st_uid
    total = 0
    for top, dirs, files, dir_fd in os.fwalk(".", dir_fd=src_fd, follow_symlinks=False):
        rel = os.path.normpath(top)
        if rel == ".":
            dirs[:] = [d for d in dirs if d in keep]
            files = [f for f in files if f in keep]
        dirs[:] = [d for d in dirs if d not in (skip or {}).get(rel, ())]
        os.makedirs(os.path.join(dest, rel), exist_ok=True)
        for entry in dirs + files:
            st = os.stat(entry, dir_fd=dir_fd, follow_symlinks=False)
            shown = os.path.normpath(os.path.join(prefix, rel, entry))
            if stat.S_ISLNK(st.st_mode):
                raise refusal(f"{what}'s {shown}", f"it is a symbolic link (to "
                              f"{os.readlink(entry, dir_fd=dir_fd)!r})", tree)
        for entry in files:
            shown = os.path.normpath(os.path.join(prefix, rel, entry))
            try:
                fd = os.open(entry, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
            except OSError as e:
                raise refusal(f"{what}'s {shown}", f"it cannot be opened as a plain file ({e.strerror})",
                              tree) from None
            with os.fdopen(fd, "rb") as f:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    raise refusal(f"{what}'s {shown}", "it is not a plain file", tree)
                if st.st_nlink > 1 and st.st_uid != owner:
                    raise refusal(f"{what}'s {shown}", "it has a second name elsewhere and is not the "
                                  "repo's owner's (a hard link to someone else's file)", tree)
                total += st.st_size
                if total > max_bytes:
                    raise wire.HiveError(f"{what} holds more than {max_bytes >> 20} MiB of history; "
                                         "the core reads no more than that (git gc it, or start it afresh)",
                                         "bad_argument")
                with open(os.path.join(dest, rel, entry), "wb") as out:
                    shutil.copyfileobj(f, out)


def discard(path, what):
    """Remove a tree a principal wrote, off the core's loop: renamed aside at once (its name is
    free again, and tombstones skip the aside name), then deleted in a worker thread, since an
    agent decides how many files its tree holds. shutil.rmtree follows no link on Linux; what it
    cannot delete is logged with the path, never ignored."""
    if not os.path.lexists(path):
        return None
    aside = f"{path}.discarded-{os.urandom(4).hex()}"
    os.rename(path, aside)

    def failed(function, where, exc_info):
        log.error("could not delete %s of %s (%s): %s; remove it by hand", where, what,
                  getattr(function, "__name__", function), exc_info[1])

    def remove():
        shutil.rmtree(aside, onerror=failed)

    return gevent.get_hub().threadpool.spawn(remove)
