"""Non-linear losses on quantized samples: Chebyshev logistic regression and the refetching hinge-loss SVM.

Ref: ZipML arXiv v3 (1611.05402v3, "The Cans, the Cannots, ...") non-linear section: polynomial (Chebyshev)
approximation of the loss derivative, estimated without bias from independent quantized copies; refetching
heuristic for SVM; comparison with naive rounding ("does not always outperform the naive rounding approach").
The paper's degree, interval and refetch bound are not confirmed (shared reference docs/zipml.md §5); the choices
here are documented on each function.

Logistic loss ℓ(z) = log(1 + e^{−z}), z = y·aᵀx, y ∈ {−1, +1}; gradient ℓ'(z)·y·a with ℓ'(z) = −1/(1 + e^{z}).
ℓ' is replaced by its degree-p Chebyshev interpolant on an interval [−R, R] chosen from the data,
P(z) = Σ_k c_k T_k(z/R).  With independent quantized copies Q_0..Q_p of a and t_j = y Q_j(a)ᵀx / R (unbiased for
t = z/R), the three-term recurrence run with a fresh copy at every step,

    U_0 = 1,  U_1 = t_1,  U_{k+1} = 2 t_{k+1} U_k − U_{k−1}      (U_k depends on t_1..t_k only)

gives E[U_k] = T_k(t) by induction (t_{k+1} is independent of U_k), so P̂ = Σ c_k U_k is unbiased for P(z) and
ĝ = P̂ · y Q_0(a) is unbiased for P(z)·y·a: the only bias left is the approximation error of P.  The Chebyshev
basis keeps the coefficients small (|c_k| decays geometrically for the analytic ℓ'), where the power basis of the
same polynomial has coefficients of alternating sign up to ~2^p times larger: ill-conditioned in floating point
and, in the estimator, a variance multiplied by those coefficients.  P̂ is still a product of up to p noisy
factors, a heavy-tailed variable; ``clip`` clamps it to [−1 − clip, clip] (ℓ' lies in (−1, 0)), which bounds the
step at the price of a bias, measured and reported per epoch.

Hinge loss max(0, 1 − z) + λ/2‖x‖²: the gradient needs 1[z < 1].  Refetching: with one quantized copy Q(a) and
ẑ = y Q(a)ᵀx, |ẑ − z| ≤ Δ‖x‖₁ (each component moves by less than one level spacing Δ), so whenever
|ẑ − 1| ≤ Δ‖x‖₁ the sample is refetched in full precision; otherwise the indicator from ẑ is certainly right and the
gradient uses Q(a) (unbiased).  ``bound='std'`` uses the cheaper c·sqrt(Σ x_i² Var Q(a_i)) instead (no guarantee,
fewer refetches).  What matters for a data-movement design is the bits moved per feature and epoch: b for the
low-precision copy plus 32 × the refetch rate for the full-precision (float32) rows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .quantize import denominator, quantize, rounding_variance

__all__ = ["FULL_PRECISION_BITS", "chebyshev_series", "chebyshev_estimate", "chebyshev_gradient",
           "margin_interval", "logistic_loss", "logistic_derivative", "hinge_objective", "accuracy",
           "NonlinearResult", "train_logistic", "train_svm"]

FULL_PRECISION_BITS = 32  # a refetched (or unquantized) feature travels as float32


@dataclass
class NonlinearResult:
    """Final model, training loss per epoch (index 0 = initial), training accuracy per epoch, method and settings.

    ``bits_per_feature``: bits moved per feature per epoch (all copies, plus refetched rows at 32 bits).
    SVM refetching: ``refetch_rate`` per epoch.  Chebyshev: ``interval`` (R), ``clip_rate`` (fraction of P̂
    clipped) and ``clip_shift`` (mean |clip(P̂) − P̂|, an upper bound on the mean |bias| clipping adds) per epoch,
    and ``outside_rate`` (fraction of full-precision margins outside [−R, R], a diagnostic) per epoch."""

    x: np.ndarray
    loss: np.ndarray
    accuracy: np.ndarray
    method: str
    bits: int | None
    bits_per_feature: float = float(FULL_PRECISION_BITS)
    refetch_rate: np.ndarray = field(default_factory=lambda: np.zeros(0))
    interval: float | None = None
    clip_rate: np.ndarray = field(default_factory=lambda: np.zeros(0))
    clip_shift: np.ndarray = field(default_factory=lambda: np.zeros(0))
    outside_rate: np.ndarray = field(default_factory=lambda: np.zeros(0))
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


def chebyshev_series(func, degree: int, interval: float) -> np.ndarray:
    """Chebyshev-basis coefficients c_0..c_p of the degree-p interpolant of ``func`` on [−interval, interval]:
    P(z) = Σ_k c_k T_k(z / interval) (numpy.polynomial.Chebyshev.interpolate, Chebyshev points of the first kind)."""
    if degree < 1:
        raise ValueError(f"degree must be >= 1, got {degree}")
    if not interval > 0:
        raise ValueError(f"interval must be > 0, got {interval}")
    cheb = np.polynomial.Chebyshev.interpolate(func, degree, domain=[-interval, interval])
    c = np.zeros(degree + 1)
    c[: cheb.coef.size] = cheb.coef
    return c


def chebyshev_estimate(t, coef) -> np.ndarray:
    """Unbiased estimate of Σ_k c_k T_k(t) from ``t`` (shape ``(p, ...)``: p independent unbiased estimates of the
    same argument), by the three-term recurrence with a fresh estimate at every step (module docstring)."""
    t = np.asarray(t, dtype=np.float64)
    p = len(coef) - 1
    if t.shape[0] != p:
        raise ValueError(f"degree {p} needs {p} independent estimates of the argument, got {t.shape[0]}")
    u_prev, u = np.ones(t.shape[1:]), t[0]
    acc = coef[0] + coef[1] * u
    for k in range(1, p):
        u_prev, u = u, 2.0 * t[k] * u - u_prev
        acc = acc + coef[k + 1] * u
    return acc


def chebyshev_gradient(copies, y, x, coef, interval: float, clip: float | None = None):
    """Estimate of Σ_k P(y_k a_kᵀx) y_k a_k from ``copies`` (shape ``(G·(p + 1), B, d)``: independent quantized
    copies of the B samples, in G groups of p + 1; in each group copy 0 multiplies and copies 1..p feed the
    recurrence; the G estimates are averaged).  Unbiased for the polynomial when ``clip`` is None; otherwise each
    P̂ is clamped to [−1 − clip, clip].  Returns ``(gradient, p_hat, p_clipped)``."""
    copies = np.asarray(copies)
    p1 = len(coef)
    if copies.shape[0] % p1:
        raise ValueError(f"degree {p1 - 1} uses groups of {p1} copies; {copies.shape[0]} is not a multiple")
    groups = copies.reshape(copies.shape[0] // p1, p1, *copies.shape[1:])
    t = y[None, None, :] * (groups[:, 1:] @ x) / interval  # (G, p, B)
    p_hat = np.stack([chebyshev_estimate(t[g], coef) for g in range(groups.shape[0])])  # (G, B)
    p_used = p_hat if clip is None else np.clip(p_hat, -1.0 - clip, clip)
    g = np.einsum("gbd,gb->d", groups[:, 0], p_used * y[None, :]) / groups.shape[0]
    return g, p_hat, p_used


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


def _project(x, rho):
    nx = float(np.sqrt(x @ x))
    if nx > rho:
        x *= rho / nx


def margin_interval(A, y, *, bits: int | None = 8, signed: bool = False, epochs: int = 5, safety: float = 1.5,
                    project_radius: float = 32.0, rng=0, **sgd) -> float:
    """The Chebyshev interval R chosen from the data: a short pilot run of naive-rounding logistic SGD at ``bits``
    (one low-precision copy per epoch; ``bits=None``: full precision), then R = ``safety`` × the largest margin
    |y_k Q(a_k)ᵀx| of the pilot model on its own copy, rounded up to an integer and capped at ``project_radius``
    (the projection already bounds every margin by it).  Not a proof: margins keep growing slowly after the pilot,
    hence the safety factor; :func:`train_logistic` reports the fraction of margins outside [−R, R] per epoch.
    ``sgd``: step, decay, batch_size, l2 as for :func:`train_logistic`."""
    A, y = _check_pm1(A, y)
    rng = _as_rng(rng)
    pilot = train_logistic(A, y, method="full" if bits is None else "naive", bits=bits, signed=signed,
                           epochs=epochs, project_radius=project_radius, rng=rng, **sgd)
    Q = A if bits is None else quantize(A, bits, signed=signed, rng=rng)
    zmax = float(np.max(np.abs(Q @ pilot.x)))
    return float(min(np.ceil(safety * max(zmax, 1.0)), project_radius))


def train_logistic(A, y, *, method: str = "chebyshev", bits: int | None = 8, signed: bool = False,
                   degree: int = 15, interval: float | str = "auto", copies: int | None = None,
                   clip: float | None = 1.0, project_radius: float = 32.0, project: bool = True, epochs: int = 20,
                   step: float = 0.5, decay: float = 5.0, batch_size: int = 16, l2: float = 1e-4,
                   rng=0) -> NonlinearResult:
    """Logistic regression by minibatch SGD with step γ_e = step/(1 + e/decay) and L2 penalty ``l2``.

    method: ``'full'`` (exact gradient on full-precision samples); ``'naive'`` (one stochastically rounded copy per
    epoch, exact ℓ'); ``'nearest'`` (one deterministically rounded copy, as the public PYNQ code rounds);
    ``'chebyshev'`` (degree-``degree`` Chebyshev interpolant of ℓ' on [−R, R], estimated from independent copies,
    see the module docstring).  For Chebyshev: ``bits=None`` uses exact (unquantized) copies, which isolates the
    approximation bias; ``interval`` is R, or ``'auto'`` for :func:`margin_interval` (pilot at the same bits, 8
    for exact copies); ``copies`` is the number of quantized copies drawn per epoch, a multiple of degree + 1
    (default degree + 1; 2·(degree + 1) averages two independent estimates, halving their variance); ``clip``
    clamps each estimate P̂ to [−1 − clip, clip] (None: no clamp, unbiased for P but heavy-tailed).
    ``project``: after each step project x onto ‖x‖₂ ≤ project_radius / max_k ‖a_k‖₂, so every margin lies in
    [−project_radius, project_radius]; applied to every method so that all solve the same constrained problem.
    Loss and accuracy are measured on full-precision data.
    """
    A, y = _check_pm1(A, y)
    if method not in ("full", "naive", "nearest", "chebyshev"):
        raise ValueError(f"method must be full, naive, nearest or chebyshev, got {method!r}")
    if method in ("naive", "nearest") and bits is None:
        raise ValueError(f"method {method!r} needs bits")
    rng = _as_rng(rng)
    n, d = A.shape
    x = np.zeros(d)
    rho = project_radius / max(float(np.sqrt(np.max(np.sum(A * A, axis=1)))), 1e-12)
    sgd = dict(step=step, decay=decay, batch_size=batch_size, l2=l2)
    n_copies, R, coef = 1, None, None
    if method == "chebyshev":
        n_copies = degree + 1 if copies is None else int(copies)
        if n_copies < degree + 1 or n_copies % (degree + 1):
            raise ValueError(f"copies must be a positive multiple of degree + 1 = {degree + 1}, got {copies}")
        if interval == "auto":
            R = margin_interval(A, y, bits=bits or 8, signed=signed, project_radius=project_radius,
                                rng=np.random.default_rng(rng.integers(2**32)), **sgd)
        else:
            R = float(interval)
        coef = chebyshev_series(logistic_derivative, degree, R)
    if method == "nearest":
        Qa = quantize(A, bits, signed=signed, rounding="nearest")
    losses, accs, clip_rate, clip_shift, outside = [logistic_loss(A, y, x)], [accuracy(A, y, x)], [], [], []
    t0 = time.perf_counter()
    for e in range(epochs):
        gamma = step / (1.0 + e / decay)
        if method == "chebyshev":
            copies_e = (np.broadcast_to(A, (n_copies, n, d)) if bits is None else
                        np.stack([quantize(A, bits, signed=signed, rng=rng, dtype=np.float32)
                                  for _ in range(n_copies)]))
            n_clip, shift, n_out = 0, 0.0, 0
        elif method == "naive":
            Qa = quantize(A, bits, signed=signed, rng=rng)
        perm = rng.permutation(n)
        for s in range(0, n, batch_size):
            idx = perm[s:s + batch_size]
            yb = y[idx]
            if method == "full":
                g = A[idx].T @ (logistic_derivative(yb * (A[idx] @ x)) * yb)
            elif method in ("naive", "nearest"):
                g = Qa[idx].T @ (logistic_derivative(yb * (Qa[idx] @ x)) * yb)
            else:
                g, p_hat, p_used = chebyshev_gradient(copies_e[:, idx], yb, x, coef, R, clip)
                n_clip += int(np.count_nonzero(p_hat != p_used))
                shift += float(np.sum(np.abs(p_used - p_hat)))
                n_out += int(np.count_nonzero(np.abs(A[idx] @ x) > R))  # diagnostic, full precision
            x -= gamma * (g / len(idx) + l2 * x)
            if project:
                _project(x, rho)
        if method == "chebyshev":
            G = n_copies // (degree + 1)
            clip_rate.append(n_clip / (n * G))
            clip_shift.append(shift / (n * G))
            outside.append(n_out / n)
        losses.append(logistic_loss(A, y, x))
        accs.append(accuracy(A, y, x))
    quantized = method != "full" and bits is not None
    # exact copies are one full-precision row read once; quantized copies are each moved
    return NonlinearResult(x=x, loss=np.array(losses), accuracy=np.array(accs), method=method,
                           bits=bits if quantized else None,
                           bits_per_feature=float(n_copies * bits if quantized else FULL_PRECISION_BITS),
                           interval=R, clip_rate=np.array(clip_rate), clip_shift=np.array(clip_shift),
                           outside_rate=np.array(outside), seconds=time.perf_counter() - t0)


def train_svm(A, y, *, method: str = "refetch", bits: int | None = 8, signed: bool = False, lam: float = 1e-3,
              epochs: int = 20, step: float = 0.5, decay: float = 5.0, batch_size: int = 16,
              bound: str = "worst", std_factor: float = 3.0, rng=0) -> NonlinearResult:
    """Linear SVM (hinge loss + λ/2‖x‖²) by minibatch SGD, γ_e = step/(1 + e/decay).

    method: ``'full'``; ``'naive'`` (indicator and gradient from one stochastically rounded copy per epoch);
    ``'nearest'`` (the same from one deterministically rounded copy, as the public PYNQ code rounds);
    ``'refetch'`` (see the module docstring; ``bound='worst'`` → Δ‖x‖₁, exact indicator guaranteed;
    ``'std'`` → ``std_factor``·sqrt(Σ x_i² Var)).  ``refetch_rate[e]`` is the fraction of samples of epoch e that
    were refetched in full precision; ``bits_per_feature`` = bits + 32 × mean refetch rate.
    """
    A, y = _check_pm1(A, y)
    if method not in ("full", "naive", "nearest", "refetch"):
        raise ValueError(f"method must be full, naive, nearest or refetch, got {method!r}")
    if bound not in ("worst", "std"):
        raise ValueError(f"bound must be 'worst' or 'std', got {bound!r}")
    if method != "full" and bits is None:
        raise ValueError(f"method {method!r} needs bits")
    rng = _as_rng(rng)
    n, d = A.shape
    x = np.zeros(d)
    delta = 1.0 / denominator(bits, signed) if method != "full" else 0.0
    if method == "nearest":
        Qa = quantize(A, bits, signed=signed, rounding="nearest")
    losses, accs, rates = [hinge_objective(A, y, x, lam)], [accuracy(A, y, x)], []
    t0 = time.perf_counter()
    for e in range(epochs):
        gamma = step / (1.0 + e / decay)
        if method in ("naive", "refetch"):
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
                if method != "refetch":
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
    rates = np.array(rates) if method == "refetch" else np.zeros(0)
    bpf = (FULL_PRECISION_BITS if method == "full" else
           bits + (FULL_PRECISION_BITS * float(rates.mean()) if rates.size else 0.0))
    return NonlinearResult(x=x, loss=np.array(losses), accuracy=np.array(accs), method=method,
                           bits=None if method == "full" else bits, bits_per_feature=float(bpf),
                           refetch_rate=rates, seconds=time.perf_counter() - t0)
