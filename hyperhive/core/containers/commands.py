"""Running the host's container tools (nixos-container, nix, journalctl): one command at a time, through sh.

`run` is the one way the nixos backend and the meta flake run a command:
started in the background and polled, so a long build never blocks the
gevent hub; a failure is a `CommandFailed` (a `wire.HiveError`) whose
sentence names the command and the tail of its stderr, keeping its output
for a caller that looks closer; a tool missing from PATH says how to get it.
"""

import time

import sh

from hyperhive import wire

STDERR_TAIL = 1500

HINTS = {
    "nixos-container": "the nixos backend needs a NixOS host with containers enabled "
                       "(or run serve with --backend bwrap or --backend process)",
    "nix": "the meta flake needs Nix 2.19 or later with flakes enabled",
    "journalctl": "reading a container's log needs systemd's journalctl",
}


class CommandFailed(wire.HiveError):
    """A command that ran and failed (or never ran); keeps its output for callers that look closer."""

    def __init__(self, message, code="unavailable", stdout="", stderr="", timed_out=False):
        super().__init__(message, code)
        self.stdout, self.stderr, self.timed_out = stdout, stderr, timed_out


def _tail(text):
    text = text.strip()
    if len(text) > STDERR_TAIL:
        text = "…" + text[-STDERR_TAIL:]
    return text


def run(*argv, cwd=None, timeout=None):
    """Run one command through sh and return its stdout, or raise CommandFailed.

    Started in the background and polled with time.sleep, never a blocking
    wait: in the gevent-patched core that sleep yields, so a minutes-long nix
    build does not freeze every socket, and the timeout works (sh's own
    `_timeout` and foreground wait block the hub and never fire there).
    """
    shown = " ".join(argv)
    try:
        command = sh.Command(argv[0])
    except sh.CommandNotFound:
        raise CommandFailed(f"`{argv[0]}` is not on PATH, so `{shown}` could not run; "
                            f"{HINTS.get(argv[0], 'install it')}") from None
    try:
        proc = command(*argv[1:], _cwd=cwd, _bg=True, _bg_exc=False, _tty_out=False,
                       _encoding="utf-8", _decode_errors="replace")
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.002
        while proc.is_alive():
            if deadline is not None and time.monotonic() >= deadline:
                proc.kill()
                try:
                    proc.wait()
                except sh.ErrorReturnCode:
                    pass
                raise CommandFailed(f"`{shown}` did not finish within {timeout:g}s", timed_out=True)
            time.sleep(delay)
            delay = min(delay * 1.5, 0.05)
        proc.wait()
        return str(proc)
    except sh.ErrorReturnCode as e:
        out = e.stdout.decode(errors="replace")
        err = e.stderr.decode(errors="replace")
        said = _tail(err or out) or "it printed nothing"
        raise CommandFailed(f"`{shown}` failed (exit {e.exit_code}): {said}", stdout=out, stderr=err) from None


def nix(*args, cwd=None):
    """The `nix` callable MetaFlake takes."""
    return run("nix", *args, cwd=cwd)
