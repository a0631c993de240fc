# The core daemon as a systemd service. The operator's admin CLI is
# `hyperhive --socket <stateDir>/run/host.sock …`, for root and the admin group.
{ config, lib, pkgs, ... }:

let
  cfg = config.services.hyperhive;
in
{
  options.services.hyperhive = {
    enable = lib.mkEnableOption "the hyperhive core daemon (hive-c0re)";
    package = lib.mkOption {
      type = lib.types.package;
      default = pkgs.callPackage ../package.nix { };
      description = "The hyperhive package.";
    };
    stateDir = lib.mkOption {
      type = lib.types.path;
      default = "/var/lib/hyperhive";
      description = "Where the hive keeps its database, agents and config repos.";
    };
    backend = lib.mkOption {
      type = lib.types.enum [ "auto" "process" ];
      default = "auto";
      description = "How agents are contained.";
    };
    claude = lib.mkOption {
      type = lib.types.str;
      default = "claude";
      description = "The claude binary the harnesses run.";
    };
    passEnv = lib.mkOption {
      type = lib.types.listOf lib.types.str;
      default = [ ];
      example = [ "ANTHROPIC_API_KEY" ];
      description = "Environment variables forwarded to every harness.";
    };
    environmentFile = lib.mkOption {
      type = lib.types.nullOr lib.types.path;
      default = null;
      description = "A systemd EnvironmentFile with secrets such as ANTHROPIC_API_KEY (never in the store).";
    };
    adminGroup = lib.mkOption {
      type = lib.types.str;
      default = "hyperhive";
      description = "The group whose members may use the admin socket.";
    };
  };

  config = lib.mkIf cfg.enable {
    users.groups.${cfg.adminGroup} = { };
    environment.systemPackages = [ cfg.package ];
    systemd.services.hive-c0re = {
      description = "hyperhive core daemon";
      wantedBy = [ "multi-user.target" ];
      after = [ "network.target" ];
      path = [ pkgs.git ];
      serviceConfig = {
        ExecStart = lib.concatStringsSep " " ([
          "${cfg.package}/bin/hive-c0re" "serve"
          "--state-dir" cfg.stateDir
          "--backend" cfg.backend
          "--claude" cfg.claude
        ] ++ lib.concatMap (name: [ "--pass-env" name ]) cfg.passEnv);
        EnvironmentFile = lib.mkIf (cfg.environmentFile != null) cfg.environmentFile;
        Group = cfg.adminGroup;
        UMask = "0007";
        Restart = "on-failure";
        # The core stops its harnesses itself on SIGTERM; after a crash the
        # survivors keep running and the restarted core adopts them.
        KillMode = "process";
        TimeoutStopSec = 90;
      };
    };
  };
}
