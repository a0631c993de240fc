"""hyperhive: argv (or the name it was started under) picks the role; the role is imported lazily.

This file is also the pyz's __main__.py. Serving roles patch gevent before
anything else is imported; the MCP server and the admin CLI never import
gevent, so they start fast.
"""

import os
import sys

# role word -> sub-word -> (module, serving?)
ROLES = {
    "serve": {None: ("hyperhive.core.daemon", True)},
    "agent": {"serve": ("hyperhive.harness.main", True), "mcp": ("hyperhive.harness.mcp", False)},
    "manager": {"serve": ("hyperhive.harness.main", True), "mcp": ("hyperhive.harness.mcp", False)},
}
# Installed as symlinks to the pyz, the program's name says the role.
ALIASES = {"hive-c0re": [], "hive-ag3nt": ["agent"], "hive-m1nd": ["manager"]}
CLI = "hyperhive.cli"


def resolve(argv0, args):
    """(module name, serving?, argv for the module) for a command line."""
    args = ALIASES.get(os.path.basename(argv0), []) + list(args)
    role = ROLES.get(args[0]) if args else None
    if role is None:
        return CLI, False, args
    sub = args[1] if len(args) > 1 and args[1] in role else None
    if sub not in role:
        return CLI, False, args  # `agent` alone or `agent nonsense`: the CLI explains
    module, serving = role[sub]
    return module, serving, args


def main():
    module, serving, args = resolve(sys.argv[0], sys.argv[1:])
    if serving:
        from gevent import monkey

        monkey.patch_all()
    __import__(module)
    sys.exit(sys.modules[module].main(args))


if __name__ == "__main__":
    main()
