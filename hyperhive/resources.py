"""The one zip-aware loader: files of the project, from a checkout or the pyz.

Everything that is not Python (prompts, web assets, the build revision) is
read through here, so the same code works from `hyperhive.py` in a checkout
and from inside `hyperhive.pyz`.
"""

import os
import zipfile

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(_PACKAGE_DIR)  # the checkout, or the .pyz file itself
IN_ZIP = os.path.isfile(ROOT)
_zip = None


def entry():
    """The file to run with python to get any role: the pyz, or hyperhive.py."""
    return ROOT if IN_ZIP else os.path.join(ROOT, "hyperhive.py")


def read(relpath):
    """The bytes of a project file given its path from the top of the tree."""
    global _zip
    if IN_ZIP:
        if _zip is None:
            _zip = zipfile.ZipFile(ROOT)
        try:
            return _zip.read(relpath)
        except KeyError:
            raise FileNotFoundError(f"{relpath} is not inside {ROOT}") from None
    with open(os.path.join(ROOT, relpath), "rb") as f:
        return f.read()


def text(relpath):
    return read(relpath).decode()


def revision():
    """The git revision this build was made from ('dev' in an unbuilt checkout)."""
    try:
        return text("hyperhive/REVISION").strip() or "dev"
    except FileNotFoundError:
        return "dev"
