"""Shared plumbing of the ZipML experiment scripts (bench/bench_zipml_*.py): arguments, JSON and plot output.

Ref: report conventions of the project (JSON with units in key names, as FINN's build reports do).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

__all__ = ["bench_parser", "write_json", "save_figure", "environment"]


def bench_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--out", default="results", metavar="DIR", help="output directory (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="fewer epochs/seeds, for a smoke run")
    p.add_argument("--seed", type=int, default=0, help="base random seed (default: %(default)s)")
    return p


def environment() -> dict:
    return {"python": platform.python_version(), "numpy": np.__version__, "machine": platform.machine(),
            "cpu_count": os.cpu_count(), "command": " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]),
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _clean(o):
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    if isinstance(o, np.ndarray):
        return _clean(o.tolist())
    if isinstance(o, (np.floating, float)):
        return None if not np.isfinite(o) else float(o)
    if isinstance(o, np.integer):
        return int(o)
    return o


def write_json(out_dir, name: str, data: dict) -> Path:
    """Write ``out_dir/zipml_<name>.json`` (NaN/inf become null) with an ``environment`` block."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"zipml_{name}.json"
    payload = {"benchmark": f"zipml_{name}", **_clean(data), "environment": environment()}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def save_figure(fig, out_dir, name: str) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"zipml_{name}.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path
