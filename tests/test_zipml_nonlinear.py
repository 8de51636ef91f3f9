"""Chebyshev logistic regression and refetching SVM on quantized samples (models.zipml.nonlinear)."""

import numpy as np
import pytest

from models.zipml import load_dataset, prepare_linear, quantize
from models.zipml.nonlinear import (chebyshev_coefficients, chebyshev_gradient, logistic_derivative,
                                    train_logistic, train_svm)


def test_chebyshev_coefficients_approximate_the_derivative():
    R = 8.0
    z = np.linspace(-R, R, 2001)
    errs = []
    for deg in (3, 7, 11, 15):
        c = chebyshev_coefficients(logistic_derivative, deg, R)
        p = np.polynomial.polynomial.polyval(z, c)
        cheb = np.polynomial.Chebyshev.interpolate(logistic_derivative, deg, domain=[-R, R])
        assert np.allclose(p, cheb(z), atol=1e-10)  # power-basis conversion is exact
        errs.append(np.max(np.abs(p - logistic_derivative(z))))
    assert all(a > b for a, b in zip(errs, errs[1:])) and errs[-1] < 3e-3
    assert errs[0] < 0.15
    assert logistic_derivative(0.0) == pytest.approx(-0.5)


def test_chebyshev_gradient_unbiased_for_the_polynomial():
    rng = np.random.default_rng(0)
    d, B, deg, n = 6, 3, 5, 40000
    A = rng.uniform(size=(B, d))
    y = np.array([1.0, -1.0, 1.0])
    x = rng.normal(size=d)
    c = chebyshev_coefficients(logistic_derivative, deg, 8.0)
    target = A.T @ (np.polynomial.polynomial.polyval(y * (A @ x), c) * y)
    draws = np.array([chebyshev_gradient(quantize(np.broadcast_to(A, (deg + 1, B, d)), 4, rng=rng), y, x, c)
                      for _ in range(n // 10)])
    se = draws.std(0) / np.sqrt(len(draws))
    assert np.all(np.abs(draws.mean(0) - target) < 5 * se + 1e-9)
    # the naive one-copy estimate ℓ'(yQ(a)ᵀx) y Q(a) is measurably biased here
    naive = []
    for _ in range(n // 10):
        Q = quantize(A, 2, rng=rng)
        naive.append(Q.T @ (logistic_derivative(y * (Q @ x)) * y))
    exact = A.T @ (logistic_derivative(y * (A @ x)) * y)
    naive = np.array(naive)
    assert np.max(np.abs(naive.mean(0) - exact) / (naive.std(0) / np.sqrt(len(naive)))) > 5


@pytest.fixture(scope="module")
def cancer():
    return prepare_linear(load_dataset("breast_cancer"), labels="pm1")


def test_logistic_methods_train(cancer):
    A, y = cancer
    full = train_logistic(A, y, method="full", epochs=15)
    cheb = train_logistic(A, y, method="chebyshev", bits=4, epochs=15)
    naive2 = train_logistic(A, y, method="naive", bits=2, epochs=15)
    assert full.accuracy[-1] > 0.93 and cheb.accuracy[-1] > 0.93
    assert cheb.final_loss < 1.05 * full.final_loss
    assert naive2.final_loss > cheb.final_loss  # Q2 naive rounding pays for its bias here
    assert full.loss.shape == (16,) and np.all(np.isfinite(cheb.loss))


def test_refetch_bound_is_sound():
    rng = np.random.default_rng(1)
    for bits in (2, 4, 8):
        A = rng.uniform(size=(500, 20))
        x = rng.normal(size=20)
        Q = quantize(A, bits, rng=rng)
        assert np.all(np.abs(Q @ x - A @ x) <= np.sum(np.abs(x)) / 2 ** (bits - 1) + 1e-12)


def test_svm_refetching(cancer):
    A, y = cancer
    full = train_svm(A, y, method="full", epochs=15)
    rates = {}
    for bits in (2, 4, 8):
        r = train_svm(A, y, method="refetch", bits=bits, epochs=15)
        rates[bits] = r.refetch_rate[-1]
        assert r.refetch_rate.shape == (15,) and 0 <= r.refetch_rate.min() <= r.refetch_rate.max() <= 1
        assert r.final_loss < 1.03 * full.final_loss
    assert rates[8] < rates[4] <= rates[2] and rates[8] < 0.5
    naive2 = train_svm(A, y, method="naive", bits=2, epochs=15)
    assert naive2.final_loss > 1.05 * full.final_loss
    std = train_svm(A, y, method="refetch", bits=4, bound="std", epochs=15)
    assert std.refetch_rate[-1] < rates[4]
    with pytest.raises(ValueError, match="labels"):
        train_svm(A, (y + 1) / 2)
