"""Each vocabulary is defined once (`hyperhive/events.py`, `hyperhive/states.py`, `hyperhive/verbs.py`)
and everything that names its words agrees: docs/web.md's tables are exactly what the definitions say,
every kind a publisher names is defined and every defined kind is published, the pages' switches and
maps name exactly those words, and every verb a socket answers has a caller: a CLI command, an MCP
tool, the harness or the dashboard.
"""

import glob
import os
import re

import pytest

from conftest import ROOT
from hyperhive import events, states

WEB_MD = os.path.join(ROOT, "docs", "web.md")
TABLES = {  # the marker in docs/web.md -> the table that follows it, generated
    "events.DASHBOARD": lambda: kinds_table(events.DASHBOARD),
    "events.LIVE": lambda: kinds_table(events.LIVE),
    "states": lambda: states_table(),
}
STATE_WORDS = (("AGENT_STATES", "an agent (`state` of a containers row; the CLI's STATE column)"),
               ("TRANSIENTS", "an operation under way (`transient`)"),
               ("APPROVAL_STATUSES", "an approval (`status`)"),
               ("TURN_STATES", "an agent's turn loop (`turn_state`)"),
               ("OUTCOMES", "how a turn ended (`turn_end.outcome`)"),
               ("LOGIN_STATUSES", "an agent's login (`status`)"))


def words(match):
    return ", ".join(f"`{w}`" for w in getattr(states, match.group(1)))


def kinds_table(kinds):
    rows = ["| kind | means | fields |", "|---|---|---|"]
    for k in kinds.values():
        fields = "; ".join(f"`{f}`: " + re.sub(r"`states\.([A-Z_]+)`", words, what) for f, what in k.fields)
        rows.append(f"| `{k.name}` | {k.means} | {fields} |")
    return "\n".join(rows)


def states_table():
    rows = ["| of | words |", "|---|---|"]
    rows += [f"| {what} | {', '.join(f'`{w}`' for w in getattr(states, name))} |" for name, what in STATE_WORDS]
    return "\n".join(rows)


def read(path):
    with open(path) as f:
        return f.read()


def table_after(text, marker):
    tag = f"<!-- {marker} -->\n"
    assert tag in text, f"docs/web.md has no {tag.strip()} before the table it generates"
    lines = text.split(tag, 1)[1].splitlines()
    return "\n".join(lines[:next((i for i, line in enumerate(lines) if not line.startswith("|")), len(lines))])


@pytest.mark.parametrize("marker", sorted(TABLES))
def test_the_docs_tables_are_the_definitions(marker):
    """docs/web.md shows each vocabulary exactly as it is defined (on a mismatch, the message holds
    the table to paste)."""
    expected = TABLES[marker]()
    assert table_after(read(WEB_MD), marker) == expected, f"docs/web.md's {marker} table is stale; it should be:\n" \
                                                          f"{expected}"


def sources():
    for path in glob.glob(os.path.join(ROOT, "hyperhive", "**", "*.py"), recursive=True):
        yield path, read(path)


def published():
    """Every kind a publisher in the code names: (stream, kind)."""
    found = set()
    for _, text in sources():
        found |= {("DASHBOARD", k) for k in re.findall(r"hub\.publish\(\s*\"([a-z_]+)\"", text)}
        found |= {("DASHBOARD", k) for k in re.findall(r"self\.hub\.publish,\s*\"([a-z_]+)\"", text)}
        found |= {("LIVE", k) for k in re.findall(r"\.emit\(\s*\"([a-z_]+)\"", text)}
    return found


def test_every_kind_published_is_defined_and_every_defined_kind_is_published():
    found = published()
    defined = {("DASHBOARD", k) for k in events.DASHBOARD} | {("LIVE", k) for k in events.LIVE}
    assert found - defined == set(), "published but never defined"
    assert defined - found == set(), "defined but nobody publishes it"


def js(name):
    return read(os.path.join(ROOT, "assets", "web", name))


def function_body(text, name):
    start = text.index(f"function {name}(")
    depth, i = 0, text.index("{", start)
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    raise AssertionError(f"function {name} never ends")


def cases(body):
    return set(re.findall(r'case "([a-z_]+)":', body))


def test_the_dashboards_switches_name_exactly_the_dashboard_kinds():
    text = js("dashboard.js")
    known = re.search(r"const STATE_KINDS = new Set\(\[([^\]]*)\]\)", text).group(1)
    assert set(re.findall(r'"([a-z_]+)"', known)) == set(events.DASHBOARD)
    assert cases(function_body(text, "onEvent")) == set(events.DASHBOARD)


def test_the_agent_pages_switches_name_exactly_the_live_kinds():
    text = js("agent.js")
    assert cases(function_body(text, "render")) == set(events.LIVE)  # each drawn (or said to be shown elsewhere)
    assert cases(function_body(text, "onEvent")) <= set(events.LIVE)


def js_object_keys(text, name):
    body = re.search(rf"const {name} = \{{(.*?)\n  \}};", text, re.S).group(1)
    return set(re.findall(r"(?:^|[{,\]])\s*([a-z_]+):", body, re.M))


def test_the_pages_maps_name_exactly_the_words_they_show():
    assert js_object_keys(js("dashboard.js"), "OUTCOME") == set(states.RESOLVED)
    assert js_object_keys(js("agent.js"), "STATUS_WORDS") == set(states.LOGIN_STATUSES) - {"online"}


def test_the_agent_state_is_computed_once():
    """Stopped and paused is stopped everywhere (the row's `paused` says what happens once it runs)."""
    assert states.agent_state(running=False, failed=False, paused=True) == states.STOPPED
    assert states.agent_state(running=True, failed=False, paused=True) == states.PAUSED
    assert states.agent_state(running=False, failed=True, paused=True) == states.FAILED
    assert states.agent_state(running=True, failed=False, paused=False) == states.RUNNING
    for path, text in sources():  # nobody derives it from the flags again
        assert not re.search(r'"paused" if [a-z_]+\[?"?paused', text), path
    for name in ("dashboard.js", "agent.js"):
        assert "c.paused) return" not in js(name)


def test_the_agent_page_reads_each_loose_end_by_its_rows_fields():
    """No guessing at fields: each loose end kind names the fields its row has."""
    from hyperhive import wire

    body = re.search(r"const LOOSE = \{(.*?)\n  \};", js("agent.js"), re.S).group(1)
    read = {kind: (text, time) for kind, text, time in
            re.findall(r'(\w+): \{text: "(\w+)", time: "(\w+)"\}', body)}
    assert set(read) == set(wire.LOOSE_END_KINDS)
    fields = {"question": wire.QUESTION_FIELDS, "reminder": wire.REMINDER_FIELDS, "approval": wire.APPROVAL_FIELDS}
    for kind, (text, time) in read.items():
        assert text in fields[kind] and time in fields[kind], (kind, text, time)



def test_every_socket_verb_has_a_caller():
    """A host verb is a CLI command (tests/test_cli.py holds the exceptions), or the dashboard's; an agent or
    manager verb is an MCP tool's (harness/tools.py) or the harness's own call. A verb nobody sends is dead."""
    from hyperhive import cli, verbs
    from hyperhive.harness import tools

    def sent_by(paths):
        text = "".join(read(p) for p in paths)
        return {v for v in verbs.VERBS if re.search(rf"[\"']{v}[\"']", text)}

    harness = glob.glob(os.path.join(ROOT, "hyperhive", "harness", "*.py"))
    by_agents = {t.verb for t in tools.TOOLS} | sent_by(p for p in harness if not p.endswith("tools.py"))
    by_host = {c.verb for c in cli.COMMANDS.values()} | sent_by([os.path.join(ROOT, "hyperhive", "core",
                                                                              "dashboard.py")])
    unsent_host = set(verbs.HOST_VERBS) - by_host
    assert unsent_host == {"subscribe_agent_status"}, "a host verb nobody sends"  # outside clients stream it
    assert set(verbs.AGENT_VERBS + verbs.MANAGER_VERBS) - by_agents == set(), "an agent verb nobody sends"
