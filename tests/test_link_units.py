"""Amaranth-simulator unit tests of the link cores against the PyPI ``cobs`` and ``crc`` packages."""
import random

import pytest
from amaranth.sim import Simulator
from cobs import cobs
from crc import Calculator, Crc16

from host.framing import crc16
from hw.link.cobs import CobsDecoder, CobsEncoder
from hw.link.crc import CrcAppender
from hw.testing import stream_get, stream_put


def sample_frames(rng, count):
    """Frames that hit COBS's corner cases: empty, all zeros, 253/254/255-byte zero-free runs, random."""
    frames = [b"", b"\x00", b"\x00\x00", b"\x01", bytes(range(1, 255)), bytes(range(1, 255)) + b"\x07",
              b"\x05" * 253, b"\x05" * 254 + b"\x00", b"\x09" * 508, b"\x00" * 10 + b"\x03" * 300]
    for _ in range(count):
        n = rng.choice([rng.randrange(0, 20), rng.randrange(240, 520)])
        zero_rate = rng.choice([0.0, 0.01, 0.3])
        frames.append(bytes(0 if rng.random() < zero_rate else rng.randrange(1, 256) for _ in range(n)))
    return frames


def run(dut, producer, consumer):
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    sim.run()


@pytest.mark.parametrize("idle,stall", [(0.0, 0.0), (0.4, 0.0), (0.0, 0.5), (0.3, 0.3)])
def test_encoder_matches_cobs_package(idle, stall):
    rng = random.Random(f"enc{idle}{stall}")
    frames = sample_frames(rng, 12)
    expected = b"".join(cobs.encode(f) + b"\x00" for f in frames)
    dut = CobsEncoder()
    got = bytearray()

    async def producer(ctx):
        for frame in frames:
            for byte in frame:
                await stream_put(ctx, dut.i, {"data": byte, "end": 0}, rng=rng, idle=idle)
            await stream_put(ctx, dut.i, {"data": 0, "end": 1}, rng=rng, idle=idle)

    async def consumer(ctx):
        while len(got) < len(expected):
            got.append(await stream_get(ctx, dut.o, rng=rng, stall=stall))

    run(dut, producer, consumer)
    assert bytes(got) == expected


@pytest.mark.parametrize("idle,stall", [(0.0, 0.0), (0.4, 0.0), (0.0, 0.5), (0.3, 0.3)])
def test_decoder_matches_cobs_package(idle, stall):
    rng = random.Random(f"dec{idle}{stall}")
    frames = sample_frames(rng, 12)
    wire = b"".join(cobs.encode(f) + b"\x00" for f in frames)
    dut = CobsDecoder()
    got = []

    async def producer(ctx):
        for byte in wire:
            await stream_put(ctx, dut.i, byte, rng=rng, idle=idle)

    async def consumer(ctx):
        current = bytearray()
        while len(got) < len(frames):
            item = await stream_get(ctx, dut.o, rng=rng, stall=stall)
            if item.end:
                got.append((bytes(current), item.err))
                current = bytearray()
            else:
                current.append(item.data)

    run(dut, producer, consumer)
    assert got == [(f, 0) for f in frames]


def test_decoder_flags_truncated_block():
    # Code byte 0x05 promises four data bytes, but the delimiter comes after two.
    dut = CobsDecoder()
    items = []

    async def producer(ctx):
        for byte in b"\x05\x11\x22\x00" + cobs.encode(b"ok") + b"\x00":
            await stream_put(ctx, dut.i, byte)

    async def consumer(ctx):
        while sum(1 for i in items if i.end) < 2:
            items.append(await stream_get(ctx, dut.o))

    run(dut, producer, consumer)
    ends = [i for i in items if i.end]
    assert [e.err for e in ends] == [1, 0]
    assert bytes(i.data for i in items[items.index(ends[0]) + 1:-1]) == b"ok"


def test_host_crc_is_the_crc_package_crc():
    """``host.framing.crc16`` (C ``binascii.crc_hqx``) equals the independent pure-Python golden; the
    gateware is checked against ``crc16`` below, so all three agree."""
    golden = Calculator(Crc16.IBM_3740)
    rng = random.Random(16)
    cases = [b"", b"\x00", b"\xff" * 3, b"123456789"] + [rng.randbytes(rng.randrange(1, 5000)) for _ in range(40)]
    assert [crc16(c) for c in cases] == [golden.checksum(c) for c in cases]


@pytest.mark.parametrize("stall", [0.0, 0.5])
def test_crc_appender_matches_crc_package(stall):
    rng = random.Random(f"crc{stall}")
    frames = [b"", b"123456789"] + [rng.randbytes(rng.randrange(1, 64)) for _ in range(10)]
    assert crc16(b"123456789") == 0x29B1  # CRC-16/IBM-3740 check value
    dut = CrcAppender()
    got = []

    async def producer(ctx):
        for frame in frames:
            for byte in frame:
                await stream_put(ctx, dut.i, {"data": byte, "end": 0}, rng=rng, idle=0.3)
            await stream_put(ctx, dut.i, {"data": 0, "end": 1}, rng=rng, idle=0.3)

    async def consumer(ctx):
        current = bytearray()
        while len(got) < len(frames):
            item = await stream_get(ctx, dut.o, rng=rng, stall=stall)
            if item.end:
                got.append(bytes(current))
                current = bytearray()
            else:
                current.append(item.data)

    run(dut, producer, consumer)
    assert got == [f + crc16(f).to_bytes(2, "big") for f in frames]
    assert all(crc16(g) == 0 for g in got)  # the residue the receiver checks
