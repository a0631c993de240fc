"""What an agent may read and write on the host: its own state dir and the hive's shared dir.

Owns three things every side needs the same way, so it is a leaf (stdlib and
the wire only): the file references found in a message body (`scan`), the
translation of a path as an agent names it inside its container into the
host's (`Reach.resolve`), and opening a file under one of those roots
without following a symlink anywhere on the way (`Reach.open`). An agent
owns its directory and may plant a symlink in it; whoever reads or writes
there for it (the core, the pages) goes through `open`, so a link never
takes them outside.
"""

import errno
import os
import re
import stat

from hyperhive import wire

MAX_REFS = 16  # file references kept per message: the first this many distinct paths a body names
MAX_MENTIONS = 256  # path mentions read per body, repeats included: later ones are not looked at
MAX_PATH = 1024
MAX_DEPTH = 64  # components of a path, its file included
PREVIEW_BYTES = 64 * 1024
# An absolute path whose last segment looks like `name.ext` (a directory mention does not count), of at
# most MAX_DEPTH components of at most 255 characters. Every body an agent sends is scanned on the core's
# loop, so the scan must stay linear: the "/" comes first (the engine skips to each one in C), a path may
# not start right after a character a path holds (else "/@/@/@…" starts a match at every slash, each
# running to the end: one 512 KiB body cost half an hour), and the bounds cap what one start can try.
PATH_RE = re.compile(r"/(?<![\w/.~@+-]/)(?:[\w.@+-]{1,255}/){0,%d}[\w@+-][\w.@+-]{0,241}\.[A-Za-z0-9]{1,12}(?![\w/])"
                     % (MAX_DEPTH - 1))


def scan(body):
    """The distinct candidate paths in a message body, in order of appearance: at most MAX_REFS, from its
    first MAX_MENTIONS path mentions."""
    if "/" not in body or "." not in body:  # the common case costs two scans of C code
        return []
    seen = []
    for mentions, match in enumerate(PATH_RE.finditer(body), 1):
        path = match.group(0)
        if path not in seen and len(path) <= MAX_PATH:
            seen.append(path)
            if len(seen) == MAX_REFS:
                break
        if mentions == MAX_MENTIONS:
            break
    return seen


def _parts(path):
    """A path's components, or a sentence: absolute, no `..`, nothing but names."""
    if not isinstance(path, str) or not path:
        raise wire.HiveError("a file path must be a non-empty string")
    if len(path) > MAX_PATH:
        raise wire.HiveError(f"the file path is {len(path)} characters; the limit is {MAX_PATH}")
    if "\0" in path:
        raise wire.HiveError("a file path may not contain a NUL byte")
    if not path.startswith("/"):
        raise wire.HiveError(f"{path!r} is relative; give the absolute path, as you see it in your container")
    parts = [p for p in path.split("/") if p and p != "."]
    if ".." in parts:
        raise wire.HiveError(f"{path!r} climbs with '..'; give the direct path")
    if len(parts) > MAX_DEPTH:  # each one is a system call on the way down
        raise wire.HiveError(f"the file path is {len(parts)} directories deep; the limit is {MAX_DEPTH}")
    return parts


class Reach:
    """Roots an agent may reach: `(label, inside, host)`, where `inside` is the root as the agent names it."""

    def __init__(self, roots):
        self.listed = [(label, os.path.normpath(inside), os.path.normpath(host)) for label, inside, host in roots]
        # longest inside prefix first: a root nested in another wins
        self.roots = sorted(self.listed, key=lambda r: -len(r[1]))

    def describe(self):
        return " and ".join(f"{inside} ({label})" for label, inside, _ in self.listed)

    def resolve(self, path):
        """(label, host root, components under it) of a path inside one of the roots, or a sentence."""
        parts = _parts(path)
        for label, inside, host in self.roots:
            base = [p for p in inside.split("/") if p]
            if parts[:len(base)] == base:
                return label, host, parts[len(base):]
        raise wire.HiveError(f"{path} is outside what can be reached here: {self.describe()}", "forbidden")

    def host_path(self, path):
        label, host, rest = self.resolve(path)
        return os.path.join(host, *rest)

    def open(self, path, flags=os.O_RDONLY, mode=0o644):
        """An fd for `path`, walked from its root one component at a time, no symlink followed.

        Raises HiveError (not_found / forbidden) with the path as given."""
        label, host, rest = self.resolve(path)
        if not rest:
            raise wire.HiveError(f"{path} is the {label} directory itself, not a file")
        try:
            fd = os.open(host, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as e:
            raise wire.HiveError(f"the {label} directory is not there ({e.strerror})", "not_found") from None
        try:
            for i, name in enumerate(rest):
                last = i == len(rest) - 1
                want = (flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC) if last else \
                    (os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
                try:
                    nxt = os.open(name, want, mode, dir_fd=fd)
                except OSError as e:
                    raise _walk_error(path, "/".join(rest[:i + 1]), e, last) from None
                os.close(fd)
                fd = nxt
            if stat.S_ISREG(os.fstat(fd).st_mode):
                return _clear_nonblock(fd)
            raise wire.HiveError(f"{path} is not a regular file", "forbidden")
        except BaseException:
            os.close(fd)
            raise

    def size(self, path):
        """The size of a regular file in reach (HiveError otherwise)."""
        fd = self.open(path)
        try:
            return os.fstat(fd).st_size
        finally:
            os.close(fd)

    def preview(self, path, limit=PREVIEW_BYTES):
        """The head of a file for a page: {path, size, truncated, binary, text}."""
        fd = self.open(path)
        try:
            size = os.fstat(fd).st_size
            data = os.read(fd, limit)
        finally:
            os.close(fd)
        binary = b"\0" in data[:8192]
        text = None if binary else data.decode("utf-8", errors="replace")
        return {"path": path, "size": size, "truncated": size > len(data), "binary": binary, "text": text}

    def write(self, path, text):
        """Create or replace a file in reach with text; returns its host path. The directory must exist."""
        fd = self.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            if os.fstat(fd).st_nlink > 1:  # a hard link may share its inode with a file out of reach
                raise wire.HiveError(f"{path} has other hard links; write to a file of its own", "forbidden")
            os.ftruncate(fd, 0)
            os.fchmod(fd, 0o644)  # the core's umask (0007 under systemd) must not hide it from its agent's uid
            data = memoryview(text.encode())
            while data:
                data = data[os.write(fd, data):]
        finally:
            os.close(fd)
        return self.host_path(path)

    def refs(self, paths):
        """Of the candidate paths `scan` found, those naming a regular file in reach, as stored on a message.

        At most MAX_REFS paths of at most MAX_DEPTH components each: a bounded number of system calls."""
        found = []
        for path in paths[:MAX_REFS]:
            try:
                _, host, rest = self.resolve(path)
                size = self.size(path)
            except wire.HiveError:
                continue
            found.append({"path": path, "host_path": os.path.join(host, *rest), "size": size})
        return found


def _walk_error(path, where, error, last):
    if error.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
        return wire.HiveError(f"{path}: {where} is a symlink or not a directory; links are not followed here",
                              "forbidden")
    if error.errno == errno.ENOENT:
        return wire.HiveError(f"{path} does not exist" if last else f"{path}: the directory {where} does not exist",
                              "not_found")
    return wire.HiveError(f"{path}: {error.strerror}", "forbidden")


def _clear_nonblock(fd):
    os.set_blocking(fd, True)
    return fd
