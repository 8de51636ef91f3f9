"""Variance-optimal quantization levels (models.zipml.optimal_levels)."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from models.zipml.datasets import make_skewed, make_synthetic, prepare_linear

from models.zipml.optimal_levels import (optimal_levels, optimal_levels_brute_force, optimal_levels_candidates,
                                         optimal_levels_exact, per_feature_optimal_levels, variance_cost)
from models.zipml.quantize import quantize_to_levels


@pytest.mark.parametrize("seed", range(12))
def test_dp_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    d = int(rng.integers(3, 13))
    kind = seed % 3
    if kind == 0:
        x = rng.lognormal(size=d)
    elif kind == 1:
        x = rng.normal(size=d)
    else:
        x = rng.integers(0, 5, size=d).astype(float)  # many duplicates
    for s in range(2, 6):
        lv, cost = optimal_levels_exact(x, s)
        blv, bcost = optimal_levels_brute_force(x, s)
        assert cost == pytest.approx(bcost, rel=1e-9, abs=1e-12)
        assert variance_cost(x, lv) == pytest.approx(cost, rel=1e-9, abs=1e-12)  # DP's cost is its levels' cost
        assert lv.size <= s and set(lv) <= set(x)  # levels on data points
        assert lv[0] == x.min() and lv[-1] == x.max()


def test_dp_beats_uniform_on_skewed_data_and_is_monotone_in_s():
    x = np.random.default_rng(0).lognormal(size=40)
    costs = [optimal_levels_exact(x, s)[1] for s in range(2, 8)]
    assert all(a >= b - 1e-12 for a, b in zip(costs, costs[1:]))
    uniform = variance_cost(x, np.linspace(x.min(), x.max(), 5))
    assert costs[3] < 0.7 * uniform


def test_candidate_method_exact_on_small_and_close_on_large():
    rng = np.random.default_rng(1)
    x = rng.lognormal(size=200)
    assert optimal_levels_candidates(x, 5, 256)[1] == pytest.approx(optimal_levels_exact(x, 5)[1])
    for x in (rng.lognormal(size=1500), rng.normal(size=1500), rng.beta(0.5, 3, size=1500)):
        exact = optimal_levels_exact(x, 9)[1]
        lv, approx = optimal_levels_candidates(x, 9, 128)
        assert exact - 1e-9 <= approx <= 1.02 * exact
        assert variance_cost(x, lv) == pytest.approx(approx)
    big = rng.lognormal(size=200_000)
    lv, c = optimal_levels(big, 9)  # auto -> candidates, fast
    assert c < 0.25 * variance_cost(big, np.linspace(big.min(), big.max(), 9))


def test_per_feature_levels_and_unbiased_rounding():
    rng = np.random.default_rng(2)
    A = np.column_stack([rng.beta(0.5, 3, 3000), rng.uniform(size=3000), np.full(3000, 1.0)])
    L = per_feature_optimal_levels(A, 4)
    assert L.shape == (3, 4)
    assert np.all(np.diff(L, axis=1) >= 0)
    assert np.all(L[2] == 1.0)  # constant column: a single level, repeated
    Q = np.mean([quantize_to_levels(A[:200], L, rng=rng) for _ in range(400)], axis=0)
    assert np.max(np.abs(Q - A[:200])) < 0.06
    assert np.all(Q[:, 2] == 1.0)


def _levels_bench():
    spec = importlib.util.spec_from_file_location("bench_zipml_levels",
                                                  Path(__file__).parents[1] / "bench" / "bench_zipml_levels.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_levels_benchmark_compares_at_equal_bits_with_a_continuous_metric():
    bench = _levels_bench()
    for b in (1, 2, 3, 4):
        fair = bench.uniform_levels(b)
        assert fair.size == 2**b and fair[0] == -1 and fair[-1] == 1  # the fair baseline: 2**b levels in b bits
        assert bench.uniform_levels(b, "fpga").size == 2 ** (b - 1) + 1  # the FPGA's encoding, reported beside it
    curve = 4.0 ** -bench.UNIFORM_BITS.astype(float)  # variance falling 4x per bit
    assert bench.bits_to_match(curve, 4.0**-3.5) == pytest.approx(3.5)
    assert bench.bits_to_match(curve, 1e-30) is None
    # heavy-tailed features: optimal 3-bit levels are worth clearly more bits than on Gaussian ones
    savings = {}
    for name, ds in (("gaussian", make_synthetic(10, n=3000)), ("lognormal", make_skewed("lognormal", 10, 3000)),
                     ("pareto", make_skewed("pareto", 10, 3000))):
        A, b = prepare_linear(ds, signed=True)
        (rec,), *_ = bench.saving_records(name, A, b, (3,))
        assert rec["uniform_levels"] == rec["optimal_levels"] == 8 and rec["fpga_encoding_levels"] == 5
        assert rec["optimal_gradient_variance_per_sample"] < rec["uniform_gradient_variance_per_sample_same_bits"]
        assert rec["saving_ratio"] == pytest.approx(rec["uniform_bits_to_match"] / 3)
        assert rec["fpga_encoding_bits_to_match"] > rec["uniform_bits_to_match"]  # fewer levels per bit
        savings[name] = rec["saving_ratio"]
    assert 1.0 < savings["gaussian"] < 1.25 and savings["lognormal"] > 1.35 and savings["pareto"] > 1.35
