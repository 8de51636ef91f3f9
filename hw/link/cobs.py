"""COBS framing in gateware (Cheshire & Baker, "Consistent Overhead Byte Stuffing", 1999).

Byte-exact with the PyPI ``cobs`` package (``cobs.cobs.encode``/``decode``), which the tests use as
the golden. Frames are delimited by 0x00 on the wire. Inside the design a frame is a stream of
``FrameByte`` items: data bytes, then one item with ``end`` set (its ``data`` is ignored).
"""
from amaranth.hdl import Module, Signal, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out


class FrameByte(data.Struct):
    data: 8
    end: 1


class DecodedByte(data.Struct):
    data: 8
    end: 1
    err: 1  # with ``end``: the frame broke COBS rules (a delimiter inside a block)


class CobsDecoder(wiring.Component):
    """Wire bytes in, decoded frame bytes out; a delimiter produces an ``end`` item."""

    i: In(stream.Signature(8))
    o: Out(stream.Signature(DecodedByte))

    def elaborate(self, platform):
        m = Module()
        remaining = Signal(8)    # data bytes left in the current block; 0 = next byte is a code
        block_ff = Signal()      # current block was opened by 0xFF (no implicit zero after it)
        pending_zero = Signal()  # an implicit zero is owed before the next block

        with m.If(self.i.valid):
            with m.If(self.i.payload == 0):
                m.d.comb += [
                    self.o.valid.eq(1),
                    self.o.payload.end.eq(1),
                    self.o.payload.err.eq(remaining != 0),
                    self.i.ready.eq(self.o.ready),
                ]
                with m.If(self.o.ready):
                    m.d.sync += [remaining.eq(0), pending_zero.eq(0)]
            with m.Elif(remaining == 0):
                with m.If(pending_zero):
                    m.d.comb += [self.o.valid.eq(1), self.o.payload.data.eq(0)]
                    with m.If(self.o.ready):
                        m.d.sync += pending_zero.eq(0)
                with m.Else():
                    m.d.comb += self.i.ready.eq(1)
                    m.d.sync += [
                        remaining.eq(self.i.payload - 1),
                        block_ff.eq(self.i.payload == 0xFF),
                        pending_zero.eq(self.i.payload == 1),
                    ]
            with m.Else():
                m.d.comb += [
                    self.o.valid.eq(1),
                    self.o.payload.data.eq(self.i.payload),
                    self.i.ready.eq(self.o.ready),
                ]
                with m.If(self.o.ready):
                    m.d.sync += remaining.eq(remaining - 1)
                    with m.If(remaining == 1):
                        m.d.sync += pending_zero.eq(~block_ff)
        return m


class CobsEncoder(wiring.Component):
    """Frame bytes in, wire bytes out (COBS blocks then a 0x00 delimiter per frame).

    A block of up to 254 non-zero bytes is held in a small memory until its length is known.
    """

    i: In(stream.Signature(FrameByte))
    o: Out(stream.Signature(8))
    busy: Out(1)

    def elaborate(self, platform):
        m = Module()
        m.submodules.block = block = memory.Memory(shape=unsigned(8), depth=254, init=[])
        wr = block.write_port()
        rd = block.read_port()

        length = Signal(range(255))  # bytes held in the current block
        code = Signal(8)
        last = Signal()              # the block being emitted closes the frame
        after_ff = Signal()          # the previous block was a full 0xFF block
        pos = Signal(range(256))     # 0 = code byte, k = block[k - 1]
        transfer = self.o.valid & self.o.ready

        m.d.comb += [wr.addr.eq(length), wr.data.eq(self.i.payload.data),
                     rd.addr.eq(pos - 1 + transfer)]

        with m.FSM():
            with m.State("FILL"):
                m.d.comb += self.i.ready.eq(1)
                with m.If(self.i.valid):
                    with m.If(self.i.payload.end):
                        m.d.sync += [code.eq(length + 1), last.eq(1), pos.eq(0)]
                        with m.If((length == 0) & after_ff):
                            m.next = "DELIM"
                        with m.Else():
                            m.next = "EMIT"
                    with m.Elif(self.i.payload.data == 0):
                        m.d.sync += [code.eq(length + 1), last.eq(0), pos.eq(0), after_ff.eq(0)]
                        m.next = "EMIT"
                    with m.Else():
                        m.d.comb += wr.en.eq(1)
                        m.d.sync += length.eq(length + 1)
                        with m.If(length == 253):
                            m.d.sync += [code.eq(0xFF), last.eq(0), pos.eq(0), after_ff.eq(1)]
                            m.next = "EMIT"
            with m.State("EMIT"):
                m.d.comb += [
                    self.busy.eq(1),
                    self.o.valid.eq(1),
                ]
                with m.If(pos == 0):
                    m.d.comb += self.o.payload.eq(code)
                with m.Else():
                    m.d.comb += self.o.payload.eq(rd.data)
                with m.If(transfer):
                    m.d.sync += pos.eq(pos + 1)
                    with m.If(pos == length):
                        m.d.sync += length.eq(0)
                        with m.If(last):
                            m.next = "DELIM"
                        with m.Else():
                            m.next = "FILL"
            with m.State("DELIM"):
                m.d.comb += [self.busy.eq(1), self.o.valid.eq(1), self.o.payload.eq(0)]
                with m.If(self.o.ready):
                    m.d.sync += [after_ff.eq(0), length.eq(0)]
                    m.next = "FILL"
        return m
