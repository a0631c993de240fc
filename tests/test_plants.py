"""One agent's plants never keep the hive down (issue 14, class 3): the real pyz, the process backend.

An agent owns its socket directory (bound read-write into its sandbox: its page's web.sock is made there)
and its state dir. What it leaves where the core keeps its own entries -- a directory at web.secret or
agent.sock, a fifo, a link to the core's state dir or admin socket, a listening socket of its own, a file
or a link in place of the socket directory -- used to make `serve` exit 1 at the next start, for good.
Now the core clears what is its own there without following anything (a directory is moved aside with
its contents untouched) and serves everyone; what it cannot clear without touching the agent's files (a
file in place of its state dir) leaves that one agent failed, with the sentence on its row. The same
plants laid while the core runs are cleared at that agent's restart.
"""

import os
import shutil
import socket

from conftest import Hive, running, wait_until
from hyperhive.core.auth import WEB_SECRET

CANARY = "CANARY-3b71-never-written-through-a-plant"
SOCKET = "agent.sock"
# agent -> what it plants: each one a different way, so that one restart of the core meets them all
CLEARED = ("dirs", "links", "fifos", "listener", "dirfile", "dirlink")


class Plants:
    def __init__(self, h, outside):
        self.h, self.outside = h, outside
        self.canary = os.path.join(outside, "canary.txt")
        with open(self.canary, "w") as f:
            f.write(CANARY)
        self.listeners = []

    def sock_dir(self, name):
        return os.path.dirname(self.h.sock(name))

    def at(self, name, entry):
        path = os.path.join(self.sock_dir(name), entry)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.unlink(path)
        return path

    def tree(self, path):
        """A directory holding a file and a link out: moving it aside must neither read nor follow them."""
        os.mkdir(path)
        with open(os.path.join(path, "mine.txt"), "w") as f:
            f.write("the agent's")
        os.symlink(self.canary, os.path.join(path, "out"))

    def lay(self, name):
        """Plant `name`'s way into its socket directory (the harness is down, or about to be restarted)."""
        if name == "dirs":
            self.tree(self.at(name, WEB_SECRET))
            self.tree(self.at(name, SOCKET))
        elif name == "links":
            os.symlink(self.h.state_dir, self.at(name, WEB_SECRET))
            os.symlink(self.h.host_sock, self.at(name, SOCKET))  # its harness would speak as the operator
        elif name == "fifos":
            os.mkfifo(self.at(name, WEB_SECRET))
            os.mkfifo(self.at(name, SOCKET))
        elif name == "listener":
            listener = socket.socket(socket.AF_UNIX)
            listener.bind(self.at(name, SOCKET))
            listener.listen(1)
            self.listeners.append(listener)  # answers a connect: a server of the agent's own at the core's path
        elif name in ("dirfile", "dirlink"):
            sock_dir = self.sock_dir(name)
            shutil.rmtree(sock_dir)
            if name == "dirfile":
                with open(sock_dir, "w") as f:
                    f.write("not a directory")
            else:
                os.symlink(self.h.state_dir, sock_dir)

    def close(self):
        for listener in self.listeners:
            listener.close()

    def assert_nothing_written_through(self):
        with open(self.canary) as f:
            assert f.read() == CANARY
        top = set(os.listdir(self.h.state_dir))
        assert not top & {WEB_SECRET, SOCKET}, f"the core wrote into its own state dir through a link: {top}"

    def assert_moved_aside_untouched(self, name, entry):
        aside = [e for e in os.listdir(self.sock_dir(name)) if e.startswith(f"{entry}.planted-")]
        assert aside, (name, entry, os.listdir(self.sock_dir(name)))
        with open(os.path.join(self.sock_dir(name), aside[-1], "mine.txt")) as f:
            assert f.read() == "the agent's"


def serves(h, name):
    """The agent's harness runs, the socket at its path is the core's, and its page answers through the
    core's proxy with the secret the core wrote (so its harness read the same one)."""
    row = h.row(name)
    if not (row and row["running"]):
        return False
    assert h.agent_call(name, "whoami")["name"] == name
    status, _ = h.dashboard("GET", f"/agent/{name}/api/state")
    return status == 200


def test_an_agents_plants_never_keep_the_hive_down(tmp_path):
    base = tmp_path
    (base / "outside").mkdir()
    h = Hive(base / "state", env={"ANTHROPIC_API_KEY": "test-key"}, extra_args=["--pass-env", "ANTHROPIC_API_KEY"])
    plants = Plants(h, str(base / "outside"))
    everyone = (*CLEARED, "bystander", "statefile")
    try:
        with running(h):
            h.spawn(*everyone)
        # the core is down (its harnesses stopped with it): each agent plants its way
        for name in CLEARED:
            plants.lay(name)
        state = os.path.join(h.home("statefile"), "state")
        os.rename(state, state + ".real")
        with open(state, "w") as f:
            f.write("not a directory")

        with running(h):
            wait_until(lambda: all(serves(h, n) for n in ("manager", "bystander", *CLEARED)), 60,
                       "every agent but the one without a state dir to run and answer")
            row = h.row("statefile")
            assert row["failed"] and not row["running"], row
            reason = row["restart"]["reason"]
            assert f"statefile's state dir {state} is a file, not a directory" in reason, reason
            assert "move it away and start statefile again" in reason, reason
            plants.assert_nothing_written_through()
            plants.assert_moved_aside_untouched("dirs", WEB_SECRET)
            plants.assert_moved_aside_untouched("dirs", SOCKET)
            log = h.log()
            assert "Traceback" not in log, log
            assert f"dirs: {os.path.join(plants.sock_dir('dirs'), SOCKET)} was a directory; moved aside" in log
            assert f"dirlink: {plants.sock_dir('dirlink')} was a symlink, not a directory; replaced" in log

            # the operator moves the file away and puts the state dir back: it starts
            os.unlink(state)
            os.rename(state + ".real", state)
            h.call("start", scope={"agent_names": ["statefile"]})
            wait_until(lambda: serves(h, "statefile"), 30, "statefile to run once its state dir is back")

            # the same plants laid while the core runs, each met at that agent's restart
            for name in CLEARED:
                plants.lay(name)
                h.call("restart", name=name)
            wait_until(lambda: all(serves(h, n) for n in CLEARED), 60, "every planted agent to run again")
            assert all(serves(h, n) for n in ("manager", "bystander"))
            plants.assert_nothing_written_through()
            # ... and what it cannot clear is the agent's failure alone, said as a sentence
            os.rename(state, state + ".real")
            with open(state, "w") as f:
                f.write("not a directory")
            try:
                h.call("restart", name="statefile")
                raise AssertionError("a restart with a file for its state dir went through")
            except Exception as e:  # noqa: BLE001 - the HiveError the admin socket answered
                assert "is a file, not a directory" in str(e) and getattr(e, "code", None) == "conflict", e
            assert all(serves(h, n) for n in ("manager", "bystander", *CLEARED))
    finally:
        plants.close()


def test_a_tree_an_agent_wrote_is_discarded_off_the_loop_following_no_link(tmp_path, caplog):
    """Destroying or purging an agent deletes a tree the agent shaped: its name is free at once, the
    deletion runs in a worker thread, a link inside is removed and never followed, and what cannot be
    deleted is logged, not ignored."""
    import gevent

    from hyperhive.core import trees

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("the operator's")
    home = tmp_path / "agents" / "alice"
    (home / "state" / "deep").mkdir(parents=True)
    for i in range(200):
        (home / "state" / "deep" / f"f{i}").write_text("x")
    os.symlink(outside, home / "state" / "link")
    job = trees.discard(str(home), "alice's state")
    assert not os.path.lexists(home), "the name is free at once"
    job.get(timeout=30)
    gevent.sleep(0)
    assert os.listdir(tmp_path / "agents") == [], "nothing left aside"
    assert (outside / "keep").read_text() == "the operator's", "the link was followed"
    stuck = tmp_path / "agents" / "bob"
    (stuck / "ro").mkdir(parents=True)
    (stuck / "ro" / "file").write_text("x")
    os.chmod(stuck / "ro", 0o500)
    try:
        if os.geteuid() == 0:  # root deletes through any mode: make the failure another way
            import unittest.mock

            with unittest.mock.patch("os.unlink", side_effect=PermissionError(13, "refused")):
                trees.discard(str(stuck), "bob's state").get(timeout=30)
        else:
            trees.discard(str(stuck), "bob's state").get(timeout=30)
    finally:
        for root, dirs, _ in os.walk(tmp_path / "agents"):
            for d in dirs:
                os.chmod(os.path.join(root, d), 0o700)
    assert "could not delete" in caplog.text and "bob's state" in caplog.text
