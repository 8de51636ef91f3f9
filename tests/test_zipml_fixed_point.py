"""Bit-exact fixed-point qFSGD reference (models.zipml.fixed_point) against a scalar re-implementation."""

import numpy as np
import pytest

from models.zipml import (Xorshift32Lanes, least_squares_loss, least_squares_optimum, linear_sgd, prepare_linear,
                          quantize_codes, make_synthetic)
from models.zipml.fixed_point import from_fixed, qfixed_sgd, to_fixed


def scalar_reference(q1, q2, bl, nb, epochs, shift, decline, mask, grad_words, model_words, model_drop):
    """Plain Python ints, one feature at a time; random words given as iterators (None = not used)."""
    n, d = q1.shape
    x = [0] * d
    xd = list(x)
    for e in range(epochs):
        for i in range(n):
            src = x if mask == 0 else xd
            if model_words is not None:
                src = [((v >> model_drop) + (1 if (next(model_words) >> (32 - model_drop)) < (v & ((1 << model_drop) - 1))
                                             else 0)) << model_drop for v in src]
            dot = sum((src[j] * int(q1[i, j])) >> nb for j in range(d))
            t = (dot - int(bl[i])) >> shift
            for j in range(d):
                p = t * int(q2[i, j])
                if grad_words is not None:
                    r = next(grad_words) >> (32 - nb)
                    g = (p >> nb) + (1 if r < (p & ((1 << nb) - 1)) else 0)
                else:
                    g = p >> nb
                x[j] -= g
            if mask and (i & mask) == mask:
                xd = list(x)
        if decline is not None and ((e + 1) & decline) == decline:
            shift += 1
    return x


def words(seed, lanes, d, count):
    """The twin's words as consumed per sample: ceil(d / lanes) steps, leftovers dropped."""
    g = Xorshift32Lanes(seed, lanes)
    for _ in range(count):
        for w in g.words(d):
            yield int(w)


@pytest.mark.parametrize("bits,signed,mask,stochastic,model_bits", [
    (8, False, 0, False, None), (4, True, 3, False, None), (2, True, 0, True, None), (8, True, 1, True, 12),
    (1, False, 0, True, None)])
def test_matches_scalar_reference_bit_exactly(bits, signed, mask, stochastic, model_bits):
    rng = np.random.default_rng(bits)
    n, d, lanes, epochs = 40, 13, 4, 3
    A = rng.uniform(-1 if signed else 0, 1, (n, d))
    q1 = quantize_codes(A, bits, signed=signed, rng=rng)
    q2 = quantize_codes(A, bits, signed=signed, rng=rng)
    bl = to_fixed(rng.uniform(0, 1, n))
    nb = bits - 2 if signed else bits - 1
    kw = dict(signed=signed, epochs=epochs, step_shift=6, decline_interval=1, stale_mask=mask)
    if stochastic:
        kw.update(grad_rounding="stochastic", grad_rng=Xorshift32Lanes(5, lanes))
    if model_bits:
        kw.update(model_frac_bits=model_bits, model_rng=Xorshift32Lanes(6, lanes))
    got = qfixed_sgd(q1, q2, bl, bits, **kw)
    gw = words(5, lanes, d, n * epochs) if stochastic and nb > 0 else None
    mw = words(6, lanes, d, n * epochs) if model_bits else None
    ref = scalar_reference(q1, q2, bl, nb, epochs, 6, 1, mask, gw, mw, 23 - (model_bits or 0))
    assert got.x.tolist() == ref
    assert got.step_shifts == [6, 7, 7]  # (e & 1) == 1 after epochs 1 and 3
    assert len(got.history) == epochs


def test_fixed_point_double_sampling_converges_like_float():
    ds = make_synthetic(10, n=2000, seed=3)
    A, b = prepare_linear(ds)  # [0, 1] features + bias, labels in [0, 1]
    rng = np.random.default_rng(0)
    epochs = 12
    q1 = np.stack([quantize_codes(A, 8, rng=rng) for _ in range(epochs)])  # fresh copies per epoch
    q2 = np.stack([quantize_codes(A, 8, rng=rng) for _ in range(epochs)])
    opt = least_squares_loss(A, b, least_squares_optimum(A, b))
    for rounding in ("truncate", "stochastic"):
        res = qfixed_sgd(q1, q2, to_fixed(b), 8, epochs=epochs, step_shift=5, decline_interval=3,
                         copies_per_epoch=True, grad_rounding=rounding, grad_rng=Xorshift32Lanes(1, 32))
        fixed_loss = least_squares_loss(A, b, from_fixed(res.x))
        assert fixed_loss < 1.02 * opt, rounding
    float_loss = linear_sgd(A, b, mode="full", epochs=epochs, schedule=lambda e: 2.0 ** -res.step_shifts[e],
                            batch_size=1, rng=0).final_loss
    assert fixed_loss < 1.02 * float_loss


def test_overflow_is_an_error():
    q = np.full((5, 3), 128)
    with pytest.raises(OverflowError, match="step_shift"):
        qfixed_sgd(q, q, to_fixed(np.full(5, 1000.0)), 8, step_shift=0, epochs=3)
