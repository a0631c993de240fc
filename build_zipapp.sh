#!/bin/sh
# Build hyperhive.pyz: our code, the prompts and web assets, and the pure-Python
# dependencies vendored at the pins of requirements.txt, with hash-checked .pyc
# beside every module so the pyz never recompiles on start. Two builds of the
# same tree are byte-identical. The pins marked "# interpreter" in
# requirements.txt (gevent and what it needs) come from the interpreter.
#
#   ./build_zipapp.sh [OUTPUT]        (default: hyperhive.pyz; PYTHON picks the interpreter)
set -eu
cd "$(dirname "$0")"
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
OUT=${1:-hyperhive.pyz}
VENDORED=$(grep -vE '^\s*(#|$)|# interpreter$' requirements.txt)
KEY=$(printf '%s\n' "$VENDORED" "$("$PYTHON" -c 'import sys; print(sys.implementation.cache_tag)')" | sha256sum | cut -c1-16)
VENDOR=build/vendor-$KEY
if [ ! -d "$VENDOR" ]; then
    rm -rf "$VENDOR.tmp"
    # shellcheck disable=SC2086
    "$PYTHON" -m pip install --quiet --disable-pip-version-check --no-deps --no-compile \
        --target "$VENDOR.tmp" $VENDORED
    mv "$VENDOR.tmp" "$VENDOR"
fi
REV=$(git rev-parse --short=12 HEAD 2>/dev/null || echo dev)
exec "$PYTHON" tools/zipapp.py --vendor "$VENDOR" --revision "$REV" --output "$OUT"
