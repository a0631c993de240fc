# What every hyperhive container shares: hyperhive.pyz run by the container's
# systemd as the `hyperhive-harness` service (`python hyperhive.pyz agent serve`
# or `manager serve`), its environment, and the agent's options under
# `hyperhive.*` that its agent.nix sets (its extra MCP servers, its tool
# permission policy).
#
# The core's meta flake imports agent-base.nix or manager.nix (which import
# this) beside the agent's own agent.nix and sets hyperhive.name and
# hyperhive.pyz. The paths below are where hyperhive/core/containers/nixos.py
# binds the host's directories in; a test holds the two to each other.
{ config, lib, pkgs, ... }:

let
  cfg = config.hyperhive;
  inherit (lib) mkOption types;
  python = pkgs.python3.withPackages (import ../python-deps.nix);
  manager = cfg.role == "manager";
  modelFile = "/state/hyperhive-model";
  # no quotes, % or $ in it, so systemd passes it to python untouched
  writeIfMissing = "import os,sys;os.path.exists(sys.argv[1]) or open(sys.argv[1],chr(119)).write(sys.argv[2]+chr(10))";

  server = types.submodule {
    options = {
      command = mkOption {
        type = types.str;
        description = "The MCP server's executable, e.g. \"\${pkgs.some-mcp}/bin/some-mcp\".";
      };
      args = mkOption {
        type = types.listOf types.str;
        default = [ ];
        description = "Its arguments.";
      };
      env = mkOption {
        type = types.attrsOf types.str;
        default = { };
        description = "Variables set for it (in the Nix store: no secrets).";
      };
      allowedTools = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "read_*" "search" ];
        description = ''
          Tool-name patterns claude may use without asking, granted as
          mcp__<key>__<pattern>; empty grants the whole server (mcp__<key>).
        '';
      };
    };
  };
in
{
  options.hyperhive = {
    name = mkOption {
      type = types.strMatching "[a-z][a-z0-9-]{0,30}";
      description = "The agent's name; the core's meta flake sets it.";
    };

    role = mkOption {
      type = types.enum [ "agent" "manager" ];
      description = "Which harness runs; agent-base.nix and manager.nix set it.";
    };

    uid = mkOption {
      type = types.ints.between 1000 2147483646;
      description = ''
        The uid (and gid) the harness runs as, in the container and so on the host:
        the container shares the host's users, and the core hands the agent's state
        dir, socket dir and (for the manager) the proposed config repos over to this
        uid before each start. The core's meta flake sets it, one per agent name
        (hyperhive/core/trees.py); never root, so what the harness and claude do
        is only what that uid may.
      '';
    };

    pyz = mkOption {
      type = types.path;
      description = ''
        The hyperhive.pyz the harness runs; the meta flake sets it to the core's own
        (from --container-source), so host and containers always run the same build.
      '';
    };

    model = mkOption {
      type = types.nullOr (types.strMatching "[][A-Za-z0-9._-]{1,64}");
      default = null;
      example = "sonnet";
      description = ''
        The claude model written to /state/hyperhive-model at the harness's start
        when that file does not exist yet. The core writes hive.json's `model` there
        first (at the first start and on every approved config change), and the
        operator's choice on the agent's page replaces it, so this is the fallback
        for a hive.json without one.
      '';
    };

    claudePackage = mkOption {
      type = types.nullOr types.package;
      default = null;
      example = lib.literalExpression "pkgs.claude-code";
      description = ''
        This container's own Claude Code CLI. null (the default) runs the core's
        (services.hyperhive.claudePackage, passed in as HIVE_CLAUDE_BIN). Setting it
        evaluates it with the meta flake's nixpkgs, so the agent.nix must allow the
        unfree package there (nixpkgs.config.allowUnfreePredicate).
      '';
    };

    extraMcpServers = mkOption {
      type = types.attrsOf server;
      default = { };
      description = ''
        MCP servers claude gets beside the hive's own, by key: written to
        /etc/hyperhive/extra-mcp.json, which the harness merges into every turn's
        --mcp-config and --allowedTools. The key `hyperhive` is taken.
      '';
    };

    permissions = {
      allow = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "Read" "Bash(git status:*)" "WebFetch(domain:nixos.org)" ];
        description = ''
          Tool calls claude makes without asking: rules like `Tool`, `Tool(glob)`,
          `Bash(prefix:*)` or `WebFetch(domain:host)` (docs/approvals.md). Written with
          ask and deny to /etc/hyperhive/permissions.json ($HIVE_PERMISSIONS), which the
          harness reads at its start; a bad rule stops it there, with a sentence.
        '';
      };
      ask = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "Bash(git push:*)" ];
        description = ''
          Tool calls that wait for the operator: each becomes a tool_use approval on the
          dashboard and the agent's page (allow once, always allow, deny with a reason).
          Beats allow.
        '';
      };
      deny = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "Bash(rm -rf:*)" ];
        description = "Tool calls refused without asking; beats ask and allow.";
      };
    };
  };

  config = {
    assertions = [{
      assertion = !(cfg.extraMcpServers ? hyperhive);
      message = "hyperhive.extraMcpServers.hyperhive: the key `hyperhive` is the hive's own MCP server; pick another.";
    }];

    environment.etc."hyperhive/extra-mcp.json".text = builtins.toJSON (lib.mapAttrs (key: s: {
      inherit (s) command args env allowedTools;
    }) cfg.extraMcpServers);

    environment.etc."hyperhive/permissions.json".text = builtins.toJSON {
      inherit (cfg.permissions) allow ask deny;
    };

    # The harness's own unprivileged user (the core's meta flake gives each agent's name its uid): the
    # container's root stays for systemd, and nothing the model runs is root in here, or on the host.
    users.users.hive = {
      uid = cfg.uid;
      group = "hive";
      isSystemUser = true;
      home = "/state";
      description = "hyperhive ${cfg.role} ${cfg.name}";
    };
    users.groups.hive.gid = cfg.uid;

    systemd.services.hyperhive-harness = {
      description = "hyperhive ${cfg.role} harness (${cfg.name})";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ];
      # /run/current-system/sw: what agent.nix puts in environment.systemPackages,
      # for claude's Bash tool; git for the manager's commits in the config repos
      path = [ "/run/current-system/sw" pkgs.git ] ++ lib.optional (cfg.claudePackage != null) cfg.claudePackage;
      environment = {
        HIVE_NAME = cfg.name;
        HIVE_ROLE = cfg.role;
        HIVE_SOCKET = "/run/hyperhive/${if manager then "manager" else "agent"}.sock";
        HIVE_STATE_DIR = "/state";
        HOME = "/state";
        HIVE_SHARED_DIR = "/shared";
        HIVE_CONFIG_DIR = if manager then "/config" else "/agents/${cfg.name}/config";
        HIVE_PAUSE_FILE = "/run/hyperhive-host/paused";
        HIVE_EXTRA_MCP = "/etc/hyperhive/extra-mcp.json";
        HIVE_PERMISSIONS = "/etc/hyperhive/permissions.json";
        PYTHONUNBUFFERED = "1";
      };
      serviceConfig = {
        ExecStartPre = lib.optional (cfg.model != null) "${python}/bin/python -c \"${writeIfMissing}\" ${modelFile} ${cfg.model}";
        ExecStart = "${python}/bin/python ${cfg.pyz} ${cfg.role} serve"
          + lib.optionalString (cfg.claudePackage != null) " --claude ${cfg.claudePackage}/bin/claude";
        # written by the core at every start: --pass-env and hive.json's env, and
        # HIVE_CLAUDE_BIN (the core's claude); these win over `environment` above
        EnvironmentFile = "-/run/hyperhive/harness.env";
        WorkingDirectory = "/state";
        User = "hive";
        Group = "hive";
        Restart = "always";
        RestartSec = 2;
        # SIGTERM reaches the harness alone, which finishes its running turn
        # first; what is left is killed when it exits or the timeout runs out
        KillMode = "mixed";
        TimeoutStopSec = 120;
      };
    };

    system.stateVersion = lib.mkDefault "24.11";
  };
}
