"""CRC-16/IBM-3740 (poly 0x1021, init 0xFFFF, MSB first, no final xor), one byte per clock.

The host's reference is the PyPI ``crc`` package (``crc.Crc16.IBM_3740``); ``tests/test_link_units.py``
checks this gateware against it.
"""
from amaranth.hdl import Cat, Module, Signal, Value
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from .cobs import FrameByte

CRC_INIT = 0xFFFF
CRC_POLY = 0x1021


def _crc16_byte_matrix():
    """For each next-CRC bit, the CRC bits and data bits it is the XOR of (the CRC is linear)."""
    # Track bits symbolically as sets of ("c", i) / ("d", i) terms; XOR is symmetric difference.
    crc = [frozenset({("c", i)}) for i in range(16)]
    for i in reversed(range(8)):
        feedback = crc[15] ^ frozenset({("d", i)})
        crc = [frozenset()] + crc[:15]
        crc = [bit ^ feedback if (CRC_POLY >> k) & 1 else bit for k, bit in enumerate(crc)]
    return crc


_MATRIX = _crc16_byte_matrix()


def crc16_update(crc: Value, byte: Value) -> Value:
    """Combinational next-CRC after shifting in ``byte``: one flat XOR per bit."""
    bits = []
    for terms in _MATRIX:
        operands = [crc[i] if kind == "c" else byte[i] for kind, i in sorted(terms)]
        bit = operands[0]
        for operand in operands[1:]:
            bit = bit ^ operand
        bits.append(bit)
    return Cat(*bits)


class CrcAppender(wiring.Component):
    """Passes frame bytes through and inserts the big-endian CRC-16 before each ``end`` item."""

    i: In(stream.Signature(FrameByte))
    o: Out(stream.Signature(FrameByte))
    busy: Out(1)

    def elaborate(self, platform):
        m = Module()
        crc = Signal(16, init=CRC_INIT)
        with m.FSM():
            with m.State("PASS"):
                with m.If(self.i.payload.end):
                    m.d.comb += [self.o.valid.eq(self.i.valid), self.o.payload.data.eq(crc[8:])]
                    with m.If(self.i.valid & self.o.ready):
                        m.next = "CRC_LO"
                with m.Else():
                    m.d.comb += [self.o.valid.eq(self.i.valid), self.o.payload.eq(self.i.payload),
                                 self.i.ready.eq(self.o.ready)]
                    with m.If(self.i.valid & self.o.ready):
                        m.d.sync += crc.eq(crc16_update(crc, self.i.payload.data))
            with m.State("CRC_LO"):
                m.d.comb += [self.busy.eq(1), self.o.valid.eq(1), self.o.payload.data.eq(crc[:8])]
                with m.If(self.o.ready):
                    m.next = "END"
            with m.State("END"):
                m.d.comb += [self.busy.eq(1), self.o.valid.eq(1), self.o.payload.end.eq(1),
                             self.i.ready.eq(self.o.ready)]
                with m.If(self.o.ready):
                    m.d.sync += crc.eq(CRC_INIT)
                    m.next = "PASS"
        return m
