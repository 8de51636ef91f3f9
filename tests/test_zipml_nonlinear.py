"""Chebyshev logistic regression and refetching SVM on quantized samples (models.zipml.nonlinear)."""

import numpy as np
import pytest

from models.zipml import load_dataset, prepare_linear, quantize
from models.zipml.nonlinear import (FULL_PRECISION_BITS, chebyshev_estimate, chebyshev_gradient, chebyshev_series,
                                    logistic_derivative, margin_interval, train_logistic, train_svm)


def max_error(degree, R):
    z = np.linspace(-R, R, 2001)
    return np.max(np.abs(np.polynomial.chebyshev.chebval(z / R, chebyshev_series(logistic_derivative, degree, R))
                         - logistic_derivative(z)))


def test_chebyshev_series_error_falls_with_degree_and_with_a_tighter_interval():
    errs = [max_error(p, 8.0) for p in (3, 7, 11, 15)]
    assert all(a > b for a, b in zip(errs, errs[1:])) and errs[-1] < 3e-3
    # the old set-up: degree 15 on [-32, 32] is off by more than 0.1, on a data-sized [-16, 16] by < 0.03
    assert max_error(15, 32.0) > 0.1 and max_error(15, 16.0) < 0.03
    assert logistic_derivative(0.0) == pytest.approx(-0.5)
    with pytest.raises(ValueError, match="interval"):
        chebyshev_series(logistic_derivative, 5, 0.0)


def test_recurrence_over_independent_copies_is_unbiased_for_every_chebyshev_polynomial():
    rng = np.random.default_rng(0)
    p, n = 9, 60_000
    t0 = np.array([-0.9, -0.3, 0.2, 0.7])
    noisy = t0[None, None, :] + rng.uniform(-0.5, 0.5, size=(p, n, 4))  # p independent unbiased estimates
    for k in range(p + 1):
        coef = np.eye(p + 1)[k]  # T_k alone
        est = chebyshev_estimate(noisy, coef)
        se = est.std(0) / np.sqrt(n)
        assert np.all(np.abs(est.mean(0) - np.polynomial.chebyshev.chebval(t0, coef)) < 5 * se + 1e-12)
    # the same copy reused at every step is biased (E[t²] ≠ t²), which is why each step needs a fresh copy
    reused = chebyshev_estimate(np.broadcast_to(noisy[:1], noisy.shape), np.eye(p + 1)[2])
    assert np.all(np.abs(reused.mean(0) - (2 * t0**2 - 1)) > 10 * reused.std(0) / np.sqrt(n))
    with pytest.raises(ValueError, match="degree 9 needs 9"):
        chebyshev_estimate(noisy[:3], np.ones(p + 1))


@pytest.mark.parametrize("groups", [1, 2])
def test_chebyshev_gradient_unbiased_for_the_polynomial(groups):
    rng = np.random.default_rng(groups)
    d, B, deg, R = 6, 3, 7, 8.0
    A = rng.uniform(size=(B, d))
    y = np.array([1.0, -1.0, 1.0])
    x = rng.normal(size=d)
    c = chebyshev_series(logistic_derivative, deg, R)
    target = A.T @ (np.polynomial.chebyshev.chebval(y * (A @ x) / R, c) * y)
    draws = np.array([chebyshev_gradient(quantize(np.broadcast_to(A, (groups * (deg + 1), B, d)), 2, rng=rng),
                                         y, x, c, R)[0] for _ in range(3000)])
    se = draws.std(0) / np.sqrt(len(draws))
    assert np.all(np.abs(draws.mean(0) - target) < 5 * se)
    # the naive one-copy estimate ℓ'(yQ(a)ᵀx) y Q(a) is measurably biased here
    naive = []
    for _ in range(3000):
        Q = quantize(A, 2, rng=rng)
        naive.append(Q.T @ (logistic_derivative(y * (Q @ x)) * y))
    exact = A.T @ (logistic_derivative(y * (A @ x)) * y)
    naive = np.array(naive)
    assert np.max(np.abs(naive.mean(0) - exact) / (naive.std(0) / np.sqrt(len(naive)))) > 5
    with pytest.raises(ValueError, match="multiple"):
        chebyshev_gradient(np.zeros((deg + 2, B, d)), y, x, c, R)


def test_clip_bounds_each_estimate_and_reports_how_much_it_moved():
    rng = np.random.default_rng(3)
    A, y, x = rng.uniform(size=(50, 8)), np.sign(rng.normal(size=50)), 3 * rng.normal(size=8)
    c = chebyshev_series(logistic_derivative, 15, 4.0)  # margins reach ±20 on a [-4, 4] fit: P̂ explodes
    copies = quantize(np.broadcast_to(A, (16, 50, 8)), 2, rng=rng)
    _, p_hat, p_used = chebyshev_gradient(copies, y, x, c, 4.0, clip=1.0)
    assert np.all((p_used >= -2.0) & (p_used <= 1.0)) and np.any(p_hat != p_used)
    assert np.array_equal(p_used[(p_hat >= -2) & (p_hat <= 1)], p_hat[(p_hat >= -2) & (p_hat <= 1)])


@pytest.fixture(scope="module")
def digits3():
    """digits 3-vs-rest, the first 700 samples (fast)."""
    A, y = prepare_linear(load_dataset("digits"), labels="pm1", positive_class=3)
    return A[:700], y[:700]


def test_exact_copies_at_a_data_chosen_interval_are_within_2pct_of_full_precision(digits3):
    A, y = digits3
    kw = dict(epochs=12, rng=0)
    full = train_logistic(A, y, method="full", **kw)
    R = margin_interval(A, y, bits=8, rng=1)
    assert 4.0 <= R < 32.0  # chosen from the data, well inside the projection radius
    exact = train_logistic(A, y, method="chebyshev", bits=None, degree=23, interval=R, **kw)
    assert exact.final_loss < 1.02 * full.final_loss
    assert exact.bits_per_feature == FULL_PRECISION_BITS and exact.outside_rate.max() < 0.01
    # tied to the projection radius (the old set-up) the same polynomial is far worse
    r32 = train_logistic(A, y, method="chebyshev", bits=None, degree=23, interval=32.0, **kw)
    assert r32.final_loss > 1.1 * full.final_loss
    q8 = train_logistic(A, y, method="chebyshev", bits=8, degree=23, interval=R, **kw)
    assert q8.final_loss < 1.03 * full.final_loss and q8.bits_per_feature == 24 * 8
    assert np.all(np.isfinite(q8.loss)) and q8.clip_rate.shape == (12,)


def test_logistic_argument_errors(digits3):
    A, y = digits3
    with pytest.raises(ValueError, match="multiple of degree"):
        train_logistic(A, y, method="chebyshev", degree=7, copies=12, interval=8.0, epochs=1)
    with pytest.raises(ValueError, match="needs bits"):
        train_logistic(A, y, method="naive", bits=None, epochs=1)
    with pytest.raises(ValueError, match="method"):
        train_logistic(A, y, method="cheb", epochs=1)


def test_refetch_bound_is_sound():
    rng = np.random.default_rng(1)
    for bits in (2, 4, 8):
        A = rng.uniform(size=(500, 20))
        x = rng.normal(size=20)
        Q = quantize(A, bits, rng=rng)
        assert np.all(np.abs(Q @ x - A @ x) <= np.sum(np.abs(x)) / 2 ** (bits - 1) + 1e-12)


@pytest.fixture(scope="module")
def cancer():
    return prepare_linear(load_dataset("breast_cancer"), labels="pm1")


def test_svm_refetching_and_bits_moved(cancer):
    A, y = cancer
    full = train_svm(A, y, method="full", epochs=15)
    assert full.bits_per_feature == FULL_PRECISION_BITS
    rates, moved = {}, {}
    for bits in (2, 4, 8):
        r = train_svm(A, y, method="refetch", bits=bits, epochs=15)
        rates[bits], moved[bits] = r.refetch_rate[-1], r.bits_per_feature
        assert r.refetch_rate.shape == (15,) and 0 <= r.refetch_rate.min() <= r.refetch_rate.max() <= 1
        assert r.bits_per_feature == pytest.approx(bits + FULL_PRECISION_BITS * r.refetch_rate.mean())
        assert r.final_loss < 1.03 * full.final_loss
    assert rates[8] < rates[4] <= rates[2] and rates[8] < 0.5
    assert moved[8] < FULL_PRECISION_BITS < moved[2]  # Q8 saves data movement; Q2 refetches almost everything
    naive2 = train_svm(A, y, method="naive", bits=2, epochs=15)
    assert naive2.final_loss > 1.05 * full.final_loss
    std = train_svm(A, y, method="refetch", bits=4, bound="std", epochs=15)
    assert std.refetch_rate[-1] < rates[4]
    with pytest.raises(ValueError, match="labels"):
        train_svm(A, (y + 1) / 2)


def test_nearest_rounding_baseline_is_biased(cancer):
    A, y = cancer
    a = train_svm(A, y, method="nearest", bits=2, epochs=10, rng=0)
    Q = quantize(A, 2, rounding="nearest")
    assert np.all(np.isin(Q, (0.0, 0.5, 1.0)))
    full = train_svm(A, y, method="full", epochs=10, rng=0)
    assert a.final_loss > 1.05 * full.final_loss and a.bits_per_feature == 2
