# What NixOS itself declares and defines that hyperhive's host module reads,
# as the stub has no NixOS: each as current NixOS has it, since a default
# that changes under the module is what breaks a host's evaluation.
{ config, lib, pkgs, ... }:
{
  options = {
    # since 25.11 (before: default true), so a host that declares no
    # containers of its own has none unless a module turns it on
    boot.enableContainers = lib.mkOption {
      type = lib.types.bool;
      default = config.containers != { };
      description = "Whether to enable support for NixOS containers.";
    };

    # only what a test declares a container with; NixOS's has many more options
    containers = lib.mkOption {
      type = lib.types.attrsOf (lib.types.submodule {
        options.autoStart = lib.mkOption {
          type = lib.types.bool;
          default = false;
          description = "Whether the container is started at boot.";
        };
      });
      default = { };
      description = "A set of NixOS system configurations to be run as lightweight containers.";
    };

    # services.postgresql as NixOS 25.05 and 25.11 have it, only the options the module and
    # docs/nixos.md use (NixOS's has many more); ensurePermissions is gone since 24.05
    services.postgresql = {
      enable = lib.mkEnableOption "PostgreSQL Server";
      enableTCPIP = lib.mkOption {
        type = lib.types.bool;
        default = false;
        description = "Whether PostgreSQL should listen on all network interfaces.";
      };
      ensureDatabases = lib.mkOption {
        type = lib.types.listOf lib.types.str;
        default = [ ];
        description = "Ensures that the specified databases exist.";
      };
      ensureUsers = lib.mkOption {
        type = lib.types.listOf (lib.types.submodule {
          options.name = lib.mkOption {
            type = lib.types.str;
            description = "Name of the user to ensure.";
          };
          options.ensureDBOwnership = lib.mkOption {
            type = lib.types.bool;
            default = false;
            description = "Grants the user ownership to a database with the same name.";
          };
        });
        default = [ ];
        description = "Ensures that the specified users exist.";
      };
      authentication = lib.mkOption {
        type = lib.types.lines;
        default = "";
        description = "Lines of pg_hba.conf, above NixOS's default rules.";
      };
      identMap = lib.mkOption {
        type = lib.types.lines;
        default = "";
        description = "Lines of pg_ident.conf: map name, system user, database user.";
      };
    };
  };

  config = {
    nix.package = pkgs.nix;
    # NixOS's own check of ensureDBOwnership
    assertions = lib.mkIf config.services.postgresql.enable (map (u: {
      assertion = !u.ensureDBOwnership || builtins.elem u.name config.services.postgresql.ensureDatabases;
      message = "services.postgresql.ensureUsers: ${u.name} has ensureDBOwnership but no database of that name in ensureDatabases.";
    }) config.services.postgresql.ensureUsers);
  };
}
