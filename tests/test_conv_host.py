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


@pytest.mark.parametrize("kind", ["gray", "pyramid"])
def test_aux_exports_fit_and_condition(kind):
    from models.pixelcnn import aux_export as A
    from models.pixelcnn import data
    prior, cond = (A.load_aux(p) for p in A.aux_paths(kind, "digits"))
    x = data.load("digits").test[:3]
    a = A.aux_view(kind, x, 17)
    prog.check_fits(prior, prog.EngineParams(), a.shape[3], a.shape[2])
    prog.check_fits(cond, prog.EngineParams(), 8, 8)
    cin = A.aux_cond_input(kind, x, 17)
    assert cin.shape == (3, 4, 8, 8) and cin.max() < 17
    assert not np.any(cond["layers"][0]["weight"][:, 0, 2, 2])  # x never sees itself
    if kind == "pyramid":  # channel 1 = coarse pixel under (i, j); 3 = the one below (0 past the edge)
        assert np.array_equal(cin[:, 1], np.kron(a[:, 0], np.ones((2, 2), np.int64)))
        assert not cin[:, 3, 6:].any()
    assert prog.logits_any(cond, cin).shape == (3, 17, 8, 8)


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
