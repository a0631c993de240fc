"""The restart policy: a harness that died on its own is started again, with backoff, and told once.

Owns each agent's streak of deaths in a row (how many, why the last, when
the next start is due), which agents an operator's kill holds down, and the
helper events the first death of a streak sends. The lifecycle's watch hands
it each row it read (`mind`); starting, sweeping and telling are the
lifecycle's, through the lifecycle handed in.
"""

import logging
import signal

from hyperhive import wire

log = logging.getLogger(__name__)
# A harness that died on its own is started again: 2 s after its first
# death, doubling per death in a row up to 5 min, so a hive never sits with
# messages stalled behind a dead harness and a harness that cannot live
# costs a start every few minutes, not a loop. One that then runs this long
# has its streak forgotten: its next death is news again.
RESTART_BACKOFF = (2.0, 300.0)
STABLE_SECONDS = 600.0


def restart_delay(deaths):
    """Seconds from the `deaths`-th death in a row to the start that follows it."""
    first, most = RESTART_BACKOFF
    return min(first * 2 ** (deaths - 1), most)


class Streak:
    """One agent's deaths in a row: how many, why the last, when the next start is due."""

    def __init__(self):
        self.deaths = 0
        self.reason = ""
        self.next_at = None  # when the next start is due (lifecycle clock); None while it runs
        self.up_since = None  # when the core last started it again

    def row(self):
        return {"deaths": self.deaths, "reason": self.reason,
                "next_at": wire.iso(int(self.next_at * 1000)) if self.next_at is not None else None}


class Restarts:
    """The policy over `life` (the Lifecycle): its backend, layout, `start_harness`, `busy`, `sweep`, `tell`."""

    def __init__(self, life):
        self.life = life
        self.streaks = {}  # name -> Streak, for a harness that died on its own
        self.held = set()  # names an operator killed: not started again until an operator says so

    def row(self, name):
        """An agent row's `restart`: null, or its streak while it keeps dying."""
        streak = self.streaks.get(name)
        return streak.row() if streak is not None else None

    def mind(self, agent, row, now):
        """The restart policy for one agent at `now`; True if its streak moved."""
        name = agent.name
        streak = self.streaks.get(name)
        if row["running"]:
            if streak is not None and streak.up_since is not None and now - streak.up_since >= STABLE_SECONDS:
                log.info("%s has run for %s since the core started it again; its crash streak is over",
                         name, wire.duration(now - streak.up_since))
                del self.streaks[name]
                return True
            return False
        if not row["failed"] or name in self.held:
            return False  # meant to be stopped, mid-operation, or killed by the operator
        if streak is None or streak.next_at is None:
            self.died(agent, now, self._why_dead(name))
            return True
        if now >= streak.next_at or streak.next_at - now > RESTART_BACKOFF[1]:  # due, or the clock went back
            self._start_again(agent, streak, now)
            return True
        return False

    def died(self, agent, now, reason):
        """A harness meant to run is not running, and nobody asked for that: a death of the streak."""
        name = agent.name
        streak = self.streaks.get(name)
        first = streak is None
        if first:
            streak = self.streaks[name] = Streak()
        streak.deaths += 1
        streak.reason = reason
        streak.up_since, streak.next_at = None, now + restart_delay(streak.deaths)
        delay = wire.duration(restart_delay(streak.deaths))
        log.error("%s's harness died on its own (%s; death %d in a row); starting it again in %s; see %s",
                  name, streak.reason, streak.deaths, delay, self.life.layout.log(name))
        self.life.sweep(name)  # what it left running goes now, not at the start minutes later
        self.life.turn_ends(name, "its harness died")  # no decision reaches a call nobody runs
        if first:  # once per streak: retrying in silence would hide it, telling every time would flood
            self.life.tell(wire.OPERATOR, f"[helper event] harness_crash: {name}'s harness stopped without an "
                       f"operator action ({streak.reason}). The core starts it again in {delay}, waiting "
                       f"longer after each death in a row (up to {wire.duration(RESTART_BACKOFF[1])}); the "
                       "dashboard shows when. `stop` it to keep it down; its journal may say more.")
            self.life.tell(wire.MANAGER, f"[helper event] container_crash: {name}'s harness stopped without an "
                       f"operator action ({streak.reason}). The core starts it again in {delay} and keeps "
                       "trying, backing off, while it dies; its journal has the reason.")

    def _start_again(self, agent, streak, now):
        name = agent.name
        try:
            with self.life.busy(name, "restarting"):
                self.life.start_harness(agent)
        except Exception as e:
            streak.deaths += 1
            streak.reason = f"starting it again failed: {e}"
            streak.next_at = now + restart_delay(streak.deaths)
            if isinstance(e, wire.HiveError):
                log.error("%s: %s; next try in %s", name, streak.reason, wire.duration(restart_delay(streak.deaths)))
            else:
                log.exception("%s: starting it again failed; next try in %s", name,
                              wire.duration(restart_delay(streak.deaths)))
            return
        streak.up_since, streak.next_at = now, None
        log.info("started %s again after %d death(s) in a row", name, streak.deaths)

    def _why_dead(self, name):
        """The exit status and the log's last line, as far as the backend can tell."""
        said = []
        code = self.life.backend.exit_code(name)
        if code is not None and code < 0:
            try:
                said.append(f"killed by {signal.Signals(-code).name}")
            except ValueError:
                said.append(f"killed by signal {-code}")
        elif code is not None:
            said.append(f"exit code {code}")
        try:
            lines, _ = self.life.backend.log_tail(name, self.life.layout.home(name), lines=20)
        except (wire.HiveError, OSError) as e:
            log.warning("cannot read %s's log: %s", name, e)
            lines = []
        last = next((line.strip() for line in reversed(lines) if line.strip()), None)
        if last:
            said.append(f"its log's last line: {last[:300]}")
        return "; ".join(said) or "neither an exit code nor a log line says why"

    def operator_acts(self, name, held=False):
        """An operator action takes the agent over from the restart policy (a kill holds it down)."""
        self.streaks.pop(name, None)
        if held:
            self.held.add(name)
        else:
            self.held.discard(name)
