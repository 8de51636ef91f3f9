"""Gated PixelCNN ops on the ConvEngine (Amaranth simulator) against the NumPy op-graph reference
(``integer.graph_forward``): vertical stack in the row phase, horizontal stack with the folded
vertical->horizontal link, gated tanh x sigmoid requantisation, residual from another map, ReLU on an
op's input, a streamed conditioning map; randomized input idles and output backpressure; on-chip
sampling vs the bit-exact twin; the gated requantiser unit alone; fit errors."""
import numpy as np
import pytest
from amaranth.sim import Simulator

from conv_engine_tb import EngineSim
from hw.pixelcnn import engine as E
from hw.pixelcnn import program as prog
from hw.pixelcnn import sampler as S
from hw.pixelcnn.engine import ConvEngine
from hw.pixelcnn.units import Requant
from models.pixelcnn import integer


def gated_engine(lanes=4):
    return ConvEngine(lanes=lanes, max_channels=8, max_width=8, max_layers=8, weight_depth=512, bias_depth=128,
                      in_fifo=16, out_fifo=512, max_maps=8)


def run_gated(spec, x, cond=None, lanes=4, idle=0.0, stall=0.0, seed=0):
    n, C, H, W = x.shape
    s = EngineSim(gated_engine(lanes), seed=seed, idle=idle, stall=stall)
    s.program(spec, W, H)
    s.reg(E.REG_CTRL, E.MODE_LIKELIHOOD | 0x100)
    nout = len(spec["ops"][-1]["bias"])
    s.send(prog.input_stream(spec, x, cond))
    s.recv(n * H * W * nout, "logits")
    s.read(E.REG_MAC_BEATS, "beats")
    s.read(E.REG_PIXELS, "pixels")
    r = s.run(max_cycles=600_000)
    got = np.frombuffer(bytes(r["logits"]), np.int8).astype(np.int64).reshape(n, H, W, nout).transpose(0, 3, 1, 2)
    return got, r


@pytest.mark.parametrize("cc,lanes,idle,stall", [pytest.param(0, 2, 0.3, 0.5, marks=pytest.mark.slow),
                                                (2, 4, 0.4, 0.3)])
def test_gated_network_matches_reference(cc, lanes, idle, stall):
    rng = np.random.default_rng(30 + cc + lanes)
    spec = prog.random_gated_spec(rng, cond_channels=cc)
    n, H, W = 1 + (stall > 0.4), 3, 4
    x = rng.integers(0, spec["levels"], size=(n, 1, H, W))
    cond = rng.integers(-128, 128, size=(n, cc, H, W)) if cc else None
    want, maps = integer.graph_forward(spec, x, cond, trace=True)
    assert all(np.abs(maps[m]).max() >= 90 for m in ("v0", "g", "h0", "h1"))  # wide value ranges
    got, r = run_gated(spec, x, cond, lanes, idle, stall, seed=lanes + cc)
    assert np.array_equal(got, want)
    assert r["pixels"] == n * H * W
    assert r["beats"] == n * H * W * prog.mac_beats_per_pixel(spec, lanes)


def _float_gated_export(n_layers=3, hidden=4, levels=5, seed=0):
    """A small random float GatedPixelCNN quantised by ``export.quantize_gated``."""
    import torch
    from models.pixelcnn import export
    from models.pixelcnn.models import GatedPixelCNN
    torch.manual_seed(seed)
    model = GatedPixelCNN(1, levels, hidden=hidden, n_layers=n_layers)
    calib = np.random.default_rng(seed).integers(0, levels, (16, 1, 4, 5))
    return model, export.quantize_gated(model, export.calibrate_gated(model, calib))


def test_exported_gated_has_no_blind_spot():
    """The integer export of a float Gated PixelCNN: logits at (2, 1) depend on the pixels above-right
    (1, 3) and (0, 4), which a plain masked stack never sees (the blind spot), and on no pixel at or after
    (2, 1) in raster order."""
    _, spec = _float_gated_export()
    x = np.random.default_rng(1).integers(0, 5, size=(8, 1, 4, 5))
    base = integer.graph_forward(spec, x)[:, :, 2, 1]
    deps = set()
    for i in range(4):
        for j in range(5):
            y = x.copy()
            y[:, 0, i, j] = 4 - y[:, 0, i, j]
            if not np.array_equal(integer.graph_forward(spec, y)[:, :, 2, 1], base):
                deps.add((i, j))
    assert {(1, 3), (0, 4)} <= deps  # both in the blind spot of a 3-layer masked 3x3 stack
    assert all(p < (2, 1) for p in deps)


def test_exported_gated_on_engine():
    """The float->int8 export runs on the engine with the reference's logits."""
    _, spec = _float_gated_export(n_layers=2, hidden=4, seed=2)
    x = np.random.default_rng(3).integers(0, 5, size=(1, 1, 3, 4))
    got, _ = run_gated(spec, x, stall=0.3)
    assert np.array_equal(got, integer.graph_forward(spec, x))


def test_per_layer_stream_export_on_engine_and_closer_to_float():
    """``quantize_gated(..., stream="per_layer")``: each h_l has its own int8 scale (Hout_l takes h_{l-1} as an
    identity-weighted input instead of a residual add). On a model whose stream grows 20x over its layers,
    its logits are closer to the float model's than with one shared scale; it runs on the engine with the
    reference's logits."""
    import torch
    from models.pixelcnn import export
    model, _ = _float_gated_export(n_layers=3, hidden=4, seed=4)
    with torch.no_grad():
        model.layers[2].h_out.weight.mul_(20.0)
        model.layers[2].h_out.bias.mul_(20.0)
    calib = np.random.default_rng(4).integers(0, 5, (32, 1, 4, 5))
    sc = export.calibrate_gated(model, calib)
    assert sc["h_layers"][2] > 5 * sc["h_layers"][0] and sc["h"] == max(sc["h_layers"])
    x = np.random.default_rng(5).integers(0, 5, size=(16, 1, 4, 5))
    with torch.no_grad():
        want = model.double()(torch.as_tensor(x)).reshape(16, -1, 4, 5).numpy()
    err = {}
    for mode in ("shared", "per_layer"):
        spec = export.quantize_gated(model, sc, stream=mode)
        err[mode] = np.abs(integer.graph_forward(spec, x) * spec["logit_scale"] - want).mean()
    assert err["per_layer"] < 0.7 * err["shared"], err
    assert not any(op["residual"] for op in spec["ops"])
    small, _ = _float_gated_export(n_layers=2, hidden=4, seed=2)  # the test engine holds 8 ops
    spec = export.quantize_gated(small, export.calibrate_gated(small, calib), stream="per_layer")
    assert [len(op["inputs"]) for op in spec["ops"] if op["name"].startswith("Hout")] == [1, 2]
    got, _ = run_gated(spec, x[:1, :, :3, :4], stall=0.3)
    assert np.array_equal(got, integer.graph_forward(spec, x[:1, :, :3, :4]))
    with pytest.raises(export.ExportError, match="stream"):
        export.quantize_gated(model, sc, stream="per_op")


@pytest.mark.parametrize("cc", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_gated_sampling_matches_twin(cc):
    rng = np.random.default_rng(40 + cc)
    spec = prog.random_gated_spec(rng, cond_channels=cc)
    n, H, W, seed, mult = 1 + cc // 2, 3, 4, 0xBEE5, 40
    cond = rng.integers(-128, 128, size=(n, cc, H, W)) if cc else None
    s = EngineSim(gated_engine(), seed=3, stall=0.3)
    s.program(spec, W, H)
    # a likelihood run first, stopped right after its last output: the engine must be idle for the
    # mode change (it must not start the next image's row phase on its own)
    x = rng.integers(0, spec["levels"], size=(1, 1, H, W))
    s.reg(E.REG_CTRL, E.MODE_LIKELIHOOD)
    s.send(prog.input_stream(spec, x, cond[:1] if cc else None))
    s.recv(H * W * spec["levels"], "logits")
    s.reg(E.REG_CTRL, E.MODE_IDLE)
    s.read(E.REG_STATUS, "status")
    s.reg(E.REG_SEED, seed)
    s.reg(E.REG_LOGIT_MULT, mult)
    s.reg(E.REG_NIMAGES, n)
    s.reg(E.REG_CTRL, E.MODE_SAMPLE | 0x100)
    if cc:
        s.send(prog.input_stream(spec, np.zeros((n, 1, H, W), np.int64), cond, sample=True))
    s.recv(n * H * W, "img")
    s.wait_mode_idle()
    s.read(E.REG_IMAGES, "images")
    r = s.run(max_cycles=600_000)
    got = np.frombuffer(bytes(r["img"]), np.uint8).astype(np.int64).reshape(n, 1, H, W)
    assert r["status"] & 2  # the sequencer went idle at the mode change
    lg = np.frombuffer(bytes(r["logits"]), np.int8).astype(np.int64).reshape(1, H, W, -1).transpose(0, 3, 1, 2)
    assert np.array_equal(lg, integer.graph_forward(spec, x, cond[:1] if cc else None))
    assert np.array_equal(got, S.sample_images_twin(spec, n, H, W, seed, mult, cond=cond))
    assert r["images"] == n


def test_gated_requant_unit():
    """Pairs (a_m, b_m) of accumulators -> tanh/sigmoid tables -> requantised product, saturating."""
    rng = np.random.default_rng(8)
    P = 6
    dut = Requant(lanes=P, max_layers=2, bias_depth=16, max_channels=8)
    bias = rng.integers(-2 ** 20, 2 ** 20, 16)
    lut = rng.integers(-128, 128, (2, 2, 256))
    lut[1, :, :4] = -128  # extremes: (-128) * (-128) products
    cases = [(1, 20000, 18, 30000, 14, rng.integers(-2 ** 28, 2 ** 28, P)),
             (0, 16384, 24, 16385, 8, rng.integers(-2 ** 30, 2 ** 30, P)),
             (1, 1 << 14, 30, 65535, 1, np.array([-2 ** 31 + 2 ** 21] * P))]
    outs = []

    async def bench(ctx):
        for i, b in enumerate(bias):
            ctx.set(dut.bias_we, 1)
            ctx.set(dut.bias_waddr, i)
            ctx.set(dut.bias_wdata, int(b) & 0xFFFFFFFF)
            await ctx.tick()
        ctx.set(dut.bias_we, 0)
        for layer in range(2):
            for half in range(2):
                for i in range(256):
                    ctx.set(dut.lut_we, 1)
                    ctx.set(dut.lut_waddr, layer * 512 + half * 256 + i)
                    ctx.set(dut.lut_wdata, int(lut[layer, half, i]) & 0xFF)
                    await ctx.tick()
        ctx.set(dut.lut_we, 0)
        for layer, mult, shift, gm, gs, acc in cases:
            for sig, v in ((dut.layer, layer), (dut.mult, mult), (dut.shift, shift), (dut.gmult, gm),
                           (dut.gshift, gs), (dut.gated, 1), (dut.bbase, 2), (dut.count, P), (dut.base, 0)):
                ctx.set(sig, v)
            ctx.set(dut.acc, [int(v) for v in acc])
            ctx.set(dut.start, 1)
            await ctx.tick()
            ctx.set(dut.start, 0)
            got = []
            for _ in range(P + Requant.LATENCY + 4):
                if ctx.get(dut.out_valid):
                    got.append((ctx.get(dut.out_o), ctx.get(dut.out_data)))
                await ctx.tick()
            outs.append(got)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    for (layer, mult, shift, gm, gs, acc), got in zip(cases, outs):
        y = integer.requantize(acc + bias[2:2 + P], mult, shift)
        t, s = lut[layer, 0][y[0::2] + 128], lut[layer, 1][y[1::2] + 128]
        want = integer.gate_int(t, s, gm, gs)
        assert got == list(zip(range(P // 2), want.tolist()))


@pytest.mark.parametrize("change,msg", [
    (lambda s: s["ops"][0]["inputs"][0].update(taps=np.array([[0, 0], [0, 1], [-1, 0]], np.int32)), "current row"),
    (lambda s: s["ops"][3]["inputs"][0].update(taps=np.array([[0, 1]], np.int32)), "future pixel"),
    (lambda s: s["ops"].insert(2, s["ops"][0]), "row-phase ops must come before"),
])
def test_gated_fit_errors(change, msg):
    spec = prog.random_gated_spec(np.random.default_rng(0))
    change(spec)
    with pytest.raises(prog.EngineFitError, match=msg):
        prog.check_fits(spec, prog.EngineParams(lanes=4, max_channels=8, max_width=8, max_layers=8, max_maps=8), 4, 3)


def test_gated_needs_even_lanes():
    spec = prog.random_gated_spec(np.random.default_rng(0))
    with pytest.raises(prog.EngineFitError, match="even number of lanes"):
        prog.check_fits(spec, prog.EngineParams(lanes=3, max_channels=8, max_width=8, max_maps=8), 4, 3)
