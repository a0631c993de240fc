# A stand-in for the few nixpkgs packages hyperhive's nix files name: each a
# fake derivation (an attribute set with `type = "derivation"` and a made-up
# store path), so the tests can read the rendered units and their paths.
# A package not listed here is an evaluation error, as in lib.nix.
{ lib }:
let
  drv = pname: version: {
    type = "derivation";
    inherit pname version;
    name = "${pname}-${version}";
    outPath = "/nix/store/${builtins.substring 0 32 (builtins.hashString "sha256" pname)}-${pname}-${version}";
  };

  pythonPackages = builtins.listToAttrs (map (n: { name = n; value = drv "python3.12-${n}" "0"; })
    [ "gevent" "psycopg2" "bottle" "peewee" "docopt" "sh" "markdown" ]);

  self = {
    inherit lib;
    git = drv "git" "2.47.0";
    nix = drv "nix" "2.24.10";
    nixos-container = drv "nixos-container" "0";
    bubblewrap = drv "bubblewrap" "0.11.0";
    claude-code = drv "claude-code" "2.1.0";
    makeWrapper = drv "make-wrapper-hook" "0";

    python3 = drv "python3" "3.12.8" // {
      pkgs = pythonPackages;
      # the env's packages are kept beside it so a test can check what was asked for
      withPackages = f: drv "python3-3.12.8-env" "0" // { stubPackages = map (p: p.pname) (f pythonPackages); };
    };

    stdenvNoCC.mkDerivation = args: drv args.pname args.version;

    # Calls a package function with what it asks for, like nixpkgs; `override` re-calls it.
    callPackage = fn: args:
      let
        f = if builtins.isFunction fn then fn else import fn;
        call = extra: f (builtins.intersectAttrs (builtins.functionArgs f) self // extra);
      in call args // { override = more: call (args // more); };
  };
in
self
