"""Host side of the convolution engine: ConvDevice over the real link (Amaranth backend, small engine)
and the clear errors for exports that do not fit."""
import argparse

import numpy as np
import pytest

from host import pixelcnn_run as R
from host.backends import open_device
from hw.pixelcnn import program as prog
from hw.pixelcnn import sampler as S
from models.pixelcnn import export as X

SMALL = dict(lanes=4, max_channels=8, max_width=8, max_layers=4, weight_depth=256, bias_depth=64,
             in_fifo=16, out_fifo=512)


def test_conv_device_over_link_amaranth():
    rng = np.random.default_rng(21)
    spec = prog.random_spec(rng, layers=(("A", 3, 1, 6, False), ("B", 3, 6, 6, True), ("B", 1, 6, 5, False)),
                            levels=5)
    x = rng.integers(0, 5, size=(2, 1, 2, 3))
    with open_device("amaranth", design=R.default_design(**SMALL), timeout=60.0) as dev:
        cd = R.ConvDevice(dev, timeout=60.0)
        assert cd.params == prog.EngineParams(**SMALL)
        cd.program(spec, 3, 2)
        logits, cnt = cd.likelihood_logits(x)
        imgs, scnt = cd.sample(1, seed=77, mult=50)
    assert np.array_equal(logits, prog.logits_any(spec, x))
    assert cnt["pixels"] == 12 and cnt["mac_beats"] == 12 * prog.mac_beats_per_pixel(spec, 4)
    assert np.array_equal(imgs, S.sample_images_twin(spec, 1, 2, 3, 77, 50))
    assert scnt["pixels"] == 6 and scnt["images"] == 1


def _args(**kw):
    base = dict(model="pixelcnn", dataset="digits", backend="verilator", port=None, baud=115200, timeout=5.0,
                samples=0, json=None, plot=None, no_progress=True, limit=1)
    base.update(kw)
    return argparse.Namespace(**base)


def test_export_too_wide_is_a_clear_error(tmp_path):
    spec = X.load_export(X.committed_export_path("digits"))
    l1 = spec["layers"][1]
    wide = dict(l1, out=64, weight=np.zeros((64, 32, 3, 3), np.int8), bias=np.zeros(64, np.int32), residual=False)
    l2 = dict(spec["layers"][2], **{"in": 64}, weight=np.zeros((32, 64, 3, 3), np.int8), residual=False)
    bad = dict(spec, layers=[spec["layers"][0], wide, l2] + spec["layers"][3:])
    path = tmp_path / "wide.npz"
    X.save_export(path, bad)
    from host.cli_checks import UsageError
    with pytest.raises(UsageError, match="exceed the hardware limit of 32"):
        R.run_pixelcnn(_args(dataset=str(path)))


def test_fit_error_names_layer_and_limit():
    spec = X.load_export(X.committed_export_path("faces"))
    with pytest.raises(prog.EngineFitError, match="width 24 exceeds"):
        prog.check_fits(spec, prog.EngineParams(max_width=16), 24, 24)
    with pytest.raises(prog.EngineFitError, match="weights need"):
        prog.check_fits(spec, prog.EngineParams(lanes=4, weight_depth=2048), 24, 24)
    prog.check_fits(spec, prog.EngineParams(), 24, 24)  # the default engine runs the faces model


@pytest.mark.parametrize("model", ["gray-pixelcnn", "pyramid-pixelcnn"])
def test_bundles_fit_and_match_float(model):
    """The bundled Grayscale/Pyramid exports: every stage fits the default engine, the conditioner passes
    are non-causal (a pixel's feature depends on auxiliary pixels below and right of it), and the integer
    chain's bits/dim on 40 test images is within 0.05 of the float model's."""
    from models.pixelcnn import cond_export as CE
    from models.pixelcnn import data
    b = CE.load_bundle(R.WEIGHTS / R.EXPORT_GLOBS[model].format("digits"))
    for name, spec, w, h in R.stage_runs(model, b):
        prog.check_fits(spec, prog.EngineParams(), w, h)
    x = data.load("digits").test[:40]
    a = CE.aux_image(b, x)
    f = CE.feature_maps(b, a)
    a2 = a.copy()
    a2[:, :, -1, -1] = (a2[:, :, -1, -1] + 1) % b["aux_levels"]  # change the last auxiliary pixel only
    assert not np.array_equal(CE.feature_maps(b, a2)[:, :, 5, 5], f[:, :, 5, 5])
    bits = sum(float(v.sum()) for v in CE.reference_bits(b, x)) / x.size
    import torch
    from models.pixelcnn.train import load_checkpoint
    fm, _ = load_checkpoint(R.WEIGHTS / f"engine_{CE.MODEL_OF[model]}_digits.pt")
    with torch.no_grad():
        fb = float(fm.double().bpd(torch.as_tensor(x)).sum()) / len(x)
    assert abs(bits - fb) < 0.05


def _usage(**kw):
    from host.cli_checks import UsageError
    with pytest.raises(UsageError) as e:
        R.load_job(_args(**kw))
    return str(e.value)


def test_dataset_path_and_weights_mismatches(tmp_path):
    """An image .npz of the right shape is scored with the bundled export of that shape; a wrong shape,
    too many levels, another model's export or an engine that is too small get one clear message."""
    from models.pixelcnn import data
    x = data.load("digits").test[:5]
    good, wide, deep = tmp_path / "good.npz", tmp_path / "wide.npz", tmp_path / "deep.npz"
    np.savez(good, x=x, levels=17)
    np.savez(wide, x=np.zeros((5, 1, 8, 12), np.int64), levels=17)
    np.savez(deep, x=x * 15, levels=256)
    _, _, exp, ds = R.load_job(_args(model="gray-pixelcnn", dataset=str(good)))
    assert exp["model"] == "gray" and ds.shape == (1, 8, 8)
    assert "1x8x12" in _usage(model="gray-pixelcnn", dataset=str(wide))
    assert "256 levels" in _usage(model="pyramid-pixelcnn", dataset=str(deep))
    gated = R.WEIGHTS / "gated_digits_int8.npz"
    assert "not a Grayscale/Pyramid bundle" in _usage(model="gray-pixelcnn", weights=gated)
    pyr = R.WEIGHTS / "pyramid_digits_int8.npz"
    assert "is a pyramid-pixelcnn export, not gray-pixelcnn" in _usage(model="gray-pixelcnn", weights=pyr)
    small = R.default_design(max_layers=8)
    import unittest.mock as M
    with M.patch.object(R, "default_design", lambda: small):
        assert "stage coarse of the export does not fit the engine: 16 ops" in _usage(model="pyramid-pixelcnn")


@pytest.mark.slow  # ~25 s each on the Verilator backend (plus its build on first use)
@pytest.mark.parametrize("model", ["gray-pixelcnn", "pyramid-pixelcnn"])
def test_cli_chain_models_verilator(tmp_path, model):
    """``host/run.py --model gray-pixelcnn|pyramid-pixelcnn``: every stage and conditioner on the engine,
    one test image scored with logits identical to the integer chain, one sample identical to the twin."""
    import json

    from host import run
    out = tmp_path / "o.json"
    rc = run.main(["--model", model, "--dataset", "digits", "--limit", "1", "--samples", "1",
                   "--json", str(out), "--plot", str(tmp_path / "s.png"), "--no-progress"])
    r = json.loads(out.read_text())
    assert rc == 0 and r["bpd"] == r["bpd_integer_reference"] and r["logits_equal"] and r["samples_equal_twin"]
    st = r["stages"]
    assert r["test_images"] == 1 and st["conditional"]["mac_beats_per_pixel"] * 64 <= st["conditional"]["cycles_per_image"]
    assert st["conditioners"]["mac_beats_per_image"] * 16 >= st["conditioners"]["useful_macs_per_image"] > 0
    assert (tmp_path / "s_aux.png").exists()


@pytest.mark.slow  # includes the default design's Verilator build on first use (cached afterwards)
def test_cli_gated_pixelcnn_verilator(tmp_path):
    """``host/run.py --model pixelcnn`` runs the gated export on the Verilator backend: one test image
    scored with logits identical to the NumPy reference, one sample identical to the twin."""
    import json

    from host import run
    out = tmp_path / "o.json"
    rc = run.main(["--model", "pixelcnn", "--dataset", "digits", "--limit", "1", "--samples", "1",
                   "--json", str(out), "--plot", str(tmp_path / "s.png"), "--no-progress"])
    r = json.loads(out.read_text())
    assert rc == 0 and r["architecture"] == "gated" and r["test_images"] == 1
    assert r["bpd"] == r["bpd_integer_reference"] and r["logits_equal"] and r["samples_equal_twin"]
    assert r["counters_likelihood"]["pixels"] == 64
    assert r["mac_lower_bound_cycles_per_pixel"] <= r["cycles_per_pixel"] < 1.2 * r["mac_lower_bound_cycles_per_pixel"]


class _Sent(Exception):
    pass


class _Link:
    def send(self, data, timeout):
        raise _Sent(len(data))


class _EngineWithoutTilt(R.ConvDevice):
    """A ConvDevice whose engine predates the luma tilt: idle, and every register it lacks reads 0; the load
    stops where its bytes would go out."""

    def __init__(self, params):
        self.params, self.timeout, self.writes, self.dev = params, 1.0, [], _Link()

    def reg(self, index, value=None):
        if value is None:
            return 0
        self.writes.append(index)


def test_load_refuses_a_tilted_export_on_an_engine_without_the_tilt():
    """An engine built before the luma tilt (REG_TILT reads back 0) gets a message that names the tilt, before
    anything is sent, instead of a word-count mismatch after the load; an untilted export still loads there."""
    rng = np.random.default_rng(3)
    params = prog.EngineParams(**dict(SMALL, max_outputs=16, max_layers=8))
    tilted = prog.random_gated_spec(rng, levels=5, channels=3, tilt_sigma=4.0)
    cd = _EngineWithoutTilt(params)
    with pytest.raises(prog.EngineFitError, match="no luma-tilt sampler"):
        cd.load([("", tilted, 3, 2)])
    assert R.E.REG_TILT in cd.writes
    plain = prog.random_gated_spec(rng, levels=5, channels=3)
    with pytest.raises(_Sent):
        _EngineWithoutTilt(params).load([("", plain, 3, 2)])
