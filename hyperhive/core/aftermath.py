"""What a request does after its effect is committed, and the sentence for each part of it that failed.

A verb's answer says what happened. Once its effect is in the database (a
question stored, an approval resolved, an agent destroyed), a later step
failing (telling the dashboard, rendering a row, telling the manager,
closing an agent's questions) must not turn the answer into `internal`: the
caller would retry and do the work twice. Such steps run through `after()`,
which logs the failure and keeps a sentence for the answer; the dispatcher
collects them for the request (`collecting()`) and answers ok with
`warnings`. Outside a request (a loop of the core) the failure is logged
only.

The list lives in a context variable: every request is its own greenlet,
and each greenlet has its own context.
"""

import contextlib
import contextvars
import logging

from hyperhive import wire

log = logging.getLogger(__name__)

_notes = contextvars.ContextVar("hyperhive_aftermath", default=None)


@contextlib.contextmanager
def collecting():
    """Collect the failed after-steps of one request; yields the list of their sentences."""
    notes = []
    token = _notes.set(notes)
    try:
        yield notes
    finally:
        _notes.reset(token)


def after(what, fn, *args, **kwargs):
    """Run one step that follows a committed effect; on failure log it, note it, and return None.

    `what` names the step as a person reads it ("telling the dashboard about
    question 4"); the sentence becomes "<what> failed: <reason>".
    """
    try:
        return fn(*args, **kwargs)
    except Exception as e:
        disk = wire.storage_failure(e)
        reason = str(disk) if disk is not None else (str(e) or type(e).__name__)
        if disk is None:
            log.exception("%s failed after the change was committed", what)
        else:
            log.error("%s failed after the change was committed: %s", what, disk)
        notes = _notes.get()
        if notes is not None:
            notes.append(f"{what} failed: {reason}")
        return None


def answer(response, notes):
    """An ok response with the request's failed after-steps as `warnings` (unchanged when none failed)."""
    if notes and isinstance(response, dict) and response.get("ok"):
        return dict(response, **{wire.WARNINGS: list(notes)})
    return response
