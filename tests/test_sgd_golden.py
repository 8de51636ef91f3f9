"""The SGD engine's bit-exact golden (models.zipml.fixed_point.engine_run): tied to the qFSGD reference and
to the floating-point algorithm."""
import numpy as np

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
