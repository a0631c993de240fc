"""Wake-ups between the cores of a hive: the channels, who hears each, and how a notice travels.

On PostgreSQL a notice is a NOTIFY, sent inside the caller's transaction (so
it goes out with the commit, or not at all) and heard by every core's
`postgres.Listener`. A notice only says "look again": what it is about is in
the tables, so a notice missed while a core was cut off costs nothing but a
delay, and every handler also runs once after each reconnect (`caught_up`) to
look again. On sqlite there is one core: a notice is handed to its handlers
at once.
"""

import logging

from hyperhive.schema import core_db, is_postgres

log = logging.getLogger(__name__)

MESSAGE = "hive_message"  # payload: a recipient whose queue grew (sent by schema's trigger, never by hand)
EVENT = "hive_event"  # the dashboards' event log grew
COMMAND = "hive_command"  # payload: the node with a command to carry out
ANSWER = "hive_answer"  # payload: the id of a command answered
AGENTS = "hive_agents"  # the registry of agents changed (a spawn, a destroy)
NODES = "hive_nodes"  # a node came or went
CHANNELS = (MESSAGE, EVENT, COMMAND, ANSWER, AGENTS, NODES)


class Notices:
    """`on(channel, handler)`: handler(payload) for each notice; `caught_up(handler)`: handler() after every
    (re)connect of the listener; `tell(channel, payload)` notifies every core, this one included."""

    def __init__(self, url=None):
        self.url = url  # PostgreSQL's, or None for a hive on sqlite
        self._handlers = {channel: [] for channel in CHANNELS}
        self._catch_up = []
        self.listener = None

    def on(self, channel, handler):
        self._handlers[channel].append(handler)

    def caught_up(self, handler):
        self._catch_up.append(handler)

    def tell(self, channel, payload=""):
        assert channel in self._handlers and channel != MESSAGE, channel
        if is_postgres():
            core_db.execute_sql("SELECT pg_notify(%s, %s)", (channel, str(payload)))
        else:
            self.heard(channel, str(payload))

    def heard(self, channel, payload):
        """One notice (channel None: the listener (re)connected, so every catch-up runs)."""
        for handler in (self._catch_up if channel is None else self._handlers.get(channel, ())):
            try:
                handler() if channel is None else handler(payload)
            except Exception:
                log.exception("handling the notice %s %r failed", channel or "of a reconnect", payload)

    def start(self):
        if self.url is not None:
            from hyperhive import postgres

            self.listener = postgres.Listener(self.url, CHANNELS, self.heard).start()
        return self

    def stop(self):
        if self.listener is not None:
            self.listener.stop()
