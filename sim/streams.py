"""cocotb drivers shared by the testbenches.

Byte streams in Amaranth's export naming (``<name>__valid/ready/payload``) with random idle cycles on
the producer side and random ``ready`` backpressure on the consumer side, and ``EngineTB``, the base
of the testbenches of engines that follow the ``hw/engine.py`` contract (streams ``i``/``o`` and the
register port). Inputs change at the falling edge; the ReadOnly phase right after it shows what the
next rising edge transfers.
"""
import random
from collections import deque

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly


def _port(dut, name):
    return (getattr(dut, f"{name}__valid"), getattr(dut, f"{name}__ready"), getattr(dut, f"{name}__payload"))


async def source(dut, name: str, items: deque, rng: random.Random, idle: float):
    """Offer ``items`` (popped as they are taken) on input stream ``name``; idle with probability ``idle``."""
    valid, ready, payload = _port(dut, name)
    while True:
        await FallingEdge(dut.clk)
        offer = bool(items) and rng.random() >= idle
        if offer:
            payload.value = items[0]
        valid.value = int(offer)
        await ReadOnly()
        if offer and ready.value:
            items.popleft()


async def sink(dut, name: str, on_item, rng: random.Random, stall: float):
    """Take items from output stream ``name`` (``on_item(int)`` each); hold ``ready`` low with probability ``stall``."""
    valid, ready, payload = _port(dut, name)
    while True:
        await FallingEdge(dut.clk)
        take = rng.random() >= stall
        ready.value = int(take)
        await ReadOnly()
        if take and valid.value:
            on_item(int(payload.value))


class EngineTB:
    """Clock, reset, byte streams ``i``/``o`` and register access for an engine exported alone."""

    def __init__(self, dut, *, idle=0.0, stall=0.0, seed=0):
        self.dut = dut
        self.rng = random.Random(seed)
        self.idle, self.stall = idle, stall
        self.to_dut = deque()
        self.from_dut = deque()

    async def start(self):
        dut = self.dut
        Clock(dut.clk, 10, unit="ns").start()
        dut.rst.value = 1
        for sig in (dut.i__valid, dut.i__payload, dut.o__ready, dut.reg_we, dut.reg_re, dut.reg_addr, dut.reg_wdata):
            sig.value = 0
        for _ in range(3):
            await FallingEdge(dut.clk)
        dut.rst.value = 0
        cocotb.start_soon(source(dut, "i", self.to_dut, self.rng, self.idle))
        cocotb.start_soon(sink(dut, "o", self.from_dut.append, self.rng, self.stall))

    async def write(self, addr, value):
        dut = self.dut
        await FallingEdge(dut.clk)
        dut.reg_addr.value = addr
        dut.reg_wdata.value = value & 0xFFFFFFFF
        dut.reg_we.value = 1
        await FallingEdge(dut.clk)
        dut.reg_we.value = 0
        await FallingEdge(dut.clk)  # an engine may apply a write on the cycle after its pulse (hw.engine)

    async def read(self, addr):
        dut = self.dut
        await FallingEdge(dut.clk)
        dut.reg_addr.value = addr
        dut.reg_re.value = 1
        await FallingEdge(dut.clk)
        dut.reg_re.value = 0
        return int(dut.reg_rdata.value)
