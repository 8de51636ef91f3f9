"""Least-squares SGD variants (models.zipml.sgd): bias of naive rounding, double sampling, end-to-end."""

import numpy as np
import pytest

from models.zipml import (Xorshift32Lanes, add_bias, least_squares_loss, least_squares_optimum, linear_sgd,
                          load_dataset, naive_biased_optimum, prepare_linear)
from models.zipml.quantize import quantize, rounding_variance
from models.zipml.sgd import double_sampling_gradient, double_sampling_variance, step_schedule


def small_problem(seed=0, n=2000, d=10):
    rng = np.random.default_rng(seed)
    A = add_bias(rng.uniform(0, 1, (n, d - 1)))
    b = A @ rng.normal(size=d) + 0.1 * rng.normal(size=n)
    return A, b


@pytest.mark.parametrize("seed", [0, 1])
def test_naive_converges_to_predicted_biased_point_double_sampling_to_least_squares(seed):
    A, b = small_problem(seed)
    x_ls = least_squares_optimum(A, b)
    x_tilde = naive_biased_optimum(A, b, 2)  # (AᵀA + ΣD)⁻¹Aᵀb for 3-level rounding
    gap = np.linalg.norm(x_tilde - x_ls)
    assert gap > 0.5  # the bias is real for Q2
    kw = dict(bits=2, epochs=60, step=0.05, schedule="inverse", decay=5, batch_size=8, rng=seed + 10)
    naive = linear_sgd(A, b, mode="naive", **kw)
    double = linear_sgd(A, b, mode="double", **kw)
    assert np.linalg.norm(naive.x - x_tilde) < 0.1 * gap
    assert np.linalg.norm(naive.x - x_ls) > 0.8 * gap
    assert np.linalg.norm(double.x - x_ls) < 0.1 * gap
    opt = least_squares_loss(A, b, x_ls)
    assert double.final_loss - opt < 0.1 * (naive.final_loss - opt)


def test_naive_bias_with_nonuniform_levels_matches_closed_form():
    A, b = small_problem(3)
    levels = np.array([0.0, 0.2, 1.0])
    x_ls, x_tilde = least_squares_optimum(A, b), naive_biased_optimum(A, b, None, levels=levels)
    gap = np.linalg.norm(x_tilde - x_ls)
    kw = dict(levels=levels, epochs=60, step=0.05, schedule="inverse", decay=5, batch_size=8, rng=4)
    assert np.linalg.norm(linear_sgd(A, b, mode="naive", **kw).x - x_tilde) < 0.15 * gap
    assert np.linalg.norm(linear_sgd(A, b, mode="double", **kw).x - x_ls) < 0.15 * gap


@pytest.fixture(scope="module")
def synthetic100():
    return prepare_linear(load_dataset("synthetic100"), signed=True)


def test_end2end_q8_and_double_q4_within_1pct_of_full_precision(synthetic100):
    A, b = synthetic100
    kw = dict(epochs=20, schedule="inverse", decay=0.3, batch_size=32, signed=True, rng=1)
    full = linear_sgd(A, b, mode="full", **kw)
    opt = least_squares_loss(A, b, least_squares_optimum(A, b))
    assert full.final_loss < 1.01 * opt  # full precision itself converged
    for mode, bits in [("end2end", 8), ("double", 4)]:
        r = linear_sgd(A, b, mode=mode, bits=bits, **kw)
        assert r.loss.shape == (21,)
        assert r.final_loss < 1.01 * full.final_loss, (mode, bits, r.final_loss, full.final_loss)
    naive2 = linear_sgd(A, b, mode="naive", bits=2, **kw)
    assert naive2.final_loss > 1.5 * full.final_loss  # naive rounding does not get there


def test_end2end_with_hardware_twin_reproducible():
    A, b = small_problem(5, n=400)
    r1 = linear_sgd(A, b, mode="end2end", bits=8, epochs=3, rng=2, onchip_rng=Xorshift32Lanes(7, 16))
    r2 = linear_sgd(A, b, mode="end2end", bits=8, epochs=3, rng=2, onchip_rng=Xorshift32Lanes(7, 16))
    r3 = linear_sgd(A, b, mode="end2end", bits=8, epochs=3, rng=2, onchip_rng=Xorshift32Lanes(8, 16))
    assert np.array_equal(r1.x, r2.x) and not np.array_equal(r1.x, r3.x)
    assert r1.loss[-1] < 0.1 * r1.loss[0]


def test_sgd_api_details():
    A, b = small_problem(6, n=300)
    r = linear_sgd(A, b, mode="full", epochs=4, step=0.1, schedule="halving", decay=2, batch_size=300, rng=0)
    assert r.steps == [0.1, 0.1, 0.05, 0.05]
    # batch = n and no quantization: plain gradient descent, deterministic
    x = np.zeros(A.shape[1])
    for g in r.steps:
        x -= g * A.T @ (A @ x - b) / len(b)
    assert np.allclose(r.x, x)
    assert np.isclose(r.loss[-1], least_squares_loss(A, b, x))
    assert step_schedule("inverse", 1.0, decay=2)(4) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="mode"):
        linear_sgd(A, b, mode="bogus")
    with pytest.raises(ValueError, match="match"):
        linear_sgd(A, b[:-1])


@pytest.mark.parametrize("bits", [2, 4])
def test_symmetrized_double_sampling_is_unbiased_and_its_variance_matches_the_formula(bits):
    rng = np.random.default_rng(bits)
    A, b = small_problem(7, n=6, d=5)
    x = rng.normal(size=A.shape[1])
    truth = A.T @ (A @ x - b) / len(b)
    draws = 20_000
    Q1 = quantize(np.broadcast_to(A, (draws, *A.shape)), bits, rng=rng)
    Q2 = quantize(np.broadcast_to(A, (draws, *A.shape)), bits, rng=rng)
    var = rounding_variance(A, bits)
    for symmetric in (False, True):
        # one estimate per draw; per-sample gradients for the variance check
        per_sample = np.einsum("nkd,nk->nkd", Q1, np.einsum("nkd,d->nk", Q2, x) - b)
        if symmetric:
            per_sample = 0.5 * (per_sample + np.einsum("nkd,nk->nkd", Q2, np.einsum("nkd,d->nk", Q1, x) - b))
        g = per_sample.mean(axis=1)
        assert np.allclose(g[0], double_sampling_gradient(Q1[0], Q2[0], b, x, symmetric=symmetric))
        se = g.std(0) / np.sqrt(draws)
        assert np.all(np.abs(g.mean(0) - truth) < 4.5 * se)  # unbiased, within the Monte Carlo error
        exact = A * (A @ x - b)[:, None]
        measured = np.sum((per_sample - exact) ** 2, axis=2).mean(0)
        formula = double_sampling_variance(A, b, x, var, symmetric=symmetric)
        assert np.allclose(measured, formula, rtol=0.05)
    plain = double_sampling_variance(A, b, x, var).sum()
    sym = double_sampling_variance(A, b, x, var, symmetric=True).sum()
    assert sym < 0.75 * plain  # roughly halves


def test_symmetric_option_trains_and_is_checked():
    A, b = small_problem(8)
    kw = dict(bits=2, epochs=30, step=0.05, schedule="inverse", decay=5, batch_size=8, rng=3)
    x_ls = least_squares_optimum(A, b)
    sym = linear_sgd(A, b, mode="double", symmetric=True, **kw)
    assert np.linalg.norm(sym.x - x_ls) < 0.1 * np.linalg.norm(naive_biased_optimum(A, b, 2) - x_ls)
    with pytest.raises(ValueError, match="symmetric"):
        linear_sgd(A, b, mode="naive", symmetric=True)
