"""Every state and status word the hive shows, each defined once.

The server computes what a person sees (an agent's `state`, an approval's
`status`) and every client prints it as given: the CLI, the MCP tools and the
pages never derive one themselves. docs/web.md and the pages' maps are tested
to name exactly these words. Standard library only.
"""

# An agent as shown: its process up (running, or paused: up with its turn loop
# parked) or down (stopped on purpose, failed when it should be running).
RUNNING, PAUSED, STOPPED, FAILED = "running", "paused", "stopped", "failed"
AGENT_STATES = (RUNNING, PAUSED, STOPPED, FAILED)


def agent_state(running, failed, paused):
    """The one display state of an agent. A stopped agent shows stopped even when its loop is
    paused: the pause applies once it runs again (the row's `paused` says so)."""
    if running:
        return PAUSED if paused else RUNNING
    return FAILED if failed else STOPPED


# What an agent is in the middle of (the dashboard's overlay on its row).
TRANSIENTS = ("spawning", "starting", "stopping", "restarting", "rebuilding", "being killed", "being destroyed")

# An approval's life: pending until the operator (or the manager withdrawing it)
# decides. `approved` means applied; a build that failed after approval is `failed`.
PENDING, APPROVED, DENIED, FAILED_APPROVAL, CANCELLED = "pending", "approved", "denied", "failed", "cancelled"
APPROVAL_STATUSES = (PENDING, APPROVED, DENIED, FAILED_APPROVAL, CANCELLED)
RESOLVED = (APPROVED, DENIED, FAILED_APPROVAL, CANCELLED)

# The turn loop, as the agent page's badge shows it.
TURN_STATES = ("idle", "thinking", "compacting", "paused")

# How a turn ended (`turn_end.outcome`, the turn_stat row's `result_kind`).
OUTCOMES = ("ok", "failed", "prompt_too_long", "cancelled", "auth_failed", "claude_missing")

# The harness's login, as the agent page shows it (`status_changed.status`).
LOGIN_STATUSES = ("online", "needs_login_idle", "needs_login_in_progress", "claude_missing")
