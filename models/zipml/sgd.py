"""Least-squares SGD: full precision, naive quantized samples, double sampling, end-to-end quantization.

Ref: ZipML (arXiv 1611.05402) §2.1 naive rounding is biased (converges to (AᵀA + ΣD)⁻¹Aᵀb), §2.2 double sampling
g = Q1(a)(Q2(a)ᵀx − b) is unbiased (and so is its symmetrized form ½[Q1(Q2ᵀx − b) + Q2(Q1ᵀx − b)], the average
of the estimator and its copy-swapped twin; variances in :func:`double_sampling_variance`), §3 end-to-end x ← x − γ Q_g(Q1(a)(Q2(a)ᵀQ_m(x) − b)); fresh quantized copies
per epoch as fpgasystems/ZipML-XeonFPGA SW/zipml_sgd.h precomputes ``numberOfIndices`` copies; step halving as the
RTL's shift-based step decay (qFSGD.vhd).

Problem: min_x (1/2n) Σ_k (a_kᵀx − b_k)².  ``A`` must already be scaled to [0, 1] (or [−1, 1] with ``signed``),
e.g. by :func:`models.zipml.quantize.minmax_scale` plus a bias column; losses are always measured on the
full-precision ``A``.  Vectorised: each minibatch is one pair of matrix products; the only Python loop is over
minibatches.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .quantize import quantize, quantize_scaled, quantize_to_levels, rounding_variance

__all__ = ["MODES", "SGDResult", "least_squares_loss", "least_squares_optimum", "naive_biased_optimum",
           "step_schedule", "auto_step", "linear_sgd", "double_sampling_gradient", "double_sampling_variance"]

MODES = ("full", "naive", "double", "end2end")


@dataclass
class SGDResult:
    """Result of :func:`linear_sgd`: final model, loss per epoch (index 0 = before training), settings, timing."""

    x: np.ndarray
    loss: np.ndarray
    mode: str
    bits: int | None
    epochs: int
    seconds: float
    steps: list = field(default_factory=list)

    @property
    def final_loss(self) -> float:
        return float(self.loss[-1])


def least_squares_loss(A, b, x) -> float:
    """(1/2n) ‖Ax − b‖²."""
    r = np.asarray(A) @ x - b
    return 0.5 * float(np.mean(r * r))


def least_squares_optimum(A, b) -> np.ndarray:
    """The least-squares solution (minimum norm)."""
    return np.linalg.lstsq(np.asarray(A, dtype=np.float64), b, rcond=None)[0]


def naive_biased_optimum(A, b, bits: int, *, signed: bool = False, levels=None) -> np.ndarray:
    """x̃ = (AᵀA + Σ_k D_{a_k})⁻¹ Aᵀb, the fixed point of naive (one-copy) quantized SGD (ZipML §2.1).

    ``D_a = diag(Var[Q(a_i)])``; with ``levels`` (per-feature or shared non-uniform set) the variance is that of
    rounding onto those levels.
    """
    A = np.asarray(A, dtype=np.float64)
    if levels is None:
        var = rounding_variance(A, bits, signed=signed)
    else:
        lv = np.asarray(levels, dtype=np.float64)
        lv2 = lv if lv.ndim == 2 else np.broadcast_to(lv, (A.shape[1], lv.size))
        lo, hi = _bracket(A, lv2)
        var = (hi - A) * (A - lo)
    return np.linalg.solve(A.T @ A + np.diag(var.sum(axis=0)), A.T @ b)


def _bracket(A, lv2):
    out_lo = np.empty_like(A)
    out_hi = np.empty_like(A)
    for j in range(A.shape[1]):  # only used for the closed-form check, not in training
        l = lv2[j]
        idx = np.clip(np.searchsorted(l, A[:, j], side="right") - 1, 0, len(l) - 2)
        out_lo[:, j], out_hi[:, j] = l[idx], l[idx + 1]
    return out_lo, out_hi


def double_sampling_gradient(Q1, Q2, b, x, *, symmetric: bool = False) -> np.ndarray:
    """Mean double-sampled least-squares gradient over the rows of two independent copies ``Q1``, ``Q2``:
    Q1ᵀ(Q2x − b)/B, or with ``symmetric`` ½[Q1ᵀ(Q2x − b) + Q2ᵀ(Q1x − b)]/B.  Both are unbiased for Aᵀ(Ax − b)/B."""
    g = Q1.T @ (Q2 @ x - b)
    if symmetric:
        g = 0.5 * (g + Q2.T @ (Q1 @ x - b))
    return g / Q1.shape[0]


def double_sampling_variance(A, b, x, var, *, symmetric: bool = False) -> np.ndarray:
    """Exact per-sample variance E‖g − a(aᵀx − b)‖² of the single-sample double-sampling gradient, for independent
    unbiased copies with per-element variances ``var`` (D = diag(var), r = aᵀx − b):

        plain      ‖a‖² xᵀDx + r² tr D + tr D · xᵀDx
        symmetric  ½‖a‖² xᵀDx + r aᵀDx + ½ r² tr D + ½ tr D · xᵀDx + ½ Σ_i D_i² x_i²

    (expand Q_j = a + e_j; in the symmetric form the first-order noise is ½(e1 + e2), so its variance halves up
    to the cross term r aᵀDx, and the second-order term ½(e1 e2ᵀ + e2 e1ᵀ)x loses about half of its variance).
    Returns one value per row of ``A``."""
    A = np.asarray(A, dtype=np.float64)
    var = np.broadcast_to(np.asarray(var, dtype=np.float64), A.shape)
    r = A @ x - b
    a2, trD, xDx = np.sum(A * A, axis=1), var.sum(axis=1), var @ (x * x)
    if not symmetric:
        return a2 * xDx + r * r * trD + trD * xDx
    return (0.5 * a2 * xDx + r * ((A * var) @ x) + 0.5 * r * r * trD + 0.5 * trD * xDx
            + 0.5 * (var * var) @ (x * x))


def auto_step(A, batch_size: int) -> float:
    """A safe constant step: 1 / (λ_max(AᵀA/n) + mean‖a‖² / batch_size).  :func:`linear_sgd` with
    ``step='auto'`` evaluates it on one quantized copy of A for the quantized modes (larger second moment)."""
    A = np.asarray(A, dtype=np.float64)
    lam = float(np.linalg.eigvalsh(A.T @ A / A.shape[0])[-1])
    return 1.0 / (lam + float(np.mean(np.sum(A * A, axis=1))) / batch_size)


def step_schedule(kind="constant", gamma0: float = 0.1, *, decay: float = 10.0):
    """Step size per epoch: ``'constant'``; ``'inverse'`` γ0/(1 + e/decay); ``'inv_sqrt'`` γ0/sqrt(1 + e/decay);
    ``'halving'`` γ0 / 2**floor(e/decay) (the FPGA's shift-based decay); or any callable epoch -> γ."""
    if callable(kind):
        return kind
    if kind == "constant":
        return lambda e: gamma0
    if kind == "inverse":
        return lambda e: gamma0 / (1.0 + e / decay)
    if kind == "inv_sqrt":
        return lambda e: gamma0 / np.sqrt(1.0 + e / decay)
    if kind == "halving":
        return lambda e: gamma0 / 2.0 ** np.floor(e / decay)
    raise ValueError(f"unknown schedule {kind!r}: use constant, inverse, inv_sqrt, halving or a callable")


def _as_rng(rng):
    if rng is None or isinstance(rng, (int, np.integer)):
        return np.random.default_rng(rng)
    return rng


def linear_sgd(A, b, *, mode: str = "double", bits: int | None = 8, signed: bool = False, levels=None,
               model_bits: int | None = None, grad_bits: int | None = None, epochs: int = 20,
               step: float | str = "auto", schedule="constant", decay: float = 10.0, batch_size: int = 16,
               rng=0, onchip_rng=None, x0=None, symmetric: bool = False) -> SGDResult:
    """Train least squares by SGD over shuffled epochs.

    mode:
      ``'full'``     full-precision samples;
      ``'naive'``    one stochastically quantized copy Q(a) used twice (biased);
      ``'double'``   two independent copies, g = Q1(a)(Q2(a)ᵀx − b) (unbiased);
      ``'end2end'``  double-sampled samples plus model and gradient stochastically quantized to ``model_bits`` /
                     ``grad_bits`` (default ``bits``) after scaling by their max |.| (signed levels).
    ``symmetric`` (``'double'``/``'end2end'``): use the symmetrized estimator ½[Q1(Q2ᵀx − b) + Q2(Q1ᵀx − b)]
    (same two copies, same data moved, two dot products per sample, lower variance).
    bits: sample precision (FPGA encoding, 2**(bits−1)+1 levels); ``levels``: instead, a non-uniform level set
    (1-D shared, or ``(d, s)`` per feature) for the samples.  Fresh quantized copies of the whole dataset are
    drawn at the start of every epoch (as the host precomputes one copy per epoch).  ``rng``: seed or Generator for
    shuffling and sample quantization; ``onchip_rng``: Generator or :class:`~models.zipml.rng.Xorshift32Lanes`
    for the model/gradient rounding (defaults to ``rng``).  Returns an :class:`SGDResult`; ``loss[e]`` is the
    full-precision loss after ``e`` epochs.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if symmetric and mode not in ("double", "end2end"):
        raise ValueError(f"symmetric applies to the double-sampled modes, not {mode!r}")
    A = np.asarray(A, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64).ravel()
    if A.ndim != 2 or A.shape[0] != b.shape[0]:
        raise ValueError(f"A {A.shape} and b {b.shape} do not match")
    n, d = A.shape
    rng = _as_rng(rng)
    onchip = rng if onchip_rng is None else _as_rng(onchip_rng)
    mb, gb = model_bits or bits or 8, grad_bits or bits or 8
    x = np.zeros(d) if x0 is None else np.array(x0, dtype=np.float64)

    def q(Amat):
        if levels is not None:
            return quantize_to_levels(Amat, levels, rng=rng)
        return quantize(Amat, bits, signed=signed, rng=rng, dtype=np.float32)  # levels exact in float32

    if step == "auto":  # on quantized data E‖Q(a)‖² = ‖a‖² + ΣVar: size the step on a quantized copy
        gamma0 = auto_step(A if mode == "full" else q(A), batch_size)
    else:
        gamma0 = float(step)
    sched = step_schedule(schedule, gamma0, decay=decay)

    losses = [least_squares_loss(A, b, x)]
    steps = []
    t0 = time.perf_counter()
    for e in range(epochs):
        gamma = float(sched(e))
        steps.append(gamma)
        if mode == "full":
            Q1 = Q2 = A
        elif mode == "naive":
            Q1 = Q2 = q(A)
        else:
            Q1, Q2 = q(A), q(A)
        perm = rng.permutation(n)
        for s in range(0, n, batch_size):
            idx = perm[s:s + batch_size]
            xm = quantize_scaled(x, mb, rng=onchip) if mode == "end2end" else x
            g = double_sampling_gradient(Q1[idx], Q2[idx], b[idx], xm, symmetric=symmetric)
            if mode == "end2end":
                g = quantize_scaled(g, gb, rng=onchip)
            x -= gamma * g
        losses.append(least_squares_loss(A, b, x))
    secs = time.perf_counter() - t0
    return SGDResult(x=x, loss=np.array(losses), mode=mode, bits=None if mode == "full" else bits,
                     epochs=epochs, seconds=secs, steps=steps)
