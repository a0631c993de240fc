# hyperhive.pyz with its interpreter: the compiled dependencies (gevent,
# greenlet) and the pure-Python ones come from nixpkgs' python3 here, so the
# pyz is written without a vendored copy. Wrappers hive-c0re, hive-ag3nt and
# hive-m1nd pick the role by name, like the symlinks outside Nix.
{ lib, stdenvNoCC, python3, makeWrapper }:

let
  python = python3.withPackages (ps: with ps; [ gevent bottle peewee docopt sh markdown ]);
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
    install -Dm644 hyperhive.pyz $out/share/hyperhive/hyperhive.pyz
    for role in hive-c0re hive-ag3nt hive-m1nd; do
      makeWrapper ${python}/bin/python $out/bin/$role \
        --add-flags $out/share/hyperhive/hyperhive.pyz --argv0 $role
    done
    makeWrapper ${python}/bin/python $out/bin/hyperhive --add-flags $out/share/hyperhive/hyperhive.pyz
    runHook postInstall
  '';
  meta.description = "A hive of long-lived Claude Code agents on one host";
  meta.mainProgram = "hyperhive";
}
