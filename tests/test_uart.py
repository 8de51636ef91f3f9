# amaranth: UnusedElaboratable=no
"""Amaranth-simulator tests of the UART PHY (hw/link/uart.py): bit timing, loopback, baud tolerance,
framing errors, overruns. The link tests drive the core at the byte level; this is the only check of
the serial bit timing."""
import random

import pytest
from amaranth.hdl import Module
from amaranth.sim import Simulator

from hw.link.uart import UartRx, UartTx, uart_divisor


def _sim(dut):
    sim = Simulator(dut)
    sim.add_clock(1e-6)  # amaranth 0.5: seconds (0.6 wants Period)
    return sim


def frame_bits(byte: int, stop: int = 1) -> list[int]:
    """Line levels of one 8N1 frame, one entry per bit: start, data LSB first, stop."""
    return [0] + [(byte >> i) & 1 for i in range(8)] + [stop]


async def stream_put(ctx, s, values, rng=None, max_gap=0):
    for v in values:
        if rng is not None and max_gap and rng.random() < 0.5:
            await ctx.tick().repeat(rng.randint(1, max_gap))
        ctx.set(s.valid, 1)
        ctx.set(s.payload, v)
        await ctx.tick().until(s.ready)
        ctx.set(s.valid, 0)


async def stream_get(ctx, s, n, rng=None, max_gap=0):
    got = []
    while len(got) < n:
        if rng is not None and max_gap and rng.random() < 0.5:
            ctx.set(s.ready, 0)
            await ctx.tick().repeat(rng.randint(1, max_gap))
        ctx.set(s.ready, 1)
        payload, = await ctx.tick().sample(s.payload).until(s.valid)
        got.append(payload)
    ctx.set(s.ready, 0)
    return got


async def drive_line(ctx, line, levels_per_cycle):
    for level in levels_per_cycle:
        ctx.set(line, level)
        await ctx.tick()


def line_waveform(data, bit_cycles: float, *, idle=5, stops=None, gap=0) -> list[int]:
    """Per-cycle line levels for bytes ``data`` sent back-to-back with a (possibly fractional) bit time."""
    bits = [1] * idle
    levels = []
    for k, b in enumerate(data):
        stop = 1 if stops is None else stops[k]
        levels += frame_bits(b, stop) + [1] * gap
    t0 = 0.0
    out = list(bits)
    for k, level in enumerate(levels):
        n = round(t0 + (k + 1) * bit_cycles) - round(t0 + k * bit_cycles)
        out += [level] * n
    return out + [1] * (4 * round(bit_cycles))


# ---------------------------------------------------------------- parameters


def test_divisor_validation():
    assert uart_divisor(12e6, 115200) == 104
    assert uart_divisor(25e6, 115200) == 217
    with pytest.raises(ValueError, match="too fast"):
        uart_divisor(12e6, 4_000_000)
    with pytest.raises(ValueError, match="off"):
        uart_divisor(12e6, 2_500_000)  # 4.8 cycles per bit -> 4, 20% off
    with pytest.raises(ValueError, match="at least 4"):
        UartRx(3)
    with pytest.raises(ValueError, match="at least 4"):
        UartTx(0)
    with pytest.raises(TypeError):
        UartTx(104.2)


# ---------------------------------------------------------------- transmitter


@pytest.mark.parametrize("divisor", [4, 7])
def test_tx_waveform(divisor):
    """Idle high, start bit, LSB-first data, stop bit, every bit exactly ``divisor`` cycles; the
    first two bytes back-to-back (no gap), the third after an idle period."""
    dut = UartTx(divisor)
    data = [0xA5, 0x3C, 0x80]
    trace = []
    n_cycles = 40 * divisor + 60

    async def producer(ctx):
        await ctx.tick().repeat(3)
        await stream_put(ctx, dut.i, data[:2])
        await ctx.tick().until(~dut.busy)
        await ctx.tick().repeat(7)
        await stream_put(ctx, dut.i, data[2:])

    async def monitor(ctx):
        for _ in range(n_cycles):
            await ctx.tick()
            trace.append(ctx.get(dut.tx))

    sim = _sim(dut)
    sim.add_testbench(producer, background=True)
    sim.add_testbench(monitor)
    sim.run()

    first = trace.index(0)
    assert all(trace[:first]) and first >= 3
    expected = []
    for b in data[:2]:
        for bit in frame_bits(b):
            expected += [bit] * divisor
    got = trace[first:first + len(expected)]
    assert got == expected
    rest = trace[first + len(expected):]
    second = rest.index(0)
    assert second >= 7 and all(rest[:second])
    expected3 = [bit for bit in frame_bits(data[2]) for _ in range(divisor)]
    assert rest[second:second + len(expected3)] == expected3
    assert all(rest[second + len(expected3):])


# ---------------------------------------------------------------- loopback


@pytest.mark.parametrize("seed,max_gap", [(1, 0), (2, 30)])
def test_loopback_random(seed, max_gap):
    """TX -> RX with random bytes and random valid/ready gaps (shorter than a byte time on the
    consumer side: the receiver has no flow control)."""
    rng = random.Random(seed)
    divisor = 5
    data = [rng.randrange(256) for _ in range(48)]

    m = Module()
    m.submodules.tx = tx = UartTx(divisor)
    m.submodules.rx = rx = UartRx(divisor)
    m.d.comb += rx.rx.eq(tx.tx)

    got = []

    async def producer(ctx):
        await stream_put(ctx, tx.i, data, rng=random.Random(seed + 100), max_gap=max_gap)

    async def consumer(ctx):
        got.extend(await stream_get(ctx, rx.o, len(data), rng=random.Random(seed + 200),
                                    max_gap=min(max_gap, 8 * divisor)))
        assert ctx.get(rx.frame_errors) == 0
        assert ctx.get(rx.overruns) == 0

    sim = _sim(m)
    sim.add_testbench(producer, background=True)
    sim.add_testbench(consumer)
    sim.run()
    assert got == data


def test_back_to_back_throughput():
    """An always-valid producer keeps the line busy: N bytes take exactly N * 10 * divisor cycles
    from the first start bit to the end of the last stop bit, and all arrive."""
    divisor = 6
    data = list(range(0, 256, 9))
    m = Module()
    m.submodules.tx = tx = UartTx(divisor)
    m.submodules.rx = rx = UartRx(divisor)
    m.d.comb += rx.rx.eq(tx.tx)
    got = []
    trace = []

    async def producer(ctx):
        await stream_put(ctx, tx.i, data)

    async def monitor(ctx):
        for _ in range(len(data) * 10 * divisor + 40):
            await ctx.tick()
            trace.append((ctx.get(tx.tx), ctx.get(tx.busy)))

    async def consumer(ctx):
        got.extend(await stream_get(ctx, rx.o, len(data)))

    sim = _sim(m)
    sim.add_testbench(producer, background=True)
    sim.add_testbench(consumer, background=True)
    sim.add_testbench(monitor)
    sim.run()
    busy = [b for _, b in trace]
    start = busy.index(1)
    end = start + busy[start:].index(0)
    assert end - start == len(data) * 10 * divisor
    assert got == data


# ---------------------------------------------------------------- receiver


@pytest.mark.parametrize("mismatch", [-0.02, 0.0, +0.02])
def test_rx_baud_mismatch(mismatch):
    """A transmitter 2% fast or slow, bytes back-to-back with no idle time, is still received."""
    divisor = 16
    rng = random.Random(7)
    data = [0x00, 0xFF, 0x55, 0xAA] + [rng.randrange(256) for _ in range(12)]
    dut = UartRx(divisor)
    wave = line_waveform(data, divisor * (1 + mismatch))
    got = []

    async def driver(ctx):
        await drive_line(ctx, dut.rx, wave)

    async def consumer(ctx):
        got.extend(await stream_get(ctx, dut.o, len(data)))
        assert ctx.get(dut.frame_errors) == 0

    sim = _sim(dut)
    sim.add_testbench(driver)
    sim.add_testbench(consumer, background=True)
    sim.run()
    assert got == data


def test_rx_framing_error_and_glitch():
    """A low stop bit drops the byte and counts it; a long break counts once; a glitch shorter than
    half a bit is ignored; good bytes around them arrive."""
    divisor = 8
    dut = UartRx(divisor)
    wave = (line_waveform([0x12], divisor)
            + [0, 0] + [1] * 30  # glitch
            + line_waveform([0x34], divisor, stops=[0])  # a low stop bit
            + line_waveform([0x56], divisor)
            + [0] * 40 * divisor + [1] * 20  # a break: one more framing error, then idle
            + line_waveform([0x78], divisor))
    got = []
    errors = []

    async def driver(ctx):
        await drive_line(ctx, dut.rx, wave)

    async def consumer(ctx):
        ctx.set(dut.o.ready, 1)
        async for _, _, valid, payload, error in ctx.tick().sample(dut.o.valid, dut.o.payload, dut.error):
            if valid:
                got.append(payload)
            if error:
                errors.append(1)

    sim = _sim(dut)
    sim.add_testbench(driver)
    sim.add_testbench(consumer, background=True)
    sim.run()
    assert got == [0x12, 0x56, 0x78]
    assert len(errors) == 2

    # the counter, read at the end
    async def check(ctx):
        ctx.set(dut.o.ready, 1)
        await drive_line(ctx, dut.rx, wave)
        assert ctx.get(dut.frame_errors) == 2
        assert ctx.get(dut.overruns) == 0

    sim = _sim(dut)
    sim.add_testbench(check)
    sim.run()


def test_rx_overrun():
    """With nobody reading, the first byte is held and the second is dropped and counted."""
    divisor = 6
    dut = UartRx(divisor)
    wave = line_waveform([0xC3, 0x3C], divisor)

    async def tb(ctx):
        await drive_line(ctx, dut.rx, wave)
        assert ctx.get(dut.o.valid) == 1
        assert ctx.get(dut.o.payload) == 0xC3
        assert ctx.get(dut.overruns) == 1
        assert ctx.get(dut.frame_errors) == 0

    sim = _sim(dut)
    sim.add_testbench(tb)
    sim.run()

