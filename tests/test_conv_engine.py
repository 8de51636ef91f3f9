"""ConvEngine in the Amaranth simulator against the NumPy integer reference: random networks
(masks A/B/none, kernels 5/3/1, residuals, output counts not a multiple of the lanes), randomized
input idles and output backpressure, saturation everywhere, on-chip sampling vs the bit-exact twin
(plain and with conditioning input channels), and the fit checks' error messages."""
import numpy as np
import pytest

from conv_engine_tb import EngineSim
from hw.pixelcnn import engine as E
from hw.pixelcnn import program as prog
from hw.pixelcnn import sampler as S
from hw.pixelcnn.engine import ConvEngine
from models.pixelcnn.export import committed_export_path, load_export


SMALL = dict(max_channels=8, max_width=8, max_layers=4, weight_depth=256, bias_depth=64, in_fifo=16, out_fifo=512)


def small_engine(lanes=4):
    return ConvEngine(lanes=lanes, max_channels=8, max_width=8, max_layers=4, weight_depth=256, bias_depth=64,
                      in_fifo=16, out_fifo=512)


def run_likelihood(spec, x, lanes=4, idle=0.0, stall=0.0, seed=0):
    n, C, H, W = x.shape
    eng = small_engine(lanes)
    s = EngineSim(eng, seed=seed, idle=idle, stall=stall)
    s.program(spec, W, H)
    s.reg(E.REG_CTRL, E.MODE_LIKELIHOOD | 0x100)
    nout = spec["layers"][-1]["out"]
    s.send(x.transpose(0, 2, 3, 1).reshape(-1).astype(np.uint8).tobytes())
    s.recv(n * H * W * nout, "logits")
    s.read(E.REG_MAC_BEATS, "beats")
    s.read(E.REG_PIXELS, "pixels")
    r = s.run(max_cycles=400_000)
    got = np.frombuffer(bytes(r["logits"]), np.int8).astype(np.int64).reshape(n, H, W, nout).transpose(0, 3, 1, 2)
    return got, r


NETS = {
    "pixelcnn-like": (("A", 5, 1, 8, False), ("B", 3, 8, 8, True), ("B", 1, 8, 8, False), ("B", 1, 8, 6, False)),
    "mask-none-1x1": (("A", 3, 1, 5, False), ("none", 1, 5, 5, True), ("B", 1, 5, 6, False)),
}


@pytest.mark.parametrize("net,lanes,idle,stall", [("pixelcnn-like", 4, 0.0, 0.0), ("pixelcnn-like", 3, 0.3, 0.5),
                                                   ("mask-none-1x1", 4, 0.5, 0.2)])
def test_random_network_matches_reference(net, lanes, idle, stall):
    rng = np.random.default_rng(lanes)
    spec = prog.random_spec(rng, layers=NETS[net])
    x = rng.integers(0, spec["levels"], size=(2, 1, 3, 5))
    got, r = run_likelihood(spec, x, lanes, idle, stall, seed=lanes)
    assert np.array_equal(got, prog.logits_any(spec, x))
    assert r["pixels"] == 2 * 3 * 5
    assert r["beats"] == 2 * 3 * 5 * prog.mac_beats_per_pixel(spec, lanes)


def test_saturation_everywhere():
    """Large weights/biases and small shifts: accumulators near int32 limits, requant and residual
    adds saturate, identity-like LUTs pass extremes through."""
    rng = np.random.default_rng(7)
    spec = prog.random_spec(rng, layers=NETS["pixelcnn-like"], wmax=127, bias_max=2 ** 24, shift=(1, 6))
    for l in spec["layers"]:
        l["lut"] = np.clip(np.arange(-128, 128) * 2, -128, 127).astype(np.int8)
    x = rng.integers(0, spec["levels"], size=(1, 1, 3, 4))
    _, maps = prog.logits_any(spec, x, trace=True)
    assert all((np.abs(a) >= 127).mean() > 0.3 for a in maps[1:])  # really saturating
    got, _ = run_likelihood(spec, x)
    assert np.array_equal(got, maps[-1])


def test_trained_export_small_image():
    """The committed digits export (32 channels) on a 4x4 crop, on an engine with 8 lanes."""
    spec = load_export(committed_export_path("digits"))
    from models.pixelcnn import data
    x = data.load("digits").test[:1, :, 2:4, 1:5]
    eng = ConvEngine(lanes=8, max_channels=32, max_width=8, max_layers=8, weight_depth=4096, bias_depth=256,
                     in_fifo=16, out_fifo=512)
    s = EngineSim(eng, seed=1, stall=0.3)
    s.program(spec, 4, 2)
    s.reg(E.REG_CTRL, E.MODE_LIKELIHOOD)
    s.send(x.reshape(-1).astype(np.uint8).tobytes())
    s.recv(8 * 17, "logits")
    r = s.run(max_cycles=200_000)
    got = np.frombuffer(bytes(r["logits"]), np.int8).astype(np.int64).reshape(2, 4, 17).transpose(2, 0, 1)
    assert np.array_equal(got, prog.logits_any(spec, x)[0])


@pytest.mark.parametrize("cond", [False, True])
def test_sampling_matches_twin(cond):
    rng = np.random.default_rng(11)
    C = 2 if cond else 1
    layers = (("A", 3, C, 6, False), ("B", 3, 6, 6, True), ("B", 1, 6, 5, False))
    if cond:  # conditioning channel visible at the current pixel: its taps allowed by mask B
        layers = (("B", 3, C, 6, False),) + layers[1:]
    spec = prog.random_spec(rng, layers=layers, levels=5)
    if cond:  # the sampled channel 0 must not see itself: zero its centre tap in layer 0
        spec["layers"][0]["weight"][:, 0, 1, 1] = 0
    n, H, W, seed, mult = 2, 3, 4, 0xACE1, 40
    cmap = rng.integers(0, 5, size=(n, 1, H, W)) if cond else None
    eng = small_engine()
    s = EngineSim(eng, seed=2, stall=0.3)
    s.program(spec, W, H, channels=C)
    s.reg(E.REG_SEED, seed)
    s.reg(E.REG_LOGIT_MULT, mult)
    s.reg(E.REG_NIMAGES, n)
    s.reg(E.REG_CTRL, E.MODE_SAMPLE | 0x100)
    if cond:
        s.send(cmap.transpose(0, 2, 3, 1).reshape(-1).astype(np.uint8).tobytes())
    s.recv(n * H * W, "img")
    s.wait_mode_idle()
    s.read(E.REG_SEED, "state")
    s.read(E.REG_IMAGES, "images")
    r = s.run(max_cycles=300_000)
    got = np.frombuffer(bytes(r["img"]), np.uint8).astype(np.int64).reshape(n, 1, H, W)
    twin = S.sample_images_twin(spec, n, H, W, seed, mult, cond=cmap)
    assert np.array_equal(got, twin)
    assert r["images"] == n
    assert got.min() >= 0 and got.max() < 5


@pytest.mark.parametrize("change,msg", [
    (lambda s: s["layers"][1].update(kernel=7, weight=np.zeros((8, 8, 7, 7), np.int8)), "rows back"),
    (lambda s: s["layers"][1].update(mask="none"), "non-causal"),
    (lambda s: s["layers"].extend([s["layers"][-1]] * 4), "layers"),
    (lambda s: s["layers"][0].update(out=64), "output channels"),
])
def test_fit_errors(change, msg):
    spec = prog.random_spec(np.random.default_rng(0), layers=NETS["pixelcnn-like"])
    change(spec)
    with pytest.raises(prog.EngineFitError, match=msg):
        prog.check_fits(spec, prog.EngineParams(lanes=4, **SMALL), 4, 4)


def test_fit_error_width():
    spec = prog.random_spec(np.random.default_rng(0), layers=NETS["pixelcnn-like"])
    with pytest.raises(prog.EngineFitError, match="width 16"):
        prog.check_fits(spec, prog.EngineParams(lanes=4, **SMALL), 16, 4)


def test_rgb_channel_group_mask():
    """Channel-group (RGB-style) masks: taps are the union over groups (mask A keeps the centre for
    later groups); the per-group zeros are ordinary zero weights."""
    from models.pixelcnn.layers import make_mask
    rng = np.random.default_rng(13)
    spec = prog.random_spec(rng, layers=(("B", 3, 2, 6, False), ("B", 1, 6, 4, False)), levels=4, channels=2)
    l0 = spec["layers"][0]
    l0.update(mask="A", groups=2)
    l0["weight"] = (l0["weight"] * make_mask(6, 2, 3, "A", 2).numpy()).astype(np.int8)
    assert (0, 0) in prog.layer_taps(l0) and np.any(l0["weight"][:, :, 1, 1])
    x = rng.integers(0, 4, size=(1, 2, 3, 4))
    got, _ = run_likelihood(spec, x, lanes=4, stall=0.3)
    assert np.array_equal(got, prog.logits_any(spec, x))
