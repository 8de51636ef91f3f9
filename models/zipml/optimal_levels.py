"""Variance-optimal quantization levels: exact dynamic program, candidate-point DP, brute force.

Ref: ZipML (arXiv 1611.05402) "optimal quantization" section: minimise the stochastic-rounding variance
Σ_x (b_x − x)(x − a_x); an optimal level set lies on the data points and contains min and max, found by an
O(s·d²) dynamic program; the candidate-point variant runs the DP on M candidates (as described by QUIVER,
Ben-Basat et al., NeurIPS 2024, §2.3/§7; implementation pattern of IST-DASLab/smart-quantizer quantization.py).

Sorted x_1 ≤ … ≤ x_d, prefix sums β_j = Σ_{m≤j} x_m, γ_j = Σ_{m≤j} x_m²:

    C[k, j]   = Σ_{k < m ≤ j} (x_j − x_m)(x_m − x_k) = −x_j x_k (j − k) + (x_j + x_k)(β_j − β_k) − (γ_j − γ_k)
    MSE[2, j] = C[1, j];   MSE[i, j] = min_{k ≤ j} MSE[i−1, k] + C[k, j];   answer MSE[s, d]

(k = j adds a duplicate level at zero cost, so inputs with fewer than s distinct values work.)  Each DP row is one
vectorised min over a (d × d) matrix.  The candidate method restricts levels to M candidate points (quantiles plus an even value grid) but
still charges every data point (C uses the full prefix sums), so its cost is exact for the levels it returns.
"""

from __future__ import annotations

import itertools

import numpy as np

from .quantize import levels_variance

__all__ = ["variance_cost", "optimal_levels_exact", "optimal_levels_candidates", "optimal_levels",
           "optimal_levels_brute_force", "per_feature_optimal_levels"]

variance_cost = levels_variance


def _prefix(xs):
    return np.concatenate([[0.0], np.cumsum(xs)]), np.concatenate([[0.0], np.cumsum(xs * xs)])


def _dp(xs: np.ndarray, cand: np.ndarray, s: int):
    """DP with levels restricted to sorted data positions ``cand`` (must include 0 and d−1)."""
    b1, b2 = _prefix(xs)
    xc = xs[cand]
    K, J = cand[:, None], cand[None, :]
    # sums over m in (k, j]: prefix index m+1
    C = (-xc[None, :] * xc[:, None] * (J - K) + (xc[None, :] + xc[:, None]) * (b1[J + 1] - b1[K + 1])
         - (b2[J + 1] - b2[K + 1]))
    C = np.maximum(C, 0.0)  # clear round-off; the true value is >= 0
    C[K > J] = np.inf
    M = len(cand)
    mse = C[0].copy()  # two levels: first point and candidate j
    back = np.zeros((max(s - 2, 0), M), dtype=np.int64)
    for i in range(s - 2):
        tot = mse[:, None] + C
        back[i] = np.argmin(tot, axis=0)
        mse = tot[back[i], np.arange(M)]
    idx = [M - 1]
    for i in range(s - 3, -1, -1):
        idx.append(int(back[i][idx[-1]]))
    idx.append(0)
    levels = np.unique(xc[np.array(idx)])
    return levels, float(mse[M - 1])


def _check(x, s):
    x = np.sort(np.asarray(x, dtype=np.float64).ravel())
    if x.size == 0:
        raise ValueError("need at least one value")
    if s < 2:
        raise ValueError("need s >= 2 levels")
    return x


def optimal_levels_exact(x, s: int):
    """Exact variance-optimal ``s`` levels of ``x`` (O(s·d²) time, O(d²) memory). Returns ``(levels, cost)``."""
    xs = _check(x, s)
    if xs.size > 6000:
        raise ValueError(f"exact DP on {xs.size} points needs {xs.size**2 * 8 / 1e9:.1f} GB; use "
                         "optimal_levels_candidates")
    return _dp(xs, np.arange(xs.size), s)


def optimal_levels_candidates(x, s: int, n_candidates: int = 256):
    """Fast near-optimal levels: exact DP over ``n_candidates`` candidate points (min and max included): half at
    evenly spaced ranks (quantiles, for dense regions), half at the data points nearest an even grid of values
    (for sparse tails, where skewed data put levels);
    O(d log d + s·M²).  Exact when the data have at most ``n_candidates`` points.  Returns ``(levels, cost)``."""
    xs = _check(x, s)
    d = xs.size
    if d <= n_candidates:
        return _dp(xs, np.arange(d), s)
    half = max(n_candidates // 2, 2)
    by_rank = np.round(np.linspace(0, d - 1, half)).astype(np.int64)  # quantiles: dense regions
    by_value = np.searchsorted(xs, np.linspace(xs[0], xs[-1], n_candidates - half + 2))  # sparse tails
    cand = np.unique(np.clip(np.concatenate([by_rank, by_value]), 0, d - 1))
    # keep the last copy of each candidate value so ties are charged correctly
    cand = np.unique(np.searchsorted(xs, xs[cand], side="right") - 1)
    if cand[0] != 0:
        cand = np.concatenate([[0], cand])
    return _dp(xs, cand, s)


def optimal_levels(x, s: int, *, method: str = "auto", n_candidates: int = 256):
    """``method``: ``'exact'``, ``'candidates'`` or ``'auto'`` (exact up to 2,000 points)."""
    if method == "auto":
        method = "exact" if np.size(x) <= 2000 else "candidates"
    if method == "exact":
        return optimal_levels_exact(x, s)
    if method == "candidates":
        return optimal_levels_candidates(x, s, n_candidates)
    raise ValueError(f"unknown method {method!r}")


def optimal_levels_brute_force(x, s: int):
    """Reference: try every set of ``s − 2`` interior levels among the distinct data values."""
    xs = _check(x, s)
    u = np.unique(xs)
    if u.size <= s:
        return u, 0.0
    best = (None, np.inf)
    for inner in itertools.combinations(u[1:-1], s - 2):
        lv = np.concatenate([[u[0]], inner, [u[-1]]])
        c = levels_variance(xs, lv)
        if c < best[1]:
            best = (lv, c)
    return best


def per_feature_optimal_levels(A, s: int, *, n_candidates: int = 256) -> np.ndarray:
    """One variance-optimal level set per column of ``A`` (candidate DP), as a ``(d, s)`` array for
    :func:`models.zipml.quantize.quantize_to_levels`; columns with fewer distinct values repeat their top level.
    A per-column loop: this is preprocessing, run once per dataset (the sets form a small codebook)."""
    A = np.asarray(A, dtype=np.float64)
    out = np.empty((A.shape[1], s))
    for j in range(A.shape[1]):
        lv, _ = optimal_levels_candidates(A[:, j], s, n_candidates)
        out[j, : lv.size] = lv
        out[j, lv.size:] = lv[-1]
    return out
