"""Quantizers, encoding, scaling and the hardware-twin RNG (models.zipml.quantize, models.zipml.rng)."""

import numpy as np
import pytest

from models.zipml.quantize import (add_bias, code_range, dequantize, denominator, from_field, minmax_scale,
                                   n_levels, quantize, quantize_codes, quantize_to_levels, rounding_variance,
                                   scale_labels, to_field, uniform_levels)
from models.zipml.rng import (Xorshift32Lanes, fmix32, lane_seeds, stochastic_round_fixed, xorshift32_step)

CASES = [(1, False), (2, False), (4, False), (8, False), (2, True), (4, True), (8, True)]

# ----------------------------------------------------------------------------- scalar reference of the docstring

M = 0xFFFFFFFF


def ref_seed(seed, lane):
    h = (seed + 0x9E3779B9 * (lane + 1)) & M
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & M
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & M
    h ^= h >> 16
    return h if h else 0x6D2B79F5


def ref_step(x):
    x ^= (x << 13) & M
    x ^= x >> 17
    x ^= (x << 5) & M
    return x


def test_twin_matches_scalar_reference_of_documented_algorithm():
    seed, lanes, n = 0xDEADBEEF, 5, 23
    g = Xorshift32Lanes(seed, lanes)
    got = g.words(n)
    state = [ref_seed(seed, l) for l in range(lanes)]
    expect = []
    for _ in range(-(-n // lanes)):
        state = [ref_step(s) for s in state]
        expect.extend(state)
    assert got.dtype == np.uint32
    assert got.tolist() == expect[:n]  # step-major: element i -> lane i % L, step i // L
    assert g.steps == 5 and g.state.tolist() == state  # leftover lanes still advanced
    # state carries over between requests
    nxt = [ref_step(s) for s in state]
    assert g.words(lanes).tolist() == nxt


def test_twin_block_doubling_equals_plain_stepping():
    for n_steps in (1, 2, 3, 7, 64, 1000):
        g = Xorshift32Lanes(7, 3)
        x = lane_seeds(7, 3)
        rows = []
        for _ in range(n_steps):
            x = xorshift32_step(x)
            rows.append(x)
        assert np.array_equal(g.step_block(n_steps), np.array(rows))


def test_lane_seeds_distinct_nonzero_and_fmix_bijective_sample():
    s = lane_seeds(0, 4096)
    assert np.all(s != 0) and np.unique(s).size == 4096
    h = fmix32(np.arange(100000, dtype=np.uint32))
    assert np.unique(h).size == 100000


def test_twin_bits_uniform_and_lanes_uncorrelated():
    g = Xorshift32Lanes(123, 16)
    top4 = (g.step_block(4000) >> np.uint32(28)).astype(np.int64)  # (steps, lanes)
    counts = np.bincount(top4.ravel(), minlength=16)
    expected = top4.size / 16
    chi2 = np.sum((counts - expected) ** 2 / expected)
    assert chi2 < 45  # 15 dof: P(chi2 > 45) ~ 1e-4
    c = np.corrcoef(top4.T.astype(float))
    off = c[~np.eye(16, dtype=bool)]
    assert np.max(np.abs(off)) < 0.08  # 4000 samples: sd ~ 0.016


def test_stochastic_round_fixed_rule():
    g = Xorshift32Lanes(9, 4)
    v = np.array([-37, -1, 0, 5, 255, 256, 1000, -256])
    k = 8
    r = Xorshift32Lanes(9, 4).words(v.shape) >> np.uint32(32 - k)
    q = stochastic_round_fixed(v, k, g)
    expect = [(int(a) >> k) + (1 if int(b) < (int(a) & 255) else 0) for a, b in zip(v, r)]
    assert q.tolist() == expect


# ----------------------------------------------------------------------------- levels and encoding


def test_level_counts_and_values():
    assert [n_levels(b) for b in (1, 2, 4, 8)] == [2, 3, 9, 129]
    assert uniform_levels(2).tolist() == [0.0, 0.5, 1.0]
    assert uniform_levels(2, signed=True).tolist() == [-1.0, 0.0, 1.0]
    assert uniform_levels(4, signed=True).tolist() == [q / 4 for q in range(-4, 5)]
    assert code_range(8) == (0, 128) and code_range(8, True) == (-64, 64)
    with pytest.raises(ValueError, match="signed"):
        quantize(np.zeros(3), 1, signed=True, rng=np.random.default_rng(0))


def test_fpga_field_encoding():
    # Q2 signed: 00 -> 0, 01 -> +1, 11 -> -1; Q4/Q8 unsigned top level is the special code 100..0
    assert to_field([0, 1, -1], 2).tolist() == [0b00, 0b01, 0b11]
    assert to_field([8], 4).tolist() == [0b1000] and to_field([128], 8).tolist() == [0b10000000]
    for bits, signed in CASES:
        lo, hi = code_range(bits, signed)
        codes = np.arange(lo, hi + 1)
        f = to_field(codes, bits)
        assert f.max() < 2**bits
        assert np.unique(f).size == codes.size
        assert np.array_equal(from_field(f, bits, signed=signed), codes)


@pytest.mark.parametrize("bits,signed", CASES)
@pytest.mark.parametrize("source", ["numpy", "twin"])
def test_stochastic_rounding_unbiased_and_variance(bits, signed, source):
    rng = np.random.default_rng(bits * 10 + signed)
    m, n = 64, 20000
    x = rng.uniform(-1 if signed else 0, 1, size=m)
    x[:2] = uniform_levels(bits, signed)[[0, 1]]  # exact levels must stay put
    src = np.random.default_rng(5) if source == "numpy" else Xorshift32Lanes(5, 32)
    codes = quantize_codes(np.broadcast_to(x, (n, m)), bits, signed=signed, rng=src)
    q = dequantize(codes, bits, signed=signed)
    d = denominator(bits, signed)
    # every draw is one of the two bracketing levels
    assert np.all(np.abs(q - x) < 1.0 / d + 1e-12)
    assert np.all(q[:, :2] == x[:2])
    var = rounding_variance(x, bits, signed=signed)
    assert np.all(var <= 0.25 / d**2 + 1e-15)  # the bound (b - a)^2 / 4
    mean_err = q.mean(axis=0) - x
    # unbiased: 5 standard errors of the exact variance (+ 2^-24 fixed-point granularity of the twin)
    assert np.all(np.abs(mean_err) <= 5 * np.sqrt(var / n) + 1e-6)
    emp = q.var(axis=0)
    # the sample variance of a two-point variable (spacing 1/d) has standard error <= sqrt(var / n) / d
    assert np.all(np.abs(emp - var) <= 5 * np.sqrt(var / n) / d + 1e-12)
    assert emp.sum() <= m * 0.25 / d**2


def test_twin_rounding_reproducible_and_seed_dependent():
    x = np.linspace(0, 1, 1000)
    a = quantize_codes(x, 4, rng=Xorshift32Lanes(1, 8))
    b = quantize_codes(x, 4, rng=Xorshift32Lanes(1, 8))
    c = quantize_codes(x, 4, rng=Xorshift32Lanes(2, 8))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_nearest_rounding_baseline():
    x = np.array([0.0, 0.1, 0.25, 0.26, 0.74, 0.75, 1.0, 1.5, -0.2])
    q = quantize(x, 2, rounding="nearest")
    assert q.tolist() == [0.0, 0.0, 0.5, 0.5, 0.5, 1.0, 1.0, 1.0, 0.0]  # ties up, clipped to [0, 1]
    xs = np.random.default_rng(0).uniform(-1, 1, 1000)
    qs = quantize(xs, 8, signed=True, rounding="nearest")
    assert np.max(np.abs(qs - xs)) <= 0.5 / 64 + 1e-12
    with pytest.raises(ValueError, match="rng"):
        quantize(xs, 8, signed=True)


def test_quantize_to_arbitrary_levels_unbiased_per_feature():
    rng = np.random.default_rng(3)
    levels = np.array([[0.0, 0.1, 0.5, 1.0], [-2.0, -1.0, 3.0, 4.0], [5.0, 5.5, 6.0, 9.0]])
    x = np.array([0.3, 2.0, 8.0])
    n = 40000
    q = quantize_to_levels(np.broadcast_to(x, (n, 3)), levels, rng=rng)
    for j in range(3):
        assert set(np.unique(q[:, j])) <= set(levels[j])
    lo, hi = np.array([0.1, -1.0, 6.0]), np.array([0.5, 3.0, 9.0])
    var = (hi - x) * (x - lo)
    assert np.all(np.abs(q.mean(0) - x) < 5 * np.sqrt(var / n))
    assert np.allclose(q.var(0), var, rtol=0.05)
    # same as the 1-D path column by column
    X = rng.uniform(0, 1, (50, 3)) * [1, 6, 4] + [0, -2, 5]
    vals, idx = quantize_to_levels(X, levels, rounding="nearest", return_index=True)
    for j in range(3):
        assert np.array_equal(vals[:, j], quantize_to_levels(X[:, j], levels[j], rounding="nearest"))
        assert np.array_equal(levels[j][idx[:, j]], vals[:, j])


def test_minmax_scaling_feature_sample_bias_and_labels():
    rng = np.random.default_rng(0)
    X = add_bias(rng.normal(3, 5, (200, 6)))
    Xs, mm = minmax_scale(X, per="feature", bias_column=-1)
    assert np.allclose(Xs[:, :-1].min(0), 0) and np.allclose(Xs[:, :-1].max(0), 1)
    assert np.all(Xs[:, -1] == 1.0)
    assert np.allclose(mm.apply(X), Xs)
    Xs2, _ = minmax_scale(X, per="sample", signed=True, bias_column=-1)
    assert np.allclose(Xs2[:, :-1].min(1), -1) and np.allclose(Xs2[:, :-1].max(1), 1)
    assert np.all(Xs2[:, -1] == 1.0)
    y, (lo, hi) = scale_labels(rng.normal(10, 2, 200))
    assert y.min() == 0 and y.max() == 1 and hi > lo
    const = minmax_scale(np.ones((4, 2)))[0]
    assert np.all(const == 0)
