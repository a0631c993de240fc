# hyperhive.pyz with its interpreter: the compiled dependencies (gevent,
# greenlet) and the pure-Python ones come from nixpkgs' python3 here, so the
# pyz is written without a vendored copy. Wrappers hive-c0re, hive-ag3nt and
# hive-m1nd pick the role by name, like the symlinks outside Nix.
#
# share/hyperhive/ is what the core's nixos backend builds containers from
# (its --container-source): the pyz, and nix/ with the container templates
# and the Python package list they import.
{ lib, stdenvNoCC, python3, makeWrapper }:

let
  python = python3.withPackages (import ./python-deps.nix);
in
stdenvNoCC.mkDerivation {
  pname = "hyperhive";
  version = "0.1.0";
  src = lib.cleanSource ./..;
  nativeBuildInputs = [ makeWrapper ];
  buildPhase = ''
    runHook preBuild
    mkdir empty-vendor
    ${python}/bin/python tools/zipapp.py --vendor empty-vendor --revision nix --output hyperhive.pyz
    runHook postBuild
  '';
  installPhase = ''
    runHook preInstall
    share=$out/share/hyperhive
    install -Dm644 hyperhive.pyz $share/hyperhive.pyz
    install -Dm644 -t $share/nix nix/python-deps.nix
    install -Dm644 -t $share/nix/templates nix/templates/*.nix
    for role in hive-c0re hive-ag3nt hive-m1nd; do
      makeWrapper ${python}/bin/python $out/bin/$role \
        --add-flags $share/hyperhive.pyz --argv0 $role
    done
    makeWrapper ${python}/bin/python $out/bin/hyperhive --add-flags $share/hyperhive.pyz
    runHook postInstall
  '';
  passthru = { inherit python; };
  meta.description = "A hive of long-lived Claude Code agents on one host";
  meta.mainProgram = "hyperhive";
}
