"""The SGD engine's bit-exact golden (models.zipml.fixed_point.engine_run): tied to the qFSGD reference and
to the floating-point algorithm."""
import numpy as np
import pytest

from hw.sgd.layout import encode_32bit
from models.zipml import linear_sgd, load_dataset, prepare_linear, quantize_codes
from models.zipml.fixed_point import engine_run, qfixed_sgd, to_fixed
from models.zipml.sgd import least_squares_loss


def test_engine_run_without_pipeline_delay_is_the_qfsgd_reference():
    rng = np.random.default_rng(0)
    n, d = 60, 17
    for bits, signed, mask in [(4, True, 0), (8, False, 3), (2, True, 7), (1, False, 0)]:
        A = rng.uniform(-1 if signed else 0, 1, (n, d))
        q1 = quantize_codes(A, bits, signed=signed, rng=rng)
        q2 = quantize_codes(A, bits, signed=signed, rng=rng)
        lab = to_fixed(rng.uniform(0, 1, n))
        ref = qfixed_sgd(q1, q2, lab, bits, signed=signed, step_shift=5, stale_mask=mask).x
        # delay 1 = the reference's instantaneous refresh; its last sample need not refresh, the model is x anyway
        got = engine_run(np.zeros(d), q1, q2, lab, bits, signed=signed, step_shift=5, batch_mask=mask, delay=1).x
        assert np.array_equal(got, ref), (bits, signed, mask)


def test_engine_run_delay_only_changes_what_the_dot_product_sees():
    rng = np.random.default_rng(1)
    q = rng.integers(-4, 5, (30, 9))
    lab = rng.integers(-2**22, 2**22, 30)
    a = engine_run(np.zeros(9), q, q, lab, 4, signed=True, step_shift=4, delay=1).x
    b = engine_run(np.zeros(9), q, q, lab, 4, signed=True, step_shift=4, delay=5).x
    assert not np.array_equal(a, b)


def test_golden_loss_tracks_the_float_reference():
    ds = load_dataset("synthetic100")
    A, y = prepare_linear(ds, signed=True)
    A, y = A[:3000], y[:3000]
    lab = to_fixed(y)
    rng = np.random.default_rng(3)
    shift0, epochs = 6, 6
    fp = linear_sgd(A, y, mode="full", epochs=epochs, step=2.0**-shift0, batch_size=1, rng=0,
                    schedule=lambda e: 2.0**-(shift0 + e // 2))
    for bits in (4, 8, 32):
        x = np.zeros(A.shape[1], dtype=np.int64)
        for e in range(epochs):
            if bits == 32:
                q1 = q2 = encode_32bit(A, True)
            else:
                q1, q2 = (quantize_codes(A, bits, signed=True, rng=rng) for _ in range(2))
            x = engine_run(x, q1, q2, lab, bits, signed=True, step_shift=shift0 + e // 2, delay=7).x
        loss = least_squares_loss(A, y, x / 2**23)
        tolerance = {4: 1.05, 8: 1.01, 32: 1.01}[bits]  # Q4's extra variance costs a few % at 3,000 samples
        assert loss < tolerance * fp.final_loss, (bits, loss, fp.final_loss)


# --- compact double-sample slots (models.zipml.pack) -------------------------------------------------------------

def test_compact_slots_roundtrip_and_bit_positions():
    from models.zipml.pack import (compact_double_sample_slots, decode_compact_slots, pack_beat_slots,
                                   unpack_beat_slots)
    from models.zipml.quantize import quantize_codes
    rng = np.random.default_rng(0)
    for bits, signed in [(2, True), (2, False), (4, True), (8, False)]:
        A = rng.uniform(-1 if signed else 0, 1, (7, 45))
        A[0, :3] = [1.0, -1.0 if signed else 0.0, 0.5]  # the ends of the range and a level exactly
        q1 = quantize_codes(A, bits, signed=signed, rng=rng)
        q2 = quantize_codes(A, bits, signed=signed, rng=rng)
        slots = compact_double_sample_slots(q1, q2, bits, signed=signed)
        assert slots.max() < 2 ** (bits + 1)
        d1, d2 = decode_compact_slots(slots, bits, signed=signed)
        assert np.array_equal(d1, q1) and np.array_equal(d2, q2)
        s, per = bits + 1, 64 // (bits + 1)
        words = -(-45 // per)
        packed = pack_beat_slots(slots, s, per, 64, words)
        assert np.array_equal(unpack_beat_slots(packed, s, per, 64, 45), slots)
        row = int.from_bytes(packed[2].tobytes(), "little")  # the reference: slot j at bit (j // per) * 64 + ...
        for j in (0, 1, per - 1, per, 44):
            at = (j // per) * 64 + (j % per) * s
            assert (row >> at) & ((1 << s) - 1) == slots[2, j]


def test_compact_slots_refuse_copies_from_different_intervals():
    from models.zipml.pack import compact_double_sample_slots
    with pytest.raises(ValueError, match="one quantization interval"):
        compact_double_sample_slots(np.array([[0, 1]]), np.array([[2, 1]]), 4, signed=False)
    with pytest.raises(ValueError, match="outside"):
        compact_double_sample_slots(np.array([[5]]), np.array([[5]]), 4, signed=True)
    with pytest.raises(ValueError, match="bits in 2, 4, 8"):
        compact_double_sample_slots(np.array([[1]]), np.array([[1]]), 1, signed=False)


def test_engine_golden_classifier_losses_follow_their_definitions():
    """l2svm: no update once the margin is met; logistic: t from the sigmoid table; class-weighted shifts."""
    from models.zipml.fixed_point import engine_run, sigmoid_fixed
    one = 1 << 23
    q = np.array([[2, 0]])  # Q4 signed: value 2/4 = 0.5 on feature 0
    x0 = np.array([3 * one, 0])  # dot = 1.5
    met = engine_run(x0, q, q, [one], 4, signed=True, step_shift=0, loss="l2svm")
    assert np.array_equal(met.x, x0)
    missed = engine_run(x0, q, q, [-one], 4, signed=True, step_shift=0, loss="l2svm")
    t = (int(1.5 * one) + one)
    assert missed.x[0] == x0[0] - ((t * 2) >> 2)
    lg = engine_run(x0, q, q, [0], 4, signed=True, step_shift=1, loss="logistic")
    t = int(sigmoid_fixed(int(1.5 * one))) >> 1
    assert lg.x[0] == x0[0] - ((t * 2) >> 2)
    w = engine_run(x0, q, q, [0], 4, signed=True, step_shift=1, loss="logistic", step_shift_neg=3)
    assert w.x[0] == x0[0] - (((int(sigmoid_fixed(int(1.5 * one))) >> 3) * 2) >> 2)


def test_model_frac_bits_for_picks_the_finest_grid_that_holds_the_largest_weight():
    from models.zipml.fixed_point import model_frac_bits_for, round_model_to_width
    assert model_frac_bits_for([0.53, -0.1], 8) == 7      # range +-1
    assert model_frac_bits_for([0.4], 8) == 8             # range +-0.5
    assert model_frac_bits_for([-3.0], 12) == 9           # range +-4
    assert model_frac_bits_for([1e-9], 16) == 22          # the engine's finest
    assert model_frac_bits_for([1e6], 8) == 0             # at most 8 integer bits: f >= w - 9, and f >= 0
    assert model_frac_bits_for([1e6], 16) == 7
    f = model_frac_bits_for([0.53], 8)
    assert np.array_equal(round_model_to_width([0.53, -2.0, 0.003], 8, f), [68 / 128, -1.0, 0.0])


def test_an_8bit_model_trains_at_the_data_chosen_scale():
    """Diabetes, Q4 compact samples, 8-bit model stochastically rounded on write (the engine's twin): at the
    scale chosen from the least-squares solution the loss ends within 15 % of float64; at the old fixed +-8
    range (f = w - 4) it does not (about twice the loss)."""
    from models.zipml.fixed_point import model_frac_bits_for
    from models.zipml.rng import Xorshift32Lanes
    A, y = prepare_linear(load_dataset("diabetes"), signed=True)
    x_ls = np.linalg.lstsq(A, y, rcond=None)[0]
    s0, epochs = 6, 10
    fp = linear_sgd(A, y, mode="full", epochs=epochs, step=2.0**-s0, batch_size=1, rng=0,
                    schedule=lambda ep: 2.0**-(s0 + ep // 2)).loss[-1]

    def final_loss(frac):
        rng, twin = np.random.default_rng(0), Xorshift32Lanes(seed=1, n_lanes=102)
        x = np.zeros(A.shape[1], dtype=np.int64)
        for e in range(epochs):
            q1, q2 = (quantize_codes(A, 4, signed=True, rng=rng) for _ in range(2))
            x = engine_run(x, q1, q2, to_fixed(y), 4, signed=True, step_shift=s0 + e // 2, delay=17, model_bits=8,
                           model_frac_bits=frac, model_rng=twin).x
        return least_squares_loss(A, y, x / 2.0**23)

    data_scale = final_loss(model_frac_bits_for(x_ls, 8))
    assert data_scale < 1.15 * fp
    assert final_loss(8 - 4) > 1.5 * fp
