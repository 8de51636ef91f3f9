"""Conditioner passes on the ConvEngine (Amaranth simulator) against the NumPy op-graph reference:
non-causal K x K convs over a fully known image run as delayed row-phase ops (flush rows at the bottom),
the whole-image feature memory they write, a gated pass whose COND map is filled from it, nearest
upsampling by 2 and the 2x2 stride-2 transposed conv (parity-selected weight blocks); randomized input
idles and output backpressure; fit errors."""
import numpy as np
import pytest

from conv_engine_tb import EngineSim
from hw.pixelcnn import engine as E
from hw.pixelcnn import program as prog
from hw.pixelcnn.engine import ConvEngine
from models.pixelcnn import integer


def small_engine(row_slots=4):
    return ConvEngine(lanes=4, max_channels=8, max_width=8, max_layers=16, weight_depth=1024, bias_depth=128,
                      in_fifo=16, out_fifo=512, max_maps=8, row_slots=row_slots, feat_rows=8)


def run_pass(s, spec, H, W, x=None, feat=0, base=None):
    """Queue a conditioner pass: program (or select the loaded spec at ``base``), run one image (mode 1
    with image bytes, else mode 2), wait."""
    if base is None:
        s.program(spec, W, H, feat=feat)
    else:
        s.select(spec, W, H, base, feat=feat)
    if x is not None:
        s.reg(E.REG_CTRL, E.MODE_LIKELIHOOD | 0x100)
        s.send(prog.input_stream(spec, x))
        s.ops.append(("poll", E.REG_IMAGES, 0xFF, 1))
        s.reg(E.REG_CTRL, E.MODE_IDLE)
    else:
        s.reg(E.REG_NIMAGES, 1)
        s.reg(E.REG_CTRL, E.MODE_SAMPLE | 0x100)
        s.wait_mode_idle()
    s.read(E.REG_MAC_BEATS, f"beats{len(s.ops)}")


def run_gated_from_feat(s, spec, x, fbase, base=None):
    n, _, H, W = x.shape
    if base is None:
        s.program(spec, W, H, feat=E.FEAT_IN | (fbase << 8))
    else:
        s.select(spec, W, H, base, feat=E.FEAT_IN | (fbase << 8))
    s.reg(E.REG_CTRL, E.MODE_LIKELIHOOD | 0x100)
    nout = len(spec["ops"][-1]["bias"])
    s.send(prog.input_stream(spec, x, feat=True))
    s.recv(n * H * W * nout, "logits")
    r = s.run(max_cycles=1_500_000)
    return np.frombuffer(bytes(r["logits"]), np.int8).astype(np.int64).reshape(n, H, W, nout).transpose(0, 3, 1, 2), r


@pytest.mark.parametrize("kernels,row_slots,idle,stall,together", [((3, 3), 4, 0.3, 0.4, False),
                                                                   ((5, 3), 8, 0.0, 0.2, True)])
def test_image_conditioner_then_gated(kernels, row_slots, idle, stall, together):
    """Grayscale-style: non-causal convs over the image -> feature memory -> the gated pass's COND map
    (``together``: both specs loaded at once, each run selected by REG_BASE, input tables of different
    sizes side by side)."""
    rng = np.random.default_rng(sum(kernels) + row_slots)
    H, W = 4, 5
    cspec = prog.random_conditioner_spec(rng, kernels, hidden=4, levels=4)
    gspec = prog.random_gated_spec(rng, cond_channels=4)
    a = rng.integers(0, cspec["levels"], size=(1, 1, H, W))
    x = rng.integers(0, gspec["levels"], size=(1, 1, H, W))
    feat, maps = integer.graph_forward(cspec, a, trace=True)
    assert np.abs(maps["c0"]).max() >= 90 and len(np.unique(feat)) > 10  # not a constant map
    want = integer.graph_forward(gspec, x, feat)
    s = EngineSim(small_engine(row_slots), seed=row_slots, idle=idle, stall=stall)
    if together:
        bc, bg = s.load([(gspec, W, H), (cspec, W, H)])
        assert bc == (0, 0) and bg == (len(prog.engine_ops(gspec)[0]), gspec["levels"])
        run_pass(s, cspec, H, W, a, base=bg)
        got, r = run_gated_from_feat(s, gspec, x, 0, base=bc)
    else:
        run_pass(s, cspec, H, W, a)
        got, r = run_gated_from_feat(s, gspec, x, 0)
    assert np.array_equal(got, want)
    beats = next(v for k, v in r.items() if k.startswith("beats"))
    assert beats == H * W * prog.mac_beats_per_pixel(cspec, 4)


def test_upsampling_conditioner_then_gated():
    """Pyramid-style: a 3x3 conv at the coarse level -> feature memory (rows 4..); a fine pass fills its
    COND map from it nearest-upsampled, runs the transposed conv (parity weight blocks) and a 3x3 ->
    feature memory (rows 0..); the gated pass reads that."""
    rng = np.random.default_rng(7)
    Hc, Wc = 2, 3
    H, W = 2 * Hc, 2 * Wc
    aspec = prog.random_conditioner_spec(rng, (3,), hidden=4)
    bspec = prog.random_conditioner_spec(rng, (3,), hidden=4, cond_channels=4, parity=True)
    gspec = prog.random_gated_spec(rng, cond_channels=4)
    xc = rng.integers(0, aspec["levels"], size=(1, 1, Hc, Wc))
    x = rng.integers(0, gspec["levels"], size=(1, 1, H, W))
    fa = integer.graph_forward(aspec, xc)
    fb, maps = integer.graph_forward(bspec, None, integer.upsample2(fa), trace=True)
    par = maps["c0"][0, :, :2, :2].reshape(4, 4)  # the four parity positions of one coarse pixel differ
    assert len({tuple(v) for v in par.T}) == 4
    want = integer.graph_forward(gspec, x, fb)
    s = EngineSim(small_engine(), seed=3, idle=0.2, stall=0.3)
    run_pass(s, aspec, Hc, Wc, xc, feat=4 << 16)
    run_pass(s, bspec, H, W, None, feat=E.FEAT_IN | E.FEAT_UP | (4 << 8))
    got, _ = run_gated_from_feat(s, gspec, x, 0)
    assert np.array_equal(got, want)


def test_conditioner_fit_errors():
    rng = np.random.default_rng(1)
    p4 = prog.EngineParams(lanes=4, max_channels=8, max_width=8, max_layers=8, weight_depth=1024, bias_depth=128,
                           max_maps=8)
    spec = prog.random_conditioner_spec(rng, (5, 3))
    with pytest.raises(prog.EngineFitError, match="row_slots"):
        prog.check_fits(spec, p4, 5, 4)
    prog.check_fits(spec, prog.EngineParams(**{**p4.as_dict(), "row_slots": 8}), 5, 4)
    spec = prog.random_conditioner_spec(rng, (3, 3))
    spec["ops"][1]["delay"] = 2  # reads rows its input op has not written yet
    with pytest.raises(prog.EngineFitError, match="delay of at least 3"):
        prog.check_fits(spec, p4, 5, 4)
