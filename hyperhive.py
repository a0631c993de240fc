"""hyperhive: argv (or the name it was started under) picks the role; the role is imported lazily.

This file is also the pyz's __main__.py. Serving roles patch gevent before
anything else is imported; the MCP server and the admin CLI never import
gevent, so they start fast.
"""

import os
import sys

# role word -> sub-word -> (module, how gevent patches it: None = not at all)
ROLES = {
    "serve": {None: ("hyperhive.core.daemon", "core")},
    "agent": {"serve": ("hyperhive.harness.main", "all"), "mcp": ("hyperhive.harness.mcp", None)},
    "manager": {"serve": ("hyperhive.harness.main", "all"), "mcp": ("hyperhive.harness.mcp", None)},
}
# The core runs git and nixos-container through `sh`, which forks and reaps its
# own children from threads. gevent's patched os.waitpid and its child watcher
# (a SIGCHLD handler reaping with waitpid(-1)) would steal those children and
# hang sh, so the core keeps the stdlib's os, signal and subprocess.
PATCHES = {"all": {}, "core": {"os": False, "signal": False, "subprocess": False}}
# Installed as symlinks to the pyz, the program's name says the role.
ALIASES = {"hive-c0re": [], "hive-ag3nt": ["agent"], "hive-m1nd": ["manager"]}
CLI = "hyperhive.cli"


def resolve(argv0, args):
    """(module name, gevent patch profile or None, argv for the module) for a command line."""
    args = ALIASES.get(os.path.basename(argv0), []) + list(args)
    role = ROLES.get(args[0]) if args else None
    if role is None:
        return CLI, None, args
    sub = args[1] if len(args) > 1 and args[1] in role else None
    if sub not in role:
        return CLI, None, args  # `agent` alone or `agent nonsense`: the CLI explains
    module, patch = role[sub]
    return module, patch, args


def main():
    module, patch, args = resolve(sys.argv[0], sys.argv[1:])
    if patch:
        from gevent import monkey

        monkey.patch_all(**PATCHES[patch])
    __import__(module)
    sys.exit(sys.modules[module].main(args))


if __name__ == "__main__":
    main()
