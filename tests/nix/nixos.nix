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
  };

  config.nix.package = pkgs.nix;
}
