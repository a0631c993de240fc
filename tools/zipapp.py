"""Write hyperhive.pyz reproducibly: sorted entries, fixed times and modes, hash-based pycs.

Called by build_zipapp.sh. zipimport loads `mod.pyc` placed beside `mod.py`
(not __pycache__), and an unchecked-hash pyc carries no mtime, so the same
sources always give the same bytes.
"""

import argparse
import importlib.util
import io
import os
import py_compile
import zipfile

FIXED_TIME = (1980, 1, 1, 0, 0, 0)
SKIP_DIRS = {"__pycache__", "bin", "tests"}
SKIP_SUFFIXES = (".pyc", ".pyo", ".so", ".exe")
# What a vendored package's dist-info keeps. entry_points.txt is how a library
# finds its own plugins by name (markdown's extensions): a dist-info in the pyz
# shadows the interpreter's copy of the same package, so without it the lookup
# fails even where the package is installed.
DIST_INFO_KEPT = ("/METADATA", "/LICENSE", "/LICENSE.txt", "/LICENSE.md", "/top_level.txt", "/entry_points.txt")


def walk(root, prefix=""):
    """(archive name, file path) of every file under root, skipping caches and binaries."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        for name in sorted(filenames):
            if name.endswith(SKIP_SUFFIXES):
                continue
            path = os.path.join(dirpath, name)
            yield prefix + os.path.relpath(path, root).replace(os.sep, "/"), path


def compiled(source_path, archive_name):
    """The bytes of an unchecked-hash pyc for one source file."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "m.pyc")
        py_compile.compile(source_path, cfile=out, dfile=archive_name, doraise=True,
                           invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
        with open(out, "rb") as f:
            return f.read()


def add(zf, name, data):
    info = zipfile.ZipInfo(name, FIXED_TIME)
    info.external_attr = 0o644 << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    zf.writestr(info, data)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--vendor", required=True)
    p.add_argument("--revision", required=True)
    p.add_argument("--output", required=True)
    args = p.parse_args()
    entries = {"__main__.py": "hyperhive.py"}
    entries.update(walk("hyperhive", "hyperhive/"))
    entries.update(walk("assets", "assets/") if os.path.isdir("assets") else ())
    for name, path in walk(args.vendor):
        if ".dist-info/" in name and not name.endswith(DIST_INFO_KEPT):
            continue  # RECORD/INSTALLER/direct_url name the build machine
        entries.setdefault(name, path)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        add(zf, "hyperhive/REVISION", (args.revision + "\n").encode())
        for name in sorted(entries):
            with open(entries[name], "rb") as f:
                data = f.read()
            add(zf, name, data)
            if name.endswith(".py") and name != "__main__.py":
                add(zf, name + "c", compiled(entries[name], name))
    tmp = args.output + ".tmp"
    with open(tmp, "wb") as f:
        f.write(b"#!/usr/bin/env python3\n")
        f.write(buf.getvalue())
    os.chmod(tmp, 0o755)
    os.replace(tmp, args.output)
    print(f"wrote {args.output} ({os.path.getsize(args.output) // 1024} KiB, "
          f"{len(entries)} files, python {importlib.util.MAGIC_NUMBER.hex()})")


if __name__ == "__main__":
    main()
