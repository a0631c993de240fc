# The Python packages hyperhive.pyz needs from its interpreter, for
# python3.withPackages: the core's (nix/modules/hive-c0re.nix), the package's
# wrappers (nix/package.nix) and every container's harness
# (nix/templates/harness-base.nix). The same names as requirements.txt.
ps: with ps; [ gevent psycopg2 bottle peewee docopt sh markdown ]
