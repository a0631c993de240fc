"""Every table of hyperhive, and the migrations that bring a database up to date.

Two databases, two proxies, each initialized by the role that owns it:
`core_db` (the hive's: agents, messages, approvals, questions, reminders, and for a hive of several
cores its nodes, their commands and the dashboards' event log) and `agent_db` (one per harness: its
live-event history and turn stats). The hive's database is a sqlite file (one core) or PostgreSQL
(one or several cores, `postgres`); the same tables, indexes and queries serve both, a query written
for sqlite passing through `sql()`. Migrations are idempotent: each step checks what is there before
it changes anything, so running them on every start is safe, on either engine and from any core.
"""

import re
import sqlite3
import time

import peewee as pw

from hyperhive import wire

class _Proxy(pw.DatabaseProxy):
    """A proxy whose transactions are the database's own: PostgreSQL's hold its connection's lock from
    begin to commit (peewee's proxy would build them on itself, around that lock)."""

    def atomic(self, *args, **kwargs):
        return self.obj.atomic(*args, **kwargs)


core_db = _Proxy()
agent_db = pw.DatabaseProxy()

PRAGMAS = {
    "journal_mode": "wal",
    # NORMAL loses nothing on a crash of the process (kill -9); only an OS
    # crash can roll back the last transactions, and we want the speed.
    "synchronous": "normal",
    "busy_timeout": 5000,
    "foreign_keys": 1,
}


def now_ms():
    return int(time.time() * 1000)


def found(model, where, what):
    """The one row of `model` matching `where`, or `not_found` saying there is no `what`."""
    row = model.get_or_none(where)
    if row is None:
        raise wire.HiveError(f"there is no {what}", "not_found")
    return row


class CoreModel(pw.Model):
    class Meta:
        database = core_db
        legacy_table_names = False


class Agent(CoreModel):
    """An agent the hive knows. The manager is a row too, named 'manager'."""

    name = pw.CharField(primary_key=True)
    role = pw.CharField(default="agent")  # agent | manager
    parent = pw.CharField(default="operator")  # who asked for it
    created_at = pw.BigIntegerField(default=now_ms)
    desired = pw.CharField(default="running")  # running | stopped: what the operator last asked
    paused = pw.BooleanField(default=False)
    needs_login = pw.BooleanField(default=False)
    claude_missing = pw.TextField(null=True)  # the harness's sentence while it cannot find claude's binary
    status_text = pw.TextField(null=True)
    status_set_at = pw.BigIntegerField(null=True)
    running_sha = pw.CharField(null=True)  # the applied config commit its harness was started with
    last_turn_at = pw.BigIntegerField(null=True)  # when its last good turn ended (acked)
    node = pw.CharField(null=True)  # the core that runs it (a hive of several); NULL: not yet claimed
    shown = pw.TextField(null=True)  # JSON: its row as its node last published it, for the other nodes' pages


class Message(CoreModel):
    """One message. Times are unix milliseconds; NULL means 'not yet'."""

    sender = pw.CharField()
    recipient = pw.CharField()
    body = pw.TextField()
    sent_at = pw.BigIntegerField(default=now_ms)
    delivered_at = pw.BigIntegerField(null=True)
    acked_at = pw.BigIntegerField(null=True)
    cancelled_at = pw.BigIntegerField(null=True)  # the operator cancelled the turn that had it: handled, not done
    redelivered = pw.BooleanField(default=False)
    file_refs = pw.TextField(default="[]")  # JSON list


class Approval(CoreModel):
    agent = pw.CharField()
    kind = pw.CharField()  # apply_commit | spawn | init_config | update_meta_inputs | tool_use
    commit_ref = pw.CharField(null=True)
    fetched_sha = pw.CharField(null=True)
    requested_at = pw.BigIntegerField(default=now_ms)
    status = pw.CharField(default="pending")
    resolved_at = pw.BigIntegerField(null=True)
    note = pw.TextField(null=True)
    description = pw.TextField(default="")
    diff = pw.TextField(default="")
    requested_by = pw.CharField(null=True)  # manager or operator: a spawned agent's parent
    # a tool_use approval's call: the tool, its input (JSON object), the ask rule it matched, claude's id of it
    tool = pw.CharField(null=True)
    tool_input = pw.TextField(null=True)
    rule = pw.TextField(null=True)
    tool_use_id = pw.CharField(null=True)
    node = pw.CharField(null=True)  # the core that made it, which carries out the operator's decision



class Question(CoreModel):
    """A question an agent asked the operator or a peer; open while answered_at is NULL."""

    asker = pw.CharField()
    target = pw.CharField()  # an agent's name, manager or operator
    question = pw.TextField()
    options = pw.TextField(default="[]")  # JSON list of short strings
    asked_at = pw.BigIntegerField(default=now_ms)
    expires_at = pw.BigIntegerField(null=True)  # the ttl watchdog closes it then
    answered_at = pw.BigIntegerField(null=True)
    answer = pw.TextField(null=True)
    answered_by = pw.CharField(null=True)  # the target, operator, ttl-watchdog, core, or the asker (cancel)
    note = pw.TextField(null=True)  # what became of an answer that could not be delivered


class Reminder(CoreModel):
    """A message an agent left for its future self; pending while fired_at and failed_at are NULL."""

    owner = pw.CharField()
    message = pw.TextField()
    due_at = pw.BigIntegerField()  # unix ms
    file_path = pw.TextField(null=True)  # where its owner asked the message to be written, as it names it
    host_path = pw.TextField(null=True)  # the same file on the host
    created_at = pw.BigIntegerField(default=now_ms)
    fired_at = pw.BigIntegerField(null=True)  # delivered to the owner's inbox
    failed_at = pw.BigIntegerField(null=True)  # could not be delivered: `error` says why
    error = pw.TextField(null=True)


class WebSession(CoreModel):
    """A browser logged in to the dashboard: the hashes of its cookie and its key, never the values."""

    cookie_hash = pw.CharField(unique=True)
    key_hash = pw.CharField()
    created_at = pw.BigIntegerField(default=now_ms)
    expires_at = pw.BigIntegerField()
    last_seen_at = pw.BigIntegerField(null=True)
    revoked_at = pw.BigIntegerField(null=True)  # logged out
    remote = pw.CharField(default="")  # the address it logged in from
    user_agent = pw.TextField(default="")


class Meta(CoreModel):
    """Key/value facts about the file itself (schema version)."""

    key = pw.CharField(primary_key=True)
    value = pw.TextField()


class Node(CoreModel):
    """A core of the hive: alive while its heartbeat is recent."""

    name = pw.CharField(primary_key=True)
    url = pw.TextField(null=True)  # its dashboard, where the other nodes' pages link to its agents
    started_at = pw.BigIntegerField(default=now_ms)
    heartbeat_at = pw.BigIntegerField(default=now_ms)
    pid = pw.IntegerField(null=True)
    host = pw.CharField(default="")
    place = pw.TextField(default="")  # host:state dir of the core beating as it (that dir's lock holds one core)


class Command(CoreModel):
    """A request one core hands to the core that runs the agent it names: carried out once, answered."""

    node = pw.CharField()  # who carries it out
    surface = pw.CharField()  # host | manager: as whom, as it arrived
    caller = pw.CharField()
    request = pw.TextField()  # the request's JSON object, as it arrived
    asked_by = pw.CharField()  # the node it arrived on
    asked_at = pw.BigIntegerField(default=now_ms)
    expires_at = pw.BigIntegerField()  # not begun by then: never begun (its asker gave up)
    begun_at = pw.BigIntegerField(null=True)
    done_at = pw.BigIntegerField(null=True)
    answer = pw.TextField(null=True)  # the answer's JSON object


class HiveEvent(CoreModel):
    """The dashboards' events of a hive of several cores, numbered hive-wide: the id is the seq."""

    id = pw.BigAutoField()
    at = pw.BigIntegerField(default=now_ms)
    kind = pw.CharField()
    data = pw.TextField()  # JSON of the event's fields


CORE_TABLES = (Agent, Message, Approval, Question, Reminder, WebSession, Meta, Node, Command, HiveEvent)

# The pop query reads only undelivered rows of one recipient; a partial index
# keeps it O(queue) however large the acked history grows.
CORE_INDEXES = (
    "CREATE INDEX IF NOT EXISTS message_undelivered ON message (recipient, id) WHERE delivered_at IS NULL",
    # the quota on what one sender may queue for one recipient counts here, O(its share)
    "CREATE INDEX IF NOT EXISTS message_undelivered_from ON message (recipient, sender) WHERE delivered_at IS NULL",
    "CREATE INDEX IF NOT EXISTS message_acked_at ON message (acked_at) WHERE acked_at IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS message_recipient_sent ON message (recipient, id)",
    "CREATE INDEX IF NOT EXISTS message_sender ON message (sender, id)",
    # the cap on what one sender leaves unread for the operator, checked at every such send
    "CREATE INDEX IF NOT EXISTS message_operator_unread ON message (sender) "
    "WHERE recipient = 'operator' AND acked_at IS NULL",
    "CREATE INDEX IF NOT EXISTS approval_status ON approval (status, id)",
    # one approval per call of an agent's claude: a retried ask_tool_use finds the one it made
    "CREATE UNIQUE INDEX IF NOT EXISTS approval_tool_use ON approval (agent, tool_use_id) "
    "WHERE tool_use_id IS NOT NULL",
    # open questions: the operator's queue, loose ends, and the ttl watchdog's sweep
    "CREATE INDEX IF NOT EXISTS question_open ON question (target, id) WHERE answered_at IS NULL",
    "CREATE INDEX IF NOT EXISTS question_expiring ON question (expires_at) "
    "WHERE answered_at IS NULL AND expires_at IS NOT NULL",
    # the scheduler's due scan and each agent's pending count
    "CREATE INDEX IF NOT EXISTS reminder_pending ON reminder (due_at) WHERE fired_at IS NULL AND failed_at IS NULL",
    "CREATE INDEX IF NOT EXISTS reminder_owner_pending ON reminder (owner) "
    "WHERE fired_at IS NULL AND failed_at IS NULL",
    # the sweeps: closed rows by age
    "CREATE INDEX IF NOT EXISTS question_answered_at ON question (answered_at) WHERE answered_at IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS reminder_fired_at ON reminder (fired_at) WHERE fired_at IS NOT NULL",
    # a node's queue of commands, and the sweep of answered ones
    "CREATE INDEX IF NOT EXISTS command_waiting ON command (node, id) WHERE begun_at IS NULL",
    "CREATE INDEX IF NOT EXISTS command_done_at ON command (done_at) WHERE done_at IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS hive_event_at ON hive_event (at)",
)
# PostgreSQL only: every row that becomes deliverable (sent, requeued, retried, put back) wakes its
# recipient's core in the same commit; no path that queues a message can forget to
PG_STATEMENTS = (
    "CREATE OR REPLACE FUNCTION hive_message_ready() RETURNS trigger AS $$ BEGIN "
    "PERFORM pg_notify('hive_message', NEW.recipient); RETURN NULL; END $$ LANGUAGE plpgsql",
    "CREATE OR REPLACE TRIGGER message_ready AFTER INSERT OR UPDATE OF delivered_at ON message "
    "FOR EACH ROW WHEN (NEW.delivered_at IS NULL) EXECUTE FUNCTION hive_message_ready()",
)


class AgentModel(pw.Model):
    class Meta:
        database = agent_db
        legacy_table_names = False


class Event(AgentModel):
    """One LiveEvent of the harness, kept for the page's history backfill."""

    seq = pw.BigIntegerField(primary_key=True)
    at = pw.BigIntegerField(default=now_ms)
    kind = pw.CharField()
    data = pw.TextField()  # JSON of the whole event


class TurnStat(AgentModel):
    """One finished turn: what woke it, how it ended, how long, what it cost, which tools."""

    started_at = pw.BigIntegerField()  # unix ms
    ended_at = pw.BigIntegerField()
    duration_ms = pw.BigIntegerField()
    model = pw.CharField(null=True)
    wake_from = pw.CharField(null=True)  # who sent the message that woke it
    result_kind = pw.CharField()  # ok | failed | prompt_too_long | cancelled
    ctx_input_tokens = pw.BigIntegerField(null=True)  # the last inference: the context's size
    ctx_output_tokens = pw.BigIntegerField(null=True)
    ctx_cache_read_tokens = pw.BigIntegerField(null=True)
    ctx_cache_creation_tokens = pw.BigIntegerField(null=True)
    cost_input_tokens = pw.BigIntegerField(null=True)  # the whole turn, from the result line
    cost_output_tokens = pw.BigIntegerField(null=True)
    cost_cache_read_tokens = pw.BigIntegerField(null=True)
    cost_cache_creation_tokens = pw.BigIntegerField(null=True)
    tool_call_count = pw.IntegerField(default=0)
    tools = pw.TextField(default="{}")  # JSON {tool name: calls}
    open_loose_ends = pw.IntegerField(null=True)
    pending_reminders = pw.IntegerField(null=True)
    note = pw.TextField(null=True)


AGENT_TABLES = (Event, TurnStat)
AGENT_INDEXES = ("CREATE INDEX IF NOT EXISTS event_at ON event (at)",
                 "CREATE INDEX IF NOT EXISTS turn_stat_started ON turn_stat (started_at)")

SCHEMA_VERSION = 1


def add_missing_columns(db, model):
    """The idempotent migration of a table: add every model column the database lacks (all nullable)."""
    have = {c.name for c in db.get_columns(model._meta.table_name)}
    for field in model._meta.sorted_fields:
        if field.column_name not in have:
            assert field.null or field.default is not None, f"{field.name} needs null=True or a default to be added"
            kind = db._field_types.get(field.field_type, field.field_type)
            default = field.default() if callable(field.default) else field.default  # the rows there now get it
            db.execute_sql(f'ALTER TABLE "{model._meta.table_name}" ADD COLUMN "{field.column_name}" {kind}'
                           + ("" if field.null else f" DEFAULT {field.db_value(default)!r}"))


def migrate(db, tables, indexes, statements=()):
    """Create what is missing, on either engine; PostgreSQL serializes cores migrating at once."""
    with db.atomic():
        if is_postgres(db):
            db.execute_sql("SELECT pg_advisory_xact_lock(4242)")
        db.create_tables(tables, safe=True)
        for model in tables:
            add_missing_columns(db, model)
        for stmt in (*indexes, *statements):
            db.execute_sql(stmt)


def open_db(proxy, path, tables, indexes, pragmas=None):
    """Open (creating if needed) a sqlite file, bind it to proxy, migrate it."""
    # One connection shared by every greenlet: gevent makes threading.local
    # greenlet-local, which would open a connection per request.
    db = pw.SqliteDatabase(str(path), pragmas={**PRAGMAS, **(pragmas or {})}, check_same_thread=False,
                           thread_safe=False)
    proxy.initialize(db)
    db.connect(reuse_if_open=True)
    migrate(db, tables, indexes)
    return db


def is_postgres(db=None):
    db = core_db.obj if db is None else db
    return db is not None and not isinstance(db, pw.SqliteDatabase)


SQLITE_SCHEME = "sqlite://"
POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def database_path(url):
    """The sqlite file a sqlite:// URL names (None for PostgreSQL); refuses any other kind of URL."""
    if url.startswith(POSTGRES_SCHEMES):
        return None
    if url.startswith(SQLITE_SCHEME) and url[len(SQLITE_SCHEME):].startswith("/"):
        return url[len(SQLITE_SCHEME):]
    raise wire.HiveError(f"--database must be sqlite:///ABSOLUTE/PATH or postgresql://…, got {url.split('@')[-1]!r}")


def open_core(target, background_checkpoint=False):
    """The hive's database: a sqlite file (a path, or sqlite:///PATH) or PostgreSQL (postgresql://…).

    With background_checkpoint, sqlite never folds its WAL inside a request (a ~15 ms fsync stall); the
    caller must run `checkpoint(path)` periodically instead."""
    target = str(target)
    path = database_path(target) if "://" in target else target
    if path is None:
        from hyperhive import postgres

        postgres.green()
        db = postgres.Database(target)
        core_db.initialize(db)
        try:
            db.connect(reuse_if_open=True)
        except (pw.OperationalError, pw.InterfaceError) as e:
            raise wire.HiveError(f"cannot reach the hive's database {postgres.redacted(target)}: "
                                 f"{str(e).strip()}") from None
        migrate(db, CORE_TABLES, CORE_INDEXES, PG_STATEMENTS)
    else:
        pragmas = {"wal_autocheckpoint": 0} if background_checkpoint else None
        db = open_db(core_db, path, CORE_TABLES, CORE_INDEXES, pragmas)
    (Meta.insert(key="schema_version", value=str(SCHEMA_VERSION))
     .on_conflict(conflict_target=[Meta.key], update={Meta.value: str(SCHEMA_VERSION)}).execute())
    return db


_INDEXED_BY = re.compile(r"\s+INDEXED BY \w+")
_translated = {}


def sql(text):
    """A query written for sqlite, as the hive's engine takes it: on PostgreSQL without sqlite's index
    hints, with %s for ? (and a literal % doubled)."""
    if not is_postgres():
        return text
    found = _translated.get(text)
    if found is None:
        found = _translated[text] = _INDEXED_BY.sub("", text).replace("%", "%%").replace("?", "%s")
    return found


def checkpoint(path):
    """Fold the WAL into the database file, on a connection of its own (thread-safe)."""
    con = sqlite3.connect(str(path), timeout=5)
    try:
        return con.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    finally:
        con.close()


def open_agent(path):
    return open_db(agent_db, path, AGENT_TABLES, AGENT_INDEXES)
