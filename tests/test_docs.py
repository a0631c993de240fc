"""The docs cannot drift from the code: every admin CLI verb, every option of `serve`, every NixOS
option of the module and the container templates, and every MCP tool is named in README.md or
docs/*.md, the host flake of docs/nixos.md and its several hosts of one hive evaluate, and every
relative link there (with its #anchor) resolves.
"""

import glob
import os
import re

import pytest
from docopt import docopt

from conftest import ROOT
from hyperhive import cli, settings
from hyperhive.core import daemon
from hyperhive.harness import tools
from nixstub import MODULE, NIXOS, STUB, evaluate, modules_expr, nix_string, option_names, systemd_words

PAGES = ("architecture", "approvals", "persistence", "turnloop", "nixos", "conventions", "gotchas", "web")
DOCS = sorted(glob.glob(os.path.join(ROOT, "docs", "*.md"))) + [os.path.join(ROOT, "README.md")]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def text_of(*paths):
    out = []
    for path in paths:
        with open(path) as f:
            out.append(f.read())
    return "\n".join(out)


def everything():
    return text_of(*DOCS)


def test_every_page_exists_and_the_readme_links_it():
    readme = text_of(os.path.join(ROOT, "README.md"))
    for page in PAGES:
        assert os.path.isfile(os.path.join(ROOT, "docs", f"{page}.md")), page
        assert f"(docs/{page}.md)" in readme, f"README.md does not link docs/{page}.md"


def cli_verbs():
    usage = cli.__doc__.split("Usage:")[1].split("\n\n")[0]
    return sorted({m.group(1) for m in re.finditer(r"hyperhive \[options\] ([a-z-]+)", usage)})


def test_every_cli_verb_is_documented():
    verbs = cli_verbs()
    assert "login-url" in verbs and "cancel-question" in verbs and len(verbs) >= 20
    text = everything()
    missing = [v for v in verbs if not re.search(rf"`{re.escape(v)}[` ]", text)]
    assert not missing, f"CLI verbs nobody documents: {missing}"


def test_every_serve_option_is_documented():
    text = everything()
    missing = [flag for flag, _, _ in settings.SERVE_OPTIONS if f"`{flag}" not in text]
    assert not missing, f"serve options nobody documents: {missing}"


def test_every_nixos_option_is_documented():
    names = option_names()
    assert "services.hyperhive.dashboard.port" in names and "hyperhive.extraMcpServers.<name>.command" in names
    text = text_of(os.path.join(ROOT, "docs", "nixos.md"))
    # hyperhive.name, .role and .pyz are the meta flake's and the templates' to set, but named all the same
    missing = [n for n in names if f"`{n}`" not in text]
    assert not missing, f"NixOS options docs/nixos.md does not name: {missing}"


def host_flake():
    """The host's flake.nix that docs/nixos.md tells the operator to write."""
    text = text_of(os.path.join(ROOT, "docs", "nixos.md"))
    return re.search(r"```nix\n(# flake.nix of the host\n.*?)```", text, re.S).group(1)


def test_the_host_flake_of_the_docs_evaluates():
    # over the stub: nixosSystem is its evaluation (with NixOS's own options), hyperhive is this checkout's flake
    got = evaluate(f"""
      let
        lib = import {nix_string(os.path.join(STUB, "lib.nix"))};
        nixosSystem = {{ modules, ... }}: import {nix_string(os.path.join(STUB, "eval.nix"))} {{
          modules = modules ++ [ {nix_string(NIXOS)} ]; strict = [ "services.hyperhive" ]; }};
        hyperhive = (import {nix_string(os.path.join(ROOT, "flake.nix"))}).outputs {{
          self = hyperhive; nixpkgs = {{ inherit lib; }}; }};
        flake = ({host_flake()});
        ev = (flake.outputs {{ self = flake; nixpkgs.lib = lib // {{ inherit nixosSystem; }}; inherit hyperhive; }})
          .nixosConfigurations.myhost;
      in {{
        inputs = flake.inputs;
        containers = ev.config.boot.enableContainers;
        failing = map (a: a.message) (builtins.filter (a: !a.assertion) ev.config.assertions);
      }}""")
    assert got["failing"] == [] and got["containers"] is True
    # else the hive's lock pins a nixpkgs of its own beside the host's
    assert got["inputs"]["hyperhive"].get("inputs") == {"nixpkgs": {"follows": "nixpkgs"}}


def several_hosts(marker):
    """A host of docs/nixos.md's "Several hosts, one hive": its ```nix block with the module, over NixOS's
    services.postgresql as the stub declares it (strict: an option NixOS dropped, like ensurePermissions, fails)."""
    text = text_of(os.path.join(ROOT, "docs", "nixos.md"))
    block = re.search(rf"```nix\n(# {re.escape(marker)}\n.*?)```", text, re.S).group(1)
    select = """ev: {
      failing = map (a: a.message) (builtins.filter (a: !a.assertion) ev.config.assertions);
      unit = if !ev.config.services.hyperhive.enable then null else {
        inherit (ev.config.systemd.services.hive-c0re) after environment;
        start = ev.config.systemd.services.hive-c0re.serviceConfig.ExecStart;
      };
    }"""
    got = evaluate(modules_expr([nix_string(MODULE), nix_string(NIXOS), block],
                                ["services.hyperhive", "services.postgresql"], select))
    assert got["failing"] == []
    if got["unit"] is not None:
        got["args"] = docopt(daemon.__doc__, argv=["serve", *systemd_words(got["unit"]["start"])[3:]])
    return got


def test_the_several_hosts_of_the_docs_evaluate_to_what_they_say():
    assert several_hosts("the database host")["unit"] is None
    node = several_hosts("each node")
    assert node["args"]["--database"] == "postgresql://hyperhive@db.example/hyperhive"
    assert node["args"]["--node"] == "builder-1"
    assert node["unit"]["environment"]["PGPASSFILE"] == "/run/secrets/hyperhive-pgpass"
    assert not [u for u in node["unit"]["after"] if u.startswith("postgresql")]  # no database on this host
    one = several_hosts("one host, peer authentication")
    assert one["args"]["--database"] == "postgresql://hyperhive@/hyperhive?host=/run/postgresql"
    assert one["args"]["--node"] is None
    assert {"postgresql.service", "postgresql.target"} <= set(one["unit"]["after"])


def test_the_docs_do_not_count_on_nixos_turning_containers_on():
    # NixOS 25.11 defaults boot.enableContainers to `config.containers != { }`: off on a hive's host
    said = [p for p in text_of(*DOCS).split("\n\n") if "boot.enableContainers" in p]
    assert said and not [p for p in said if re.search(r"NixOS's default|on by default|defaults? to true", p)]


def test_every_mcp_tool_is_documented():
    text = text_of(os.path.join(ROOT, "docs", "turnloop.md"))
    missing = [t.name for t in tools.TOOLS if not re.search(rf"`{re.escape(t.name)}[` ]", text)]
    assert not missing, f"MCP tools docs/turnloop.md does not name: {missing}"


def anchors(path):
    """GitHub's heading anchors of a markdown file."""
    found = set()
    in_code = False
    for line in text_of(path).splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if in_code or not line.startswith("#"):
            continue
        title = line.lstrip("#").strip().lower()
        slug = re.sub(r"[^\w\- ]", "", title).replace(" ", "-")
        found.add(slug)
    return found


@pytest.mark.parametrize("doc", [os.path.relpath(p, ROOT) for p in DOCS])
def test_every_link_resolves(doc):
    path = os.path.join(ROOT, doc)
    broken = []
    for target in LINK.findall(text_of(path)):
        if re.match(r"[a-z]+:", target):
            continue  # http(s):, mailto:: not ours to check offline
        file, _, anchor = target.partition("#")
        where = os.path.normpath(os.path.join(os.path.dirname(path), file)) if file else path
        if not os.path.exists(where):
            broken.append(f"{target} (no {os.path.relpath(where, ROOT)})")
        elif anchor and where.endswith(".md") and anchor not in anchors(where):
            broken.append(f"{target} (no heading #{anchor})")
    assert not broken, f"{doc} links to what is not there: {broken}"
