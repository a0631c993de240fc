"""Extra MCP servers (/etc/hyperhive/extra-mcp.json or HIVE_EXTRA_MCP) reach claude's flags."""

import json
import logging

from hyperhive.harness.claude import Invocation, load_extra_mcp

EXTRA = {
    "matrix": {"command": "/usr/bin/matrix-mcp", "args": ["--room", "x"], "env": {"TOKEN_FILE": "/run/t"},
               "allowedTools": ["send_message", "read_*"]},
    "notes": {"command": "notes-mcp"},
}


def write(tmp_path, obj):
    path = tmp_path / "extra-mcp.json"
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return str(path)


def test_missing_file_means_no_extras(tmp_path):
    assert load_extra_mcp(str(tmp_path / "absent.json")) == {}
    assert load_extra_mcp(None) == {}


def test_valid_file_is_loaded(tmp_path):
    assert load_extra_mcp(write(tmp_path, EXTRA)) == EXTRA


def test_bad_files_are_refused_with_a_logged_reason(tmp_path, caplog):
    caplog.set_level(logging.ERROR)
    for bad, why in (("{not json", "ignoring extra MCP servers"),
                     ([1, 2], "top level must be an object"),
                     ({"x": {"args": []}}, "needs a \"command\""),
                     ({"hyperhive": {"command": "evil"}}, "taken by the hive")):
        caplog.clear()
        assert load_extra_mcp(write(tmp_path, bad)) == {}
        assert why in caplog.text, (bad, caplog.text)


def test_extras_are_merged_into_config_and_grants(tmp_path):
    inv = Invocation("claude", "agent", "a", str(tmp_path), "/run/a.sock", extra_mcp=EXTRA)
    with open(inv.mcp_config) as f:
        servers = json.load(f)["mcpServers"]
    assert set(servers) == {"hyperhive", "matrix", "notes"}
    assert servers["hyperhive"]["env"] == {"HIVE_SOCKET": "/run/a.sock"}
    assert servers["hyperhive"]["args"][-2:] == ["agent", "mcp"]
    assert servers["matrix"] == {"type": "stdio", "command": "/usr/bin/matrix-mcp", "args": ["--room", "x"],
                                 "env": {"TOKEN_FILE": "/run/t"}}
    tools = inv.allowed_tools()
    assert "mcp__matrix__send_message" in tools and "mcp__matrix__read_*" in tools
    assert "mcp__notes" in tools  # no allowedTools: the whole server
    assert "mcp__hyperhive__send" in tools
