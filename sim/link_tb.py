"""cocotb testbench: the link core (with the echo engine) against the Python golden.

The golden is the host's framing (the PyPI ``cobs`` and ``crc`` packages) plus a model of the
router's registers and the echo engine. Bytes go in with random idle cycles and come out under
random ``ready`` backpressure.
"""
import os
import random
from collections import deque

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import RisingEdge
from cobs import cobs

from host.framing import FrameSplitter, crc16, decode_frame, encode_frame
from hw import protocol as P
from streams import sink, source

MAX_FRAME = int(os.environ.get("LINK_MAX_FRAME", "512"))


class Link:
    def __init__(self, dut, idle: float, stall: float, seed: int):
        self.dut = dut
        self.rng = random.Random(seed)
        self.idle, self.stall = idle, stall
        self.to_dut = deque()
        self.splitter = FrameSplitter()
        self.frames = deque()

    async def start(self):
        dut = self.dut
        Clock(dut.clk, 10, unit="ns").start()
        dut.rst.value = 1
        dut.rx__valid.value = 0
        dut.rx__payload.value = 0  # every input driven from time 0: a 4-state simulator shows X otherwise
        dut.tx__ready.value = 0
        for _ in range(3):
            await RisingEdge(dut.clk)
        dut.rst.value = 0
        cocotb.start_soon(source(dut, "rx", self.to_dut, self.rng, self.idle))
        cocotb.start_soon(sink(dut, "tx", self._on_byte, self.rng, self.stall))

    def _on_byte(self, byte: int):
        self.frames.extend(self.splitter.feed(bytes([byte])))

    async def reply(self, max_cycles=20000):
        for _ in range(max_cycles):
            if self.frames:
                return decode_frame(self.frames.popleft())
            await RisingEdge(self.dut.clk)
        raise AssertionError("no reply from the link core")

    def send_raw(self, data: bytes):
        self.to_dut.extend(data)

    async def request(self, seq, cmd, args=b""):
        self.send_raw(encode_frame(bytes([seq, cmd]) + args))
        return await self.reply()


class GoldenDevice:
    """What the router + echo engine must answer (registers, FIFO contents, stream position, and the
    stored reply of the last state-changing request, replayed for a repeat of it)."""

    def __init__(self):
        self.scratch = 0
        self.session = 0
        self.xor = 0
        self.fifo = deque()
        self.count = 0
        self.in_pos = 0
        self.replayed = 0
        self.last = None  # (seq, crc of the request, reply)

    def expect(self, seq, cmd, args):
        body = bytes([seq, cmd]) + args
        key = (seq, crc16(body))
        if cmd in P.STATE_CHANGING and self.last and self.last[:2] == key:
            self.replayed += 1
            return self.last[2]
        reply = self._execute(seq, cmd, args)
        if cmd in P.STATE_CHANGING:
            self.last = (*key, reply)
        return reply

    def _execute(self, seq, cmd, args):
        ok = bytes([seq, P.STATUS_OK])
        if cmd == P.CMD_READ_REG and len(args) == 1:
            addr = args[0]
            value = {P.REG_ID: P.ID_VALUE, P.REG_SCRATCH: self.scratch, P.REG_MAX_FRAME: MAX_FRAME,
                     P.REG_ENGINE_ID: P.engine_id_value("ECHO"), P.REG_BULK_IN_POS: self.in_pos,
                     P.REG_SESSION: self.session, P.REG_FRAMES_REPLAYED: self.replayed,
                     P.ENGINE_REG_BASE: self.xor, P.ENGINE_REG_BASE + 1: self.count}.get(addr, 0)
            return ok + value.to_bytes(4, "little")
        if cmd == P.CMD_WRITE_REG and len(args) == 5:
            value = int.from_bytes(args[1:], "little")
            if args[0] == P.REG_SCRATCH:
                self.scratch = value
            if args[0] == P.REG_SESSION:
                self.session = value
            if args[0] == P.ENGINE_REG_BASE:
                self.xor = value & 0xFF
            return ok
        if cmd == P.CMD_WRITE_BULK and len(args) >= 4:
            data = args[4:]
            skip = (self.in_pos - int.from_bytes(args[:4], "little")) & 0xFFFFFFFF
            taken = data[skip:] if skip < len(data) else b""
            self.fifo.extend(b ^ self.xor for b in taken)
            self.count += len(taken)
            self.in_pos = (self.in_pos + len(taken)) & 0xFFFFFFFF
            return ok + self.in_pos.to_bytes(4, "little")
        if cmd == P.CMD_READ_BULK and len(args) == 2:
            n = min(int.from_bytes(args, "little"), MAX_FRAME - 4, len(self.fifo))
            return ok + bytes(self.fifo.popleft() for _ in range(n))
        if cmd in (P.CMD_READ_REG, P.CMD_WRITE_REG, P.CMD_WRITE_BULK, P.CMD_READ_BULK, P.CMD_INFO):
            return bytes([seq, P.STATUS_BAD_LEN])
        return bytes([seq, P.STATUS_BAD_CMD])


def random_request(rng, golden):
    kind = rng.choice(["read", "write", "bulk_in", "bulk_in", "bulk_out", "bad_cmd", "bad_len"])
    if kind == "read":
        return P.CMD_READ_REG, bytes([rng.choice([0, 3, 9, 0x0A, 0x0B, 0x0C, 0x0F, 0x10, 0x11, 0x40])])
    if kind == "write":
        return P.CMD_WRITE_REG, bytes([rng.choice([3, 0x0B, 0x10, 0x20])]) + rng.randbytes(4)
    if kind == "bulk_in":
        room = 512 - len(golden.fifo)
        n = rng.randrange(0, min(room, MAX_FRAME - 8) + 1)
        zeros = rng.random() < 0.5
        data = bytes(0 if zeros and rng.random() < 0.2 else rng.randrange(256) for _ in range(n))
        # mostly the device's position; else a repeat, an overlap, a gap after a lost frame, or anywhere
        pos = rng.choice([golden.in_pos] * 6 + [golden.in_pos - n, golden.in_pos - rng.randrange(n + 1),
                                                 golden.in_pos + rng.randrange(1, 600), rng.getrandbits(32)])
        return P.CMD_WRITE_BULK, (pos & 0xFFFFFFFF).to_bytes(4, "little") + data
    if kind == "bulk_out":
        return P.CMD_READ_BULK, rng.randrange(0, 700).to_bytes(2, "little")
    if kind == "bad_cmd":
        return rng.choice([0x00, 0x06, 0x7F, 0xFF]), rng.randbytes(rng.randrange(4))
    return (rng.choice([P.CMD_READ_REG, P.CMD_WRITE_REG, P.CMD_READ_BULK, P.CMD_WRITE_BULK]),
            rng.randbytes(rng.choice([0, 3, 7]) if rng.random() < 0.8 else rng.choice([0, 3])))


@cocotb.test()
@cocotb.parametrize(idle=[0.0, 0.5], stall=[0.0, 0.6])
async def random_requests_match_golden(dut, idle, stall):
    link = Link(dut, idle, stall, seed=int(idle * 10 + stall * 100))
    await link.start()
    golden = GoldenDevice()
    # the requests come from their own generator: the drivers' idle/stall draws (link.rng) depend on the core's
    # timing, and must not change which requests are sent (nor how many repeats the test covers)
    req_rng = random.Random(1000 + int(idle * 10 + stall * 100))
    seq, cmd, args = 0, None, b""
    for i in range(80):
        r = req_rng.random()
        if cmd is None or r >= 0.25:  # a new request
            seq = (seq + 1) & 0xFF
            cmd, args = random_request(req_rng, golden)
        elif r >= 0.05:  # the same request again (its reply was lost): replayed if it changes state
            pass
        else:  # the same sequence number, another request: executed
            cmd, args = random_request(req_rng, golden)
        expected = golden.expect(seq, cmd, args)
        got = await link.request(seq, cmd, args)
        assert got == expected, f"request {i} cmd 0x{cmd:02x} args {args[:8].hex()}: {got[:16].hex()} != {expected[:16].hex()}"
    assert golden.replayed > 5


@cocotb.test()
@cocotb.parametrize(stall=[0.0, 0.5])
async def faults_are_dropped_and_the_link_recovers(dut, stall):
    link = Link(dut, 0.2, stall, seed=99)
    await link.start()
    rng = link.rng
    body = bytes([1, P.CMD_WRITE_BULK]) + b"never"
    faults = [
        b"\x00" + cobs.encode(body + (crc16(body) ^ 1).to_bytes(2, "big")) + b"\x00",  # bad CRC
        encode_frame(bytes([2, P.CMD_READ_REG, 0]))[:-3] + b"\x00",                  # truncated
        bytes(rng.randrange(256) for _ in range(300)) + b"\x00",                      # garbage
        b"\x00" + cobs.encode(bytes(MAX_FRAME + 50)) + b"\x00",                       # oversized
        b"\x05\x01\x02\x00",                                                           # COBS violation
    ]
    for fault in faults:
        link.send_raw(fault)
    got = await link.request(0x42, P.CMD_READ_REG, bytes([P.REG_FRAMES_DROPPED]))
    dropped = int.from_bytes(got[2:], "little")
    assert got[:2] == bytes([0x42, P.STATUS_OK]) and dropped >= 5, got.hex()
    # nothing from the bad WRITE_BULK reached the engine
    got = await link.request(0x43, P.CMD_READ_REG, bytes([P.ENGINE_REG_BASE + 1]))
    assert got == bytes([0x43, 0]) + (0).to_bytes(4, "little")
    # and good traffic still works
    data = bytes(range(min(200, MAX_FRAME - 8)))
    pos = len(data).to_bytes(4, "little")
    assert await link.request(0x44, P.CMD_WRITE_BULK, bytes(4) + data) == bytes([0x44, 0]) + pos
    assert await link.request(0x45, P.CMD_READ_BULK, (200).to_bytes(2, "little")) == bytes([0x45, 0]) + data
