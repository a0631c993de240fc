# A stand-in for the part of nixpkgs' `lib` that hyperhive's nix files use, so
# the tests can evaluate them with a bare nix-instantiate (no nixpkgs here).
#
# Kept honest: each function does what nixpkgs' does for the arguments we
# pass, and anything not defined here is an evaluation error ("attribute
# missing"), so a nix file that starts using more of lib fails its test
# instead of passing untested. Stricter than nixpkgs in one way: an option
# without a description is an error, because every option must be documented.
let
  inherit (builtins) all any attrNames attrValues concatLists concatStringsSep elem filter foldl'
    isAttrs isBool isFunction isInt isList isPath isString length listToAttrs map match
    replaceStrings substring stringLength typeOf;

  showValue = v:
    if isString v then ''"${v}"''
    else if isInt v || isBool v then builtins.toJSON v
    else "a ${typeOf v}";

  # A value of a type: check it, fill submodule defaults, and say where it failed.
  plainType = name: description: check: {
    inherit name description check;
    finalize = loc: v:
      if check v then v
      else throw "The option `${loc}' has a value of the wrong type: expected ${description}, got ${showValue v}.";
    merge = loc: values:
      if all (v: v == builtins.head values) values then builtins.head values
      else throw "The option `${loc}' has conflicting definition values.";
  };

  isDerivation = v: isAttrs v && (v.type or null) == "derivation";
  isStringLike = v: isString v || isPath v || (isAttrs v && v ? outPath);
in
rec {
  # -- options -------------------------------------------------------------------------

  mkOption = args:
    if !(args ? description) then throw "mkOption: every option needs a description"
    else if !(args ? type) then throw "mkOption: every option needs a type (${args.description})"
    else args // { _type = "option"; };

  mkEnableOption = name: mkOption {
    type = types.bool;
    default = false;
    example = true;
    description = "Whether to enable ${name}.";
  };

  literalExpression = text: { _type = "literalExpression"; inherit text; };

  mkIf = condition: content: { _type = "if"; inherit condition content; };
  mkMerge = contents: { _type = "merge"; inherit contents; };
  mkOverride = priority: content: { _type = "override"; inherit priority content; };
  mkDefault = mkOverride 1000;
  mkForce = mkOverride 50;

  types = rec {
    bool = plainType "bool" "boolean" isBool;
    str = plainType "str" "string" isString;
    int = plainType "int" "signed integer" isInt;
    port = plainType "port" "16 bit unsigned integer" (v: isInt v && v >= 0 && v <= 65535);
    ints.between = lo: hi: plainType "intBetween" "integer between ${toString lo} and ${toString hi} (both inclusive)"
      (v: isInt v && v >= lo && v <= hi);
    ints.positive = plainType "positiveInt" "positive integer, meaning >0" (v: isInt v && v > 0);
    path = plainType "path" "absolute path"
      (v: isStringLike v && substring 0 1 (toString v) == "/");
    package = plainType "package" "package" isDerivation;
    strMatching = pattern: plainType "strMatching" "string matching the pattern ${pattern}"
      (v: isString v && match pattern v != null);
    # as nixpkgs' separatedString "\n": every definition's lines, in turn
    lines = (plainType "lines" "strings concatenated with \"\\n\"" isString) // {
      merge = loc: values: concatStringsSep "\n" values;
    };
    enum = values: plainType "enum" "one of ${concatStringsSep ", " (map showValue values)}"
      (v: elem v values);

    nullOr = t: (plainType "nullOr" "null or ${t.description}" (v: v == null || t.check v)) // {
      finalize = loc: v: if v == null then null else t.finalize loc v;
      sub = t;
    };

    listOf = t: (plainType "listOf" "list of ${t.description}" (v: isList v && all t.check v)) // {
      finalize = loc: v:
        if isList v then map (x: t.finalize "${loc}.*" x) v
        else throw "The option `${loc}' has a value of the wrong type: expected list of ${t.description}, got ${showValue v}.";
      merge = loc: values: concatLists values;
      sub = t;
    };

    attrsOf = t: (plainType "attrsOf" "attribute set of ${t.description}" (v: isAttrs v && all t.check (attrValues v))) // {
      finalize = loc: v:
        if isAttrs v && !(v ? _type) then builtins.mapAttrs (n: x: t.finalize "${loc}.${n}" x) v
        else throw "The option `${loc}' has a value of the wrong type: expected attribute set of ${t.description}, got ${showValue v}.";
      merge = loc: values:
        let names = attrNames (foldl' (a: b: a // b) { } values);
        in listToAttrs (map (n: {
          name = n;
          value = let vs = concatLists (map (v: if v ? ${n} then [ v.${n} ] else [ ]) values);
                  in if length vs == 1 then builtins.head vs else t.merge "${loc}.${n}" vs;
        }) names);
      sub = t;
    };

    # submodule { options = { … }; }: a value is an attribute set of those options,
    # each defaulted like a top-level option; an unknown key is an error.
    submodule = module:
      let
        options = (if isFunction module then module { } else module).options;
        fill = loc: v:
          let unknown = filter (n: !(options ? ${n})) (attrNames v);
          in if unknown != [ ] then throw "The option `${loc}.${builtins.head unknown}' does not exist."
          else builtins.mapAttrs (n: opt:
            if v ? ${n} then opt.type.finalize "${loc}.${n}" v.${n}
            else if opt ? default then opt.type.finalize "${loc}.${n}" opt.default
            else throw "The option `${loc}.${n}' is used but not defined.") options;
      in (plainType "submodule" "submodule" isAttrs) // {
        finalize = loc: v:
          if isAttrs v && !(v ? _type) then fill loc v
          else throw "The option `${loc}' has a value of the wrong type: expected submodule, got ${showValue v}.";
        merge = loc: values:
          let names = attrNames (foldl' (a: b: a // b) { } values);
          in listToAttrs (map (n: {
            name = n;
            value = let vs = concatLists (map (v: if v ? ${n} then [ v.${n} ] else [ ]) values);
                    in if length vs == 1 then builtins.head vs
                    else if all isList vs then concatLists vs
                    else if all (x: x == builtins.head vs) vs then builtins.head vs
                    else throw "The option `${loc}.${n}' has conflicting definition values.";
          }) names);
        getSubOptions = options;
      };
  };

  # -- lists, strings, attribute sets ----------------------------------------------------

  inherit concatStringsSep elem any all replaceStrings;
  concatMap = f: list: concatLists (map f list);
  concatMapStringsSep = sep: f: list: concatStringsSep sep (map f list);
  optional = cond: x: if cond then [ x ] else [ ];
  optionals = cond: xs: if cond then xs else [ ];
  optionalString = cond: s: if cond then s else "";
  optionalAttrs = cond: as: if cond then as else { };
  mapAttrs = builtins.mapAttrs;
  mapAttrsToList = f: attrs: map (n: f n attrs.${n}) (attrNames attrs);
  attrNames = builtins.attrNames;
  filterAttrs = pred: attrs: listToAttrs (map (n: { name = n; value = attrs.${n}; })
    (filter (n: pred n attrs.${n}) (attrNames attrs)));
  genAttrs = names: f: listToAttrs (map (n: { name = n; value = f n; }) names);
  hasPrefix = prefix: s: substring 0 (stringLength prefix) s == prefix;
  versionAtLeast = v: min: builtins.compareVersions v min >= 0;
  getName = x: if isAttrs x && x ? pname then x.pname else (builtins.parseDrvName (x.name or x)).name;
  cleanSource = src: src;  # nixpkgs drops VCS and editor files; the stub builds nothing from it

  # As nixpkgs since 23.05: bare when it is only safe characters, else single-quoted.
  escapeShellArg = arg:
    let s = toString arg;
    in if match "[[:alnum:],._+:@%/-]+" s != null then s
       else "'${replaceStrings [ "'" ] [ "'\\''" ] s}'";
  escapeShellArgs = args: concatStringsSep " " (map escapeShellArg args);
}
