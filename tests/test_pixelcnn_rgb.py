"""RGB Gated PixelCNN in the int8 op-graph export and its NumPy twin (``integer.graph_forward``):
channel-group masks A/B (R sees nothing of the current pixel, G sees R, B sees R and G; arXiv 1601.06759
§3.4), 3 x 256 logits per pixel, integer logits within quantisation tolerance of the float model, and
exact causality of the integer model over sub-pixels."""
import numpy as np
import pytest
import torch

from models.pixelcnn import export, integer
from models.pixelcnn.models import GatedPixelCNN

H, W, L = 4, 5, 256


def rgb_export(hidden=12, n_layers=3, seed=0, gain=3.0):
    """A small random float RGB GatedPixelCNN (weights scaled by ``gain`` so that every dependency is
    strong enough to survive int8 rounding) and its int8 export."""
    torch.manual_seed(seed)
    model = GatedPixelCNN(3, L, hidden=hidden, n_layers=n_layers).double()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(gain)
    calib = np.random.default_rng(seed).integers(0, L, (32, 3, H, W))
    spec = export.quantize_gated(model, export.calibrate_gated(model, calib), dict(dataset="rand", height=H, width=W))
    return model, spec


@pytest.fixture(scope="module")
def exported():
    return rgb_export()


def test_rgb_export_round_trip_and_float(exported, tmp_path):
    model, spec = exported
    p = str(tmp_path / "rgb.npz")
    export.save_graph_export(p, spec)
    back = export.load_export(p)
    assert back["channels"] == 3 and back["levels"] == L and len(back["ops"][-1]["bias"]) == 3 * L
    x = np.random.default_rng(5).integers(0, L, (6, 3, H, W))
    lg = integer.forward_int(back, x)
    assert lg.shape == (6, 3, L, H, W) and np.array_equal(lg, integer.forward_int(spec, x))
    with torch.no_grad():
        fl = model(torch.from_numpy(x)).numpy()
    err = np.abs(fl / spec["logit_scale"] - lg)
    assert np.mean(err <= 4) > 0.95, np.percentile(err, [50, 95, 100])
    ib = integer.bits_per_dim(lg, x, spec["logit_scale"])
    with torch.no_grad():
        fb = float(model.bpd(torch.from_numpy(x)).mean())
    assert abs(ib - fb) < 0.05, (ib, fb)


def test_rgb_export_group_masks_in_weights(exported):
    """Centre taps over x (first horizontal op) and over every hidden map (mask B) carry the group
    structure as zero weights: output group o reads input group i only if i < o (x) / i <= o."""
    _, spec = exported
    h0 = next(o for o in spec["ops"] if o["name"] == "H0")
    xin = next(i for i in h0["inputs"] if i["map"] == "x" and (i["taps"] == [0, 0]).all(1).any())
    t = int(np.flatnonzero((xin["taps"] == [0, 0]).all(1))[0])
    ch = len(h0["bias"]) // 2
    for o in range(2 * ch):
        go = (o % ch) * 3 // ch
        for i in range(3):
            if i >= go:
                assert xin["weight"][o, i, t] == 0
    head2 = spec["ops"][-1]
    w = head2["inputs"][0]["weight"][:, :, 0]
    cin = w.shape[1]
    for o in range(3 * L):
        assert not w[o, [i for i in range(cin) if i * 3 // cin > o // L]].any()


@pytest.mark.parametrize("p", [(0, 0), (2, 2), (3, 4)])
def test_rgb_integer_exactly_causal(exported, p):
    """Changing sub-pixel c at pixel p changes no logit of sub-pixels <= c at p nor of any earlier pixel
    (exact, integer); it does change sub-pixels > c at p and later pixels (the dependencies exist)."""
    _, spec = exported
    rng = np.random.default_rng(7)
    x = rng.integers(0, L, (16, 3, H, W))
    base = integer.forward_int(spec, x)
    order = np.arange(H * W).reshape(H, W)
    k = order[p]
    for c in range(3):
        y = x.copy()
        y[:, c, p[0], p[1]] = (y[:, c, p[0], p[1]] + 128) % L
        d = (integer.forward_int(spec, y) != base).any(axis=(0, 2))       # (3, H, W): sub-pixel changed
        assert not d[:, order < k].any() and not d[:c + 1, p[0], p[1]].any()
        if c < 2:
            assert d[c + 1:, p[0], p[1]].all()
        if k < H * W - 1:
            assert d[:, order > k].any()


@pytest.mark.parametrize("kind", ["gray", "pyramid"])
def test_rgb_bundles_integer_chain_tracks_float(kind):
    """Small random RGB Grayscale (exact: colours inconsistent with the gray pixel excluded) and Pyramid
    models -> int8 bundles (``cond_export``): the integer chain's bits per part within quantisation
    tolerance of the float model's, and the exclusion is the one the float model applies."""
    from models.pixelcnn import cond_export as CE
    from models.pixelcnn.models import GrayscalePixelCNN, PyramidPixelCNN
    torch.manual_seed(1)
    if kind == "gray":
        model = GrayscalePixelCNN(3, L, 16, hidden=6, n_layers=2, gray_hidden=4, gray_layers=2, cond_hidden=4,
                                  cond_layers=2, cond_dilated=0, exact=1)
    else:
        model = PyramidPixelCNN(3, L, hidden=6, coarse_layers=2, fine_layers=2, cond_hidden=4)
    x = np.random.default_rng(3).integers(0, L, (24, 3, 4, 4))
    stages, exact = (CE.quantize_gray if kind == "gray" else CE.quantize_pyramid)(model, x, L)
    b = dict(model=kind, channels=3, levels=L, height=4, width=4, aux_levels=16 if kind == "gray" else L,
             stages=stages, exact=exact)
    a = CE.aux_image(b, x)
    ref = {"gray": lambda: model.aux(torch.from_numpy(x)), "pyramid": lambda: model.pyramid(torch.from_numpy(x))[1]}
    assert np.array_equal(a, ref[kind]().numpy())
    ia, ix = CE.reference_bits(b, x)
    with torch.no_grad():
        fa, fx = (v.numpy() for v in model.double().loss_parts(torch.from_numpy(x)).values())
    dims = x[0].size
    assert abs(ia.mean() - fa.mean()) / dims < 0.05 and abs(ix.mean() - fx.mean()) / dims < 0.05
    if kind == "gray":
        ok = CE.allowed(b, x, a)
        assert ok is not None and not ok.all()
        assert np.array_equal(ok, model.offset(torch.from_numpy(x), torch.from_numpy(a)).numpy() == 0)


def test_luma_tilt_exports_to_the_engine(tmp_path):
    """A luma_tilt=1 Grayscale model -> bundle (version-2 colour graph with the ``tilt`` op and its width, read
    back): the integer target T (luma sums) is the float model's t to d's step, the integer colour part is within
    quantisation tolerance of the float one, and the tilt moves it."""
    from models.pixelcnn import cond_export as CE
    from models.pixelcnn import integer as I
    from models.pixelcnn.models import GrayscalePixelCNN
    torch.manual_seed(2)
    L = 256
    model = GrayscalePixelCNN(3, L, 16, hidden=6, n_layers=2, gray_hidden=4, gray_layers=2, cond_hidden=4,
                              cond_layers=2, cond_dilated=0, exact=1, luma_tilt=1)
    with torch.no_grad():
        model.tilt.weight.normal_(0, 2.0)
        model.tilt.bias.fill_(1.5)
    x = np.random.default_rng(4).integers(0, L, (24, 3, 4, 4))
    stages, exact = CE.quantize_gray(model, x, L)
    b = dict(model="gray", dataset="t", channels=3, levels=L, height=4, width=4, aux_levels=16, stages=stages,
             exact=exact, float_bits_per_dim=0.0, float_parts=[0.0, 0.0])
    CE.save_bundle(tmp_path / "b.npz", b)
    b = CE.load_bundle(tmp_path / "b.npz")
    col = b["stages"]["colour"]
    assert col["tilt_sigma"] == pytest.approx(float(torch.exp(model.tilt_log_sigma.detach())))
    a = CE.aux_image(b, x)
    out = CE.engine_outputs(col, x, CE.feature_maps(b, a))
    lo, hi = I.luma_bounds(a[:, 0], L, 16)
    with torch.no_grad():
        m = model.double()
        t = m.tilt_target(torch.from_numpy(a), m.condition(torch.from_numpy(a)))[:, 0].numpy()
        fx = m.loss_parts(torch.from_numpy(x))["colour"].numpy()
    got = I.tilt_target(lo, hi, out[:, 0]) * 0.001
    assert np.abs(got - t).max() < 0.0625 + 0.02 and np.ptp(out[:, 0]) > 4
    ix = CE.reference_bits(b, x)[1]
    assert abs(ix.mean() - fx.mean()) / x[0].size < 0.05
    from models.pixelcnn import export as X
    from models.pixelcnn.export import ExportError
    renamed = dict(col, ops=[dict(op, out="t2") if op["out"] == I.TILT_MAP else op for op in col["ops"]])
    with pytest.raises(ExportError, match="luma tilt needs"):
        X.load_graph_export(X.graph_arrays(renamed))
    untilted = dict(col, tilt_sigma=0.0)
    assert abs(CE.stage_bits(untilted, out[:, 1:], x, CE.allowed(b, x, a)).mean() - ix.mean()) / x[0].size > 0.05