"""Datasets for the ZipML experiments, by name or by path.

Ref: ZipML (arXiv 1611.05402) experiments; dataset list and synthetic generator (a ~ N(0, 1), σ = 1, sparsity 0.1)
from fpgasystems/ZipML-XeonFPGA@a7bdb44 SW/main.cpp; LIBSVM files read with ``sklearn.datasets.load_svmlight_file``.

* bundled (offline): ``diabetes`` (regression), ``breast_cancer`` (binary), ``digits`` (10 classes) from
  scikit-learn; ``synthetic10``, ``synthetic100``, ``synthetic1000``: 10,000 samples of b = Ax* + ε with
  a ~ N(0, I_d), x* with 10 % non-zero N(0, 1) entries (at least one), ε ~ N(0, 1), seeded.
* skewed synthetic (offline): ``lognormal100`` (a_i ~ LogNormal(0, 1)) and ``pareto100`` (a_i ~ Pareto with
  x_m = 1, α = 3), same size and linear model as ``synthetic100``: the heavy-tailed features on which
  variance-optimal levels beat uniform ones (ZipML "optimal quantization" section).
* LIBSVM sets of the paper (``cadata``, ``YearPredictionMSD``, ``cod-rna``, ``gisette``, ``epsilon``): read from the
  cache directory (``$ZIPPIX_DATA`` or ``~/.cache/zippix``), downloaded there first when ``download=True`` and a
  network exists; otherwise a :class:`DatasetError` says where to put the file.
* any path: a LIBSVM/svmlight text file, or ``.npz`` with arrays ``X`` and ``y``.

Every failure a user can cause raises :class:`DatasetError` naming the file or name and the problem.
"""

from __future__ import annotations

import bz2
import os
import shutil
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["Dataset", "DatasetError", "BUNDLED", "SYNTHETIC", "SKEWED", "DOWNLOADABLE", "DATASET_NAMES",
           "load_dataset", "make_synthetic", "make_skewed", "cache_dir", "dataset_names", "prepare_linear"]


class DatasetError(ValueError):
    """A dataset could not be found, downloaded or parsed; the message names the file/name and the problem."""


@dataclass
class Dataset:
    """Features ``X`` (n × d float64, dense), labels ``y`` (n,), a name and a task
    (``'regression'``, ``'binary'`` or ``'multiclass'``)."""

    X: np.ndarray
    y: np.ndarray
    name: str
    task: str

    @property
    def n_samples(self) -> int:
        return self.X.shape[0]

    @property
    def n_features(self) -> int:
        return self.X.shape[1]

    def __repr__(self) -> str:
        return f"Dataset({self.name!r}, task={self.task!r}, n_samples={self.n_samples}, n_features={self.n_features})"


BUNDLED = ("diabetes", "breast_cancer", "digits")
SYNTHETIC = ("synthetic10", "synthetic100", "synthetic1000")
SKEWED = ("lognormal100", "pareto100")
_LIBSVM = "https://www.csie.ntu.edu.tw/~cjlin/libsvmtools/datasets"
# name -> (url, cached file name, task)
DOWNLOADABLE = {
    "cadata": (f"{_LIBSVM}/regression/cadata", "cadata", "regression"),
    "YearPredictionMSD": (f"{_LIBSVM}/regression/YearPredictionMSD.bz2", "YearPredictionMSD", "regression"),
    "cod-rna": (f"{_LIBSVM}/binary/cod-rna", "cod-rna", "binary"),
    "gisette": (f"{_LIBSVM}/binary/gisette_scale.bz2", "gisette_scale", "binary"),
    "epsilon": (f"{_LIBSVM}/binary/epsilon_normalized.bz2", "epsilon_normalized", "binary"),
}
DATASET_NAMES = BUNDLED + SYNTHETIC + SKEWED + tuple(DOWNLOADABLE)


def dataset_names() -> tuple[str, ...]:
    """All names :func:`load_dataset` accepts (besides paths)."""
    return DATASET_NAMES


def cache_dir() -> Path:
    """Where downloaded LIBSVM sets live: ``$ZIPPIX_DATA`` or ``~/.cache/zippix``."""
    return Path(os.environ.get("ZIPPIX_DATA", Path.home() / ".cache" / "zippix"))


def make_synthetic(d: int, n: int = 10_000, *, seed: int = 0, noise: float = 1.0, sparsity: float = 0.1) -> Dataset:
    """The paper's noisy linear model: b = A x* + ε (see the module docstring); deterministic for a seed."""
    rng = np.random.default_rng([seed, d])
    A = rng.standard_normal((n, d))
    x_star = np.zeros(d)
    k = max(1, int(round(sparsity * d)))
    support = rng.choice(d, size=k, replace=False)
    x_star[support] = rng.standard_normal(k)
    y = A @ x_star + noise * rng.standard_normal(n)
    return Dataset(A, y, f"synthetic{d}", "regression")


def make_skewed(kind: str, d: int = 100, n: int = 10_000, *, seed: int = 0, noise: float = 1.0,
                sparsity: float = 0.1, shape: float | None = None) -> Dataset:
    """Heavy-tailed features for the optimal-levels experiment: ``kind='lognormal'`` (a_i ~ LogNormal(0, σ²),
    σ = ``shape``, default 1) or ``'pareto'`` (a_i = 1 + Lomax(α), i.e. Pareto with x_m = 1, α = ``shape``,
    default 3); labels b = A x* + ε as :func:`make_synthetic` (x* with ``sparsity`` non-zero N(0, 1) entries,
    ε ~ N(0, noise²)); deterministic for a seed."""
    if kind not in ("lognormal", "pareto"):
        raise ValueError(f"kind must be 'lognormal' or 'pareto', got {kind!r}")
    rng = np.random.default_rng([seed, d, 1 if kind == "lognormal" else 2])
    if kind == "lognormal":
        A = rng.lognormal(0.0, 1.0 if shape is None else shape, (n, d))
    else:
        A = 1.0 + rng.pareto(3.0 if shape is None else shape, (n, d))
    x_star = np.zeros(d)
    k = max(1, int(round(sparsity * d)))
    x_star[rng.choice(d, size=k, replace=False)] = rng.standard_normal(k)
    y = A @ x_star + noise * rng.standard_normal(n)
    return Dataset(A, y, f"{kind}{d}", "regression")


def _task_of(y: np.ndarray) -> str:
    u = np.unique(y)
    if u.size == 2:
        return "binary"
    if u.size <= 20 and np.all(u == np.round(u)):
        return "multiclass"
    return "regression"


def _memory_bytes() -> int | None:
    """Physical memory of this machine, where the OS says (Linux, macOS)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _check_dense_size(path: Path, shape, max_features: int | None) -> None:
    """Refuse a sparse matrix that would not fit, before it is made dense."""
    n, d = shape
    if max_features is not None and d > max_features:
        raise DatasetError(f"{path}: has {d:,} features (the highest feature index), more than the {max_features:,} "
                           f"this run can hold")
    need, have = 8 * n * d, _memory_bytes()
    if have is not None and need > have:
        raise DatasetError(f"{path}: {n:,} samples x {d:,} features (the highest feature index) would need "
                           f"{need / 2**30:,.1f} GiB as a dense array, more than this machine's "
                           f"{have / 2**30:,.1f} GiB of memory")


def _load_file(path: Path, n_features: int | None, max_features: int | None = None) -> Dataset:
    if not path.exists():
        raise DatasetError(f"{path}: no such file")
    if path.is_dir():
        raise DatasetError(f"{path}: is a directory, not a dataset file")
    if path.stat().st_size == 0:
        raise DatasetError(f"{path}: file is empty")
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                if "X" not in z or "y" not in z:
                    raise DatasetError(f"{path}: .npz must contain arrays 'X' and 'y' (found {sorted(z.files)})")
                X, y = np.asarray(z["X"], dtype=np.float64), np.asarray(z["y"], dtype=np.float64)
        except DatasetError:
            raise
        except Exception as exc:  # zipfile/pickle/format errors
            raise DatasetError(f"{path}: not a readable .npz file ({exc})") from exc
        if X.ndim != 2:
            raise DatasetError(f"{path}: X must be 2-D, got shape {X.shape}")
        y = y.ravel()
        if X.shape[0] != y.shape[0]:
            raise DatasetError(f"{path}: X has {X.shape[0]} rows but y has {y.shape[0]} labels")
        if n_features is not None and X.shape[1] != n_features:
            raise DatasetError(f"{path}: expected {n_features} features, file has {X.shape[1]}")
        if max_features is not None and X.shape[1] > max_features:
            raise DatasetError(f"{path}: has {X.shape[1]:,} features, more than the {max_features:,} this run can "
                               f"hold")
    else:
        from sklearn.datasets import load_svmlight_file

        try:
            X, y = load_svmlight_file(str(path), n_features=n_features)
        except Exception as exc:  # sklearn raises ValueError/UnicodeDecodeError/... from its Cython parser
            msg = str(exc) or type(exc).__name__
            if n_features is not None and "n_features" in msg:
                raise DatasetError(f"{path}: file has more features than the expected {n_features} ({msg})") from exc
            raise DatasetError(f"{path}: not a valid LIBSVM/svmlight file ({msg})") from exc
        _check_dense_size(path, X.shape, max_features)  # still sparse: nothing dense allocated yet
        X = np.asarray(X.todense(), dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
    if X.shape[0] == 0:
        raise DatasetError(f"{path}: contains no samples")
    if X.shape[1] == 0:
        raise DatasetError(f"{path}: contains no features")
    if not (np.all(np.isfinite(X)) and np.all(np.isfinite(y))):
        raise DatasetError(f"{path}: contains NaN or infinite values")
    return Dataset(X, y, path.name, _task_of(y))


def _download(name: str) -> Path:
    url, fname, _ = DOWNLOADABLE[name]
    target = cache_dir() / fname
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".part")
    try:
        with urllib.request.urlopen(url, timeout=30) as resp, open(tmp, "wb") as out:
            src = bz2.BZ2File(resp) if url.endswith(".bz2") else resp
            shutil.copyfileobj(src, out)
    except (urllib.error.URLError, OSError, EOFError) as exc:
        tmp.unlink(missing_ok=True)
        raise DatasetError(
            f"{name}: download from {url} failed ({exc}); no network? Put the LIBSVM file at {target} "
            f"(or set ZIPPIX_DATA) and retry") from exc
    tmp.replace(target)
    return target


def load_dataset(name_or_path: str | os.PathLike, *, download: bool = True, n_features: int | None = None,
                 seed: int = 0, max_features: int | None = None) -> Dataset:
    """Load a dataset by name (see :data:`DATASET_NAMES`) or path (LIBSVM text or ``.npz``).

    ``download``: fetch a missing paper set into :func:`cache_dir`; ``n_features``: expected feature count (a
    file with more fails); ``seed``: for the synthetic sets; ``max_features``: a file with more features fails,
    for LIBSVM files before the sparse matrix is made dense (which is also refused when it would not fit in
    this machine's memory).  Unknown names raise :class:`DatasetError` listing
    the valid names.
    """
    key = str(name_or_path)
    if key in BUNDLED:
        from sklearn import datasets as skd

        loader = {"diabetes": skd.load_diabetes, "breast_cancer": skd.load_breast_cancer,
                  "digits": skd.load_digits}[key]
        bunch = loader()
        task = {"diabetes": "regression", "breast_cancer": "binary", "digits": "multiclass"}[key]
        return Dataset(np.asarray(bunch.data, dtype=np.float64), np.asarray(bunch.target, dtype=np.float64),
                       key, task)
    if key in SYNTHETIC:
        return make_synthetic(int(key[len("synthetic"):]), seed=seed)
    if key in SKEWED:
        kind = key.rstrip("0123456789")
        return make_skewed(kind, int(key[len(kind):]), seed=seed)
    if key in DOWNLOADABLE:
        fname, task = DOWNLOADABLE[key][1], DOWNLOADABLE[key][2]
        target = cache_dir() / fname
        if not target.exists():
            if not download:
                raise DatasetError(f"{key}: not in the cache ({target}) and download=False")
            target = _download(key)
        ds = _load_file(target, n_features, max_features)
        return Dataset(ds.X, ds.y, key, task)
    path = Path(key).expanduser()
    if path.exists() or os.sep in key or path.suffix:
        return _load_file(path, n_features, max_features)
    raise DatasetError(f"unknown dataset {key!r}: not a file, and not one of {', '.join(DATASET_NAMES)}")


def prepare_linear(ds: Dataset, *, signed: bool = False, per: str = "feature", labels: str = "auto",
                   positive_class=None):
    """Scale a dataset the way the FPGA host does (SW/zipml_sgd.h ``a_normalize``): features min-max scaled per
    feature (or per sample) to [0, 1] / [−1, 1], a constant-1 bias column appended (not normalised), labels handled
    separately: ``'minmax'`` scales them to [0, 1] (regression), ``'binary'`` maps them to {0, 1} (``binarize_b``),
    ``'pm1'`` to {−1, +1}; ``'auto'`` = minmax for regression, binary otherwise.  For multiclass data
    ``positive_class`` picks one-vs-all (default: the largest label).  Returns ``(A, b)``.
    """
    from .quantize import add_bias, minmax_scale, scale_labels

    A, _ = minmax_scale(add_bias(ds.X), per=per, signed=signed, bias_column=-1)
    y = np.asarray(ds.y, dtype=np.float64)
    if labels == "auto":
        labels = "minmax" if ds.task == "regression" else "binary"
    if labels == "minmax":
        b, _ = scale_labels(y)
    elif labels in ("binary", "pm1"):
        pos = np.max(y) if positive_class is None else positive_class
        b = (y == pos).astype(np.float64)
        if labels == "pm1":
            b = 2.0 * b - 1.0
    else:
        raise ValueError(f"labels must be auto, minmax, binary or pm1, got {labels!r}")
    return A, b
