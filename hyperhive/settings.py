"""The options of `serve`: one table (flag, default, help) and the computed defaults.

The core's docopt usage and README's option list must both carry every row
of this table; a test holds them to it, so the docs cannot drift from what
the daemon accepts.
"""

import os


def default_state_dir():
    if os.environ.get("HIVE_STATE_DIR"):
        return os.environ["HIVE_STATE_DIR"]
    if os.geteuid() == 0:
        return "/var/lib/hyperhive"
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return os.path.join(base, "hyperhive")


def default_host_socket():
    return os.environ.get("HIVE_HOST_SOCKET") or os.path.join(default_state_dir(), "run", "host.sock")


# (option as docopt writes it, default or None, help)
SERVE_OPTIONS = (
    ("--state-dir DIR", "env HIVE_STATE_DIR; as root /var/lib/hyperhive, else ~/.local/state/hyperhive",
     "where the hive keeps its database, agents and config repos"),
    ("--run-dir DIR", "<state-dir>/run", "where the sockets live"),
    ("--backend NAME", "auto", "agent containers: auto, nixos, bwrap, process"),
    ("--claude PATH", "env HIVE_CLAUDE_BIN, else claude", "the claude binary the harnesses run"),
    ("--container-source DIR", "the directory hyperhive.pyz runs from",
     "what the nixos backend builds containers from: hyperhive.pyz and nix/templates/"),
    ("--pass-env NAME", None, "forward this environment variable to every harness (repeatable)"),
    ("--dashboard-port PORT", "7000", "the dashboard's TCP port; 0 picks a free one, off serves none"),
    ("--listen ADDR", "127.0.0.1", "the address the dashboard listens on"),
    ("--log-level LEVEL", "info", "debug, info, warning or error"),
    ("--domain NAME", None, "the hive's public domain name, as `urls` answers it"),
    ("--forge-url URL", None, "mirror each agent's applied config repo to <URL>/<name>.git"),
    ("--forge-credential-file PATH", None, "the file holding user:token for the forge"),
    ("--claude-mode MODE", "session", "session: one long-lived claude per agent, turns written to it; spawn: one "
                                      "claude per turn, for a CLI without stream-json input"),
    ("--hang-seconds N", "300", "a turn with no output from claude for N seconds is ended as hung and its "
                                "messages come again"),
    ("--recycle-turns N", "200", "a session's claude is replaced (resuming its conversation) between turns "
                                 "after N turns"),
    ("--recycle-rss-mb N", "2048", "... or above N MiB resident"),
    ("--recycle-idle N", "21600", "... or after N seconds idle"),
    ("--database URL", "sqlite:///<state-dir>/hive.db",
     "the hive's database: sqlite:///PATH, or postgresql://… shared by several cores (a password belongs in "
     "PGPASSFILE, never the URL)"),
    ("--node NAME", "the name it ran under before, kept in the state dir, else the host's name", "this core's name in a hive of several; it runs only its own agents"),
)

