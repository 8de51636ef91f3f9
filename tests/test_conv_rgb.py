"""RGB Gated PixelCNN on the ConvEngine (Amaranth simulator) against the NumPy twins: likelihood with 3 level
bytes in and 3 x L logits out per pixel (group masks as zero weights), on-chip sampling of R, then G, then B
per pixel (each fed back before the next: the pixel ops run once per sub-pixel), and the sampler's exclusion
of colours inconsistent with a known gray pixel (``integer.luma_ok``); randomized input idles and output
backpressure."""
import numpy as np
import pytest
import torch

from conv_engine_tb import EngineSim
from hw.pixelcnn import engine as E
from hw.pixelcnn import program as prog
from hw.pixelcnn import sampler as S
from hw.pixelcnn.engine import ConvEngine
from models.pixelcnn import integer
from models.pixelcnn import models as M


def rgb_engine(lanes=4):
    return ConvEngine(lanes=lanes, max_channels=8, max_width=8, max_layers=8, weight_depth=512, bias_depth=128,
                      in_fifo=16, out_fifo=512, max_maps=8)


def rgb_spec(seed, levels=5, cond_channels=0, tilt_sigma=None):
    spec = prog.random_gated_spec(np.random.default_rng(seed), hidden=6, levels=levels, head=6, channels=3,
                                  cond_channels=cond_channels, wmax=20, shift=(16, 20), tilt_sigma=tilt_sigma)
    assert len(spec["ops"][-1]["bias"]) == 3 * levels
    return spec


def test_random_rgb_spec_is_causal_over_sub_pixels():
    """The test networks' group masks: sub-pixel c at p changes no logits of sub-pixels <= c at p."""
    spec = rgb_spec(2)
    L = spec["levels"]
    x = np.random.default_rng(2).integers(0, L, (8, 3, 3, 4))
    base = integer.forward_int(spec, x)
    for c in range(3):
        y = x.copy()
        y[:, c, 1, 2] = (y[:, c, 1, 2] + 2) % L
        d = (integer.forward_int(spec, y) != base).any(axis=(0, 2))
        assert not d[:c + 1, 1, 2].any() and not d[:, 1, :2].any() and not d[:, 0].any()
        if c < 2:
            assert d[c + 1:, 1, 2].any()


@pytest.mark.slow  # Amaranth simulator: 11 s on an idle machine, ~50 s at load average 9
@pytest.mark.parametrize("lanes,idle,stall", [(4, 0.3, 0.4)])
def test_rgb_likelihood_matches_reference(lanes, idle, stall):
    spec = rgb_spec(4)
    n, H, W = 1, 2, 3
    x = np.random.default_rng(4).integers(0, spec["levels"], size=(n, 3, H, W))
    s = EngineSim(rgb_engine(lanes), seed=5, idle=idle, stall=stall)
    s.program(spec, W, H)
    s.reg(E.REG_CTRL, E.MODE_LIKELIHOOD | 0x100)
    nout = 3 * spec["levels"]
    s.send(prog.input_stream(spec, x))
    s.recv(n * H * W * nout, "logits")
    s.read(E.REG_MAC_BEATS, "beats")
    s.read(E.REG_PIXELS, "pixels")
    r = s.run(max_cycles=600_000)
    got = np.frombuffer(bytes(r["logits"]), np.int8).astype(np.int64).reshape(n, H, W, nout).transpose(0, 3, 1, 2)
    assert np.array_equal(got, integer.graph_forward(spec, x))
    assert r["pixels"] == n * H * W and r["beats"] == n * H * W * prog.mac_beats_per_pixel(spec, lanes)


def _queue_sampling(s, spec, n, H, W, seed, mult, bounds=None):
    """Queue a sample run of n images on the programmed engine sim ``s``; its bytes go to ``r["img"]``."""
    if bounds is not None:  # the exclusion's register bit and the pixels' luma bounds
        for reg, value in E.run_registers(spec, W, H, excl=True):
            s.reg(reg, value)
    s.reg(E.REG_SEED, seed)
    s.reg(E.REG_LOGIT_MULT, mult)
    s.reg(E.REG_NIMAGES, n)
    s.reg(E.REG_CTRL, E.MODE_SAMPLE | 0x100)
    if bounds is not None:
        s.send(prog.bounds_stream(bounds))
    s.recv(n * H * W * 3, "img")
    s.wait_mode_idle()


def _sample(spec, n, H, W, seed, mult, bounds=None, stall=0.3):
    s = EngineSim(rgb_engine(), seed=seed & 0xFF, stall=stall)
    s.program(spec, W, H)
    _queue_sampling(s, spec, n, H, W, seed, mult, bounds)
    s.read(E.REG_IMAGES, "images")
    s.read(E.REG_MAC_BEATS, "beats")
    s.read(E.REG_PIXELS, "pixels")
    r = s.run(max_cycles=900_000)
    got = np.frombuffer(bytes(r["img"]), np.uint8).astype(np.int64).reshape(n, H, W, 3).transpose(0, 3, 1, 2)
    return got, r


@pytest.mark.slow  # Amaranth simulator: 13 s on an idle machine, ~60 s at load average 9
def test_rgb_sampling_matches_twin():
    """R, G, B sampled per pixel on chip, each fed back: the twin's images (same RNG stream); the pixel
    ops run three times per pixel (MAC beats: the row ops once, the pixel ops three times)."""
    spec = rgb_spec(6)
    n, H, W, seed, mult = 1, 2, 3, 0xC0FFEE, 40
    got, r = _sample(spec, n, H, W, seed, mult)
    assert np.array_equal(got, S.sample_images_twin(spec, n, H, W, seed, mult))
    assert len(np.unique(got)) > 2 and r["images"] == n and r["pixels"] == n * H * W
    ops = prog.engine_ops(spec)[0]
    row = sum(-(-o["cout"] // 4) * sum(t[3] for t in o["taps"]) for o in ops if o["row"])
    assert r["beats"] == n * H * W * (3 * prog.mac_beats_per_pixel(spec, 4) - 2 * row)


def test_rgb_sampling_gray_exclusion():
    """With the gray exclusion the sampler draws only colours whose gray view is the given gray pixel:
    the samples' gray image equals it exactly, and equal the twin's."""
    L, G = 8, 4
    spec = rgb_spec(7, levels=L)
    n, H, W, seed, mult = 1, 2, 3, 0xBADD, 60
    g = np.random.default_rng(9).integers(0, G, (n, 1, H, W))
    lo, hi = integer.luma_bounds(g[:, 0], L, G)
    bounds = np.stack([lo, hi], 1)
    got, _ = _sample(spec, n, H, W, seed, mult, bounds)
    assert np.array_equal(M.to_gray(torch.from_numpy(got), L, G).numpy(), g)
    assert np.array_equal(got, S.sample_images_twin(spec, n, H, W, seed, mult, bounds=bounds))
    assert not np.array_equal(got, S.sample_images_twin(spec, n, H, W, seed, mult))  # the exclusion acts


@pytest.mark.slow  # Amaranth simulator: ~20 s
def test_rgb_luma_tilt_likelihood_and_sampling():
    """Luma tilt of G, one engine programmed once, under backpressure: the likelihood run streams the tilt op's d
    before each pixel's logits (``cond_export.engine_outputs``); sampling with the exclusion and the tilt (d from
    the tilt op, T from the bounds on chip, the loaded table's penalties) draws the twin's images, whose gray
    image is the given one, and without the tilt the draws differ."""
    from models.pixelcnn import cond_export as CE
    L, G, sigma = 16, 4, 3.0
    spec = rgb_spec(9, levels=L, tilt_sigma=sigma)
    n, H, W, seed, mult = 1, 2, 2, 0x5EED, 60
    rng = np.random.default_rng(10)
    x = rng.integers(0, L, (n, 3, H, W))
    g = rng.integers(0, G, (n, 1, H, W))
    bounds = np.stack(integer.luma_bounds(g[:, 0], L, G), 1)
    s = EngineSim(rgb_engine(), seed=9, idle=0.2, stall=0.4)
    s.program(spec, W, H)
    nout = 1 + 3 * L
    s.reg(E.REG_CTRL, E.MODE_LIKELIHOOD | 0x100)
    s.send(prog.input_stream(spec, x))
    s.recv(n * H * W * nout, "out")
    s.reg(E.REG_CTRL, E.MODE_IDLE)
    _queue_sampling(s, spec, n, H, W, seed, mult, bounds)
    r = s.run(max_cycles=900_000)
    out = np.frombuffer(bytes(r["out"]), np.int8).astype(np.int64).reshape(n, H, W, nout).transpose(0, 3, 1, 2)
    want = CE.engine_outputs(spec, x)
    assert np.array_equal(out, want) and len(np.unique(want[:, 0])) > 1
    got = np.frombuffer(bytes(r["img"]), np.uint8).astype(np.int64).reshape(n, H, W, 3).transpose(0, 3, 1, 2)
    table = integer.tilt_table(sigma, L)
    assert np.array_equal(M.to_gray(torch.from_numpy(got), L, G).numpy(), g)
    assert np.array_equal(got, S.sample_images_twin(spec, n, H, W, seed, mult, bounds=bounds, tilt=table))
    assert not np.array_equal(got, S.sample_images_twin(spec, n, H, W, seed, mult, bounds=bounds))


def test_tilt_table_loads_with_its_spec():
    """``pack_many`` loads the tilt's penalty table (temperature 1) with a tilted spec, none without one, and refuses
    two different tilts at once; ``run_registers`` turns the tilt on with the tilt op's map."""
    params = rgb_engine().cfg
    a, b, plain = rgb_spec(9, levels=16, tilt_sigma=3.0), rgb_spec(9, levels=16, tilt_sigma=5.0), rgb_spec(9, levels=16)
    images, _ = prog.pack_many([(a, 2, 2)], params)
    assert np.array_equal(np.frombuffer(images[prog.T_TILT], "<u4"), integer.tilt_table(3.0, 16))
    assert prog.T_TILT not in prog.pack_many([(plain, 2, 2)], params)[0]
    with pytest.raises(prog.EngineFitError, match="one luma-tilt table"):
        prog.pack_many([(a, 2, 2), (b, 2, 2)], params)
    regs = dict(E.run_registers(a, 2, 2))
    assert regs[E.REG_TILT] == 1 | (prog.tilt_map(a) << 8) and dict(E.run_registers(plain, 2, 2))[E.REG_TILT] == 0


@pytest.mark.parametrize("levels,gray_levels", [(256, 16), (256, 4), (17, 4), (64, 16)])
def test_luma_rule_equals_gray_consistent(levels, gray_levels):
    """The sampler's rule (``integer.luma_allowed`` / ``luma_ok``) = the float model's exact exclusion."""
    x = np.random.default_rng(levels).integers(0, levels, (64, 3, 4, 4))
    g = M.to_gray(torch.from_numpy(x), levels, gray_levels).numpy()
    ok = integer.luma_allowed(x, g, levels, gray_levels)
    assert np.array_equal(ok, M.gray_consistent(torch.from_numpy(x), torch.from_numpy(g), levels, gray_levels).numpy())
    lo, hi = integer.luma_bounds(g[:, 0], levels, gray_levels)
    for k, i, j in [(0, 0, 0), (5, 2, 3), (9, 3, 1)]:
        for c in range(3):
            assert np.array_equal(integer.luma_ok(x[k, :c, i, j], c, levels, lo[k, i, j], hi[k, i, j]), ok[k, c, :, i, j])
    assert lo.min() >= 0 and np.all(lo <= hi)


@pytest.mark.slow  # 124 s with the default design's Verilator build (cached afterwards)
def test_cli_rgb_pixelcnn_verilator(tmp_path):
    """``host/run.py --model pixelcnn --dataset RGB.npz --weights RGB_EXPORT.npz`` on the Verilator backend:
    3 level bytes in and 768 logits out per pixel, bits/dim identical to the integer reference; one RGB
    image sampled on chip (R, G, B fed back) identical to the twin."""
    import json

    from host import run
    from models.pixelcnn import export
    from models.pixelcnn.models import GatedPixelCNN
    torch.manual_seed(0)
    model = GatedPixelCNN(3, 256, hidden=8, n_layers=2).double()
    x = np.random.default_rng(0).integers(0, 256, (12, 3, 8, 8))
    spec = export.quantize_gated(model, export.calibrate_gated(model, x),
                                 dict(dataset="rand_rgb", height=8, width=8, float_bits_per_dim=float("nan")))
    export.save_graph_export(str(tmp_path / "w.npz"), spec)
    np.savez(tmp_path / "d.npz", train=x[:10], test=x[10:], levels=256)
    out = tmp_path / "o.json"
    rc = run.main(["--model", "pixelcnn", "--dataset", str(tmp_path / "d.npz"), "--weights", str(tmp_path / "w.npz"),
                   "--limit", "2", "--samples", "1", "--json", str(out), "--plot", str(tmp_path / "s.png"),
                   "--no-progress"])
    r = json.loads(out.read_text())
    assert rc == 0 and r["channels"] == 3 and r["test_images"] == 2
    assert r["bpd"] == r["bpd_integer_reference"] and r["logits_equal"] and r["samples_equal_twin"]
    assert r["counters_likelihood"]["pixels"] == 128 and r["counters_sampling"]["pixels"] == 64
    assert r["sample_stats"]["samples"]["images"] == 1 and r["sample_stats"]["train_images"]["images"] == 10
    assert r["sample_stats"]["test_images"]["images"] == 2 and "chroma_std_levels" in r["sample_stats"]["samples"]


PATCH_EXPORTS = {"pixelcnn": "gated_patches_int8.npz", "gray-pixelcnn": "gray_patches_int8.npz",
                 "pyramid-pixelcnn": "pyramid_patches_int8.npz"}


@pytest.mark.parametrize("model", list(PATCH_EXPORTS))
def test_patches_exports_fit_and_heldout_npz(model, tmp_path):
    """The bundled RGB patches exports fit the default engine with at most two loads (stages held
    together), and a held-out RGB .npz (N, 3, 8, 8), 256 levels, is scored with the bundled patches export;
    a wrong shape gets one clear message."""
    import argparse

    from host import pixelcnn_run as R
    from host.cli_checks import UsageError
    x = np.random.default_rng(0).integers(0, 256, (6, 3, 8, 8))
    np.savez(tmp_path / "held.npz", x=x, levels=256)
    np.savez(tmp_path / "bad.npz", x=x[:, :, :, :4], levels=256)
    args = argparse.Namespace(model=model, dataset=str(tmp_path / "held.npz"), backend="verilator", port=None,
                              baud=115200, timeout=5.0, samples=0, json=None, plot=None, no_progress=True, limit=1)
    _, params, exp, ds = R.load_job(args)
    assert ds.shape == (3, 8, 8) and exp["channels"] == 3 and exp["levels"] == 256 and exp["dataset"] == "patches"
    assert args.export_path == f"models/pixelcnn/weights/{PATCH_EXPORTS[model]}"  # the JSON's "weights"
    runs = R.stage_runs(model, exp)
    assert len(R.load_groups(runs, params)) <= 2
    args.dataset = str(tmp_path / "bad.npz")
    with pytest.raises(UsageError, match="3x8x4"):
        R.load_job(args)


def test_patches_bundles_integer_tracks_float():
    """The committed gray (exact, luma tilt, colour permutations + QAT) and pyramid patches bundles: the integer
    chain on 60 test patches within 0.05 bits/dim of the float checkpoints they were quantised from."""
    from host import pixelcnn_run as R
    from models.pixelcnn import cond_export as CE
    from models.pixelcnn import data
    from models.pixelcnn.train import load_checkpoint
    x = data.load("patches").test[:60]
    for kind, ckpt in (("gray", "gray_tilt"), ("pyramid", "pyramid")):
        b = CE.load_bundle(R.WEIGHTS / f"{kind}_patches_int8.npz")
        assert b["exact"] == kind.startswith("gray")
        if kind == "gray":
            assert b["stages"]["colour"]["tilt_sigma"]
        ib = sum(float(v.sum()) for v in CE.reference_bits(b, x)) / x.size
        fm, _ = load_checkpoint(R.WEIGHTS / f"engine_{ckpt}_patches.pt")
        with torch.no_grad():
            fb = float(fm.double().bpd(torch.as_tensor(x)).sum()) / len(x)
        assert abs(ib - fb) < 0.05, (kind, ib, fb)


@pytest.mark.slow  # ~10 s each on the Verilator backend with the model cached (its build on first use: minutes)
@pytest.mark.parametrize("model", list(PATCH_EXPORTS))
def test_cli_patches_verilator(tmp_path, model):
    """``host/run.py --model pixelcnn|gray-pixelcnn|pyramid-pixelcnn --dataset patches``: RGB end to end on
    the Verilator backend, one test patch with logits identical to the integer reference, one RGB sample
    (gray: colours consistent with the sampled gray image) identical to the twin."""
    import json

    from host import run
    out = tmp_path / "o.json"
    rc = run.main(["--model", model, "--dataset", "patches", "--limit", "1", "--samples", "1",
                   "--json", str(out), "--plot", str(tmp_path / "s.png"), "--no-progress"])
    r = json.loads(out.read_text())
    assert rc == 0 and r["channels"] == 3 and r["bpd"] == r["bpd_integer_reference"] and r["logits_equal"]
    assert r["samples_equal_twin"] and r.get("gray_exclusion", False) == (model == "gray-pixelcnn")
    assert r.get("luma_tilt", False) == (model == "gray-pixelcnn")
    assert r["sample_stats"]["samples"]["images"] == 1 and r["sample_stats"]["test_images"]["images"] == 1000
