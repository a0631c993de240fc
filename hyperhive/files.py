"""Replacing a file whole or not at all, never through a link: the one way the hive writes a file anew.

The data goes to a fresh temp name beside the target (random, opened with
O_EXCL | O_NOFOLLOW, so nothing planted at a temp name is written through),
its mode is set whatever the umask, and `os.replace` puts it over whatever
sits at the name (a link included, never the link's target) in one step: a
reader sees the old file or the new one, never half of one. A directory at
the name is the one thing it cannot replace; the core clears one first where
an agent could have planted it (core/planted.py). Standard library only.
"""

import os


def replace(path, data, mode=0o644):
    """Write `data` (str or bytes) to `path` atomically with `mode`; returns `path`."""
    tmp = f"{path}.{os.urandom(8).hex()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data.encode() if isinstance(data, str) else data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass  # os.replace took it
        raise
    return path
