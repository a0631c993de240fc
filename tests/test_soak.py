"""The soak: a hive of many agents running many turns stays flat.

A real core (with a clock the test moves, tests/clockedcore.py) and one real
harness per agent run the fake claude turn after turn, in rounds. After each
round the core's clock jumps ten days and its sweep runs, and we measure at
rest: the resident memory of the core and of every harness, their open file
descriptors, and the sqlite files. Against the first round (the warm-up):

- RSS of the core and of the harnesses together: within +10 %;
- open file descriptors: no growth;
- the core's message table holds only what the sweep keeps (30 days), and
  its file stops growing; each harness's event table stays under its cap.

Short in the everyday suite (4 agents, 200 turns); the issue's 50 agents and
10 000 turns under `tests/proof`.
"""

import os
import signal
import sqlite3

from conftest import ROOT, Hive, proof_scale, running, wait_until

from hyperhive.harness.bus import HISTORY_CAP, PRUNE_EVERY

AGENTS = proof_scale(4, 50)
ROUNDS = proof_scale(5, 10)
WAVES = proof_scale(10, 20)  # per round: a message to every agent, then wait until all are handled
DAY = 24 * 3600


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def disk_bytes(path):
    """A sqlite file's size at rest: its write-ahead log folded in first.

    The log's own size says when the last checkpoint could reset it (a
    reader's snapshot holds it), not what the hive keeps; folded, the file
    is every page the database holds."""
    def folded():
        con = sqlite3.connect(path, timeout=10)
        try:
            return con.execute("pragma wal_checkpoint(truncate)").fetchone()[0] == 0  # 0: not busy
        finally:
            con.close()

    wait_until(folded, 30, f"a full checkpoint of {path}")
    return sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))


def count(path, sql):
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return con.execute(sql).fetchone()[0]
    finally:
        con.close()


class Soak:
    def __init__(self, hive, names, clock_file):
        self.hive, self.names, self.clock_file = hive, names, clock_file
        self.offset = 0
        self.sent = 0
        self.samples = []

    def db(self):
        return os.path.join(self.hive.state_dir, "hive.db")

    def events_db(self, name):
        return os.path.join(self.hive.home(name), "state", "hyperhive-events.sqlite")

    def unacked(self):
        return count(self.db(), "select count(*) from message where acked_at is null and recipient != 'operator'")

    def wave(self, r, w):
        for i, name in enumerate(self.names):
            # one turn in ten uses the hive's tools through the MCP server, so its path soaks too
            tool = "FAKE: whoami\n" if (w + i) % 10 == 0 else ""
            self.hive.call("send", to=name, body=f"{tool}round {r} wave {w}")
            self.sent += 1
        wait_until(lambda: self.unacked() == 0, 120, f"wave {w} of round {r} to be handled")

    def age_and_sweep(self, r):
        """Move the core's clock ten days on and run its sweep (and wait until it ran)."""
        self.offset += 10 * DAY
        with open(self.clock_file, "w") as f:
            f.write(str(self.offset))
        self.hive.proc.send_signal(signal.SIGUSR1)
        wait_until(lambda: f"clockedcore: stepped {r}" in self.hive.log(), 30, f"the sweep after round {r}")

    def sample(self, r):
        """Everything measured at rest, after round r."""
        core = self.hive.proc.pid
        pids = [self.hive.harness_pid(n) for n in self.names + ["manager"]]
        sizes = {n: disk_bytes(self.events_db(n)) for n in self.names}
        if self.samples:
            # a connection the core is closing just now is no leak: give the count a moment to come back
            first = self.samples[0]
            try:
                wait_until(lambda: fds(core) <= first["core_fds"]
                           and sum(fds(p) for p in pids) <= first["harness_fds"], 5, "descriptors at rest")
            except AssertionError:
                pass  # recorded as they are: the assertion below names the leak
        self.samples.append({
            "round": r, "sent": self.sent,
            "core_rss": rss_kib(core), "harness_rss": sum(rss_kib(p) for p in pids),
            "harness_rss_max": max(rss_kib(p) for p in pids),
            "core_fds": fds(core), "harness_fds": sum(fds(p) for p in pids),
            "messages": count(self.db(), "select count(*) from message"),
            "db_bytes": disk_bytes(self.db()),
            "events_max": max(count(self.events_db(n), "select count(*) from event") for n in self.names),
            "events_db_max": max(sizes.values()),
        })



def test_a_hive_running_many_turns_stays_flat(tmp_path):
    clock_file = tmp_path / "clock-offset"
    clock_file.write_text("0")
    h = Hive(tmp_path / "state", wrapper=os.path.join(ROOT, "tests", "clockedcore.py"),
             env={"ANTHROPIC_API_KEY": "test-key", "HIVE_TEST_CLOCK_FILE": str(clock_file),
                  "FAKE_CLAUDE_MCP": "lazy"},
             extra_args=["--pass-env", "ANTHROPIC_API_KEY", "--pass-env", "FAKE_CLAUDE_MCP"])
    names = [f"s{i:02d}" for i in range(AGENTS)]
    with running(h):
        for name in names:
            h.call("spawn", name=name)
        wait_until(lambda: all((h.row(n) or {}).get("active_model") for n in names), 60 + 3 * AGENTS,
                   "every agent to boot")
        # at rest, every harness keeps its session's claude: the soak starts from there
        wait_until(lambda: all((h.dashboard("GET", f"/agent/{n}/api/state")[1].get("claude_process") or {}).get("pid")
                               for n in names + ["manager"]), 60, "every harness's claude to start")
        soak = Soak(h, names, clock_file)
        for r in range(1, ROUNDS + 1):
            for w in range(WAVES):
                soak.wave(r, w)
            soak.age_and_sweep(r)
            soak.sample(r)
        turns = sum(len(h.good_turns(n)) for n in names)
        pids_at_end = [h.harness_pid(n) for n in names]

    first, last = soak.samples[0], soak.samples[-1]
    report = "\n".join(" ".join(f"{k}={v}" for k, v in s.items()) for s in soak.samples)
    print(f"\nsoak: {AGENTS} agents, {turns} good turns in {ROUNDS} rounds\n{report}")
    assert turns >= AGENTS * WAVES * ROUNDS, report
    assert len(set(pids_at_end)) == AGENTS, "a harness was restarted during the soak"
    assert last["core_rss"] <= first["core_rss"] * 1.10, report
    assert last["harness_rss"] <= first["harness_rss"] * 1.10, report
    assert last["core_fds"] <= first["core_fds"] and last["harness_fds"] <= first["harness_fds"], report
    # the sweep keeps 30 days: at ten days a round, what was acked three rounds ago is gone
    per_round = AGENTS * WAVES
    assert last["messages"] <= 4 * per_round + 100, report  # +100: the manager's and the core's own
    assert last["messages"] < last["sent"], report
    # once the sweep deletes as much as a round adds, the file reuses its pages instead of growing
    steady = soak.samples[3]
    assert last["db_bytes"] <= steady["db_bytes"] * 1.10, report
    assert last["events_max"] <= HISTORY_CAP + PRUNE_EVERY, report
