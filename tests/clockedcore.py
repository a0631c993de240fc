#!/usr/bin/env python3
"""The hive's `serve` role with a clock a test moves and a scheduler it steps.

Every timer of the core reads `time.time()` plus the seconds written in the
file named by HIVE_TEST_CLOCK_FILE (none: no offset). SIGUSR1 runs one
reminder-scheduler step, one ttl-watchdog step and one sweep at once, so an
end-to-end test moves time ten seconds (or days) on and steps, instead of
sleeping. Each round of steps logs "clockedcore: stepped N".
The handler only sets a flag; a greenlet does the steps. The core is imported
from the built hyperhive.pyz, so its harnesses run the pyz as well.
"""

from gevent import monkey

monkey.patch_all(os=False, signal=False, subprocess=False)  # as hyperhive.py patches the core

import os  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402
from gevent.event import Event  # noqa: E402

# the core under test is the built pyz's (its harnesses are the pyz too), not the checkout's
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "hyperhive.pyz"))

from hyperhive.core import daemon  # noqa: E402

OFFSET_FILE = os.environ.get("HIVE_TEST_CLOCK_FILE")


def clock():
    try:
        with open(OFFSET_FILE) as f:
            return time.time() + float(f.read().strip() or 0)
    except (TypeError, FileNotFoundError):
        return time.time()


def started(core):
    step = Event()
    gevent.signal_handler(signal.SIGUSR1, step.set)

    def stepper():
        rounds = 0
        while not core.stopping.is_set():
            step.wait()
            step.clear()
            core.reminders.step()
            core.questions.expire_step()
            core.sweeper.step()
            rounds += 1
            print(f"clockedcore: stepped {rounds}", file=sys.stderr, flush=True)

    gevent.spawn(stepper)


if __name__ == "__main__":
    sys.exit(daemon.main(sys.argv[1:], clock=clock, started=started))
