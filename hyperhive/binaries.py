"""Where the programs the hive runs are found: claude's binary, as the core and each harness look for it.

Shared by the core (it names a missing claude when `serve` starts) and the
harness (it parks its loop on one, and says so on the agent's page), so
both say the same sentence. Standard library only.
"""

import os
import shutil


def locate_claude(claude, env):
    """None when the claude binary is there to run; else the sentence that says where it was looked for."""
    path = env.get("PATH") or os.defpath
    if os.sep in claude:
        if os.path.isfile(claude) and os.access(claude, os.X_OK):
            return None
        where = f"at {claude}"
    elif shutil.which(claude, path=path):
        return None
    else:
        where = f"on PATH ({claude!r} in {path})"
    return (f"claude not found {where}; install Claude Code there or point the hive at it "
            "(serve --claude PATH, or HIVE_CLAUDE_BIN)")
