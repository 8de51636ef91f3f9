"""Integer export: exact requantisation arithmetic, round trip through the .npz, validation errors,
streaming (raster-order) equivalence, and integer-vs-float bits/dim on the committed digits export."""
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.pixelcnn import data, export, integer
from models.pixelcnn.models import StreamPixelCNN
from models.pixelcnn.train import evaluate, load_checkpoint

WEIGHTS = os.path.join(os.path.dirname(__file__), "..", "models", "pixelcnn", "weights")


def test_requantize_round_half_up_and_saturate():
    acc = np.array([3, -3, 5, -5, 1, -1, 0, 10 ** 6, -10 ** 6])
    # multiplier 1, shift 1: x / 2 rounded half up (towards +inf)
    assert integer.requantize(acc, 1, 1).tolist() == [2, -1, 3, -2, 1, 0, 0, 127, -128]
    assert integer.requantize(np.array([7]), 3, 2).tolist() == [5]  # 21/4 = 5.25 -> 5
    assert integer.requantize(np.array([-7]), 3, 2).tolist() == [-5]  # -5.25 -> -5
    assert integer.requantize(np.array([-6]), 1, 2).tolist() == [-1]  # -1.5 -> -1


def test_quantize_multiplier():
    for r in [1e-4, 0.0123, 0.5, 0.99999, 3.7]:
        m, s = integer.quantize_multiplier(r)
        assert 2 ** 14 <= m < 2 ** 15 and abs(m / 2 ** s - r) / r < 2 ** -14
    with pytest.raises(ValueError):
        integer.quantize_multiplier(0.0)


def test_conv_int_matches_torch():
    rng = np.random.RandomState(0)
    x = rng.randint(-128, 128, (2, 3, 5, 6))
    w = rng.randint(-128, 128, (4, 3, 3, 3))
    b = rng.randint(-1000, 1000, 4)
    ref = F.conv2d(torch.from_numpy(x).double(), torch.from_numpy(w).double(), torch.from_numpy(b).double(),
                   padding=1)
    assert np.array_equal(integer.conv_int(x, w, b), ref.numpy().astype(np.int64))


def _tiny_spec():
    torch.manual_seed(0)
    m = StreamPixelCNN(1, 5, hidden=6, n_res=2, k_first=5, k=3, head=6)
    calib = np.random.RandomState(0).randint(0, 5, (16, 1, 6, 6))
    sc = export.calibrate(m, calib)
    return m, sc, export.quantize_model(m, sc, dict(dataset="tiny", height=6, width=6))


def test_round_trip_and_streaming(tmp_path):
    m, sc, spec = _tiny_spec()
    p = str(tmp_path / "e.npz")
    export.save_export(p, spec)
    back = export.load_export(p)
    assert back["version"] == export.VERSION and back["levels"] == 5 and len(back["layers"]) == 5
    for a, b in zip(spec["layers"], back["layers"]):
        for k in export.LAYER_KEYS:
            assert np.array_equal(np.asarray(a[k]), np.asarray(b[k])), k
    x = np.random.RandomState(1).randint(0, 5, (3, 1, 6, 6))
    lg = integer.forward_int(back, x)
    assert lg.dtype == np.int64 and lg.shape == (3, 1, 5, 6, 6) and lg.min() >= -128 and lg.max() <= 127
    assert np.array_equal(lg, integer.forward_int(spec, x))
    assert np.array_equal(lg, integer.stream_forward_int(back, x))
    # the float fake-quant simulation agrees with the integer model almost everywhere
    with torch.no_grad():
        fq = export.forward_fake_quant(m.double(), torch.from_numpy(x), sc).numpy() / spec["logit_scale"]
    assert np.mean(np.abs(fq - lg) <= 1.01) > 0.99
    b = integer.bits_per_dim(lg, x, back["logit_scale"])
    assert np.isfinite(b) and b > 0


def _write(tmp_path, spec, edit):
    p = str(tmp_path / "ok.npz")
    export.save_export(p, spec)
    z = dict(np.load(p))
    edit(z)
    q = str(tmp_path / "bad.npz")
    np.savez(q, **z)
    return q


@pytest.mark.parametrize("edit,msg", [
    (lambda z: z.update(version=np.int32(99)), "version 99 is not supported"),
    (lambda z: z.update(format=np.str_("other")), "format is 'other'"),
    (lambda z: z.pop("layer1_bias"), "layer 1: missing key 'layer1_bias'"),
    (lambda z: z.update(layer0_weight=z["layer0_weight"].astype(np.int16)), "must have dtype int8"),
    (lambda z: z.update(layer2_lut=np.zeros(255, np.int8)), "shape"),
    (lambda z: z.update(layer1_in=np.int32(7)), "in channels 7"),
    (lambda z: z.update(layer0_mask=np.str_("Q")), "mask must be"),
    (lambda z: z.update(layer1_shift=np.int32(0)), "out of range"),
    (lambda z: z["layer0_weight"].__setitem__((0, 0, 2, 2), 5), "removed by mask A"),
    (lambda z: z.update(levels=np.int32(6)), "input_lut"),
])
def test_validation_errors(tmp_path, edit, msg):
    _, _, spec = _tiny_spec()
    with pytest.raises(export.ExportError, match=msg):
        export.load_export(_write(tmp_path, spec, edit))


def test_hardware_limits_and_missing(tmp_path):
    _, _, spec = _tiny_spec()
    p = str(tmp_path / "e.npz")
    export.save_export(p, spec)
    with pytest.raises(export.ExportError, match="exceed the hardware limit of 4"):
        export.load_export(p, max_channels=4)
    with pytest.raises(export.ExportError, match="kernel 5 not supported"):
        export.load_export(p, kernels=(1, 3))
    with pytest.raises(export.ExportError, match="not found"):
        export.load_export(str(tmp_path / "none.npz"))


@pytest.mark.parametrize("name", ["digits", "faces"])
def test_committed_exports_fit_the_fpga(name):
    spec = export.load_export(os.path.join(WEIGHTS, f"stream_{name}_int8.npz"), max_channels=32, kernels=(1, 3, 5))
    assert spec["dataset"] == name and spec["channels"] == 1
    x = data.load(name).test[:1, :, :8, :8] if name == "digits" else data.load(name).test[:1]
    assert np.array_equal(integer.forward_int(spec, x), integer.stream_forward_int(spec, x))


def test_integer_vs_float_digits():
    """The acceptance check: committed integer export within 0.05 bits/dim of the float model."""
    spec = export.load_export(os.path.join(WEIGHTS, "stream_digits_int8.npz"))
    ds = data.load("digits")
    ib = integer.evaluate_int(spec, ds.test)
    assert abs(ib - spec["int_bits_per_dim"]) < 1e-9  # reproducible from the file alone
    model, _ = load_checkpoint(os.path.join(WEIGHTS, "stream_digits_float.pt"))
    fb, _ = evaluate(model.double(), ds.test)
    assert abs(fb - spec["float_bits_per_dim"]) < 1e-6
    assert abs(ib - fb) <= 0.05, (ib, fb)
    assert ib < 2.3  # clearly better than the independent per-position baseline (~2.43)


def _tiny_gated(n_layers=2):
    from models.pixelcnn.models import GatedPixelCNN
    torch.manual_seed(1)
    m = GatedPixelCNN(1, 5, hidden=4, n_layers=n_layers)
    calib = np.random.RandomState(0).randint(0, 5, (16, 1, 5, 5))
    return m, export.quantize_gated(m, export.calibrate_gated(m, calib), dict(dataset="tiny", height=5, width=5))


def test_gated_export_round_trip_and_fake_float(tmp_path):
    m, spec = _tiny_gated()
    p = str(tmp_path / "g.npz")
    export.save_graph_export(p, spec)
    back = export.load_export(p)
    assert back["architecture"] == "gated" and [o["name"] for o in back["ops"]] == [o["name"] for o in spec["ops"]]
    x = np.random.RandomState(2).randint(0, 5, (4, 1, 5, 5))
    lg = integer.forward_int(back, x)
    assert lg.shape == (4, 1, 5, 5, 5) and np.array_equal(lg, integer.forward_int(spec, x))
    with torch.no_grad():  # the integer logits track the float model's
        fl = m.double()(torch.from_numpy(x)).numpy() / spec["logit_scale"]
    assert np.mean(np.abs(fl - lg) <= 6) > 0.9


@pytest.mark.parametrize("edit,msg", [
    (lambda z: z.update(op0_in0_map=np.str_("nope")), "'nope' is not written by an earlier op"),
    (lambda z: z.update(op0_in0_taps=z["op0_in0_taps"] * 3), "offsets in -2..2"),
    (lambda z: z.update(op0_lut=np.zeros(256, np.int8)), "shape"),
    (lambda z: z.update(op2_residual=np.str_("zz")), "residual map 'zz'"),
])
def test_gated_export_validation(tmp_path, edit, msg):
    _, spec = _tiny_gated()
    p = str(tmp_path / "ok.npz")
    export.save_graph_export(p, spec)
    z = dict(np.load(p))
    edit(z)
    q = str(tmp_path / "bad.npz")
    np.savez(q, **z)
    with pytest.raises(export.ExportError, match=msg):
        export.load_export(q)


def test_committed_gated_digits_export():
    """The committed gated export: integer bits/dim reproducible from the file, within 0.05 of the
    float Gated PixelCNN it was quantised from."""
    spec = export.load_export(export.committed_export_path("digits", "gated"))
    ds = data.load("digits")
    ib = integer.evaluate_int(spec, ds.test)
    assert spec["architecture"] == "gated" and abs(ib - spec["int_bits_per_dim"]) < 1e-9
    model, _ = load_checkpoint(os.path.join(WEIGHTS, "bench_pixelcnn_digits.pt"))
    fb, _ = evaluate(model.double(), ds.test)
    assert abs(fb - spec["float_bits_per_dim"]) < 1e-6 and abs(ib - fb) <= 0.05, (ib, fb)
