# hyperhive as a flake: the package (hyperhive.pyz with its interpreter and the
# container templates), the NixOS module that runs the core, and the container
# templates as modules of their own. Install: import nixosModules.default and
# set services.hyperhive.enable = true (docs/nixos.md).
{
  description = "A hive of long-lived Claude Code agents on one host";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forEach = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      packages = forEach (pkgs: rec {
        hyperhive = pkgs.callPackage ./nix/package.nix { };
        default = hyperhive;
      });

      nixosModules = {
        default = ./nix/modules/hive-c0re.nix;
        hive-c0re = ./nix/modules/hive-c0re.nix;
        # what the core's meta flake adds to each container; here for reading and reuse
        harness-base = ./nix/templates/harness-base.nix;
        agent-base = ./nix/templates/agent-base.nix;
        manager = ./nix/templates/manager.nix;
      };
    };
}
