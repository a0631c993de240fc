"""The agent's live event bus: every LiveEvent numbered, kept, and fanned out.

Owns the `seq` counter (monotonic across restarts: it continues from the
history file), the history in the agent's sqlite (capped to the newest
HISTORY_CAP rows and pruned to 7 days), the turn state with its since-time,
the token usage badges (seeded at start from the newest `turn_stat` row
with a result's usage, so a restarted harness's page shows the last turn's
numbers before the next turn), the persisted model choice, and the one
`turn_stat` row written as each turn ends (what the /stats page reads). A state disk
that refuses a write (full, read-only) costs history and statistics, never
a turn: the harness goes on and the page still gets every event live.
"""

import collections
import json
import logging
import os
import time

from hyperhive import events, files, states, wire
from hyperhive.fanout import Fanout
from hyperhive.schema import Event, TurnStat, agent_db

log = logging.getLogger(__name__)

HISTORY_CAP = 2000
PRUNE_EVERY = 100  # events between prunes: the table never holds more than CAP + this
KEEP_MS = 7 * 24 * 3600 * 1000
TURN_STATS_KEEP_MS = 90 * 24 * 3600 * 1000
LAG_LIMIT = 4096  # events a page's stream may fall behind before it is dropped (it reconnects and replays)
STATUS_TOOL = "set_status"  # the MCP tool (under any server prefix) that sets the agent's status line
MODEL_FILE = wire.MODEL_FILE
DEFAULT_MODEL = "haiku"
USAGE_KEYS = ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")


CTX_KEYS = ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")  # what fills the context


def ctx_of(usage):
    """The context's size an inference's usage says: what it read, cached or not."""
    return sum(int(usage.get(k) or 0) for k in CTX_KEYS)


def cost_of(usage):
    """A result's billed token counts, with their total, as `token_usage_changed` carries them."""
    cost = {k: int(usage.get(k) or 0) for k in USAGE_KEYS}
    cost["total"] = sum(cost.values())
    return cost


def last_usage():
    """The badges as the last turn that had a result line left them: `{ctx, cost}` shaped as
    `token_usage_changed` carries them, from the newest turn_stat row with a cost (None each when
    there is none, or a row has no ctx)."""
    row = (TurnStat.select().where(TurnStat.cost_input_tokens.is_null(False))
           .order_by(TurnStat.ended_at.desc(), TurnStat.id.desc()).first())
    if row is None:
        return {"ctx": None, "cost": None}
    ctx = dict(zip(CTX_KEYS, (row.ctx_input_tokens, row.ctx_cache_read_tokens, row.ctx_cache_creation_tokens)))
    cost = dict(zip(USAGE_KEYS, (row.cost_input_tokens, row.cost_output_tokens, row.cost_cache_read_tokens,
                                 row.cost_cache_creation_tokens)))
    return {"ctx": None if all(v is None for v in ctx.values()) else ctx_of(ctx), "cost": cost_of(cost)}


class Bus:
    def __init__(self, state_dir, clock=time.time):
        self.state_dir = state_dir
        self.clock = clock
        last = Event.select(Event.seq).order_by(Event.seq.desc()).first()
        self.fanout = Fanout(events.LIVE, queue_size=LAG_LIMIT, seq=last.seq if last else 0)
        self.turn_state = "idle"
        self.turn_state_since = int(clock())
        self.usage = last_usage()
        self._pending_ctx = self.usage["ctx"]
        self._turn = None  # what the running turn has shown so far, for its turn_stat row
        self._status_calls = {}  # tool_use id -> the status text a set_status call asked for
        self.unkept = 0  # events in a row the state disk refused to keep

    # -- events ---------------------------------------------------------------------

    @property
    def seq(self):
        return self.fanout.seq

    def emit(self, kind, **data):
        event = self.fanout.number(kind, at=int(self.clock() * 1000), **data)
        if self._keep(event) and self.seq % PRUNE_EVERY == 0:
            try:
                self.prune(quiet=True)  # the cap between hourly sweeps; only the sweep logs
            except Exception as e:
                self._refused(e, "the history's cap was not applied")
        return self.fanout.deliver(event)

    def _keep(self, event):
        """Write the event to the history. A disk that refuses costs the history, never the turn:
        the event is still shown live, and the harness goes on. Returns whether it was kept."""
        try:
            with agent_db.atomic():
                Event.create(seq=event["seq"], at=event["at"], kind=event["kind"], data=json.dumps(event))
        except Exception as e:
            self._refused(e, "events are shown live but not kept in the history")
            self.unkept += 1
            return False
        if self.unkept:
            log.info("the event history is kept again; the %d event(s) before were shown live only", self.unkept)
            self.unkept = 0
        return True

    def _refused(self, e, what):
        """A write the state disk refused: logged once per stretch of refusals; anything else is a bug."""
        disk = wire.storage_failure(e)
        if disk is None:
            raise e
        if not self.unkept:
            log.error("%s: %s", what, disk)

    def history(self, limit=200, before=None):
        """The newest `limit` events (below seq `before`), oldest first."""
        query = Event.select().order_by(Event.seq.desc()).limit(limit)
        if before is not None:
            query = query.where(Event.seq < before)
        return [json.loads(e.data) for e in reversed(list(query))]

    def prune(self, now=None, quiet=False):
        """The harness's sweep of its own file: events past 7 days (and beyond the newest HISTORY_CAP),
        turn stats past 90 days. `now` is unix seconds (default the clock); returns (events, turn stats)."""
        now_ms = int((self.clock() if now is None else now) * 1000)
        with agent_db.atomic():
            # the newest row always stays: it is where seq resumes after a restart
            events = Event.delete().where((Event.at < now_ms - KEEP_MS) & (Event.seq < self.seq)).execute()
            events += Event.delete().where(Event.seq <= self.seq - HISTORY_CAP).execute()
            stats = TurnStat.delete().where(TurnStat.started_at < now_ms - TURN_STATS_KEEP_MS).execute()
        if not quiet:
            log.info("sweep: removed %d events (older than 7 days or beyond the newest %d) and %d turn stats "
                     "older than 90 days", events, HISTORY_CAP, stats)
        return events, stats

    # -- turn state ------------------------------------------------------------------

    def set_turn_state(self, state):
        assert state in states.TURN_STATES, state
        if state != self.turn_state:
            self.turn_state = state
            self.turn_state_since = int(self.clock())
            self.emit("turn_state_changed", state=state, since_unix=self.turn_state_since)

    def note(self, text):
        return self.emit("note", text=text)

    # -- claude's stdout -----------------------------------------------------------------

    def observe(self, line):
        """Account for one stream-json object: ctx from each inference, cost from the result."""
        kind = line.get("type")
        if kind == "assistant":
            message = line.get("message") or {}
            # a sub-agent's (Task) inference is its own context, not the session's
            usage = (message.get("usage") or {}) if not line.get("parent_tool_use_id") else {}
            if usage:
                self._pending_ctx = ctx_of(usage)
            if self._turn is not None and usage:
                self._turn["ctx"] = {k: int(usage.get(k) or 0) for k in USAGE_KEYS}
            for block in message.get("content") or ():
                if isinstance(block, dict) and block.get("type") == "tool_use":
                    self._tool_use(block)
        elif kind == "user":
            for block in (line.get("message") or {}).get("content") or ():
                if isinstance(block, dict) and block.get("type") == "tool_result":
                    self._tool_result(block)
        elif kind == "result":
            usage = line.get("usage") or {}
            cost = cost_of(usage)
            self.usage = {"ctx": self._pending_ctx, "cost": cost}
            if self._turn is not None:
                self._turn["cost"] = cost
            self.emit("token_usage_changed", ctx=self._pending_ctx, cost=cost)

    def _tool_use(self, block):
        name = str(block.get("name"))
        if self._turn is not None:
            self._turn["tools"][name] += 1
        args = block.get("input") if isinstance(block.get("input"), dict) else {}
        if name.rsplit("__", 1)[-1] == STATUS_TOOL and isinstance(args.get("text"), str) and block.get("id"):
            if len(self._status_calls) > 64:  # calls whose result never came: forget them
                self._status_calls.clear()
            self._status_calls[block["id"]] = args["text"]

    def _tool_result(self, block):
        """A set_status call the core took: the page's status line follows at once."""
        text = self._status_calls.pop(block.get("tool_use_id"), None)
        if text is None or block.get("is_error"):
            return
        try:
            text = wire.check_status_text(text)  # stored as the core stored it
        except wire.HiveError:
            return
        self.emit("status_text_changed", text=text or None, set_at=wire.iso(int(self.clock() * 1000)) if text else None)

    # -- turn statistics ---------------------------------------------------------------

    def begin_turn(self, wake_from):
        self._turn = {"started": self.clock(), "wake_from": wake_from, "model": self.model(),
                      "tools": collections.Counter(), "ctx": None, "cost": None}

    def end_turn(self, outcome, open_loose_ends=None, pending_reminders=None):
        """Write the turn's row; a failed write is logged, never the turn's problem."""
        turn, self._turn = self._turn, None
        if turn is None:
            return None
        try:
            ended = self.clock()
            ctx, cost = turn["ctx"] or {}, turn["cost"] or {}  # a turn without a result line has no cost
            with agent_db.atomic():
                return TurnStat.create(
                    started_at=int(turn["started"] * 1000), ended_at=int(ended * 1000),
                    duration_ms=int((ended - turn["started"]) * 1000), model=turn["model"],
                    wake_from=turn["wake_from"], result_kind=outcome.kind, note=outcome.reason or None,
                    ctx_input_tokens=ctx.get("input_tokens"), ctx_output_tokens=ctx.get("output_tokens"),
                    ctx_cache_read_tokens=ctx.get("cache_read_input_tokens"),
                    ctx_cache_creation_tokens=ctx.get("cache_creation_input_tokens"),
                    cost_input_tokens=cost.get("input_tokens"), cost_output_tokens=cost.get("output_tokens"),
                    cost_cache_read_tokens=cost.get("cache_read_input_tokens"),
                    cost_cache_creation_tokens=cost.get("cache_creation_input_tokens"),
                    tool_call_count=sum(turn["tools"].values()), tools=json.dumps(dict(turn["tools"])),
                    open_loose_ends=open_loose_ends, pending_reminders=pending_reminders)
        except Exception as e:
            disk = wire.storage_failure(e)
            if disk is None:
                log.exception("could not record the turn's statistics; the turn itself is unaffected")
            else:
                log.error("could not record the turn's statistics (the turn itself is unaffected): %s", disk)
            return None

    # -- model -----------------------------------------------------------------------

    def model(self):
        try:
            with open(os.path.join(self.state_dir, MODEL_FILE)) as f:
                return f.read().strip() or DEFAULT_MODEL
        except FileNotFoundError:
            return DEFAULT_MODEL

    def set_model(self, model):
        path = os.path.join(self.state_dir, MODEL_FILE)
        files.replace(path, model + "\n")
        self.emit("model_changed", model=model)
