"""An agent's tool permission policy: its rules, what they match, and the file the harness reads it from.

Owns the policy format (`{"allow": [rule…], "ask": [rule…], "deny": [rule…]}`,
written in hive.json's `permissions` or NixOS's `hyperhive.permissions`), the
check of it (`Policy.parse`: a bad rule is refused with a sentence), the
verdict on one tool call (`Policy.decide`: deny beats ask beats allow), and
the reading of the file the core or the container writes for the harness
(`load`, named by `HIVE_PERMISSIONS`). Standard library and `wire` only: the
core checks a config with it, the harness decides each call with it, and
neither needs the other.

A rule is `Tool` (every call of it; `*` globs the name, `mcp__notes__*`) or
`Tool(spec)`:

- `Bash(prefix:*)`: some sub-command (the command split on `&&`, `||`, `;`,
  `|`, `&` and newlines) starts with `prefix`'s words; `Bash(cmd)`: some
  sub-command is `cmd`.
- `WebFetch(domain:example.com)`: the url's host is that domain or under it.
- `Tool(glob)`: fnmatch on the input's main field (the first present of
  `file_path`, `notebook_path`, `path`, `url`, `pattern`, `command`).

The rules match what a call says, not what it does: `ask` and `deny` are a
convenience for the operator, the sandbox is the boundary. So `allow` is read
narrowly where the two differ: a Bash command is allowed only when every one
of its sub-commands matches an allow rule and it runs no command substitution
(`$(…)`, backquotes, `<(…)`); otherwise no allow rule matches it.
"""

import errno
import fnmatch
import json
import os
import re
import stat
import urllib.parse
from typing import NamedTuple

from hyperhive import wire

ENV = "HIVE_PERMISSIONS"  # the variable naming the policy file the harness reads
VERDICTS = ("deny", "ask", "allow")  # in precedence order: the first whose rule matches decides
MAX_RULES = 200
MAX_RULE = 256
MAX_FILE = 256 * 1024
MAIN_FIELDS = ("file_path", "notebook_path", "path", "url", "pattern", "command")
FORMS = ("a rule is `Tool` (every call; `*` globs the name, e.g. `mcp__notes__*`), `Bash(prefix:*)`, "
         "`Bash(command)`, `WebFetch(domain:example.com)` or `Tool(glob)` over the input's path, url or pattern; "
         "e.g. `Bash(git push:*)`")

_RULE = re.compile(r"([A-Za-z0-9_.*-]+)(?:\((.+)\))?", re.S)
_DOMAIN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")
# a lone `&` ends a command too (it runs in the background), except in a redirection: `2>&1`, `&>file`
_SEPARATORS = re.compile(r"&&|\|\||;|\||(?<![<>])&(?!>)|\n")
_SUBSTITUTION = re.compile(r"\$\(|`|<\(|>\(")
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=\S*")


class Decision(NamedTuple):
    verdict: str  # "allow" | "deny" | "ask" | "default" (no rule matched)
    rule: str | None  # the rule that matched


class _Rule(NamedTuple):
    text: str
    tool: str  # the name glob
    form: str  # "any" | "prefix" | "command" | "domain" | "glob"
    spec: object  # the form's argument: words, a command, a domain or a glob


def _parse_rule(text, verdict, where):
    def bad(why):
        return wire.HiveError(f"{where}: the {verdict} rule {wire.cut(str(text), 80)!r} {why}; {FORMS}")

    if not isinstance(text, str):
        raise wire.HiveError(f"{where}: every {verdict} rule must be a string, got {wire.type_name(text)}; {FORMS}")
    if len(text) > MAX_RULE:
        raise bad(f"is {len(text)} characters, past the limit of {MAX_RULE}")
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise bad("holds a control character (a newline, a tab); a rule is one line")
    found = _RULE.fullmatch(text.strip())
    if found is None:
        raise bad("is not a rule")
    tool, spec = found.group(1), found.group(2)
    if spec is None:
        return _Rule(text, tool, "any", None)
    spec = spec.strip()
    if not spec:
        raise bad("has nothing between its parentheses")
    if tool == "Bash":
        if spec.endswith(":*"):
            words = spec[:-2].split()
            if not words:
                raise bad("has no command before `:*`")
            return _Rule(text, tool, "prefix", tuple(words))
        return _Rule(text, tool, "command", " ".join(spec.split()))
    if spec.startswith("domain:"):
        domain = spec[len("domain:"):].strip().lower().rstrip(".")
        if not _DOMAIN.fullmatch(domain):
            raise bad("names no domain after `domain:` (a host name like example.com)")
        return _Rule(text, tool, "domain", domain)
    return _Rule(text, tool, "glob", spec)


def _sub_commands(command):
    """The command's sub-commands, each with its leading variable assignments (`FOO=1 git push`) taken off."""
    subs = []
    for part in _SEPARATORS.split(command):
        words = part.split()
        while words and _ASSIGNMENT.fullmatch(words[0]):
            words.pop(0)
        if words:
            subs.append(words)
    return subs


def main_field(tool_input):
    """What a call is about: the first of its input's MAIN_FIELDS that is text, or None."""
    for field in MAIN_FIELDS:
        value = tool_input.get(field)
        if isinstance(value, str):
            return value
    return None


def summary(tool, tool_input):
    """A tool call in one short line, `Bash: git push origin main` (what pages, notes and `pending` show)."""
    field = main_field(tool_input)
    return wire.cut(f"{tool}: {' '.join(field.split())}" if field else tool, 200)


def _host(url):
    try:
        return (urllib.parse.urlsplit(url.strip()).hostname or "").rstrip(".")
    except ValueError:  # a bracketed host that is no address
        return ""


def _matches(rule, tool, tool_input, sub=None):
    """Whether `rule` matches the call; `sub` (a Bash sub-command's words) narrows a Bash rule to that one."""
    if not fnmatch.fnmatchcase(tool, rule.tool):
        return False
    if rule.form == "any":
        return True
    if rule.form in ("prefix", "command"):
        command = tool_input.get("command")
        if not isinstance(command, str):
            return False
        subs = [sub] if sub is not None else _sub_commands(command)
        if rule.form == "prefix":
            return any(words[:len(rule.spec)] == list(rule.spec) for words in subs)
        return any(" ".join(words) == rule.spec for words in subs)
    if rule.form == "domain":
        value = tool_input.get("url")
        host = _host(value) if isinstance(value, str) else ""
        return bool(host) and (host == rule.spec or host.endswith("." + rule.spec))
    value = main_field(tool_input)
    return value is not None and fnmatch.fnmatchcase(value, rule.spec)


class Policy:
    """An agent's rules by verdict; empty (falsy) when it has none."""

    __slots__ = ("allow", "ask", "deny", "_rules")

    def __init__(self, allow=(), ask=(), deny=(), _rules=None):
        self.allow, self.ask, self.deny = tuple(allow), tuple(ask), tuple(deny)
        self._rules = _rules if _rules is not None else {
            v: tuple(_parse_rule(r, v, "the permission policy") for r in getattr(self, v)) for v in VERDICTS}

    @classmethod
    def parse(cls, obj, where="the permission policy"):
        """The policy in `obj` (None or {} is the empty one); anything malformed is a HiveError naming `where`."""
        if obj is None:
            return cls()
        if not isinstance(obj, dict):
            raise wire.HiveError(f"{where} must be an object like {{\"allow\": [], \"ask\": [\"Bash(git push:*)\"], "
                                 f"\"deny\": []}}, got {wire.type_name(obj)}")
        unknown = sorted(str(k) for k in obj if k not in VERDICTS)
        if unknown:
            raise wire.HiveError(f"{where} has {', '.join(map(repr, unknown))}; it takes only \"allow\", \"ask\" "
                                 "and \"deny\", each a list of rules")
        lists, rules, count = {}, {}, 0
        for verdict in VERDICTS:
            given = obj.get(verdict)
            if given is None:
                given = []
            if not isinstance(given, list):
                raise wire.HiveError(f"{where}: \"{verdict}\" must be a list of rules, got {wire.type_name(given)}; "
                                     f"{FORMS}")
            count += len(given)
            if count > MAX_RULES:
                raise wire.HiveError(f"{where} has more than {MAX_RULES} rules, the most a policy holds; use globs "
                                     "(`mcp__notes__*`) and prefixes (`Bash(git:*)`) to say it in fewer")
            rules[verdict] = tuple(_parse_rule(r, verdict, where) for r in given)
            lists[verdict] = tuple(given)
        return cls(lists["allow"], lists["ask"], lists["deny"], _rules=rules)

    def decide(self, tool, tool_input):
        """The verdict on one call of `tool` with `tool_input`: deny beats ask beats allow; "default" when
        no rule matches."""
        tool_input = tool_input if isinstance(tool_input, dict) else {}
        for verdict in ("deny", "ask"):
            for rule in self._rules[verdict]:
                if _matches(rule, tool, tool_input):
                    return Decision(verdict, rule.text)
        allowed = self._allowed(tool, tool_input)
        return Decision("allow", allowed) if allowed is not None else Decision("default", None)

    def _allowed(self, tool, tool_input):
        """The allow rule that lets the call through, or None. A Bash command needs every sub-command
        matched (by any allow rule) and no substitution, unless a rule takes every Bash call."""
        rules = self._rules["allow"]
        whole = next((r for r in rules if r.form == "any" and fnmatch.fnmatchcase(tool, r.tool)), None)
        if whole is not None:
            return whole.text
        bash = [r for r in rules if r.form in ("prefix", "command") and fnmatch.fnmatchcase(tool, r.tool)]
        if bash:
            command = tool_input.get("command")
            subs = _sub_commands(command) if isinstance(command, str) else []
            if subs and not _SUBSTITUTION.search(command):
                first = None
                for words in subs:
                    rule = next((r for r in bash if _matches(r, tool, tool_input, words)), None)
                    if rule is None:
                        break
                    first = first or rule
                else:
                    return first.text
        return next((r.text for r in rules if r.form in ("domain", "glob") and _matches(r, tool, tool_input)), None)

    def tool_names(self, verdict):
        """The bare tool names (the part before "(") of `verdict`'s rules: for --allowedTools and
        --disallowedTools."""
        return {rule.tool for rule in self._rules[verdict]}

    def to_json(self):
        return {"allow": list(self.allow), "ask": list(self.ask), "deny": list(self.deny)}

    def __bool__(self):
        return bool(self.allow or self.ask or self.deny)

    def __eq__(self, other):
        return isinstance(other, Policy) and self.to_json() == other.to_json()

    def __repr__(self):
        return f"Policy({self.to_json()!r})"


def load(path):
    """The policy in the file at `path` (the harness's, named by HIVE_PERMISSIONS): a missing file is the
    empty policy; a link, something not a file, a file past MAX_FILE or a bad policy is a HiveError."""
    if not path:
        return Policy()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return Policy()
    except OSError as e:
        why = "it is a symbolic link, which is never followed" if e.errno == errno.ELOOP else e.strerror
        raise wire.HiveError(f"the permission policy {path} cannot be read ({why})", "unavailable") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise wire.HiveError(f"the permission policy {path} is not a regular file", "unavailable")
        data = b""
        while len(data) <= MAX_FILE:
            chunk = os.read(fd, MAX_FILE + 1 - len(data))
            if not chunk:
                break
            data += chunk
    finally:
        os.close(fd)
    if len(data) > MAX_FILE:
        raise wire.HiveError(f"the permission policy {path} is over {MAX_FILE // 1024} KiB; a policy is at most "
                             f"{MAX_RULES} rules of {MAX_RULE} characters", "unavailable")
    try:
        obj = json.loads(data.decode())
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise wire.HiveError(f"the permission policy {path} is not valid JSON: {e}") from None
    return Policy.parse(obj, where=f"the permission policy {path}")
