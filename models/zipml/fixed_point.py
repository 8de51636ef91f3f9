"""Bit-exact fixed-point reference of the FPGA's quantized SGD (qFSGD), with optional on-chip stochastic rounding.

Ref: fpgasystems/ZipML-XeonFPGA@a7bdb44 RTL/qFSGD.vhd, qfixed_dot_product.vhd, fixed_subtract_mult.vhd,
qfixed_scalar_vector_mult.vhd, fixed_vector_subtract.vhd and SW/zipml_sgd.h ``Qfixed_linreg_SGD`` (shared reference
docs/zipml.md §7.3-7.4); ZipML (arXiv 1611.05402) §2.2 double sampling, §3 end-to-end quantization (stochastic
rounding of model and gradient, here with the hardware-twin generator of :mod:`models.zipml.rng`).

Integer semantics, per sample i (batch size 1, as the hardware), all shifts arithmetic (floor), F = 23:

    model x_j : int32, Q.F (1.0 = 2**23)          label b_i : int(b·2**F) truncated, int32
    nb        = b − 1 for [0, 1] data, b − 2 for [−1, 1] data   (q / 2**nb is the code's value)
    dot       = Σ_j ((xd_j · q1_j) >> nb)          per-lane shift, then the adder tree (RTL order)
    t         = (dot − b_i) >> step_shift
    g_j       = (t · q2_j) >> nb                    or, with ``grad_rounding='stochastic'``,
                stochastic_round_fixed(t · q2_j, nb, grad_rng)   (unbiased instead of floor)
    x_j      -= g_j

``xd`` is the model the dot product reads.  Without staleness it is x itself; with ``stale_mask = m`` it is a copy
refreshed from x after sample i's update whenever ``(i & m) == m`` (the CSR ``mini_batch_size`` used as a bitmask;
m = 0 refreshes after every sample; where inside the pipeline the refresh lands is this model's assumption).
With ``model_frac_bits = f < F`` the dot product reads x stochastically rounded to f fractional bits
(``stochastic_round_fixed(x_j, F − f, model_rng) << (F − f)``), drawn afresh for every sample.
Step decay: after epoch e (counting from 1), ``step_shift += 1`` when ``(e & decline_interval) ==
decline_interval`` (the driver uses 127).  Intermediates are exact (int64); a model word leaving the int32 range
raises ``OverflowError`` rather than wrapping silently.

Random words: each twin has one lane per parallel feature lane; per sample, one request of d words (feature j ->
lane j % L, step j // L, see :mod:`models.zipml.rng`); the model rounding and the gradient rounding use separate
generators.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .rng import stochastic_round_fixed

__all__ = ["FRAC_BITS", "to_fixed", "from_fixed", "FixedSGDResult", "qfixed_sgd", "EngineRunResult", "engine_run",
           "saturate32", "sigmoid_table", "sigmoid_fixed", "ovr_labels", "ENGINE_LOSSES"]

FRAC_BITS = 23
_I32 = (-(2**31), 2**31 - 1)


def to_fixed(v, frac_bits: int = FRAC_BITS) -> np.ndarray:
    """``int(v · 2**frac_bits)`` truncated toward zero, like the driver's C cast; int64 array."""
    return np.trunc(np.asarray(v, dtype=np.float64) * 2.0**frac_bits).astype(np.int64)


def from_fixed(v, frac_bits: int = FRAC_BITS) -> np.ndarray:
    return np.asarray(v, dtype=np.float64) / 2.0**frac_bits


@dataclass
class FixedSGDResult:
    """Final model (int64 holding int32 values, Q.23), the model after every epoch, and the step shifts used."""

    x: np.ndarray
    history: list = field(default_factory=list)
    step_shifts: list = field(default_factory=list)


def qfixed_sgd(q1, q2, labels_fixed, bits: int, *, signed: bool = False, epochs: int = 1, step_shift: int = 12,
               decline_interval: int | None = None, stale_mask: int = 0, grad_rounding: str = "truncate",
               grad_rng=None, model_frac_bits: int | None = None, model_rng=None, x0=None,
               copies_per_epoch: bool = False) -> FixedSGDResult:
    """Run the integer SGD of the module docstring over the samples in order (no shuffling, as the FPGA).

    ``q1``, ``q2``: integer codes, shape ``(n, d)`` (the same array twice for one-copy/naive data), or, with
    ``copies_per_epoch=True``, shape ``(epochs, n, d)``: one double-quantized dataset image per epoch, as the host
    precomputes them.  ``labels_fixed``: int labels in Q.23 (:func:`to_fixed`).  Returns the model as integers.
    """
    q1 = np.asarray(q1, dtype=np.int64)
    q2 = np.asarray(q2, dtype=np.int64)
    if q1.shape != q2.shape:
        raise ValueError(f"q1 {q1.shape} and q2 {q2.shape} differ")
    if copies_per_epoch and (q1.ndim != 3 or q1.shape[0] < epochs):
        raise ValueError("copies_per_epoch needs codes of shape (epochs, n, d)")
    if not copies_per_epoch and q1.ndim != 2:
        raise ValueError("codes must have shape (n, d)")
    n, d = q1.shape[-2:]
    bl = np.asarray(labels_fixed, dtype=np.int64).ravel()
    if bl.shape[0] != n:
        raise ValueError(f"{n} samples but {bl.shape[0]} labels")
    if grad_rounding not in ("truncate", "stochastic"):
        raise ValueError("grad_rounding must be 'truncate' or 'stochastic'")
    if grad_rounding == "stochastic" and grad_rng is None:
        raise ValueError("grad_rounding='stochastic' needs grad_rng (a Xorshift32Lanes)")
    if model_frac_bits is not None and (model_rng is None or not 0 <= model_frac_bits < FRAC_BITS):
        raise ValueError("model_frac_bits needs model_rng and 0 <= model_frac_bits < 23")
    nb = bits - 2 if signed else bits - 1
    x = np.zeros(d, dtype=np.int64) if x0 is None else np.array(x0, dtype=np.int64)
    xd = x.copy()
    shift = int(step_shift)
    res = FixedSGDResult(x=x)
    for e in range(epochs):
        Q1 = q1[e] if copies_per_epoch else q1
        Q2 = q2[e] if copies_per_epoch else q2
        res.step_shifts.append(shift)
        for i in range(n):
            src = x if stale_mask == 0 else xd
            if model_frac_bits is not None:
                drop = FRAC_BITS - model_frac_bits
                src = stochastic_round_fixed(src, drop, model_rng) << drop
            dot = int(np.sum((src * Q1[i]) >> nb))
            t = (dot - int(bl[i])) >> shift
            prod = t * Q2[i]
            if grad_rounding == "stochastic" and nb > 0:
                g = stochastic_round_fixed(prod, nb, grad_rng)
            else:
                g = prod >> nb
            x -= g
            if x.min() < _I32[0] or x.max() > _I32[1]:
                raise OverflowError(f"model left the int32 range at epoch {e}, sample {i}; increase step_shift")
            if stale_mask and (i & stale_mask) == stale_mask:
                xd = x.copy()
        res.history.append(x.copy())
        if decline_interval is not None and ((e + 1) & decline_interval) == decline_interval:
            shift += 1
    res.x = x
    return res


# --- the zippix SGD engine (hw/sgd): one run of samples through the streaming pipeline ----------------------------

I32_MIN, I32_MAX = _I32


def saturate32(v):
    """Clamp to the int32 range (the engine saturates instead of wrapping)."""
    return np.clip(v, I32_MIN, I32_MAX)


@dataclass
class EngineRunResult:
    """Final model (int64 holding int32, Q.23) and the engine's sticky saturation flags for the run."""

    x: np.ndarray
    t_saturated: bool = False
    x_saturated: bool = False


# --- classifier losses of the engine: the sigmoid table and one-vs-rest labels ------------------------------------

ENGINE_LOSSES = ("ls", "l2svm", "logistic")
SIGMOID_IN_SHIFT = 18       # table bin = 2**(18 - 23) = 1/32 of Q.23 input
SIGMOID_ENTRIES = 512       # inputs clamped to [-8, 8)


def model_frac_bits_for(x_ref, model_bits: int) -> int:
    """Fractional bits f of a ``model_bits``-bit stored model (``engine_run(..., model_frac_bits=f)``,
    ``SgdEngine(model_frac_bits=f)``) chosen from the scale of a reference solution ``x_ref`` (float, e.g. the
    least-squares solution of the scaled data): the finest grid whose range 2**(w - 1 - f) still holds
    max|x_ref|, within the engine's limits (f <= 22, at most 8 integer bits)."""
    w = int(model_bits)
    if not 4 <= w < 32:
        raise ValueError(f"model_bits must be in 4..31 for a narrow model, got {model_bits}")
    m = float(np.max(np.abs(np.asarray(x_ref, dtype=np.float64)))) if np.size(x_ref) else 0.0
    f = FRAC_BITS - 1 if m == 0.0 else w - 1 - int(np.ceil(np.log2(m)))
    return int(min(max(f, w - 9, 0), FRAC_BITS - 1))


def round_model_to_width(x_ref, model_bits: int, model_frac_bits: int) -> np.ndarray:
    """``x_ref`` (float) rounded to nearest on the w-bit grid with f fractional bits and saturated to its range:
    the best a stored model of that width can represent (the loss floor of a width)."""
    lim = 1 << (int(model_bits) - 1)
    q = np.clip(np.round(np.asarray(x_ref, dtype=np.float64) * 2.0**model_frac_bits), -lim, lim - 1)
    return q / 2.0**model_frac_bits


def sigmoid_table() -> np.ndarray:
    """The engine's sigmoid ROM: entry k = round(2**23 * sigmoid(bin centre)), bin k covering
    [(k - 256) / 32, (k - 255) / 32); 24-bit unsigned words (the gateware's memory init)."""
    half = SIGMOID_ENTRIES // 2
    centre = (np.arange(SIGMOID_ENTRIES) - half + 0.5) * 2.0**(SIGMOID_IN_SHIFT - FRAC_BITS)
    return np.floor(2.0**FRAC_BITS / (1.0 + np.exp(-centre)) + 0.5).astype(np.int64)


def sigmoid_fixed(dot) -> np.ndarray:
    """Bit-exact twin of the engine's table lookup for Q.23 inputs (any int size)."""
    half = SIGMOID_ENTRIES // 2
    idx = np.clip(np.asarray(dot, dtype=np.int64) >> SIGMOID_IN_SHIFT, -half, half - 1) + half
    return sigmoid_table()[idx]


def ovr_labels(classes, positive: int, loss: str) -> np.ndarray:
    """The engine's one-vs-rest labels (FLAG_OVR) in Q.23: +1 for ``positive``, else -1 (0 for logistic)."""
    one = 1 << FRAC_BITS
    return np.where(np.asarray(classes) == positive, one, 0 if loss == "logistic" else -one).astype(np.int64)


def engine_run(x0, q1, q2, labels_fixed, bits: int, *, signed: bool, step_shift: int, batch_mask: int = 0,
               delay: int = 2, grad_rng=None, loss: str = "ls", step_shift_neg: int | None = None,
               model_bits: int = 32, model_frac_bits: int = FRAC_BITS, model_rng=None) -> EngineRunResult:
    """Bit-exact model of one RUN of the zippix SGD engine (``hw.sgd``) over the samples in order.

    The engine is the qFSGD datapath above with two differences that come from its II=1 pipeline:

    * **saturation**: ``t`` and every model word are clamped to int32 (sticky flags report it) instead of wrapping;
    * **pipeline staleness**: the dot product reads a second model bank ``y``.  Sample ``i``'s update writes the
      new model rows into ``y`` too when ``i`` is a *refresh sample*: ``(i & batch_mask) == batch_mask`` or ``i``
      is the last sample of the run (so both banks agree when a run ends).  The dot product of sample ``j`` sees
      the refresh of sample ``i`` iff ``i <= j - delay``; ``delay = 1 + ceil(P / R)`` with ``P`` the engine's
      ``pipe_latency`` and ``R`` its beats per sample (:func:`hw.sgd.layout.staleness`).  ``batch_mask = 2**k - 1``
      gives minibatches of ``2**k`` samples whose dot products share one model snapshot (plus the pipeline delay).

    ``q1``, ``q2``: integer codes ``(n, d)`` (the same array twice for the 32-bit baseline); the sample index ``i``
    counts from 0 at the start of the run (a multi-epoch run continues counting across epochs).
    ``grad_rng`` (a :class:`~models.zipml.rng.Xorshift32Lanes` with one lane per engine lane; engines built with
    ``stochastic_grad``): the gradient's ``>> nb`` is rounded stochastically, one request of d words per sample.

    ``loss``: ``ls`` (t from dot - b), ``l2svm`` (the same, but t = 0 when the margin is met: b > 0 and
    dot >= b, or b <= 0 and dot <= b; labels +-1 in Q.23), ``logistic`` (t from sigmoid_fixed(dot) - b, labels
    0/1 in Q.23).  ``step_shift_neg``: the step shift of samples with b <= 0 (class-weighted steps).

    ``model_bits`` w < 32 (end-to-end low precision, ZipML §3): the model is stored as w-bit words with
    ``model_frac_bits`` f fractional bits.  Each new word (after the int32 saturation) is stochastically rounded
    to f fractional bits by ``model_rng`` (one request of d words per sample; the engine's model lanes) and
    saturated to the w-bit range (flagged as model saturation); ``x0`` must be representable.
    """
    q1 = np.asarray(q1, dtype=np.int64)
    q2 = np.asarray(q2, dtype=np.int64)
    n, d = q1.shape
    if q2.shape != q1.shape:
        raise ValueError(f"q1 {q1.shape} and q2 {q2.shape} differ")
    bl = np.asarray(labels_fixed, dtype=np.int64).ravel()
    if bl.shape[0] != n:
        raise ValueError(f"{n} samples but {bl.shape[0]} labels")
    if delay < 1:
        raise ValueError("delay must be >= 1")
    if loss not in ENGINE_LOSSES:
        raise ValueError(f"loss must be one of {ENGINE_LOSSES}, got {loss!r}")
    shift_neg = int(step_shift if step_shift_neg is None else step_shift_neg)
    drop = FRAC_BITS - int(model_frac_bits)
    if model_bits < 32 and (model_rng is None or drop <= 0):
        raise ValueError("model_bits < 32 needs model_rng and model_frac_bits < 23")
    if bits == 1:
        nb = 0
    else:
        nb = bits - 2 if signed else bits - 1
    x = np.array(x0, dtype=np.int64).copy()
    if x.shape != (d,):
        raise ValueError(f"x0 has shape {x.shape}, expected ({d},)")
    y = x.copy()
    pending = []  # (sample index, snapshot) of refreshes not yet visible to the dot product
    t_sat = x_sat = False
    mask = int(batch_mask)
    for j in range(n):
        while pending and pending[0][0] <= j - delay:
            y = pending.pop(0)[1]
        dot = int(np.sum((y * q1[j]) >> nb))
        lab = int(bl[j])
        f = int(sigmoid_fixed(dot)) if loss == "logistic" else dot
        diff = f - lab
        if loss == "l2svm" and not (diff < 0 if lab > 0 else diff > 0):
            t = 0
        else:
            t = diff >> (int(step_shift) if lab > 0 else shift_neg)
        if t < I32_MIN or t > I32_MAX:
            t_sat = True
            t = min(max(t, I32_MIN), I32_MAX)
        prod = t * q2[j]
        g = stochastic_round_fixed(prod, nb, grad_rng) if grad_rng is not None and nb > 0 else prod >> nb
        new = x - g
        if new.min() < I32_MIN or new.max() > I32_MAX:
            x_sat = True
            new = saturate32(new)
        if model_bits < 32:
            r = stochastic_round_fixed(new, drop, model_rng)
            lim = 1 << (model_bits - 1)
            if r.min() < -lim or r.max() > lim - 1:
                x_sat = True
                r = np.clip(r, -lim, lim - 1)
            new = r << drop
        x = new
        if (j & mask) == mask or j == n - 1:
            pending.append((j, x.copy()))
    return EngineRunResult(x=x, t_saturated=t_sat, x_saturated=x_sat)
