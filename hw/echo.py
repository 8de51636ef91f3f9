"""Loopback engine for testing the link: bytes sent with WRITE_BULK come back from READ_BULK.

Each byte is XORed with the low byte of register 0 (``XOR``) on its way through a FIFO, so tests can
tell a real pass through the engine from a wire echo. Register 1 (``COUNT``) counts bytes taken in.
"""
from amaranth.hdl import Module, Signal
from amaranth.lib import fifo

from .engine import Engine

REG_XOR = 0
REG_COUNT = 1


class EchoEngine(Engine):
    engine_id = "ECHO"

    def __init__(self, depth: int = 512):
        if depth < 2:
            raise ValueError(f"echo FIFO depth must be at least 2, got {depth}")
        self.depth = depth
        super().__init__({"fifo_depth": depth})

    def elaborate(self, platform):
        m = Module()
        m.submodules.fifo = q = fifo.SyncFIFOBuffered(width=8, depth=self.depth)
        xor = Signal(8)
        count = Signal(32)

        m.d.comb += [
            q.w_data.eq(self.i.payload ^ xor),
            q.w_en.eq(self.i.valid),
            self.i.ready.eq(q.w_rdy),
            self.o.payload.eq(q.r_data),
            self.o.valid.eq(q.r_rdy),
            q.r_en.eq(self.o.ready),
        ]
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += count.eq(count + 1)
        with m.If(self.reg_we & (self.reg_addr == REG_XOR)):
            m.d.sync += xor.eq(self.reg_wdata)
        with m.If(self.reg_re):
            with m.Switch(self.reg_addr):
                with m.Case(REG_XOR):
                    m.d.sync += self.reg_rdata.eq(xor)
                with m.Case(REG_COUNT):
                    m.d.sync += self.reg_rdata.eq(count)
                with m.Default():
                    m.d.sync += self.reg_rdata.eq(0)
        return m
