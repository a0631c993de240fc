"""An agent's hive.json as the non-Nix backends read it, and what its `env` may never set.

Owns the check every start and every approval runs on hive.json: its shape,
a model name fit for `--model`, its tool permission policy (checked by
`permissions.Policy.parse`), and the variables a config may not set because
they choose what code the harness, INIT or the MCP server runs.
"""

import re

from hyperhive import permissions, wire

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# What hive.json's "env" may not set, and why: the hive's own variables, and every one that chooses what
# code a program runs before or besides its own (a loader's preload or search path, an interpreter's
# startup hook or module path, a shell's startup file). The harness, INIT and the MCP server are hive
# code that runs with this env; a config that wants a program in the sandbox names it in extra_mcp.
REFUSED_ENV = {
    "HOME": "the hive sets it: the agent's state dir",
    "PATH": "the hive sets it",
    "NODE_OPTIONS": "node runs its --require and --import modules first; claude is a node program",
    "NODE_PATH": "where node finds modules: a bare require could load any file",
    "PERL5OPT": "perl runs its -M modules first", "PERL5LIB": "where perl finds modules",
    "PERLLIB": "where perl finds modules", "PERL5DB": "perl runs it as its debugger",
    "RUBYOPT": "ruby runs its -r libraries first", "RUBYLIB": "where ruby finds libraries",
    "JAVA_TOOL_OPTIONS": "the JVM loads its -javaagent first", "_JAVA_OPTIONS": "the JVM loads its -javaagent first",
    "JDK_JAVA_OPTIONS": "the java launcher loads its -javaagent first",
    "BASH_ENV": "bash runs the file it names before every script (claude's Bash tool is bash)",
    "ENV": "sh runs the file it names at startup",
    "SHELLOPTS": "turns on bash's xtrace, which with PS4 runs code", "BASHOPTS": "bash options at startup",
    "PS4": "bash expands it, command substitutions included, on every traced line",
    "PROMPT_COMMAND": "bash runs it before every prompt",
    "GCONV_PATH": "glibc loads character-set modules (shared objects) from it",
    "LOCPATH": "glibc reads locale data from it", "GLIBC_TUNABLES": "changes glibc's allocator and loader",
    "HOSTALIASES": "rewrites the host names glibc resolves",
    "OPENSSL_CONF": "OpenSSL loads the engines and providers (shared objects) it names",
    "OPENSSL_ENGINES": "where OpenSSL loads engines from", "OPENSSL_MODULES": "where OpenSSL loads providers from",
    "GIT_EXEC_PATH": "where git finds the programs it runs", "GIT_CONFIG_PARAMETERS": "git config, hooks included",
    "GIT_CONFIG_GLOBAL": "git config, hooks included", "GIT_CONFIG_SYSTEM": "git config, hooks included",
}
REFUSED_ENV_PREFIXES = {
    "HIVE_": "the hive's own",
    "LD_": "a dynamic loader variable: LD_PRELOAD, LD_LIBRARY_PATH and LD_AUDIT put shared objects in every program",
    "DYLD_": "a dynamic loader variable",
    "PYTHON": "a Python variable: PYTHONPATH, PYTHONSTARTUP and PYTHONHOME choose code the harness imports",
    "LUA_INIT": "lua runs it at startup",
    "GIT_CONFIG_": "git config, hooks included",
}


def refused_env(key):
    """Why hive.json may not set `key` (None when it may)."""
    return REFUSED_ENV.get(key) or next((why for p, why in REFUSED_ENV_PREFIXES.items() if key.startswith(p)), None)


def check_config(name, config):
    """hive.json as the non-Nix backends read it: {model, env, extra_mcp, permissions, packages_note}."""
    where = f"{name}'s hive.json"
    if not isinstance(config, dict):
        raise wire.HiveError(f"{where} must be a JSON object")
    model = config.get("model")
    if model is not None and (not isinstance(model, str) or not re.fullmatch(r"[A-Za-z0-9._\[\]-]{1,64}", model)):
        raise wire.HiveError(f"{where}: \"model\" must be a model name like \"sonnet\", got {model!r}")
    env = config.get("env") or {}
    if not isinstance(env, dict) or not all(isinstance(k, str) and ENV_NAME.fullmatch(k) and isinstance(v, str)
                                            for k, v in env.items()):
        raise wire.HiveError(f"{where}: \"env\" must map variable names to strings")
    refused = [f"{k} ({why})" for k in sorted(env) for why in [refused_env(k)] if why]
    if refused:
        raise wire.HiveError(f"{where}: \"env\" may not set {'; '.join(refused)}. A config says what runs in "
                             "plain sight (extra_mcp's commands), never through a variable that reaches hive "
                             "code; drop these from hive.json")
    extra = config.get("extra_mcp") or {}
    if not isinstance(extra, dict) or not all(isinstance(e, dict) and isinstance(e.get("command"), str)
                                              for e in extra.values()) or "hyperhive" in extra:
        raise wire.HiveError(f"{where}: \"extra_mcp\" must map server names (not \"hyperhive\") to "
                             "{command, args, env, allowedTools}")
    permissions.Policy.parse(config.get("permissions"), where=f'{where}: "permissions"')
    return config
