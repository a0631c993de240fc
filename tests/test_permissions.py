"""The permission policy (hyperhive/permissions.py): every form of rule, the precedence, the refusals and the
file the harness reads."""

import json
import os

import pytest

from hyperhive import permissions, wire
from hyperhive.permissions import Decision, Policy


def decide(policy, tool, **tool_input):
    return Policy.parse(policy).decide(tool, tool_input)


def verdict(policy, tool, **tool_input):
    return decide(policy, tool, **tool_input).verdict


# -- the forms of a rule ----------------------------------------------------------------------------

def test_a_bare_tool_matches_every_call_of_it_and_a_glob_matches_the_name():
    policy = {"ask": ["Write", "mcp__notes__*"]}
    assert decide(policy, "Write", file_path="/x") == Decision("ask", "Write")
    assert decide(policy, "mcp__notes__read", id=1) == Decision("ask", "mcp__notes__*")
    assert verdict(policy, "mcp__notesx__read") == "default"
    assert verdict(policy, "WriteFile") == "default"  # the whole name, not a prefix
    assert verdict(policy, "write") == "default"  # case counts
    assert verdict({"deny": ["*"]}, "Anything") == "deny"


def test_a_bash_prefix_matches_any_sub_command_starting_with_its_words():
    policy = {"ask": ["Bash(git push:*)"]}
    for command in ("git push", "git push origin main", "cd x && git push", "make || git push -f",
                    "ls; git push", "echo a | git push", "true\ngit   push origin", "sleep 1 & git push",
                    "FOO=1 git push", "  git push  "):
        assert decide(policy, "Bash", command=command) == Decision("ask", "Bash(git push:*)"), command
    for command in ("git pushy", "git status", "echo git push", "git", "gitpush origin"):
        assert verdict(policy, "Bash", command=command) == "default", command
    assert verdict(policy, "Bash") == "default"  # no command at all
    assert verdict(policy, "Bash", command=["git", "push"]) == "default"  # not a string
    assert verdict(policy, "Shell", command="git push") == "default"  # another tool


def test_a_bash_command_without_the_star_matches_a_sub_command_equal_to_it():
    policy = {"deny": ["Bash(rm -rf /)"]}
    assert decide(policy, "Bash", command="rm -rf /") == Decision("deny", "Bash(rm -rf /)")
    assert verdict(policy, "Bash", command="cd / && rm  -rf /") == "deny"
    assert verdict(policy, "Bash", command="rm -rf /tmp/x") == "default"
    assert verdict(policy, "Bash", command="echo rm -rf /") == "default"


def test_a_redirection_is_no_separator():
    policy = {"allow": ["Bash(git status:*)"]}
    assert verdict(policy, "Bash", command="git status 2>&1") == "allow"
    assert verdict(policy, "Bash", command="git status &>/dev/null") == "allow"


def test_webfetch_domain_matches_the_host_and_its_subdomains_only():
    policy = {"allow": ["WebFetch(domain:example.com)"]}
    for url in ("https://example.com/", "https://docs.example.com/a?b", "http://EXAMPLE.com:8080/x",
                "https://a.b.example.com"):
        assert decide(policy, "WebFetch", url=url) == Decision("allow", "WebFetch(domain:example.com)"), url
    for url in ("https://badexample.com/", "https://example.com.evil.net/", "https://evil.net/?example.com",
                "https://example.co/", "not a url", "https://[bad/"):
        assert verdict(policy, "WebFetch", url=url) == "default", url
    assert verdict(policy, "WebFetch") == "default"


def test_a_glob_matches_the_inputs_main_field_first_present_first():
    policy = {"deny": ["Edit(/etc/*)"], "ask": ["Read(*.env)"], "allow": ["Grep(TODO*)", "Glob(src/**)"]}
    assert decide(policy, "Edit", file_path="/etc/passwd") == Decision("deny", "Edit(/etc/*)")
    assert verdict(policy, "Edit", file_path="/home/x/etc/passwd") == "default"
    assert verdict(policy, "Read", file_path="/state/.env") == "ask"
    assert verdict(policy, "Grep", pattern="TODO: fix", path="/src") == "default"  # `path` comes before `pattern`
    assert verdict(policy, "Grep", pattern="TODO: fix") == "allow"
    assert verdict(policy, "Glob", pattern="src/a/b.py") == "allow"
    assert verdict({"ask": ["NotebookEdit(*.ipynb)"]}, "NotebookEdit", notebook_path="/a/b.ipynb") == "ask"
    assert verdict({"ask": ["Fetch(https://*)"]}, "Fetch", url="https://x") == "ask"
    assert verdict({"ask": ["Task(*)"]}, "Task", prompt="x") == "default"  # no main field: no match


# -- precedence -----------------------------------------------------------------------------------

def test_deny_beats_ask_beats_allow_and_nothing_is_default():
    policy = {"allow": ["Bash"], "ask": ["Bash(git push:*)"], "deny": ["Bash(git push --force:*)"]}
    assert decide(policy, "Bash", command="ls") == Decision("allow", "Bash")
    assert decide(policy, "Bash", command="git push") == Decision("ask", "Bash(git push:*)")
    assert decide(policy, "Bash", command="git push --force origin") == Decision("deny", "Bash(git push --force:*)")
    assert decide(policy, "Read", file_path="/x") == Decision("default", None)
    assert Policy.parse({}).decide("Bash", {"command": "ls"}) == Decision("default", None)


def test_allow_lets_a_bash_command_through_only_when_every_sub_command_is_allowed():
    policy = {"allow": ["Bash(git status:*)", "Bash(ls)"]}
    assert decide(policy, "Bash", command="git status -s") == Decision("allow", "Bash(git status:*)")
    assert decide(policy, "Bash", command="ls && git status") == Decision("allow", "Bash(ls)")
    # one sub-command no allow rule names, or a substitution: no allow rule matches
    for command in ("git status && rm -rf /", "git status | sh", "git status $(rm x)", "git status `rm x`",
                    "ls <(rm x)", "git status & curl evil"):
        assert verdict(policy, "Bash", command=command) == "default", command
    assert verdict({"allow": ["Bash"]}, "Bash", command="git status && rm -rf /") == "allow"  # every Bash call


# -- the policy's shape -------------------------------------------------------------------------

def test_tool_names_are_the_bare_names_by_verdict():
    policy = Policy.parse({"allow": ["Read", "Bash(ls)", "WebFetch(domain:a.org)"], "ask": ["Bash(git push:*)"],
                           "deny": ["mcp__notes__*"]})
    assert policy.tool_names("allow") == {"Read", "Bash", "WebFetch"}
    assert policy.tool_names("ask") == {"Bash"} and policy.tool_names("deny") == {"mcp__notes__*"}


def test_parse_keeps_the_rules_as_written_and_empty_is_falsy():
    written = {"allow": ["Read"], "ask": ["Bash(git push:*)"], "deny": []}
    policy = Policy.parse(written)
    assert policy.to_json() == written and policy.allow == ("Read",) and policy.deny == ()
    assert policy and Policy.parse(policy.to_json()) == policy
    for empty in (None, {}, {"allow": []}, {"allow": None, "ask": [], "deny": []}):
        assert not Policy.parse(empty) and Policy.parse(empty).to_json() == {"allow": [], "ask": [], "deny": []}
    assert Policy.parse({"ask": ["Bash"]}).to_json() == {"allow": [], "ask": ["Bash"], "deny": []}


@pytest.mark.parametrize("obj, words", [
    (["Bash"], "must be an object"),
    ("Bash", "must be an object"),
    ({"alow": ["Read"]}, "'alow'"),
    ({"allow": "Read"}, '"allow" must be a list of rules'),
    ({"ask": [3]}, "must be a string, got an integer"),
    ({"ask": [""]}, "is not a rule"),
    ({"ask": ["Bash("]}, "is not a rule"),
    ({"ask": ["Bash(git push:*"]}, "is not a rule"),
    ({"ask": ["Bash()"]}, "is not a rule"),
    ({"ask": ["Bash(  )"]}, "nothing between its parentheses"),
    ({"ask": ["Bash(:*)"]}, "no command before `:*`"),
    ({"deny": ["Web Fetch"]}, "is not a rule"),
    ({"deny": ["Read(x)extra"]}, "is not a rule"),
    ({"deny": ["WebFetch(domain:)"]}, "names no domain"),
    ({"deny": ["WebFetch(domain:exa mple.com)"]}, "names no domain"),
    ({"allow": ["Bash(ls\nrm -rf /)"]}, "control character"),
])
def test_a_malformed_policy_is_refused_naming_where_the_rule_and_the_forms(obj, words):
    with pytest.raises(wire.HiveError) as e:
        Policy.parse(obj, where="alice's hive.json: \"permissions\"")
    text = str(e.value)
    assert e.value.code == "bad_argument"
    assert text.startswith("alice's hive.json: \"permissions\"") and words in text, text
    if "rule" in text and "object" not in words and "'alow'" not in words:
        assert "`Bash(prefix:*)`" in text and "`WebFetch(domain:example.com)`" in text  # the accepted forms


def test_a_policy_is_bounded_in_rules_and_in_each_rules_length():
    assert len(Policy.parse({"allow": [f"mcp__s{i}__t" for i in range(permissions.MAX_RULES)]}).allow) == 200
    with pytest.raises(wire.HiveError, match="more than 200 rules"):
        Policy.parse({"allow": ["Read"] * 150, "deny": ["Write"] * 51})
    longest = "Bash(" + "x" * (permissions.MAX_RULE - 6) + ")"
    assert Policy.parse({"ask": [longest]}).ask == (longest,)
    with pytest.raises(wire.HiveError, match="257 characters, past the limit of 256"):
        Policy.parse({"ask": ["Bash(" + "x" * (permissions.MAX_RULE - 5) + ")"]})


# -- the file ----------------------------------------------------------------------------------

def test_load_reads_the_file_and_a_missing_one_is_the_empty_policy(tmp_path):
    path = tmp_path / "permissions.json"
    assert not permissions.load(str(path)) and not permissions.load(None) and not permissions.load("")
    path.write_text(json.dumps({"ask": ["Bash(git push:*)"]}))
    assert permissions.load(str(path)).decide("Bash", {"command": "git push"}).verdict == "ask"
    assert permissions.ENV == "HIVE_PERMISSIONS"


def test_load_never_follows_a_link_nor_reads_a_huge_or_odd_file(tmp_path):
    target = tmp_path / "real.json"
    target.write_text(json.dumps({"allow": ["Bash"]}))
    link = tmp_path / "permissions.json"
    os.symlink(target, link)
    with pytest.raises(wire.HiveError, match="symbolic link, which is never followed"):
        permissions.load(str(link))
    huge = tmp_path / "huge.json"
    huge.write_text('{"allow": [' + " " * permissions.MAX_FILE + "]}")
    with pytest.raises(wire.HiveError, match="over 256 KiB"):
        permissions.load(str(huge))
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(wire.HiveError, match="not a regular file"):
        permissions.load(str(tmp_path / "fifo"))
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(wire.HiveError, match="not valid JSON"):
        permissions.load(str(tmp_path / "bad.json"))
    (tmp_path / "wrong.json").write_text('{"ask": ["Bash("]}')
    with pytest.raises(wire.HiveError, match=r"wrong.json: the ask rule 'Bash\(' is not a rule"):
        permissions.load(str(tmp_path / "wrong.json"))


def test_the_module_stays_a_leaf():
    """The harness and the core both import it: nothing of either, nothing heavy."""
    with open(permissions.__file__) as f:
        imports = [line for line in f if line.startswith(("import ", "from "))]
    assert all(line.split()[1] in {"errno", "fnmatch", "json", "os", "re", "stat", "urllib.parse", "typing",
                                   "hyperhive"} for line in imports), imports
    assert "from hyperhive import wire\n" in imports
