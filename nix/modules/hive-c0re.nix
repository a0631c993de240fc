# hyperhive on a NixOS host: the core daemon (hive-c0re) as a systemd service
# running `python hyperhive.pyz serve`, its admin group, its state and socket
# directories, and the firewall port of its dashboard.
#
# The agents' containers are not declared here: the core creates and rebuilds
# each one from its meta flake (<stateDir>/meta), which adds the container
# templates and the pyz of this package (--container-source) to every agent's
# own agent.nix. The operator's CLI is `hyperhive` (root and adminGroup).
{ config, lib, pkgs, ... }:

let
  cfg = config.services.hyperhive;
  inherit (lib) mkOption types;

  loopback = addr: lib.hasPrefix "127." addr || addr == "::1" || addr == "localhost";
  dashboardPort = if cfg.dashboard.port == null then "off" else toString cfg.dashboard.port;
  # 0 is a port the kernel picks at start: no rule can name it
  openPort = cfg.dashboard.openFirewall && cfg.dashboard.port != null && cfg.dashboard.port != 0
    && !(loopback cfg.dashboard.listen);
  forwarded = cfg.passEnv ++ lib.attrNames cfg.extraAgentEnv;
  # the hive sets these for every harness itself
  reserved = name: lib.hasPrefix "HIVE_" name || lib.elem name [ "PATH" "HOME" ];
  source = "${cfg.package}/share/hyperhive";
  postgresql = cfg.database != null && lib.hasPrefix "postgresql:" cfg.database;
  # The host's own PostgreSQL, if it runs one: the core waits for it at boot. Since NixOS 25.11
  # its ensureUsers and ensureDatabases are done by postgresql-setup.service, which
  # postgresql.target waits for; before, by postgresql.service itself, and there is no such
  # target (systemd orders nothing after a unit it cannot find, and a missing Wants= fails nothing).
  localDatabase = lib.optionals (postgresql && config.services.postgresql.enable)
    [ "postgresql.service" "postgresql.target" ];
  # user:password@ in the authority, or a password= parameter
  hasPassword = url: builtins.match "[a-z]+://[^/@]*:[^/@]*@.*" url != null
    || builtins.match ".*[?&]password=.*" url != null;

  # systemd reads % as a specifier and $ as a variable in ExecStart, quoted or not
  # (a percent-encoded database URL has both kinds of character)
  execArg = arg: lib.replaceStrings [ "%" "$" ] [ "%%" "$$" ] (lib.escapeShellArg arg);
  execStart = lib.concatMapStringsSep " " execArg ([
    "${cfg.python}/bin/python" "${source}/hyperhive.pyz" "serve"
    "--state-dir" cfg.stateDir
    "--run-dir" cfg.runDir
    "--backend" cfg.backend
    "--claude" "${cfg.claudePackage}/bin/claude"
    "--container-source" source
    "--dashboard-port" dashboardPort
    "--listen" cfg.dashboard.listen
    "--log-level" cfg.logLevel
    "--claude-mode" cfg.claude.mode
    "--hang-seconds" (toString cfg.claude.hangSeconds)
    "--recycle-turns" (toString cfg.claude.recycle.turns)
    "--recycle-rss-mb" (toString cfg.claude.recycle.rssMb)
    "--recycle-idle" (toString cfg.claude.recycle.idleSeconds)
  ] ++ lib.optionals (cfg.domain != null) [ "--domain" cfg.domain ]
    ++ lib.optionals (cfg.forge.url != null) [ "--forge-url" cfg.forge.url ]
    ++ lib.optionals (cfg.forge.credentialFile != null) [ "--forge-credential-file" cfg.forge.credentialFile ]
    ++ lib.optionals (cfg.database != null) [ "--database" cfg.database ]
    ++ lib.optionals (cfg.node != null) [ "--node" cfg.node ]
    ++ lib.concatMap (name: [ "--pass-env" name ]) forwarded);
in
{
  options.services.hyperhive = {
    enable = lib.mkEnableOption "hyperhive, a hive of long-lived Claude Code agents (the core daemon, hive-c0re)";

    package = mkOption {
      type = types.package;
      default = pkgs.callPackage ../package.nix { };
      description = ''
        The hyperhive package. Its share/hyperhive/ holds hyperhive.pyz (run by the
        core and copied into every container) and nix/templates/ (the containers'
        harness configuration).
      '';
    };

    python = mkOption {
      type = types.package;
      default = pkgs.python3.withPackages (import ../python-deps.nix);
      description = ''
        The interpreter that runs hyperhive.pyz on the host, with the packages it
        needs (gevent, psycopg2, bottle, peewee, docopt, sh, markdown). The containers build
        their own from the same list (nix/python-deps.nix).
      '';
    };

    stateDir = mkOption {
      type = types.path;
      default = "/var/lib/hyperhive";
      description = ''
        Where the hive keeps its database, the agents' state, the config repos and
        the meta flake (mode 0700, root's). `destroy --purge` and `purge` are the
        only things that delete from it.
      '';
    };

    runDir = mkOption {
      type = types.path;
      default = "/run/hyperhive";
      description = ''
        Where the sockets live: host.sock (mode 0660, group adminGroup), and one
        directory per agent that is bound into its container at /run/hyperhive.
        A short path on purpose: a unix socket's path is limited to 107 bytes.
      '';
    };

    backend = mkOption {
      type = types.enum [ "nixos" "bwrap" "process" "auto" ];
      default = "nixos";
      description = ''
        Where agents run: `nixos` (a NixOS container h-<name> each, built from the
        meta flake; needs boot.enableContainers, which this module turns on unless
        the host sets it), `bwrap` (a bubblewrap sandbox),
        `process` (plain child processes, for development) or `auto`.
      '';
    };

    claudePackage = mkOption {
      type = types.package;
      default = pkgs.claude-code;
      defaultText = lib.literalExpression "pkgs.claude-code";
      description = ''
        The Claude Code CLI every harness runs; its bin/claude is passed to the core
        as --claude and from there into every container (the host's store is the
        containers' store). claude-code is unfree: allow it in the host's own
        configuration, e.g. `nixpkgs.config.allowUnfreePredicate = pkg:
        builtins.elem (lib.getName pkg) [ "claude-code" ];`.
      '';
    };

    passEnv = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "ANTHROPIC_API_KEY" ];
      description = ''
        Names of variables in the core's environment (set them in environmentFile)
        forwarded to every harness, e.g. ANTHROPIC_API_KEY or ANTHROPIC_BASE_URL.
      '';
    };

    environmentFile = mkOption {
      type = types.nullOr types.path;
      default = null;
      example = "/run/secrets/hyperhive.env";
      description = ''
        A systemd EnvironmentFile for the core, for secrets such as
        ANTHROPIC_API_KEY that must not enter the Nix store; list their names in
        passEnv to forward them to the harnesses.
      '';
    };

    extraAgentEnv = mkOption {
      type = types.attrsOf types.str;
      default = { };
      example = { ANTHROPIC_BASE_URL = "https://llm-gateway.example"; };
      description = ''
        Variables set for the core and forwarded to every harness (into each
        container through its harness.env). They land in the Nix store: put
        secrets in environmentFile and passEnv instead. HIVE_*, PATH and HOME
        are the hive's own.
      '';
    };

    operatorPronouns = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "she/her";
      description = ''
        The operator's pronouns: every agent's system prompt says them, and
        `whoami` answers them, so agents refer to the operator as they should.
      '';
    };

    adminGroup = mkOption {
      type = types.str;
      default = "hyperhive";
      description = ''
        The group (created by this module) whose members may use the admin socket
        host.sock, i.e. act as the operator with the `hyperhive` CLI.
      '';
    };

    dashboard = {
      port = mkOption {
        type = types.nullOr types.port;
        default = 7000;
        description = ''
          The dashboard's TCP port; 0 lets the kernel pick one (the core logs it),
          null serves no dashboard.
        '';
      };

      listen = mkOption {
        type = types.str;
        default = "127.0.0.1";
        example = "0.0.0.0";
        description = ''
          The address the dashboard listens on. It always asks for the operator's
          login (`hyperhive login-url`); beyond loopback, put TLS in front of it.
        '';
      };

      openFirewall = mkOption {
        type = types.bool;
        default = true;
        description = ''
          Open dashboard.port in the firewall when the dashboard listens beyond
          loopback (never for a loopback address, port 0 or no dashboard).
        '';
      };
    };

    claude = {
      mode = mkOption {
        type = types.enum [ "session" "spawn" ];
        default = "session";
        description = ''
          session: one long-lived claude per agent, each turn written to it (turns
          start in milliseconds, cancel is an interrupt, tool calls can wait for the
          operator's approval); spawn: one claude per turn, for a CLI without
          stream-json input.
        '';
      };
      hangSeconds = mkOption {
        type = types.ints.positive;
        default = 300;
        description = "A turn with no output from claude for this long is ended as hung; its messages come again.";
      };
      recycle = {
        turns = mkOption {
          type = types.ints.positive;
          default = 200;
          description = "A session's claude is replaced between turns (resuming its conversation) after this many turns.";
        };
        rssMb = mkOption {
          type = types.ints.positive;
          default = 2048;
          description = "... or when it holds more than this many MiB resident.";
        };
        idleSeconds = mkOption {
          type = types.ints.positive;
          default = 21600;
          description = "... or after this long idle.";
        };
      };
    };

    domain = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "hive.example.org";
      description = "The hive's public domain name, as `hyperhive urls` answers it.";
    };

    forge = {
      url = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "https://forge.example.org/hive";
        description = ''
          Mirror every agent's applied config repo to <url>/<name>.git (http or
          https; e.g. an organisation on a Forgejo or Gitea), at the core's start and
          after every change to its main or its tags. Best effort: a forge that is
          down or refuses is logged and shown on the agent's card, never a failed
          deploy. null mirrors nothing.
        '';
      };

      credentialFile = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "/run/secrets/hyperhive-forge";
        description = ''
          A file holding user:token for the forge (mode 0600, root's), read at each
          push and sent with that push only, never written into a repo. A string,
          not a path, so that the secret never enters the Nix store.
        '';
      };
    };

    database = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "postgresql://hyperhive@db.example/hyperhive";
      description = ''
        The hive's database (--database): `sqlite:///PATH`, or `postgresql://USER@HOST/DB`
        shared by the cores of a hive across hosts (`postgresql://USER@/DB?host=/run/postgresql`
        for this host's socket). null is serve's default, hive.db in stateDir. Never a
        password in it: the URL is in the unit's command line and the Nix store. Put it in
        databasePasswordFile (PGPASSFILE), or use peer authentication over the socket.
      '';
    };

    databasePasswordFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/run/secrets/hyperhive-pgpass";
      description = ''
        A libpq password file (lines of host:port:database:user:password, mode 0600,
        root's) for a postgresql database, named to the core as PGPASSFILE. A string,
        not a path, so that the secret never enters the Nix store.
      '';
    };

    node = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "builder-1";
      description = ''
        This core's name in a hive of several (--node); it runs only its own agents.
        null is serve's default, the host's name.
      '';
    };

    logLevel = mkOption {
      type = types.enum [ "debug" "info" "warning" "error" ];
      default = "info";
      description = "How much the core logs to the journal (`journalctl -u hive-c0re`).";
    };
  };

  config = lib.mkIf cfg.enable {
    assertions = [
      {
        assertion = !(lib.elem cfg.backend [ "nixos" "auto" ]) || config.boot.enableContainers;
        message = "services.hyperhive.backend = \"${cfg.backend}\" runs agents in NixOS containers, which need boot.enableContainers = true (or pick backend \"bwrap\").";
      }
      {
        assertion = lib.versionAtLeast config.nix.package.version "2.19";
        message = "services.hyperhive needs Nix 2.19 or later for its meta flake (`nix flake update <input>`); nix.package is ${config.nix.package.version}.";
      }
      {
        assertion = !(lib.any reserved (lib.attrNames cfg.extraAgentEnv ++ cfg.passEnv));
        message = "services.hyperhive.extraAgentEnv and passEnv may not name HIVE_*, PATH or HOME: the hive sets those for every harness.";
      }
      {
        assertion = cfg.forge.credentialFile == null || cfg.forge.url != null;
        message = "services.hyperhive.forge.credentialFile needs forge.url: the credential is for that forge.";
      }
      {
        assertion = cfg.database == null || !(hasPassword cfg.database);
        message = "services.hyperhive.database has a password in it, which would be in the unit's command line and the Nix store: put it in databasePasswordFile (a libpq password file) instead.";
      }
      {
        assertion = cfg.databasePasswordFile == null || postgresql;
        message = "services.hyperhive.databasePasswordFile needs a postgresql:// database: the password is for that database.";
      }
    ];

    # NixOS 25.11 defaults it to `config.containers != { }`, and the agents'
    # containers are the core's, never in `containers`: left alone it is off.
    boot.enableContainers = lib.mkIf (lib.elem cfg.backend [ "nixos" "auto" ]) (lib.mkDefault true);

    users.groups.${cfg.adminGroup} = { };

    environment.systemPackages = [ cfg.package ];
    # for the admin group's shells; root's default <stateDir>/run is linked below
    environment.variables.HIVE_HOST_SOCKET = "${cfg.runDir}/host.sock";

    systemd.tmpfiles.rules = [
      "d ${cfg.stateDir} 0700 root root - -"
      "d ${cfg.runDir} 0750 root ${cfg.adminGroup} - -"
    ] ++ lib.optional (cfg.runDir != "${cfg.stateDir}/run")
      # the CLI's default socket as root is <its default state dir>/run/host.sock
      "L+ ${cfg.stateDir}/run - - - - ${cfg.runDir}";

    networking.firewall.allowedTCPPorts = lib.optional openPort cfg.dashboard.port;

    systemd.services.hive-c0re = {
      description = "hyperhive core daemon (hive-c0re)";
      wantedBy = [ "multi-user.target" ];
      after = [ "network.target" "systemd-tmpfiles-setup.service" "nix-daemon.socket" ] ++ localDatabase;
      wants = localDatabase;
      # git for the config repos; nix and nixos-container for the agents' containers
      path = [ pkgs.git config.nix.package pkgs.nixos-container ]
        ++ lib.optional (lib.elem cfg.backend [ "bwrap" "auto" ]) pkgs.bubblewrap;
      environment = cfg.extraAgentEnv // {
        NIX_CONFIG = "experimental-features = nix-command flakes";
        # builds go to the daemon, outside this unit's sandboxing
        NIX_REMOTE = "daemon";
        # nix's fetcher cache (the meta flake's inputs), since ProtectHome hides /root
        XDG_CACHE_HOME = "/var/cache/hyperhive";
      } // lib.optionalAttrs (cfg.operatorPronouns != null) {
        HIVE_OPERATOR_PRONOUNS = cfg.operatorPronouns;
      } // lib.optionalAttrs (cfg.databasePasswordFile != null) {
        # libpq reads it; the core forwards nothing of it to the harnesses
        PGPASSFILE = cfg.databasePasswordFile;
      };
      serviceConfig = {
        ExecStart = execStart;
        EnvironmentFile = lib.optional (cfg.environmentFile != null) cfg.environmentFile;
        # root for nixos-container; the group makes host.sock root:adminGroup, the umask 0660
        Group = cfg.adminGroup;
        UMask = "0007";
        CacheDirectory = "hyperhive";
        Restart = "on-failure";
        RestartSec = 5;
        # The core stops its harnesses itself on SIGTERM; after a crash the
        # survivors keep running and the restarted core adopts them.
        KillMode = "process";
        TimeoutStopSec = 120;
        # Every agent's connections (32 at most per socket), the dashboard's and the
        # database's come out of one limit; systemd's soft default of 1024 is too few.
        LimitNOFILE = 65536;
        # Hardening that leaves container management alone: nixos-container
        # writes /etc/nixos-containers and /var/lib/nixos-containers and talks to
        # systemd, so no ProtectSystem, PrivateDevices or namespace restrictions.
        NoNewPrivileges = true;
        PrivateTmp = true;
        ProtectHome = true;
        ProtectKernelModules = true;
        ProtectKernelLogs = true;
        ProtectClock = true;
        RestrictRealtime = true;
        # No RestrictSUIDSGID: the core makes each agent's socket directory setgid to the agent's
        # group (the bwrap and nixos backends run every agent as its own uid), so that the socket a
        # restarted core binds there is one the running agent may still connect to.
      };
    };
  };
}
