"""files.replace, the hive's one way to write a file anew: whole or not at all, never through a link,
its mode whatever the umask, and nothing left behind when it fails."""

import os
import stat

import pytest

from hyperhive import files


def test_a_file_is_replaced_whole_with_its_mode_whatever_the_umask(tmp_path):
    path = tmp_path / "model"
    path.write_text("old")
    old = os.umask(0o077)
    try:
        files.replace(str(path), "new\n", 0o644)
        files.replace(str(tmp_path / "bytes"), b"\x00\x01", 0o600)
    finally:
        os.umask(old)
    assert path.read_text() == "new\n" and stat.S_IMODE(path.stat().st_mode) == 0o644
    assert (tmp_path / "bytes").read_bytes() == b"\x00\x01"
    assert stat.S_IMODE((tmp_path / "bytes").stat().st_mode) == 0o600
    assert sorted(os.listdir(tmp_path)) == ["bytes", "model"], "no temp file is left"


def test_a_link_at_the_name_is_replaced_never_written_through(tmp_path):
    target = tmp_path / "the operator's"
    target.write_text("keep")
    link = tmp_path / "web.secret"
    os.symlink(target, link)
    files.replace(str(link), "secret")
    assert target.read_text() == "keep"
    assert not os.path.islink(link) and link.read_text() == "secret"


def test_a_write_that_fails_leaves_the_old_file_and_no_temp_file(tmp_path):
    path = tmp_path / "dir-planted"
    path.mkdir()  # os.replace cannot put a file over a directory
    with pytest.raises(IsADirectoryError):
        files.replace(str(path), "x")
    assert os.listdir(tmp_path) == ["dir-planted"] and path.is_dir()
