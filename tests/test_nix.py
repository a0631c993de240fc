"""The Nix files parse, and the service passes only flags the daemon accepts."""

import os
import re
import shutil
import subprocess

import pytest

from conftest import ROOT
from hyperhive import settings

NIX_FILES = ["nix/package.nix", "nix/modules/hive-c0re.nix"]


@pytest.mark.parametrize("path", NIX_FILES)
def test_nix_file_parses(path):
    if shutil.which("nix-instantiate") is None:
        if os.environ.get("HIVE_REQUIRE_NIX") == "1":
            pytest.fail("HIVE_REQUIRE_NIX=1 but nix-instantiate is not installed (apt-get install nix-bin)")
        pytest.skip("nix-instantiate is not installed")
    done = subprocess.run(["nix-instantiate", "--parse", os.path.join(ROOT, path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_service_flags_are_daemon_options():
    with open(os.path.join(ROOT, "nix/modules/hive-c0re.nix")) as f:
        module = f.read()
    used = set(re.findall(r'"(--[a-z-]+)"', module))
    known = {flag.split()[0] for flag, _, _ in settings.SERVE_OPTIONS}
    assert used and used <= known, used - known
