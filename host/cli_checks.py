"""Checks for ``host/run.py``: every argument and every output path is checked before any work starts.

Exit codes (``EXIT_*``, listed in ``--help`` and the README): 0 done, 1 the run failed (link, simulator, I/O),
2 usage error (a bad argument, dataset or output path; nothing was started), 3 the engine's result differs
from its bit-exact reference (golden model or NumPy twin), 130 interrupted (Ctrl-C).

How a flag is checked:

* its value's range in argparse ``type=`` (:func:`int_at_least`, :func:`positive_float`, :func:`step_size`):
  argparse names the flag and exits 2;
* which jobs read it in :data:`JOB_FLAGS` and its default in :data:`DEFAULTS`.  Such a flag is declared with
  ``default=None`` so that "given" can be told from "defaulted": given to a job that does not read it, it is a
  usage error (never silently ignored);
* checks across flags or on the file system in a function decorated with :func:`check`;
* what only the job can judge (a dataset that does not fit the engine, a model file made for other data) in
  the job module's ``check_args``, which raises :class:`UsageError` too.
"""
from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_MISMATCH, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

EXIT_CODES_HELP = """exit status:
  0    done
  1    the run failed (link, simulator, file I/O)
  2    usage error: a bad argument, dataset or output path (checked before anything starts)
  3    the engine's result differs from its bit-exact reference (golden model or NumPy twin)
  130  interrupted (Ctrl-C)"""

LINEAR_MODELS = ("linreg",)
PIXELCNN_MODELS = ("pixelcnn", "gray-pixelcnn", "pyramid-pixelcnn", "masked-pixelcnn")
PLOT_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg")

# job -> the scoped flags (argparse dests) it reads; flags not listed in any job apply to every job
JOB_FLAGS = {
    "linreg": {"dataset", "bits", "epochs", "loss", "encoding", "seed", "step", "batch", "decay", "save_model", "load_model",
               "json", "plot", "workers", "sync_every", "sync_bits", "scale_step", "checkpoint"},
    "pixelcnn": {"dataset", "weights", "samples", "limit", "seed", "json", "plot"},
    "info": set(),
    "echo": {"bytes"},
}
JOB_NAMES = {"linreg": "--model linreg", "pixelcnn": "the PixelCNN models", "info": "info", "echo": "echo"}
# defaults filled in after the checks, for flags the user left out (None: stays None, the job decides)
DEFAULTS = {
    "linreg": {"dataset": "synthetic100", "bits": 4, "loss": "ls", "epochs": 10, "seed": 0, "batch": 1, "decay": 2,
               "workers": 1, "sync_every": 1, "sync_bits": 32, "scale_step": False},
    "pixelcnn": {"dataset": "digits"},
    "echo": {"bytes": 4096},
}
CHECKS = []  # functions (args) -> None, run in order by validate(); they raise UsageError


class UsageError(ValueError):
    """A command line that cannot run: the message names the flag and the problem."""


def check(fn):
    """Register ``fn(args)`` to run in :func:`validate` (after the flags' scope and defaults are settled)."""
    CHECKS.append(fn)
    return fn


def job_of(args) -> str:
    if args.action != "train":
        return args.action
    return "pixelcnn" if args.model in PIXELCNN_MODELS else "linreg"


def flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


# ------------------------------------------------------------------ argparse types (argparse exits 2)

def int_at_least(lo: int, what: str = ""):
    """argparse type: an integer >= ``lo``."""
    def parse(text):
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"must be at least {lo}{what}, got {v}")
        return v
    parse.__name__ = "integer"
    return parse


def positive_float(text):
    """argparse type: a finite number > 0."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return v


MAX_STEP_SHIFT = 63  # the SGD engine's STEP_SHIFT register is 6 bits


def step_size(text) -> int:
    """argparse type for ``--step``: a power of two 2**-k (``0.0078125``, ``2^-7``, ``2**-7``) -> k."""
    t = text.strip().replace("**", "^")
    try:
        if t.startswith("2^"):
            k = -int(t[2:])
        else:
            v = float(t)
            if not (math.isfinite(v) and 0 < v <= 1):
                raise argparse.ArgumentTypeError(f"must be a step in (0, 1], got {text}")
            m, e = math.frexp(v)  # v = m * 2**e, m in [0.5, 1)
            if m != 0.5:
                lo, hi = 2.0 ** (e - 2), 2.0 ** (e - 1)
                raise argparse.ArgumentTypeError(
                    f"the engine's step is a power of two: {text} is not; use {lo:g} (2^{e - 2}) or {hi:g} "
                    f"(2^{e - 1})")
            k = 1 - e
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a power of two such as 0.0078125 or 2^-7, got {text!r}") \
            from None
    if not 0 <= k <= MAX_STEP_SHIFT:
        raise argparse.ArgumentTypeError(f"must be 2^-k with 0 <= k <= {MAX_STEP_SHIFT}, got {text}")
    return k


def power_of_two(text) -> int:
    """argparse type for ``--batch``: 1, 2, 4, ... (the engine's refresh mask is 2^k - 1)."""
    v = int_at_least(1)(text)
    if v & (v - 1):
        raise argparse.ArgumentTypeError(f"must be a power of two (the engine refreshes its model snapshot "
                                         f"every 2^k samples), got {v}")
    return v


# ------------------------------------------------------------------ paths

def check_output(path, option: str, *, suffixes=None) -> Path:
    """An output file that can be written: not a directory, in a directory that exists or can be created,
    writable; ``suffixes``: the accepted file name endings.  Nothing is created."""
    p = Path(path).expanduser()
    if suffixes and p.suffix.lower() not in suffixes:
        raise UsageError(f"{option} {path}: the file name must end in {' or '.join(suffixes)}")
    if p.is_dir():
        raise UsageError(f"{option} {path}: is a directory; give a file name")
    if p.exists() and not os.access(p, os.W_OK):
        raise UsageError(f"{option} {path}: the file exists and is not writable")
    parent = p.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"{option} {path}: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {path}: cannot create files in {parent} (permission denied)")
    return p


def check_input(path, option: str) -> Path:
    """An input file that exists and can be read."""
    p = Path(path).expanduser()
    if not p.exists():
        raise UsageError(f"{option} {path}: no such file")
    if p.is_dir():
        raise UsageError(f"{option} {path}: is a directory, not a file")
    if not os.access(p, os.R_OK):
        raise UsageError(f"{option} {path}: not readable (permission denied)")
    return p


def check_distinct(outputs: dict) -> None:
    """``{option: path}``: no two outputs may be the same file."""
    seen = {}
    for option, path in outputs.items():
        if path is None:
            continue
        key = Path(path).expanduser().absolute()
        if key in seen:
            raise UsageError(f"{seen[key]} and {option} both write {path}")
        seen[key] = option


# ------------------------------------------------------------------ the checks

def validate(args):
    """Scope, defaults and every registered check; returns ``args`` with defaults filled in and
    ``args.given``, the scoped flags the user gave."""
    job = job_of(args)
    reads = JOB_FLAGS[job]
    args.given = {dest for dest in set().union(*JOB_FLAGS.values()) if getattr(args, dest, None) is not None}
    for other in JOB_FLAGS.values():
        for dest in sorted(other - reads):
            if getattr(args, dest, None) is not None:
                raise UsageError(f"{flag(dest)} does not apply to {JOB_NAMES[job]}" + _scope_hint(dest))
    for dest, value in DEFAULTS.get(job, {}).items():
        if getattr(args, dest, None) is None:
            setattr(args, dest, value)
    for fn in CHECKS:
        fn(args)
    return args


def _scope_hint(dest: str) -> str:
    jobs = [JOB_NAMES[j] for j, flags in JOB_FLAGS.items() if dest in flags]
    return f" (only to {' and '.join(jobs)})" if jobs else ""


@check
def _port_for_serial(args):
    if args.backend == "serial" and not args.port:
        raise UsageError("--backend serial needs --port (e.g. /dev/ttyUSB1, socket://host:port, loop://)")
    if args.backend != "serial" and args.port:
        raise UsageError(f"--port applies to --backend serial only (got --backend {args.backend})")


@check
def _outputs(args):
    outputs = {}
    if getattr(args, "json", None) is not None:
        outputs["--json"] = check_output(args.json, "--json")
    if getattr(args, "plot", None) is not None:
        outputs["--plot"] = check_output(args.plot, "--plot", suffixes=PLOT_SUFFIXES)
    if getattr(args, "save_model", None) is not None:
        outputs["--save-model"] = check_output(args.save_model, "--save-model", suffixes=(".npz",))
    check_distinct(outputs)
