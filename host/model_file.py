"""The linear-model file written by ``--save-model`` and read by ``--load-model``.

An ``.npz`` (``numpy.savez``, no pickled objects) with three entries:

* ``model_q23`` int32 (d,): the engine's model words, signed fixed point with 23 fraction bits (Q8.23), one
  per feature and the bias last; what ``SgdDriver.read_model`` returned and ``load_model`` writes back;
* ``model`` float64 (d,): the same model as real numbers (``model_q23 / 2**23``), for use without this code;
* ``metadata``: a JSON string (0-d unicode array) with ``format`` ("zippix-linear-model"), ``version`` (1),
  ``model``, ``dataset``, ``features`` (d, bias included), ``samples``, ``bits``, ``signed``, ``epochs`` (all
  epochs the model has been trained, over every resumed run), ``seed``, ``step_shift`` (initial step
  2**-step_shift), ``decay_every`` (0: constant step), ``batch``, ``grad_rounding``, ``engine_params`` (bus
  bits, lanes, max features, store beats, pipe latency), ``backend``, ``final_loss``, ``rng_state`` (NumPy's
  PCG64 state after the last epoch: a resumed run continues the same random stream) and ``scaling`` (how the
  features and labels were mapped before training: per-feature ``feature_lo``/``feature_hi``, and labels
  ``minmax`` with ``label_lo``/``label_hi`` or ``binary`` with ``positive_class``).

Scaling a new matrix ``X`` the way the model expects: ``(X - lo) / (hi - lo)`` per feature (constant features
-> 0), ``2 s - 1`` when ``signed``, then a bias column of ones; see :func:`scale`.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

FORMAT, VERSION = "zippix-linear-model", 1
REQUIRED = ("dataset", "features", "bits", "epochs", "seed", "step_shift", "decay_every", "batch", "rng_state",
            "scaling")


class ModelFileError(ValueError):
    """A model file that cannot be read: the message names the file and the problem."""


def save(path, model_q23, metadata: dict) -> Path:
    path = Path(path)
    meta = {"format": FORMAT, "version": VERSION, **metadata}
    q = np.asarray(model_q23, dtype=np.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:  # a file object: savez would append .npz to a name without it
        np.savez(f, model_q23=q.astype(np.int32), model=q / 2.0**23, metadata=np.array(json.dumps(meta)))
    return path


def load(path) -> tuple[np.ndarray, dict]:
    """``(model_q23 as int64, metadata)``; :class:`ModelFileError` for anything that is not a valid file."""
    import zipfile
    if not zipfile.is_zipfile(path):
        raise ModelFileError(f"{path}: not an .npz file (written by --save-model)")
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = {"model_q23", "metadata"} - set(z.files)
            if missing:
                raise ModelFileError(f"{path}: not a zippix model file (missing {', '.join(sorted(missing))})")
            q = np.asarray(z["model_q23"], dtype=np.int64)
            meta = json.loads(str(z["metadata"]))
    except ModelFileError:
        raise
    except Exception as exc:  # zip, npy or JSON errors
        raise ModelFileError(f"{path}: not a readable zippix model file ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise ModelFileError(f"{path}: not a zippix model file (format {found!r})")
    if meta.get("version") != VERSION:
        raise ModelFileError(f"{path}: model file version {meta.get('version')}, this host reads version {VERSION}")
    missing = [k for k in REQUIRED if k not in meta]
    if missing:
        raise ModelFileError(f"{path}: metadata lacks {', '.join(missing)}")
    if q.ndim != 1 or len(q) != meta.get("features"):
        raise ModelFileError(f"{path}: model has shape {q.shape} but its metadata says {meta.get('features')} "
                             f"features")
    return q, meta


def scaling_of(X, y, *, signed: bool, task: str) -> dict:
    """What ``models.zipml.datasets.prepare_linear`` (per-feature min-max, labels 'auto') does to X and y."""
    X, y = np.asarray(X, np.float64), np.asarray(y, np.float64)
    s = {"signed": bool(signed), "feature_lo": X.min(axis=0).tolist(), "feature_hi": X.max(axis=0).tolist()}
    if task == "regression":
        s.update(labels="minmax", label_lo=float(y.min()), label_hi=float(y.max()))
    else:
        s.update(labels="binary", positive_class=float(np.max(y)))
    return s


def scale(scaling: dict, X, y):
    """``(A, b)`` for data ``X, y`` scaled as the model's training data was (bias column appended)."""
    X, y = np.asarray(X, np.float64), np.asarray(y, np.float64)
    lo, hi = np.asarray(scaling["feature_lo"]), np.asarray(scaling["feature_hi"])
    A = (X - lo) / np.where(hi > lo, hi - lo, 1.0)
    if scaling["signed"]:
        A = 2.0 * A - 1.0
    A = np.hstack([A, np.ones((A.shape[0], 1))])
    if scaling["labels"] == "minmax":
        r = scaling["label_hi"] - scaling["label_lo"]
        b = (y - scaling["label_lo"]) / (r if r > 0 else 1.0)
    else:
        b = (y == scaling["positive_class"]).astype(np.float64)
    return A, b
