"""cocotb testbench: ConvEngine (exported alone) against the NumPy integer reference.

Layer by layer (the network cut after layer k, so layer k's output map streams out) and whole
networks, with random weights and with the committed digits export; randomized input idles and
output backpressure; on-chip sampling against the bit-exact twin. Engine parameters come from the
JSON in ``CONV_ENGINE_PARAMS`` (the Verilog has them baked in).
"""
import json
import os

import cocotb
import numpy as np
from cocotb.triggers import RisingEdge

from hw.pixelcnn import engine as E
from hw.pixelcnn import program as prog
from hw.pixelcnn import sampler as S
from streams import EngineTB

PARAMS = prog.EngineParams(**json.loads(os.environ.get("CONV_ENGINE_PARAMS", "{}")))


class TB(EngineTB):
    async def drain_input(self):
        while self.to_dut:
            await RisingEdge(self.dut.clk)

    async def program(self, spec, width, height, channels=None):
        self.to_dut.extend(prog.load_stream(prog.pack(spec, PARAMS, width, height), PARAMS))
        await self.drain_input()
        while not (await self.read(E.REG_STATUS)) & 1:
            pass
        for reg, value in E.run_registers(spec, width, height, channels):
            await self.write(reg, value)

    async def take(self, n):
        while len(self.from_dut) < n:
            await RisingEdge(self.dut.clk)
        return [self.from_dut.popleft() for _ in range(n)]

    async def likelihood(self, spec, x, cond=None):
        n, C, H, W = x.shape
        await self.write(E.REG_CTRL, E.MODE_LIKELIHOOD | 0x100)
        nout = prog.engine_ops(spec)[0][-1]["cout"]
        self.to_dut.extend(prog.input_stream(spec, x, cond))
        got = await self.take(n * H * W * nout)
        await self.write(E.REG_CTRL, E.MODE_IDLE)
        return np.array(got, np.uint8).astype(np.int8).astype(np.int64).reshape(n, H, W, nout).transpose(0, 3, 1, 2)


def cut(spec, k):
    """The network up to and including layer k (its output map becomes the engine's output)."""
    return dict(spec, layers=spec["layers"][:k + 1])


async def layer_by_layer(tb, spec, x, log):
    _, maps = prog.logits_any(spec, x, trace=True)
    for k in range(len(spec["layers"])):
        sub = cut(spec, k)
        await tb.program(sub, x.shape[3], x.shape[2])
        got = await tb.likelihood(sub, x)
        bad = int((got != maps[k + 1]).sum())
        log.info(f"layer {k}: {got.size} outputs, {bad} mismatches")
        assert bad == 0, f"layer {k}: {bad} mismatching outputs"


@cocotb.test()
async def random_network_layer_by_layer(dut):
    """Random 4-layer network (5x5 A, 3x3 B + residual, 1x1 none + residual, 1x1 logits)."""
    rng = np.random.default_rng(5)
    layers = (("A", 5, 1, 12, False), ("B", 3, 12, 12, True), ("none", 1, 12, 12, True), ("B", 1, 12, 7, False))
    spec = prog.random_spec(rng, layers=layers, levels=7)
    x = rng.integers(0, 7, size=(2, 1, 4, 6))
    tb = TB(dut, idle=0.3, stall=0.4, seed=1)
    await tb.start()
    await layer_by_layer(tb, spec, x, dut._log)


@cocotb.test()
async def saturating_network(dut):
    """Weights at +-127, huge biases, shifts 1..5: requant and residual adds saturate."""
    rng = np.random.default_rng(6)
    layers = (("A", 5, 1, 8, False), ("B", 3, 8, 8, True), ("B", 1, 8, 9, False))
    spec = prog.random_spec(rng, layers=layers, levels=9, wmax=127, bias_max=2 ** 24, shift=(1, 6))
    x = rng.integers(0, 9, size=(1, 1, 3, 8))
    tb = TB(dut, idle=0.5, stall=0.5, seed=2)
    await tb.start()
    await tb.program(spec, 8, 3)
    got = await tb.likelihood(spec, x)
    assert np.array_equal(got, prog.logits_any(spec, x))


@cocotb.test()
async def trained_digits_export(dut):
    """The committed digits export: layer by layer on a 2x8 strip, then whole test images."""
    from models.pixelcnn import data
    from models.pixelcnn.export import committed_export_path, load_export
    from models.pixelcnn.integer import forward_int
    spec = load_export(committed_export_path("digits"))
    test = data.load("digits").test
    tb = TB(dut, idle=0.2, stall=0.2, seed=3)
    await tb.start()
    await layer_by_layer(tb, spec, test[:1, :, 2:4, :], dut._log)
    n = int(os.environ.get("CONV_WHOLE_IMAGES", "1"))
    await tb.program(spec, 8, 8)
    got = await tb.likelihood(spec, test[:n])
    assert np.array_equal(got.reshape(n, 1, 17, 8, 8), forward_int(spec, test[:n]))
    beats = await tb.read(E.REG_MAC_BEATS)
    assert beats == n * 64 * prog.mac_beats_per_pixel(spec, PARAMS.lanes)


@cocotb.test()
async def sampling_matches_twin(dut):
    from models.pixelcnn.export import committed_export_path, load_export
    spec = load_export(committed_export_path("digits"))
    n, H, W, seed = 1, 4, 8, 0xBEEF
    mult = S.logit_mult(spec["logit_scale"])
    tb = TB(dut, stall=0.3, seed=4)
    await tb.start()
    await tb.program(spec, W, H)
    await tb.write(E.REG_SEED, seed)
    await tb.write(E.REG_LOGIT_MULT, mult)
    await tb.write(E.REG_NIMAGES, n)
    await tb.write(E.REG_CTRL, E.MODE_SAMPLE | 0x100)
    got = np.array(await tb.take(n * H * W)).reshape(n, 1, H, W)
    assert np.array_equal(got, S.sample_images_twin(spec, n, H, W, seed, mult))
    assert await tb.read(E.REG_CTRL) == E.MODE_IDLE


@cocotb.test()
async def gated_network_with_conditioning(dut):
    """Random Gated PixelCNN op graph (3 gated layers, conditioning map): vertical stack in the row
    phase, horizontal stack with the folded link, gated requantisation; idles and backpressure."""
    from models.pixelcnn.integer import graph_forward
    rng = np.random.default_rng(9)
    spec = prog.random_gated_spec(rng, hidden=8, n_layers=3, levels=7, cond_channels=3)
    x = rng.integers(0, 7, size=(2, 1, 4, 6))
    cond = rng.integers(-128, 128, size=(2, 3, 4, 6))
    tb = TB(dut, idle=0.3, stall=0.4, seed=7)
    await tb.start()
    await tb.program(spec, 6, 4)
    got = await tb.likelihood(spec, x, cond)
    assert np.array_equal(got, graph_forward(spec, x, cond))
    beats = await tb.read(E.REG_MAC_BEATS)
    assert beats == 2 * 24 * prog.mac_beats_per_pixel(spec, PARAMS.lanes)


@cocotb.test()
async def trained_gated_digits_export(dut):
    """The committed gated digits export (16 ops) on a 3x8 strip of a test image (the row phase over
    three rows), then on-chip sampling of a 2x8 strip against the twin (whole 8x8 images: the CLI test
    ``tests/test_conv_host.py::test_cli_gated_pixelcnn_verilator``)."""
    from models.pixelcnn import data
    from models.pixelcnn.export import committed_export_path, load_export
    from models.pixelcnn.integer import forward_int
    spec = load_export(committed_export_path("digits", "gated"))
    x = data.load("digits").test[:1, :, 2:5, :]
    tb = TB(dut, idle=0.2, stall=0.2, seed=8)
    await tb.start()
    await tb.program(spec, 8, 3)
    got = await tb.likelihood(spec, x)
    assert np.array_equal(got.reshape(1, 1, 17, 3, 8), forward_int(spec, x))
    H, W, seed = 2, 8, 0xC0FFEE
    mult = S.logit_mult(spec["logit_scale"])
    await tb.program(spec, W, H)
    await tb.write(E.REG_SEED, seed)
    await tb.write(E.REG_LOGIT_MULT, mult)
    await tb.write(E.REG_NIMAGES, 1)
    await tb.write(E.REG_CTRL, E.MODE_SAMPLE | 0x100)
    got = np.array(await tb.take(H * W)).reshape(1, 1, H, W)
    assert np.array_equal(got, S.sample_images_twin(spec, 1, H, W, seed, mult))
