"""The core's helper events: what `core` tells the manager and the operator, rate-limited per subject.

Owns how often one subject (an agent's login state, say) may put a message
from `core` in an inbox. Each such message wakes the manager for a paid
turn, and what it reports is the agent's to make happen: an agent flapping
its login could make the hive spend turns for it. So each (subject,
recipient) gets at most BURST messages per WINDOW seconds; past that the
newest text is held, and `step(now)` sends it once the window allows, saying
how many were held back. The agent's row always shows the truth meanwhile;
nothing held is dropped, only folded into the next message.
"""

import collections
import logging
import time

from hyperhive.core import aftermath

log = logging.getLogger(__name__)

BURST = 3
WINDOW = 600.0  # seconds


class HelperEvents:
    """`tell(subject, to, text)`; `step(now)` sends what was held once its window allows. `clock()` is seconds."""

    def __init__(self, broker, clock=time.time, burst=BURST, window=WINDOW):
        self.broker, self.clock, self.burst, self.window = broker, clock, burst, window
        self.sent = collections.defaultdict(collections.deque)  # (subject, to) -> times of its last messages
        self.held = {}  # (subject, to) -> (newest held text, how many were held)

    def tell(self, subject, to, text, now=None):
        now = self.clock() if now is None else now
        key = (subject, to)
        if self._room(key, now):
            self._send(key, to, text, now)
            return True
        _, count = self.held.get(key, (None, 0))
        self.held[key] = (text, count + 1)
        log.info("held back a helper event about %s for %s (%d in the last %gs): %s", subject, to, self.burst,
                 self.window, text)
        return False

    def step(self, now=None):
        """Send every held message whose window has room again; returns how many went out."""
        now = self.clock() if now is None else now
        sent = 0
        for key, (text, count) in list(self.held.items()):
            if self._room(key, now):
                del self.held[key]
                self._send(key, key[1], f"{text} ({count - 1} earlier change(s) of {key[0]} were folded into this "
                                        "one)" if count > 1 else text, now)
                sent += 1
        return sent

    def _room(self, key, now):
        times = self.sent[key]
        while times and times[0] <= now - self.window:
            times.popleft()
        return len(times) < self.burst

    def _send(self, key, to, text, now):
        self.sent[key].append(now)
        aftermath.after(f"telling the {to}", self.broker.send, "core", to, text)
