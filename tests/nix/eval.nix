# A minimal NixOS-style module system over lib.nix and pkgs.nix, for the tests:
#
#   import ./eval.nix { modules = [ ../../nix/modules/hive-c0re.nix { services.hyperhive.enable = true; } ];
#                       strict = [ "services.hyperhive" ]; }
#
# gives { config; options; optionList; }. It does what the real one does for
# what hyperhive's modules use: `imports`, `options`/`config` or shorthand
# modules, module functions called with { config, lib, pkgs, options }, mkIf /
# mkMerge pushed down into attributes (so `config = mkIf cfg.enable { … }`
# does not loop), priorities (option default < mkDefault < plain < mkForce),
# list concatenation, type checks with submodule defaults. Paths nobody
# declared (systemd.services, …) merge by shape; under a `strict` prefix an
# undeclared name is an error, as it is in NixOS.
{ modules, strict ? [ ], lib ? import ./lib.nix, pkgs ? import ./pkgs.nix { inherit lib; } }:
let
  inherit (builtins) all any attrNames concatLists concatStringsSep elem filter foldl' genericClosure
    head isAttrs isFunction isList isPath isString length listToAttrs map;

  dotted = path: concatStringsSep "." path;
  isOption = x: isAttrs x && (x._type or null) == "option";

  # -- collecting modules --------------------------------------------------------------

  args = { inherit config lib pkgs options; };

  load = key: m:
    let
      raw0 = if isPath m || isString m then import m else m;
      raw = if isFunction raw0 then raw0 args else raw0;
      structured = raw ? options || raw ? config;
      extra = filter (n: !(elem n [ "imports" "options" "config" "_file" ])) (attrNames raw);
    in
    if structured && extra != [ ] then
      throw "module ${key} has `options` or `config` and also ${head extra}: put that under config"
    else {
      inherit key;
      imports = raw.imports or [ ];
      options = raw.options or { };
      config = if structured then raw.config or { } else removeAttrs raw [ "imports" "_file" ];
    };

  keyOf = parent: i: m: if isPath m || isString m then toString m else "${parent}:${toString i}";

  collected = genericClosure {
    startSet = builtins.genList (i: { key = keyOf "<top>" i (builtins.elemAt modules i); m = builtins.elemAt modules i; })
      (length modules);
    operator = item:
      let loaded = load item.key item.m;
      in builtins.genList (i: { key = keyOf item.key i (builtins.elemAt loaded.imports i); m = builtins.elemAt loaded.imports i; })
        (length loaded.imports);
  };
  loaded = map (item: load item.key item.m) collected;

  # -- options ---------------------------------------------------------------------------

  mergeDecls = path: a: b:
    if isOption a || isOption b then throw "The option `${dotted path}' is declared twice."
    else a // listToAttrs (map (n: {
      name = n;
      value = if a ? ${n} then mergeDecls (path ++ [ n ]) a.${n} b.${n} else b.${n};
    }) (attrNames b));
  options = foldl' (mergeDecls [ ]) { } (map (m: m.options) loaded);

  # -- definitions -----------------------------------------------------------------------

  isProperty = x: isAttrs x && elem (x._type or null) [ "if" "merge" "override" ];

  # Properties wrapping an attribute set go down into its attributes, unevaluated.
  pushDown = path: d:
    if (d._type or null) == "merge" then concatLists (map (pushDown path) d.contents)
    else if (d._type or null) == "if" then map (builtins.mapAttrs (n: v: lib.mkIf d.condition v)) (pushDown path d.content)
    else if (d._type or null) == "override" then map (builtins.mapAttrs (n: v: lib.mkOverride d.priority v)) (pushDown path d.content)
    else if isAttrs d then [ d ]
    else throw "`${dotted path}' is set to ${builtins.typeOf d}, but it is a set of options.";

  # A leaf definition: its conditions evaluated, its priority read.
  discharge = d:
    if (d._type or null) == "merge" then concatLists (map discharge d.contents)
    else if (d._type or null) == "if" then (if d.condition then discharge d.content else [ ])
    else if (d._type or null) == "override" then map (x: x // { priority = d.priority; }) (discharge d.content)
    else [ { priority = 100; value = d; } ];

  best = ds:
    let top = foldl' (p: d: if d.priority < p then d.priority else p) 9999 ds;
    in map (d: d.value) (filter (d: d.priority == top) ds);

  # Whether a definition is an attribute set of further definitions, read without evaluating conditions.
  isNode = d:
    if (d._type or null) == "merge" then all isNode d.contents
    else if isProperty d then isNode d.content
    else isAttrs d && !(d ? _type) && !(d ? outPath);

  underStrict = path: any (s: s == dotted path || lib.hasPrefix "${s}." (dotted path)) strict;

  mergeOption = path: opt: defs:
    let
      ds = concatLists (map discharge defs) ++ (if opt ? default then [ { priority = 1500; value = opt.default; } ] else [ ]);
      values = best ds;
    in
    if ds == [ ] then throw "The option `${dotted path}' is used but not defined."
    else opt.type.finalize (dotted path) (if length values == 1 then head values else opt.type.merge (dotted path) values);

  # Undeclared, so there is no default: null when every definition was switched off.
  # (Kept even then: dropping it would make a set's names depend on conditions, a loop.)
  mergeLeaf = path: defs:
    let values = best (concatLists (map discharge defs));
    in if values == [ ] then null
       else if all isList values then concatLists values
       else if all (v: v == head values) values then head values
       else throw "`${dotted path}' has conflicting definition values.";

  mergeNode = path: decls: defs:
    let
      pushed = concatLists (map (pushDown path) defs);
      names = attrNames (foldl' (a: b: a // b) (if decls == null then { } else decls) pushed);
      defsOf = n: concatLists (map (a: if a ? ${n} then [ a.${n} ] else [ ]) pushed);
      child = n:
        let
          here = path ++ [ n ];
          decl = if decls != null && decls ? ${n} then decls.${n} else null;
          subdefs = defsOf n;
        in
        if decl == null && underStrict path then throw "The option `${dotted here}' does not exist."
        else if decl != null && isOption decl then mergeOption here decl subdefs
        else if decl != null || (subdefs != [ ] && all isNode subdefs) then mergeNode here decl subdefs
        else mergeLeaf here subdefs;
    in
    listToAttrs (map (n: { name = n; value = child n; }) names);

  config = mergeNode [ ] options (map (m: m.config) loaded);

  # -- the declared options as a list, for the docs test ---------------------------------

  optionList = path: decls:
    concatLists (map (n:
      let d = decls.${n}; here = path ++ [ n ];
      in if isOption d then [ { name = dotted here; type = d.type.description; description = d.description; } ]
           ++ subOptions here d.type
         else optionList here d) (attrNames decls));
  subOptions = path: t:
    if t ? getSubOptions then optionList (path ++ [ "<name>" ]) t.getSubOptions
    else if t ? sub then subOptions path t.sub
    else [ ];
in
{
  inherit config options;
  optionList = optionList [ ] options;
}
