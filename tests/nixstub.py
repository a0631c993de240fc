"""Evaluating hyperhive's nix files without nixpkgs: nix-instantiate over tests/nix/ (a stub lib, stub
packages, a minimal module system and the NixOS options the module reads), for the tests of the NixOS
module, the container templates and the docs.

`nix-instantiate` comes from Debian's nix-bin; without it these tests skip, unless HIVE_REQUIRE_NIX=1
(CI), where its absence fails them.
"""

import json
import os
import re
import shlex
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STUB = os.path.join(ROOT, "tests", "nix")
MODULE = os.path.join(ROOT, "nix", "modules", "hive-c0re.nix")
TEMPLATES = os.path.join(ROOT, "nix", "templates")

# What NixOS itself declares and defines that the module reads, as current NixOS has it.
NIXOS = os.path.join(STUB, "nixos.nix")


def require_nix():
    if shutil.which("nix-instantiate") is None:
        if os.environ.get("HIVE_REQUIRE_NIX") == "1":
            pytest.fail("HIVE_REQUIRE_NIX=1 but nix-instantiate is not installed (apt-get install nix-bin)")
        pytest.skip("nix-instantiate is not installed")


def nix_string(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("${", "\\${") + '"'


def nix_value(v):
    """A Python value (dict, list, str, int, bool, None) as a Nix expression."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return nix_string(v)
    if isinstance(v, list):
        return "[ " + " ".join(f"({nix_value(x)})" for x in v) + " ]"
    if isinstance(v, dict):
        return "{ " + " ".join(f"{nix_string(k)} = {nix_value(x)};" for k, x in v.items()) + " }"
    raise TypeError(f"no Nix form for {v!r}")


def systemd_words(line):
    """An ExecStart line's argv as systemd hands it over: split like the shell (which its quoting follows for
    what escapeShellArg writes), then %% and $$ each one character; a lone % or $ is systemd's to expand."""
    words = shlex.split(line)
    loose = [w for w in words if re.search(r"[%$]", w.replace("%%", "").replace("$$", ""))]
    assert not loose, f"systemd would expand these: {loose}"
    return [w.replace("%%", "%").replace("$$", "$") for w in words]


def evaluate(expr, check=True):
    """The JSON value of a Nix expression (--strict), or (ok, output) with check=False."""
    require_nix()
    done = subprocess.run(["nix-instantiate", "--eval", "--strict", "--json", "-E", expr],
                          capture_output=True, text=True, timeout=120)
    if not check:
        return done.returncode == 0, done.stdout if done.returncode == 0 else done.stderr
    assert done.returncode == 0, f"nix-instantiate failed on:\n{expr}\n{done.stderr}"
    return json.loads(done.stdout)


def modules_expr(modules, strict, select):
    """The expression evaluating `modules` (Nix expressions) and applying `select` (a function of the result)."""
    return (f"let ev = import {nix_string(os.path.join(STUB, 'eval.nix'))} {{ "
            f"modules = [ {' '.join(f'({m})' for m in modules)} ]; strict = {nix_value(strict)}; }}; "
            f"in ({select}) ev")


def host(settings, select="ev: ev.config", extra=()):
    """The host module with `settings` as services.hyperhive.*, then `select` of the evaluation."""
    modules = [nix_string(MODULE), nix_string(NIXOS), nix_value({"services": {"hyperhive": settings}}), *extra]
    return evaluate(modules_expr(modules, ["services.hyperhive"], select))


def container(base, name, settings=None, select="ev: ev.config", extra=(), pyz="/nix/store/stub-source/hyperhive.pyz",
              check=True):
    """A container template (agent-base.nix or manager.nix) as the meta flake sets it up, plus `settings`."""
    from hyperhive import wire
    from hyperhive.core import trees

    uid = trees.ids(name)[0] if wire.NAME_RE.fullmatch(name) else 1000
    modules = [nix_string(os.path.join(TEMPLATES, base)),
               nix_value({"hyperhive": {"name": name, "pyz": pyz, "uid": uid}}),
               nix_value(settings or {}), *extra]
    return evaluate(modules_expr(modules, ["hyperhive"], select), check=check)


def option_names():
    """Every option the host module and the container templates declare, dotted."""
    def names(modules, strict):
        return evaluate(modules_expr(modules, strict, "ev: map (o: o.name) ev.optionList"))

    # NixOS's own (tests/nix/nixos.nix) are not the module's to document
    return ([n for n in names([nix_string(MODULE), nix_string(NIXOS)], ["services.hyperhive"])
             if n.startswith("services.hyperhive.")]
            + names([nix_string(os.path.join(TEMPLATES, "agent-base.nix"))], ["hyperhive"]))
