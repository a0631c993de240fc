"""What an agent may reach on the host: scanning bodies for file references, translating its paths to
the host's, and opening files under a root without ever following a link out (hyperhive/reach.py)."""

import os
import time

import pytest

from conftest import refused
from hyperhive import reach
from hyperhive.reach import Reach


@pytest.fixture
def roots(tmp_path):
    """A nixos-like view: the agent names its state dir /state and the shared dir /shared."""
    state, shared, outside = tmp_path / "agents" / "a" / "state", tmp_path / "shared", tmp_path / "secret"
    for d in (state, shared, outside):
        d.mkdir(parents=True)
    (state / "notes").mkdir()
    (state / "notes" / "plan.md").write_text("# plan\nship it\n")
    (shared / "report.txt").write_text("all green")
    (outside / "key.pem").write_text("PRIVATE")
    return Reach([("state", "/state", str(state)), ("shared", "/shared", str(shared))]), state, shared, outside


def test_scan_finds_absolute_paths_whose_last_segment_is_name_dot_ext():
    body = ("See /state/notes/plan.md, and `/shared/report.txt`. The dir /state/notes and notes/rel.md do not "
            "count, nor https://example.com/a.md or ~/x.md; /shared/report.txt twice counts once; "
            "(/shared/v1.2/data.tar.gz).")
    assert reach.scan(body) == ["/state/notes/plan.md", "/shared/report.txt", "/shared/v1.2/data.tar.gz"]
    assert reach.scan("no paths here") == [] and reach.scan("a/b") == []


def test_a_scan_reads_a_bounded_number_of_paths_in_linear_time():
    many = " ".join(f"/shared/f{i}.txt" for i in range(100))
    assert reach.scan(many) == [f"/shared/f{i}.txt" for i in range(reach.MAX_REFS)]
    repeated = "/shared/same.txt " * reach.MAX_MENTIONS + "/shared/late.txt"
    assert reach.scan(repeated) == ["/shared/same.txt"], "past the first MAX_MENTIONS mentions, nothing is read"
    deep = "/" + "d/" * (reach.MAX_DEPTH - 1)
    assert reach.scan(f"{deep}x.md {deep}d/y.md") == [f"{deep}x.md"], "a path deeper than MAX_DEPTH is no path"
    assert reach.scan("a@/x/y.md b+/x/y.md") == [], "a path starts where no path character is before it"
    # bodies whose every slash could start a path took time quadratic in their length (minutes at 512 KiB)
    for body in ("/@" * 32768 + " .", " /" + "a/" * 32768 + " .", " /" + "a.b/" * 16384, " /a.b" * 13000):
        started = time.perf_counter()
        reach.scan(body)
        assert time.perf_counter() - started < 0.5, body[:20]


def test_a_path_translates_from_the_agents_view_to_the_hosts(roots):
    r, state, shared, _ = roots
    assert r.host_path("/state/notes/plan.md") == str(state / "notes" / "plan.md")
    assert r.host_path("/shared//./report.txt") == str(shared / "report.txt")


@pytest.mark.parametrize("path, code, fragment", [
    ("/etc/passwd", "forbidden", "outside what can be reached here: /state (state) and /shared (shared)"),
    ("/state/../secret/key.pem", "bad_argument", "climbs with '..'"),
    ("/shared/a/../../state/x.md", "bad_argument", "climbs with '..'"),
    ("notes/plan.md", "bad_argument", "is relative"),
    ("/stateful/x.md", "forbidden", "outside"),  # a prefix of a root's name is not the root
    ("/state/a\0b.md", "bad_argument", "NUL"),
    ("/state" + "/d" * reach.MAX_DEPTH + "/x.md", "bad_argument", f"directories deep; the limit is {reach.MAX_DEPTH}"),
])
def test_paths_out_of_reach_are_refused_with_a_sentence(roots, path, code, fragment):
    r = roots[0]
    assert fragment in refused(code, r.resolve, path)


def test_a_symlink_anywhere_on_the_way_is_never_followed(roots):
    r, state, shared, outside = roots
    os.symlink(outside / "key.pem", state / "key.md")
    os.symlink(outside, state / "escape")
    os.symlink(state / "notes" / "plan.md", shared / "inner.md")  # even a link to a file in reach
    assert "symlink" in refused("forbidden", r.preview, "/state/key.md")
    assert "escape is a symlink" in refused("forbidden", r.preview, "/state/escape/key.pem")
    assert "symlink" in refused("forbidden", r.preview, "/shared/inner.md")
    assert "does not exist" in refused("not_found", r.preview, "/state/nope.md")
    assert "the directory missing does not exist" in refused("not_found", r.preview, "/state/missing/x.md")


def test_only_regular_files_are_opened_and_a_fifo_does_not_hang(roots):
    r, state, _, _ = roots
    os.mkfifo(state / "pipe.txt")
    assert "not a regular file" in refused("forbidden", r.preview, "/state/pipe.txt")
    assert "not a regular file" in refused("forbidden", r.preview, "/state/notes")
    assert "directory itself" in refused("bad_argument", r.preview, "/state")


def test_a_preview_is_the_head_of_the_file(roots):
    r, state, _, _ = roots
    assert r.preview("/state/notes/plan.md") == {"path": "/state/notes/plan.md", "size": 15, "truncated": False,
                                                 "binary": False, "text": "# plan\nship it\n"}
    (state / "big.log").write_bytes(b"x" * 100)
    assert r.preview("/state/big.log", limit=10) == {"path": "/state/big.log", "size": 100, "truncated": True,
                                                     "binary": False, "text": "x" * 10}
    (state / "blob.bin").write_bytes(b"\x7fELF\0\0\1")
    shown = r.preview("/state/blob.bin")
    assert shown["binary"] is True and shown["text"] is None and shown["size"] == 7


def test_write_creates_or_replaces_a_file_in_reach_and_nothing_else(roots):
    r, state, shared, outside = roots
    assert r.write("/shared/note.md", "hello") == str(shared / "note.md")
    assert (shared / "note.md").read_text() == "hello"
    r.write("/shared/note.md", "hi")
    assert (shared / "note.md").read_text() == "hi"
    os.symlink(outside / "key.pem", state / "trap.md")
    assert "symlink" in refused("forbidden", r.write, "/state/trap.md", "pwned")
    os.link(outside / "key.pem", state / "hard.md")
    assert "hard links" in refused("forbidden", r.write, "/state/hard.md", "pwned")
    assert "does not exist" in refused("not_found", r.write, "/state/no/such.md", "x")
    assert (outside / "key.pem").read_text() == "PRIVATE"


def test_refs_keep_only_regular_files_in_reach(roots):
    r, state, shared, outside = roots
    os.symlink(outside / "key.pem", state / "key.md")
    body = ("/state/notes/plan.md /shared/report.txt /state/key.md /state/gone.md /etc/hostname "
            "/state/../secret/key.pem")
    assert r.refs(reach.scan(body)) == [
        {"path": "/state/notes/plan.md", "host_path": str(state / "notes" / "plan.md"), "size": 15},
        {"path": "/shared/report.txt", "host_path": str(shared / "report.txt"), "size": 9}]
    for i in range(reach.MAX_REFS + 5):
        (shared / f"f{i}.txt").write_text(str(i))
    many = " ".join(f"/shared/f{i}.txt" for i in range(reach.MAX_REFS + 5))
    assert len(r.refs(reach.scan(many))) == reach.MAX_REFS
