"""Uniform and arbitrary-level quantizers with the ZipML FPGA code encoding, and min-max scaling.

Ref: ZipML (Zhang et al., ICML 2017, arXiv 1611.05402) §2 stochastic quantization Q(v, s); level encoding and
scaling from fpgasystems/ZipML-XeonFPGA@a7bdb44 SW/zipml_sgd.h (``a_normalize``, ``quantize_data_integer``) and
RTL/qfixed_dot_product.vhd; see docs/zipml.md §1 of the shared reference.

Encoding.  A "b-bit" code has ``2**(b-1) + 1`` levels (b in {1, 2, 4, 8}):

* data in [0, 1]: integer code ``q in 0 .. 2**(b-1)``, value ``q / 2**(b-1)``; stored as a b-bit unsigned field
  (so the top level is the special code ``100..0``);
* data in [-1, 1] (``signed=True``, b >= 2): ``q in -2**(b-2) .. 2**(b-2)``, value ``q / 2**(b-2)``; stored as a
  b-bit two's-complement field (Q2: 00 -> 0, 01 -> +1, 11 -> -1).

Stochastic rounding: ``s = x * D`` (D the denominator above), ``q = floor(s) + [u < s - floor(s)]``, so E[q/D] = x
and Var = (hi - x)(x - lo) <= 1 / (4 D**2).  The public code rounds ``|x|`` and reapplies the sign; rounding ``x``
with floor gives the same distribution (the two levels and their probabilities are fixed by unbiasedness) and is
what two's-complement hardware does.  With a NumPy ``Generator`` it is computed as ``floor(s + u)``, u uniform
float32 in [0, 1) (same distribution, fewer passes over memory); bit-exactly reproducible rounding comes from the
hardware twin
:class:`models.zipml.rng.Xorshift32Lanes` (``s`` is first made fixed point: ``v = floor(s * 2**frac_bits)``, then
:func:`models.zipml.rng.stochastic_round_fixed` with ``k = frac_bits``).  Nearest rounding (baseline) is
``floor(s + 1/2)`` (ties up, as a hardware adder does).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .rng import Xorshift32Lanes, stochastic_round_fixed

__all__ = [
    "SUPPORTED_BITS", "n_levels", "denominator", "code_range", "uniform_levels", "quantize_codes", "dequantize",
    "quantize", "quantize_scaled", "to_field", "from_field", "rounding_variance", "quantize_to_levels",
    "levels_variance", "MinMax", "minmax_scale", "scale_labels", "add_bias",
]

SUPPORTED_BITS = (1, 2, 4, 8)
DEFAULT_FRAC_BITS = 24


def _check_bits(bits: int, signed: bool, strict: bool = False) -> None:
    if strict and bits not in SUPPORTED_BITS:
        raise ValueError(f"bits must be one of {SUPPORTED_BITS} (the FPGA designs), got {bits}")
    if bits < 1 or bits > 16:
        raise ValueError(f"bits must be in 1..16, got {bits}")
    if signed and bits < 2:
        raise ValueError("signed ([-1, 1]) data needs bits >= 2 (the public Q1 design has no signed mode)")


def n_levels(bits: int) -> int:
    """Number of levels of a b-bit code: 2**(b-1) + 1."""
    _check_bits(bits, False)
    return 2 ** (bits - 1) + 1


def denominator(bits: int, signed: bool = False) -> int:
    """Code-to-value divisor D: value = q / D (2**(b-1) on [0, 1], 2**(b-2) on [-1, 1])."""
    _check_bits(bits, signed)
    return 2 ** (bits - 2) if signed else 2 ** (bits - 1)


def code_range(bits: int, signed: bool = False) -> tuple[int, int]:
    """Smallest and largest integer code."""
    d = denominator(bits, signed)
    return (-d, d) if signed else (0, d)


def uniform_levels(bits: int, signed: bool = False) -> np.ndarray:
    """The level values, ascending."""
    lo, hi = code_range(bits, signed)
    return np.arange(lo, hi + 1) / denominator(bits, signed)


def _round_up(frac_shape_s: np.ndarray, rng, frac_bits: int) -> np.ndarray:
    """floor(s) + Bernoulli(s - floor(s)) with the randomness of ``rng``."""
    s = frac_shape_s
    if isinstance(rng, Xorshift32Lanes):
        v = np.floor(s * float(2 ** frac_bits)).astype(np.int64)
        return stochastic_round_fixed(v, frac_bits, rng)
    if rng is None:
        raise ValueError("stochastic rounding needs rng: a numpy Generator or a Xorshift32Lanes")
    # floor(s + u) = floor(s) + [u >= 1 - frac(s)]: rounds up with probability frac(s); u has 24 random bits
    return np.floor(s + rng.random(s.shape, dtype=np.float32)).astype(np.int64)


def quantize_codes(x, bits: int, *, signed: bool = False, rng=None, rounding: str = "stochastic",
                   frac_bits: int = DEFAULT_FRAC_BITS) -> np.ndarray:
    """Integer codes q of ``x`` (values clipped to [0, 1] or [-1, 1]); value = q / denominator(bits, signed)."""
    _check_bits(bits, signed)
    x = np.asarray(x, dtype=np.float64)
    lo, hi = code_range(bits, signed)
    s = np.clip(x, -1.0 if signed else 0.0, 1.0) * denominator(bits, signed)
    if rounding == "stochastic":
        q = _round_up(s, rng, frac_bits)
    elif rounding == "nearest":
        q = np.floor(s + 0.5).astype(np.int64)
    else:
        raise ValueError(f"rounding must be 'stochastic' or 'nearest', got {rounding!r}")
    return np.clip(q, lo, hi)


def dequantize(codes, bits: int, *, signed: bool = False) -> np.ndarray:
    """Values of integer codes."""
    return np.asarray(codes, dtype=np.float64) / denominator(bits, signed)


def quantize(x, bits: int, *, signed: bool = False, rng=None, rounding: str = "stochastic",
             frac_bits: int = DEFAULT_FRAC_BITS, dtype=np.float64) -> np.ndarray:
    """Quantized values of ``x``; equal to ``dequantize(quantize_codes(...))`` for the same random source, with a
    faster path for a NumPy ``Generator`` (no integer round trip).  ``dtype=np.float32`` halves memory traffic
    (every level q/D is exact in float32; x is rounded to float32 first, a 2**-24 relative perturbation)."""
    if rounding == "stochastic" and isinstance(rng, np.random.Generator):
        _check_bits(bits, signed)
        d = denominator(bits, signed)
        s = np.array(x, dtype=dtype)  # a copy, worked on in place
        np.clip(s, -1.0 if signed else 0.0, 1.0, out=s)
        s *= d
        s += rng.random(s.shape, dtype=np.float32)
        np.floor(s, out=s)
        np.minimum(s, d, out=s)  # s = d exactly stays d (u < 1); guards float round-up at the top level
        s /= d
        return s
    q = quantize_codes(x, bits, signed=signed, rng=rng, rounding=rounding, frac_bits=frac_bits)
    return dequantize(q, bits, signed=signed).astype(dtype, copy=False)


def quantize_scaled(v, bits: int, *, rng=None, rounding: str = "stochastic", axis=None) -> np.ndarray:
    """Unbiased quantization of an unbounded vector (model or gradient): scale by max|v|, round onto the signed
    b-bit levels, scale back (the weight scaling of ZipML/caffe include/caffe/util/quantize.cuh)."""
    v = np.asarray(v, dtype=np.float64)
    m = np.max(np.abs(v), axis=axis, keepdims=axis is not None)
    m = np.where(m > 0, m, 1.0)
    return quantize(v / m, bits, signed=True, rng=rng, rounding=rounding) * m


def to_field(codes, bits: int) -> np.ndarray:
    """The b-bit hardware field of integer codes (two's complement for negative codes), as uint32."""
    return (np.asarray(codes, dtype=np.int64) & ((1 << bits) - 1)).astype(np.uint32)


def from_field(fields, bits: int, *, signed: bool = False) -> np.ndarray:
    """Inverse of :func:`to_field` (sign-extends when ``signed``)."""
    f = np.asarray(fields, dtype=np.int64) & ((1 << bits) - 1)
    if signed:
        f = np.where(f >= (1 << (bits - 1)), f - (1 << bits), f)
    return f


def rounding_variance(x, bits: int, *, signed: bool = False) -> np.ndarray:
    """Exact variance (hi - x)(x - lo) of stochastic rounding of each element (levels spacing 1/D)."""
    d = denominator(bits, signed)
    s = np.clip(np.asarray(x, dtype=np.float64), -1.0 if signed else 0.0, 1.0) * d
    f = s - np.floor(s)
    return f * (1.0 - f) / d**2


def quantize_to_levels(x, levels, *, rng=None, rounding: str = "stochastic", return_index: bool = False):
    """Round ``x`` onto an arbitrary ascending level set (unbiased when stochastic and x within the levels).

    ``levels`` is 1-D (same set for all elements) or 2-D of shape ``(n_features, s)`` with one ascending set per
    feature (last axis of ``x``).  Values outside ``[levels[0], levels[-1]]`` are clipped.  Vectorised: one
    ``searchsorted`` over all features (each feature's set is shifted into its own disjoint interval).
    """
    x = np.asarray(x, dtype=np.float64)
    levels = np.asarray(levels, dtype=np.float64)
    if levels.ndim == 1:
        lv = levels[None, :]
        per_feature = False
    elif levels.ndim == 2:
        if x.shape[-1] != levels.shape[0]:
            raise ValueError(f"levels has {levels.shape[0]} feature rows but x has {x.shape[-1]} features")
        lv = levels
        per_feature = True
    else:
        raise ValueError("levels must be 1-D or 2-D")
    if lv.shape[1] < 2:
        raise ValueError("need at least 2 levels")
    if np.any(np.diff(lv, axis=1) < 0):
        raise ValueError("levels must be ascending")
    s = lv.shape[1]
    xc = np.clip(x, lv[:, 0] if per_feature else lv[0, 0], lv[:, -1] if per_feature else lv[0, -1])
    if per_feature:
        span = float(np.max(lv[:, -1]) - np.min(lv[:, 0])) + 1.0
        offs = span * np.arange(lv.shape[0])
        flat = (lv + offs[:, None]).ravel()
        idx = np.searchsorted(flat, xc + offs, side="right") - 1
        feat = np.broadcast_to(np.arange(lv.shape[0]), x.shape)
        idx = np.clip(idx - feat * s, 0, s - 2)
        lo = lv[feat, idx]
        hi = lv[feat, idx + 1]
    else:
        idx = np.clip(np.searchsorted(lv[0], xc, side="right") - 1, 0, s - 2)
        lo, hi = lv[0][idx], lv[0][idx + 1]
        feat = None
    width = hi - lo
    p_up = np.divide(xc - lo, width, out=np.zeros_like(xc), where=width > 0)
    if rounding == "stochastic":
        if isinstance(rng, Xorshift32Lanes):
            u = rng.words(xc.shape).astype(np.float64) / 2.0**32
        elif rng is None:
            raise ValueError("stochastic rounding needs rng")
        else:
            u = rng.random(xc.shape)
        up = u < p_up
    elif rounding == "nearest":
        up = p_up >= 0.5
    else:
        raise ValueError(f"rounding must be 'stochastic' or 'nearest', got {rounding!r}")
    out = np.where(up, hi, lo)
    if return_index:
        return out, idx + up
    return out


def levels_variance(x, levels) -> float:
    """Total stochastic-rounding variance sum_x (b_x - x)(x - a_x) of ``x`` onto the 1-D level set ``levels``."""
    x = np.asarray(x, dtype=np.float64).ravel()
    lv = np.sort(np.asarray(levels, dtype=np.float64))
    xc = np.clip(x, lv[0], lv[-1])
    idx = np.clip(np.searchsorted(lv, xc, side="right") - 1, 0, len(lv) - 2)
    return float(np.sum((lv[idx + 1] - xc) * (xc - lv[idx])))


# --------------------------------------------------------------------------------------------- scaling


@dataclass(frozen=True)
class MinMax:
    """A fitted min-max scaling: ``scaled = (X - lo) / (hi - lo)`` mapped to [0, 1] or [-1, 1]."""

    lo: np.ndarray
    hi: np.ndarray
    per: str
    signed: bool
    bias_column: int | None

    def apply(self, X) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        if self.per == "sample":  # per-sample scaling is data dependent: refit on X
            return minmax_scale(X, per="sample", signed=self.signed, bias_column=self.bias_column)[0]
        rng = np.where(self.hi > self.lo, self.hi - self.lo, 1.0)
        out = (X - self.lo) / rng
        if self.signed:
            out = 2.0 * out - 1.0
        if self.bias_column is not None:
            out[..., self.bias_column] = X[..., self.bias_column]
        return out


def minmax_scale(X, *, per: str = "feature", signed: bool = False, bias_column: int | None = None):
    """Min-max normalise each feature (column, ``per='feature'``, code ``'c'``) or each sample (row,
    ``per='sample'``, code ``'r'``) to [0, 1], or [-1, 1] when ``signed``.

    ``bias_column`` (e.g. -1 after :func:`add_bias`) is left untouched and excluded from per-sample min/max.
    Constant features map to 0 (or -1 when signed).  Returns ``(X_scaled, MinMax)``.
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D, got shape {X.shape}")
    mask = np.ones(X.shape[1], dtype=bool)
    if bias_column is not None:
        mask[bias_column] = False
    if per == "feature":
        lo, hi = X.min(axis=0), X.max(axis=0)
    elif per == "sample":
        sub = X[:, mask]
        lo, hi = sub.min(axis=1, keepdims=True), sub.max(axis=1, keepdims=True)
    else:
        raise ValueError(f"per must be 'feature' or 'sample', got {per!r}")
    mm = MinMax(lo=lo, hi=hi, per=per, signed=signed, bias_column=bias_column)
    rng = np.where(hi > lo, hi - lo, 1.0)
    out = (X - lo) / rng
    if signed:
        out = 2.0 * out - 1.0
    if bias_column is not None:
        out[:, bias_column] = X[:, bias_column]
    return out, mm


def scale_labels(y, *, signed: bool = False):
    """Min-max scale labels separately from the features; returns ``(y_scaled, (lo, hi))``."""
    y = np.asarray(y, dtype=np.float64)
    lo, hi = float(y.min()), float(y.max())
    r = hi - lo if hi > lo else 1.0
    ys = (y - lo) / r
    return (2.0 * ys - 1.0 if signed else ys), (lo, hi)


def add_bias(X) -> np.ndarray:
    """Append the constant-1 bias column (exactly representable on every level grid, so never perturbed)."""
    X = np.asarray(X, dtype=np.float64)
    return np.hstack([X, np.ones((X.shape[0], 1))])
