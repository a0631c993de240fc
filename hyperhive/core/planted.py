"""The core's own entries in a directory an agent may write, found replaced by anything and cleared safely.

An agent's socket directory is bound read-write into its sandbox (its page's
web.sock is made there), and its state dir is its own, so what the core keeps
in them -- the socket, the page secret, under nixos harness.env, the model
file -- may be found, at the next start, replaced by a directory, a fifo, a
socket of the agent's own or a link to the core's state dir. The core never
follows, opens or walks what it finds: a directory is renamed aside in the
same directory (it stays the agent's, its contents untouched, nothing in it
read or removed), anything else is unlinked (a link itself, never its
target), and the core then writes its own anew. What was cleared is told in
the log, naming the agent.
"""

import os
import secrets
import stat

KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISLNK, "a symlink"), (stat.S_ISFIFO, "a fifo"),
         (stat.S_ISSOCK, "a socket"), (stat.S_ISREG, "a file"))


def kind(st):
    """What an lstat result is, as a sentence says it ("a fifo")."""
    return next((said for test, said in KINDS if test(st.st_mode)), "a device node")


def _dir_fd(directory):
    return os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)


def lstat_in(directory, name):
    """What is at `directory/name`, not followed (None when nothing is)."""
    fd = _dir_fd(directory)
    try:
        return os.stat(name, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    finally:
        os.close(fd)


def clear(directory, name, only_dirs=False):
    """Clear `directory/name` for the core to write its own: a sentence saying what was there and where it
    went, or None when nothing was cleared. With `only_dirs`, only a directory is (os.replace puts a file
    over anything else in one step, a link included, never writing through it)."""
    fd = _dir_fd(directory)
    try:
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        if stat.S_ISDIR(st.st_mode):
            aside = f"{name}.planted-{secrets.token_hex(4)}"
            os.rename(name, aside, src_dir_fd=fd, dst_dir_fd=fd)
            return f"{os.path.join(directory, name)} was a directory; moved aside to {aside}"
        if only_dirs:
            return None
        os.unlink(name, dir_fd=fd)
        return f"{os.path.join(directory, name)} was {kind(st)}; removed"
    finally:
        os.close(fd)


def own_dir(path, mode=0o750):
    """Make `path` a directory (its parent is the core's): whatever else is there is unlinked, never
    followed -- a link to the core's state dir must not become the agent's socket directory. Returns a
    sentence when something was replaced."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        os.makedirs(path, mode=mode, exist_ok=True)
        return None
    if stat.S_ISDIR(st.st_mode):
        return None
    os.unlink(path)
    os.mkdir(path, mode)
    return f"{path} was {kind(st)}, not a directory; replaced by an empty one"
