"""Amaranth-simulator unit tests of the convolution engine's blocks against NumPy/Python models:
line buffer (taps, ring of row slots, zero padding above and below), MAC array, requantiser (saturation, residual),
Gumbel-max sampler (bit-exact twin, with the exclusion and the luma tilt's penalty table)."""
import numpy as np
import pytest
from amaranth.sim import Simulator

from hw.pixelcnn import sampler as S
from hw.pixelcnn.units import LineBuffer, MacArray, Requant, Sampler
from models.pixelcnn import integer as I
from models.pixelcnn.integer import requantize, saturate8


def _run(dut, bench):
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()


def test_line_buffer_taps_and_padding():
    rng = np.random.default_rng(0)
    H, W, C, NL = 5, 6, 3, 2
    dut = LineBuffer(max_layers=4, max_width=8, max_channels=4)
    maps = rng.integers(-128, 128, size=(NL, C, H, W))
    checked = []

    async def read_tap(ctx, layer, c, dy, dx):
        """One read of the tap (layer, c, dy, dx) at the current pixel; its data after the read latency."""
        ctx.set(dut.rd_en, 1)
        ctx.set(dut.rd_layer, layer)
        ctx.set(dut.rd_c, c)
        ctx.set(dut.rd_dy, dy)
        ctx.set(dut.rd_dx, dx)
        await ctx.tick()
        ctx.set(dut.rd_en, 0)
        await ctx.tick().repeat(LineBuffer.READ_LATENCY - 1)
        return ctx.get(dut.rd_data)

    async def bench(ctx):
        ctx.set(dut.width, W)
        ctx.set(dut.height, H)
        for i in range(H):
            for j in range(W):
                ctx.set(dut.row, i)
                ctx.set(dut.col, j)
                ctx.set(dut.slot, i % 4)
                for layer in range(NL):  # write this pixel of every layer
                    for c in range(C):
                        ctx.set(dut.wr_en, 1)
                        ctx.set(dut.wr_layer, layer)
                        ctx.set(dut.wr_c, c)
                        ctx.set(dut.wr_data, int(maps[layer, c, i, j]))
                        await ctx.tick()
                ctx.set(dut.wr_en, 0)
                for _ in range(6):  # random reads of taps within 2 rows back
                    layer, c = int(rng.integers(NL)), int(rng.integers(C))
                    dy, dx = int(rng.integers(-2, 1)), int(rng.integers(-2, 3))
                    if dy == 0 and dx > 0:
                        dx = -dx  # a future pixel of the current row is not written yet
                    got = await read_tap(ctx, layer, c, dy, dx)
                    y, x = i + dy, j + dx
                    want = int(maps[layer, c, y, x]) if 0 <= y and 0 <= x < W else 0
                    checked.append((got, want, (i, j, dy, dx)))

        # non-causal reads once the image is written (a delayed op at output row i reads rows i-2..i+2):
        # the ring still holds the last 4 rows; rows below the image read 0
        for i in range(H - 2, H):
            for j in range(W):
                ctx.set(dut.row, i)
                ctx.set(dut.col, j)
                for dy in range(-1, 3):
                    layer, c, dx = int(rng.integers(NL)), int(rng.integers(C)), int(rng.integers(-2, 3))
                    got = await read_tap(ctx, layer, c, dy, dx)
                    y, x = i + dy, j + dx
                    want = int(maps[layer, c, y, x]) if y < H and 0 <= x < W else 0
                    checked.append((got, want, (i, j, dy, dx)))

    _run(dut, bench)
    bad = [t for t in checked if t[0] != t[1]]
    assert len(checked) == H * W * 6 + 2 * W * 4 and not bad, bad[:5]
    assert sum(t[1] == 0 for t in checked[H * W * 6:]) >= 2 * W * 2  # the padding rows below were read


@pytest.mark.parametrize("lanes", [1, 5])
def test_mac_array_groups(lanes):
    rng = np.random.default_rng(lanes)
    dut = MacArray(lanes)
    groups = [rng.integers(1, 9) for _ in range(6)]
    beats = []
    for n in groups:
        a = rng.integers(-128, 128, n)
        w = rng.integers(-128, 128, (n, lanes))
        beats.append((a, w))
    results = []

    async def bench(ctx):
        for a, w in beats:
            for k in range(len(a)):
                ctx.set(dut.in_valid, 1)
                ctx.set(dut.in_first, k == 0)
                ctx.set(dut.in_last, k == len(a) - 1)
                ctx.set(dut.in_a, int(a[k]))
                ctx.set(dut.in_w, [int(v) for v in w[k]])
                await ctx.tick()
                if ctx.get(dut.out_valid):
                    results.append([ctx.get(dut.out_acc[p]) for p in range(lanes)])
                if rng.random() < 0.3:  # bubbles between beats
                    ctx.set(dut.in_valid, 0)
                    await ctx.tick()
                    if ctx.get(dut.out_valid):
                        results.append([ctx.get(dut.out_acc[p]) for p in range(lanes)])
        ctx.set(dut.in_valid, 0)
        for _ in range(4):
            await ctx.tick()
            if ctx.get(dut.out_valid):
                results.append([ctx.get(dut.out_acc[p]) for p in range(lanes)])

    _run(dut, bench)
    want = [list((a[:, None] * w).sum(0)) for a, w in beats]
    assert results == want


def test_requant_saturation_and_residual():
    rng = np.random.default_rng(3)
    P, C = 4, 8
    dut = Requant(lanes=P, max_layers=2, bias_depth=16, max_channels=C)
    bias = rng.integers(-2 ** 20, 2 ** 20, 16)
    lut = rng.integers(-128, 128, (2, 256))
    centre = rng.integers(-128, 128, C)
    cases = []
    for layer, mult, shift, residual in [(0, 23456, 20, 0), (1, 16384, 8, 1), (0, 2 ** 31 - 1, 62, 1),
                                         (1, 1, 1, 0), (0, 30000, 24, 1)]:
        acc = np.concatenate([rng.integers(-2 ** 31 + 2 ** 21, 2 ** 31 - 2 ** 21, P - 2), [2 ** 31 - 2 ** 21, -2 ** 31 + 2 ** 21]])
        cases.append((layer, mult, shift, residual, acc, int(rng.integers(0, 2)) * P))
    outs = []

    async def bench(ctx):
        for i, b in enumerate(bias):
            ctx.set(dut.bias_we, 1)
            ctx.set(dut.bias_waddr, i)
            ctx.set(dut.bias_wdata, int(b) & 0xFFFFFFFF)
            await ctx.tick()
        ctx.set(dut.bias_we, 0)
        for layer in range(2):
            for i in range(256):
                ctx.set(dut.lut_we, 1)
                ctx.set(dut.lut_waddr, layer * 512 + i)  # two tables per op; plain ops use the first
                ctx.set(dut.lut_wdata, int(lut[layer, i]) & 0xFF)
                await ctx.tick()
        ctx.set(dut.lut_we, 0)
        ctx.set(dut.centre, [int(v) for v in centre])
        for layer, mult, shift, residual, acc, base in cases:
            ctx.set(dut.layer, layer)
            ctx.set(dut.mult, mult)
            ctx.set(dut.shift, shift)
            ctx.set(dut.residual, residual)
            ctx.set(dut.bbase, 3)
            ctx.set(dut.acc, [int(v) for v in acc])
            ctx.set(dut.start, 1)
            ctx.set(dut.count, P)
            ctx.set(dut.base, base)
            await ctx.tick()
            ctx.set(dut.start, 0)
            got = []
            for _ in range(P + Requant.LATENCY + 2):
                if ctx.get(dut.out_valid):
                    got.append((ctx.get(dut.out_o), ctx.get(dut.out_data)))
                await ctx.tick()
            outs.append(got)

    _run(dut, bench)
    for (layer, mult, shift, residual, acc, base), got in zip(cases, outs):
        o = base + np.arange(P)
        s = acc + bias[3 + o]
        y = requantize(s, mult, shift)
        z = lut[layer][y + 128]
        if residual:
            z = saturate8(z + centre[o])
        assert got == list(zip(o.tolist(), z.tolist()))


async def _draw_pixels(ctx, dut, seed, mult, pixels, per_level=None):
    """Seed the sampler, feed each pixel's logits one per cycle (``per_level(ctx, k, v)`` sets further inputs of
    level v of pixel k) and collect the samples."""
    ctx.set(dut.seed, seed)
    ctx.set(dut.seed_we, 1)
    await ctx.tick()
    ctx.set(dut.seed_we, 0)
    ctx.set(dut.mult, mult)
    got = []
    for k, lg in enumerate(pixels):
        for v in range(len(lg)):
            ctx.set(dut.in_valid, 1)
            ctx.set(dut.in_first, v == 0)
            ctx.set(dut.in_last, v == len(lg) - 1)
            ctx.set(dut.in_logit, int(lg[v]))
            if per_level:
                per_level(ctx, k, v)
            await ctx.tick()
        ctx.set(dut.in_valid, 0)
        while True:
            await ctx.tick()
            if ctx.get(dut.done):
                got.append(ctx.get(dut.sample))
                break
    return got


def test_sampler_matches_twin():
    rng = np.random.default_rng(4)
    L, seed, mult = 7, 0x1234567, 97
    pixels = [rng.integers(-128, 128, L) for _ in range(12)]
    pixels.append(np.full(L, 127))  # ties: the first maximum wins in both
    dut = Sampler()
    got = []

    async def bench(ctx):
        got.extend(await _draw_pixels(ctx, dut, seed, mult, pixels))
        got.append(ctx.get(dut.state))

    _run(dut, bench)
    tw = S.SamplerTwin(seed, mult)
    want = [tw.draw(lg) for lg in pixels] + [tw.state]
    assert got == want


def test_sampler_tilt_matches_twin():
    """Loaded penalty table, per-level offsets dy (clamped at both table ends), levels excluded, tilt on and
    off per pixel: the twin with ``penalty = table[tilt_index(dy)]`` where the tilt is on."""
    rng = np.random.default_rng(5)
    L, seed, mult = 9, 0xACE1, 300
    table = rng.integers(0, 1 << I.TILT_BITS, I.TILT_ENTRIES)
    table[:4] = (1 << I.TILT_BITS) - 1
    edge = (I.TILT_ENTRIES // 2) << I.TILT_SHIFT
    pixels = []
    for k in range(10):
        dy = rng.integers(-edge - 5000, edge + 5000, L)
        dy[0] = -(1 << 21)  # the most negative offset the port carries
        pixels.append((rng.integers(-128, 128, L), dy, rng.random(L) < 0.8, k % 3 != 0))
    dut = Sampler()
    got = []

    def per_level(ctx, k, v):
        _, dy, ok, on = pixels[k]
        ctx.set(dut.in_ok, bool(ok[v]))
        ctx.set(dut.in_tilt, on)
        ctx.set(dut.in_dy, int(dy[v]))

    async def bench(ctx):
        for a, v in enumerate(table):
            ctx.set(dut.tilt_waddr, a)
            ctx.set(dut.tilt_wdata, int(v))
            ctx.set(dut.tilt_we, 1)
            await ctx.tick()
        ctx.set(dut.tilt_we, 0)
        got.extend(await _draw_pixels(ctx, dut, seed, mult, [p[0] for p in pixels], per_level))

    _run(dut, bench)
    tw = S.SamplerTwin(seed, mult)
    want = [tw.draw(lg, ok, table[I.tilt_index(dy)] if on else None) for lg, dy, ok, on in pixels]
    assert got == want
    tw = S.SamplerTwin(seed, mult)
    assert want != [tw.draw(lg, ok) for lg, dy, ok, on in pixels]  # the penalties act


def test_tilt_table_is_the_gaussian():
    """``tilt_table`` = dy^2 / (2 sigma^2) in 2**-frac nats at each cell's centre, saturated; ``tilt_index``
    floors and clamps."""
    sigma, L = 4.0, 256
    t = I.tilt_table(sigma, L)
    h = I.TILT_ENTRIES // 2
    for delta in (0, 63, 64, -1, -64, 5000, -5000):
        k = I.tilt_index(delta)
        dy = (np.floor(delta / 64) + 0.5) * 64 / 1000
        assert k == h + np.floor(delta / 64)
        assert abs(t[k] / 1024 - dy * dy / (2 * sigma * sigma)) <= 0.5 / 1024
    assert I.tilt_index(10 ** 7) == 2 * h - 1 and I.tilt_index(-10 ** 7) == 0
    assert t[h] == t[h - 1] == 0 and t.max() < 1 << I.TILT_BITS
    assert I.tilt_table(1.0, L).max() == (1 << I.TILT_BITS) - 1  # saturated ends
    assert np.abs(I.tilt_table(sigma, L, temperature=0.5) - 2 * t).max() <= 1


def test_sampler_distribution():
    """The twin's Gumbel-max draws follow softmax(logit_scale * logits) closely."""
    logits = np.array([10, -20, 40, 0, 25])
    scale = 0.05
    tw = S.SamplerTwin(99, S.logit_mult(scale))
    counts = np.bincount([tw.draw(logits) for _ in range(20000)], minlength=5) / 20000
    p = np.exp(scale * logits) / np.exp(scale * logits).sum()
    assert np.abs(counts - p).max() < 0.015
