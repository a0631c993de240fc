#!/usr/bin/env python3
"""The hive's `serve` role on a tight descriptor budget and short deadlines, for the resource tests.

HIVE_TEST_NOFILE="soft:hard" sets the core's open-descriptor limits before it
starts (the core then lifts its soft limit to the hard one, as it does under
systemd), so an attack that would spend a thousand descriptors starves it with
a few hundred. HIVE_TEST_HEADER_SECONDS, HIVE_TEST_READ_TIMEOUT and
HIVE_TEST_SEND_TIMEOUT shorten the dashboard's request deadline and the
sockets' read and send deadlines, so a test waits seconds, not half a minute.
The core is imported from the built hyperhive.pyz, so its harnesses run the
pyz as well.
"""

from gevent import monkey

monkey.patch_all(os=False, signal=False, subprocess=False)  # as hyperhive.py patches the core

import os  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402

# the core under test is the built pyz's (its harnesses are the pyz too), not the checkout's
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "hyperhive.pyz"))

from hyperhive import jsonline, web  # noqa: E402
from hyperhive.core import daemon  # noqa: E402

if os.environ.get("HIVE_TEST_NOFILE"):
    soft, hard = (int(n) for n in os.environ["HIVE_TEST_NOFILE"].split(":"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
for env, module, name in (("HIVE_TEST_HEADER_SECONDS", web, "HEADER_SECONDS"),
                          ("HIVE_TEST_READ_TIMEOUT", jsonline, "READ_TIMEOUT"),
                          ("HIVE_TEST_SEND_TIMEOUT", jsonline, "SEND_TIMEOUT")):
    if os.environ.get(env):
        setattr(module, name, float(os.environ[env]))

if __name__ == "__main__":
    sys.exit(daemon.main(sys.argv[1:]))
