"""Non-linear losses on quantized samples: Chebyshev logistic regression and the refetching hinge-loss SVM.

Ref: ZipML arXiv v3 (1611.05402v3, "The Cans, the Cannots, ...") non-linear section: polynomial (Chebyshev)
approximation of the loss derivative, estimated without bias from independent quantized copies; refetching
heuristic for SVM; comparison with naive rounding ("does not always outperform the naive rounding approach").
The exact degree, range and refetch bound of the paper are not confirmed (shared reference docs/zipml.md §5); the
choices here are documented on each function.

Logistic loss ℓ(z) = log(1 + e^{−z}), z = y·aᵀx, y ∈ {−1, +1}; gradient ℓ'(z)·y·a with ℓ'(z) = −1/(1 + e^{z}).
Chebyshev: ℓ' ≈ P(z) = Σ_{i≤p} c_i z^i on [−R, R].  With p + 1 independent quantized copies Q_0..Q_p of a:

    ĝ = ( Σ_i c_i Π_{j=1..i} y Q_j(a)ᵀx ) · y Q_0(a)      E[ĝ] = P(y aᵀx) · y a

so the only bias left is the approximation error of P.  Hinge loss max(0, 1 − z) + λ/2‖x‖²: the gradient needs
1[z < 1].  Refetching: with one quantized copy Q(a) and ẑ = y Q(a)ᵀx, |ẑ − z| ≤ Δ‖x‖₁ (each component moves by
less than one level spacing Δ), so whenever |ẑ − 1| ≤ Δ‖x‖₁ the sample is refetched in full precision; otherwise
the indicator from ẑ is certainly right and the gradient uses Q(a) (unbiased).  ``bound='std'`` uses the cheaper
c·sqrt(Σ x_i² Var Q(a_i)) instead (no guarantee, fewer refetches).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .quantize import denominator, quantize, rounding_variance

__all__ = ["chebyshev_coefficients", "chebyshev_gradient", "logistic_loss", "logistic_derivative", "hinge_objective", "accuracy",
           "NonlinearResult", "train_logistic", "train_svm"]


@dataclass
class NonlinearResult:
    """Final model, training loss per epoch (index 0 = initial), training accuracy per epoch, refetch rate per
    epoch (SVM refetching only), method and settings."""

    x: np.ndarray
    loss: np.ndarray
    accuracy: np.ndarray
    method: str
    bits: int | None
    refetch_rate: np.ndarray = field(default_factory=lambda: np.zeros(0))
    seconds: float = 0.0

    @property
    def final_loss(self) -> float:
        return float(self.loss[-1])


def logistic_derivative(z):
    """ℓ'(z) = −1 / (1 + e^{z}) for ℓ(z) = log(1 + e^{−z}) (numerically stable)."""
    z = np.asarray(z, dtype=np.float64)
    return -0.5 * (1.0 - np.tanh(z / 2.0))


def logistic_loss(A, y, x) -> float:
    """Mean log(1 + e^{−y aᵀx})."""
    return float(np.mean(np.logaddexp(0.0, -y * (A @ x))))


def hinge_objective(A, y, x, lam: float) -> float:
    """Mean max(0, 1 − y aᵀx) + λ/2 ‖x‖²."""
    return float(np.mean(np.maximum(0.0, 1.0 - y * (A @ x))) + 0.5 * lam * (x @ x))


def accuracy(A, y, x) -> float:
    """Fraction of samples with sign(aᵀx) = y (y in {−1, +1}; aᵀx = 0 counts as +1)."""
    return float(np.mean(np.where(A @ x >= 0, 1.0, -1.0) == y))


def chebyshev_coefficients(func, degree: int, radius: float) -> np.ndarray:
    """Power-basis coefficients c_0..c_p (in z) of the Chebyshev interpolant of ``func`` on [−radius, radius]."""
    from numpy.polynomial import Chebyshev, Polynomial

    cheb = Chebyshev.interpolate(func, degree, domain=[-radius, radius])
    poly = cheb.convert(kind=Polynomial, domain=[-1, 1], window=[-1, 1])
    c = np.zeros(degree + 1)
    c[: poly.coef.size] = poly.coef
    return c


def chebyshev_gradient(copies, y, x, coef) -> np.ndarray:
    """Unbiased estimate of Σ_k P(y_k a_kᵀx) y_k a_k from ``copies`` (shape ``(p + 1, B, d)``: p + 1 independent
    quantized copies of the B samples; copy 0 multiplies, copies 1..p form the powers), ``coef`` = c_0..c_p."""
    copies = np.asarray(copies)
    p = len(coef) - 1
    if copies.shape[0] != p + 1:
        raise ValueError(f"degree {p} needs {p + 1} copies, got {copies.shape[0]}")
    m = y[None, :] * (copies[1:] @ x)  # (p, B): y Q_j(a)ᵀx, j = 1..p
    pz = coef[0] + coef[1:] @ np.cumprod(m, axis=0)  # Σ_i c_i Π_{j≤i} m_j
    return copies[0].T @ (pz * y)


def _as_rng(rng):
    if rng is None or isinstance(rng, (int, np.integer)):
        return np.random.default_rng(rng)
    return rng


def _check_pm1(A, y):
    A = np.asarray(A, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64).ravel()
    if A.shape[0] != y.shape[0]:
        raise ValueError(f"A {A.shape} and y {y.shape} do not match")
    if not np.all(np.isin(y, (-1.0, 1.0))):
        raise ValueError("labels must be -1 or +1 (see prepare_linear(labels='pm1'))")
    return A, y


def train_logistic(A, y, *, method: str = "chebyshev", bits: int | None = 8, signed: bool = False,
                   degree: int = 15, radius: float = 32.0, project: bool = True, epochs: int = 20,
                   step: float = 0.5, decay: float = 5.0, batch_size: int = 16, l2: float = 1e-4,
                   rng=0) -> NonlinearResult:
    """Logistic regression by minibatch SGD with step γ_e = step/(1 + e/decay) and L2 penalty ``l2``.

    method: ``'full'`` (exact gradient on full-precision samples); ``'naive'`` (one quantized copy, exact ℓ');
    ``'chebyshev'`` (degree-``degree`` Chebyshev approximation of ℓ' on [−radius, radius], estimated with
    ``degree + 1`` independent quantized copies per epoch, unbiased for the polynomial).  ``project``: after each
    step project x onto the ball ‖x‖₂ ≤ radius / max_k ‖a_k‖₂, which keeps every margin inside [−radius, radius]
    where P is accurate (outside, a polynomial diverges and so would SGD); applied to every method so that all
    solve the same constrained problem.  Loss and accuracy are measured on full-precision data.
    """
    A, y = _check_pm1(A, y)
    if method not in ("full", "naive", "chebyshev"):
        raise ValueError(f"method must be full, naive or chebyshev, got {method!r}")
    rng = _as_rng(rng)
    n, d = A.shape
    x = np.zeros(d)
    coef = chebyshev_coefficients(logistic_derivative, degree, radius) if method == "chebyshev" else None
    rho = radius / max(float(np.sqrt(np.max(np.sum(A * A, axis=1)))), 1e-12)
    losses, accs = [logistic_loss(A, y, x)], [accuracy(A, y, x)]
    t0 = time.perf_counter()
    for e in range(epochs):
        gamma = step / (1.0 + e / decay)
        if method == "chebyshev":
            copies = np.stack([quantize(A, bits, signed=signed, rng=rng) for _ in range(degree + 1)])
        elif method == "naive":
            Qa = quantize(A, bits, signed=signed, rng=rng)
        perm = rng.permutation(n)
        for s in range(0, n, batch_size):
            idx = perm[s:s + batch_size]
            yb = y[idx]
            if method == "full":
                g = A[idx].T @ (logistic_derivative(yb * (A[idx] @ x)) * yb)
            elif method == "naive":
                g = Qa[idx].T @ (logistic_derivative(yb * (Qa[idx] @ x)) * yb)
            else:
                g = chebyshev_gradient(copies[:, idx], yb, x, coef)
            x -= gamma * (g / len(idx) + l2 * x)
            if project:
                nx = float(np.sqrt(x @ x))
                if nx > rho:
                    x *= rho / nx
        losses.append(logistic_loss(A, y, x))
        accs.append(accuracy(A, y, x))
    return NonlinearResult(x=x, loss=np.array(losses), accuracy=np.array(accs), method=method,
                           bits=None if method == "full" else bits, seconds=time.perf_counter() - t0)


def train_svm(A, y, *, method: str = "refetch", bits: int | None = 8, signed: bool = False, lam: float = 1e-3,
              epochs: int = 20, step: float = 0.5, decay: float = 5.0, batch_size: int = 16,
              bound: str = "worst", std_factor: float = 3.0, rng=0) -> NonlinearResult:
    """Linear SVM (hinge loss + λ/2‖x‖²) by minibatch SGD, γ_e = step/(1 + e/decay).

    method: ``'full'``; ``'naive'`` (indicator and gradient from one quantized copy); ``'refetch'`` (see the module
    docstring; ``bound='worst'`` → Δ‖x‖₁, exact indicator guaranteed; ``'std'`` → ``std_factor``·sqrt(Σ x_i² Var)).
    ``refetch_rate[e]`` is the fraction of samples of epoch e that were refetched in full precision.
    """
    A, y = _check_pm1(A, y)
    if method not in ("full", "naive", "refetch"):
        raise ValueError(f"method must be full, naive or refetch, got {method!r}")
    if bound not in ("worst", "std"):
        raise ValueError(f"bound must be 'worst' or 'std', got {bound!r}")
    rng = _as_rng(rng)
    n, d = A.shape
    x = np.zeros(d)
    delta = 1.0 / denominator(bits, signed) if method != "full" else 0.0
    losses, accs, rates = [hinge_objective(A, y, x, lam)], [accuracy(A, y, x)], []
    t0 = time.perf_counter()
    for e in range(epochs):
        gamma = step / (1.0 + e / decay)
        if method != "full":
            Qa = quantize(A, bits, signed=signed, rng=rng)
            var = rounding_variance(A, bits, signed=signed) if bound == "std" else None
        perm = rng.permutation(n)
        refetched = 0
        for s in range(0, n, batch_size):
            idx = perm[s:s + batch_size]
            yb = y[idx]
            if method == "full":
                active = yb * (A[idx] @ x) < 1.0
                g = -(A[idx][active].T @ yb[active])
            else:
                Qb = Qa[idx]
                zq = yb * (Qb @ x)
                if method == "naive":
                    active = zq < 1.0
                    g = -(Qb[active].T @ yb[active])
                else:
                    if bound == "worst":
                        tol = delta * np.sum(np.abs(x))
                    else:
                        tol = std_factor * np.sqrt(var[idx] @ (x * x))
                    close = np.abs(zq - 1.0) <= tol
                    refetched += int(np.count_nonzero(close))
                    z = np.where(close, yb * (A[idx] @ x), zq)  # full-precision margin where refetched
                    active = z < 1.0
                    rows = np.where(close[:, None], A[idx], Qb)
                    g = -(rows[active].T @ yb[active])
            x -= gamma * (g / len(idx) + lam * x)
        rates.append(refetched / n)
        losses.append(hinge_objective(A, y, x, lam))
        accs.append(accuracy(A, y, x))
    return NonlinearResult(x=x, loss=np.array(losses), accuracy=np.array(accs), method=method,
                           bits=None if method == "full" else bits,
                           refetch_rate=np.array(rates) if method == "refetch" else np.zeros(0),
                           seconds=time.perf_counter() - t0)
