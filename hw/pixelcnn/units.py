"""Building blocks of the convolution engine: line buffers, MAC array, requantiser, sampler.

All are ``wiring.Component``s with plain signal ports so that each can be unit-tested alone in the
Amaranth simulator; ``engine.ConvEngine`` wires them to the sequencer. Arithmetic is bit-exact with
``models.pixelcnn.integer`` (see that module's docstring) and ``hw.pixelcnn.sampler``.
"""
from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, wiring
from amaranth.lib.wiring import In, Out

from . import sampler as S

def clog2(n):
    return max(1, (n - 1).bit_length())


def _sat8(v):
    return Mux(v > 127, 127, Mux(v < -128, -128, v))


class LineBuffer(wiring.Component):
    """Every layer's input feature map, ``row_slots`` rows deep (a ring of row slots: row r lives in
    slot r mod row_slots), in one memory.

    Address = ``{layer, slot, column, channel}`` (power-of-two fields, no multiplier). A read names a
    tap ``(dy, dx)`` (dy, dx in -2..2) relative to ``(row, col)`` (``row``: signed, the reading op's
    output row) and a channel; taps above, below (row + dy >= ``height``) or left/right of the image
    read 0 (zero padding), one cycle later on ``rd_data``. Writes go to row ``wr_row``, column ``col``
    of a layer's map (``slot`` port: its low bits select the slot).
    """

    def __init__(self, max_layers=8, max_width=32, max_channels=32, row_slots=4):
        self.max_layers, self.max_width, self.max_channels = max_layers, max_width, max_channels
        self.lbits, self.wbits, self.cbits = clog2(max_layers), clog2(max_width), clog2(max_channels)
        self.sbits = clog2(row_slots)
        super().__init__({
            "row": In(signed(17)), "height": In(16), "col": In(self.wbits + 1), "slot": In(self.sbits),
            "width": In(self.wbits + 1),
            "rd_en": In(1), "rd_layer": In(self.lbits), "rd_dy": In(signed(3)), "rd_dx": In(signed(3)),
            "rd_c": In(self.cbits), "rd_data": Out(signed(8)),
            "wr_en": In(1), "wr_layer": In(self.lbits), "wr_c": In(self.cbits), "wr_data": In(signed(8)),
        })

    def elaborate(self, platform):
        m = Module()
        depth = 1 << (self.lbits + self.sbits + self.wbits + self.cbits)
        m.submodules.mem = mem = memory.Memory(shape=unsigned(8), depth=depth, init=[])
        rd = mem.read_port()
        wr = mem.write_port()

        rrow = Signal(signed(18))
        m.d.comb += rrow.eq(self.row + self.rd_dy)
        rslot = rrow[:self.sbits]
        colx = Signal(signed(self.wbits + 3))
        m.d.comb += colx.eq(self.col + self.rd_dx)
        inside = (colx >= 0) & (colx < self.width) & (rrow >= 0) & (rrow < self.height)
        pad = Signal()
        with m.If(self.rd_en):
            m.d.sync += pad.eq(~inside)
        m.d.comb += [
            rd.addr.eq(Cat(self.rd_c, colx[:self.wbits], rslot, self.rd_layer)),
            rd.en.eq(self.rd_en),
            self.rd_data.eq(Mux(pad, 0, rd.data.as_signed())),
            wr.addr.eq(Cat(self.wr_c, self.col[:self.wbits], self.slot, self.wr_layer)),
            wr.data.eq(self.wr_data),
            wr.en.eq(self.wr_en),
        ]
        return m


class MacArray(wiring.Component):
    """``lanes`` int8 x int8 multiply-accumulators sharing one activation (weights differ per lane).

    Beat in (``in_valid``): ``in_first`` starts a new sum, ``in_last`` ends it. Two stages: products
    are registered, then accumulated into int32. When a ``last`` beat has been accumulated the sums are
    copied to ``out_acc`` and ``out_valid`` pulses for one cycle (the next group may already be
    accumulating). ``last_pending``: a ``last`` beat is in flight.
    """

    def __init__(self, lanes=16):
        self.lanes = lanes
        super().__init__({
            "in_valid": In(1), "in_first": In(1), "in_last": In(1),
            "in_a": In(signed(8)), "in_w": In(data.ArrayLayout(signed(8), lanes)),
            "out_valid": Out(1), "out_acc": Out(data.ArrayLayout(signed(32), lanes)),
            "busy": Out(1), "last_pending": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        P = self.lanes
        prod = [Signal(signed(16), name=f"prod{p}") for p in range(P)]
        acc = [Signal(signed(32), name=f"acc{p}") for p in range(P)]
        va, fa, la = Signal(), Signal(), Signal()
        m.d.sync += [va.eq(self.in_valid), fa.eq(self.in_first), la.eq(self.in_last & self.in_valid)]
        with m.If(self.in_valid):
            m.d.sync += [prod[p].eq(self.in_a * self.in_w[p]) for p in range(P)]
        m.d.sync += self.out_valid.eq(0)
        with m.If(va):
            for p in range(P):
                nxt = Mux(fa, prod[p], acc[p] + prod[p])
                m.d.sync += acc[p].eq(nxt)
                with m.If(la):
                    m.d.sync += self.out_acc[p].eq(nxt)
            with m.If(la):
                m.d.sync += self.out_valid.eq(1)
        m.d.comb += [
            self.busy.eq(self.in_valid | va | self.out_valid),
            self.last_pending.eq((self.in_valid & self.in_last) | la),
        ]
        return m


class Requant(wiring.Component):
    """Serial requantiser: for k < count, accumulator o = base + k of a finished group,

        sum = acc[k] + bias[bbase + o]                         (int32 wrap)
        y   = clamp((sum * mult + 2**(shift-1)) >> shift, -128, 127)
        z   = lut[layer][half][y + 128]                        half = o & 1 if gated else 0
        plain: out[o] = sat8(z + centre[o]) if residual else z
        gated: pairs (a, b) = accumulators (2m, 2m+1):
               out[m] = clamp((z_a * z_b * gmult + 2**(gshift-1)) >> gshift, -128, 127)

    one output per cycle (plain) or per pair (gated) (``out_valid``, ``out_o``, ``out_data``) after a
    6-cycle latency. ``start`` latches ``count``/``base`` and the op's parameters (``bbase``, ``mult``,
    ``shift``, ``residual``, ``gated``, ``gmult``, ``gshift``, ``layer`` -> ``cur_layer``, ``out_map``
    -> ``cur_map``), so the sequencer may move on to the next op while the last group drains; ``acc``
    must hold until ``reading`` drops, and parameters may only change (a new ``start`` with another
    op) once ``busy`` has dropped. Bias and LUT memories live here. Twin: ``integer.op_forward``.
    """

    def __init__(self, lanes=16, max_layers=8, bias_depth=512, max_channels=32):
        self.lanes, self.max_layers, self.bias_depth, self.max_channels = lanes, max_layers, bias_depth, max_channels
        lbits = clog2(max_layers)
        super().__init__({
            "start": In(1), "count": In(range(lanes + 1)), "base": In(16),
            "acc": In(data.ArrayLayout(signed(32), lanes)),
            "centre": In(data.ArrayLayout(signed(8), max_channels)),
            "bbase": In(16), "mult": In(32), "shift": In(8), "residual": In(1), "layer": In(lbits),
            "gated": In(1), "gmult": In(16), "gshift": In(5), "out_map": In(8),
            "bias_we": In(1), "bias_waddr": In(range(bias_depth)), "bias_wdata": In(32),
            "lut_we": In(1), "lut_waddr": In(lbits + 9), "lut_wdata": In(8),
            "out_valid": Out(1), "out_o": Out(16), "out_data": Out(signed(8)), "cur_layer": Out(lbits),
            "cur_map": Out(8), "reading": Out(1), "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.bias = bias = memory.Memory(shape=signed(32), depth=self.bias_depth, init=[])
        m.submodules.lut = lut = memory.Memory(shape=signed(8), depth=self.max_layers * 512, init=[])
        brd, bwr = bias.read_port(), bias.write_port()
        lrd, lwr = lut.read_port(), lut.write_port()
        m.d.comb += [bwr.en.eq(self.bias_we), bwr.addr.eq(self.bias_waddr), bwr.data.eq(self.bias_wdata),
                     lwr.en.eq(self.lut_we), lwr.addr.eq(self.lut_waddr), lwr.data.eq(self.lut_wdata)]

        active = Signal()
        k = Signal(range(self.lanes + 1))
        count = Signal(range(self.lanes + 1))
        base = Signal(16)
        bbase, mult, shift, residual = Signal(16), Signal(32), Signal(8), Signal()
        gated, gmult, gshift = Signal(), Signal(16), Signal(5)
        with m.If(self.start):
            m.d.sync += [active.eq(self.count != 0), k.eq(0), count.eq(self.count), base.eq(self.base),
                         bbase.eq(self.bbase), mult.eq(self.mult), shift.eq(self.shift),
                         residual.eq(self.residual), self.cur_layer.eq(self.layer), gated.eq(self.gated),
                         gmult.eq(self.gmult), gshift.eq(self.gshift), self.cur_map.eq(self.out_map)]
        # S0: select accumulator, read bias, pick residual
        o0 = Signal(16)
        m.d.comb += [o0.eq(base + k), brd.addr.eq(bbase + o0), brd.en.eq(1)]
        v1, v2, v3, v4, v5, v6 = (Signal(name=f"v{i}") for i in range(1, 7))
        acc1, sum2 = Signal(signed(32)), Signal(signed(32))
        prod3 = Signal(signed(66))
        o1, o2, o3, o4, o5, o6 = (Signal(16, name=f"o{i}") for i in range(1, 7))
        r1, r2, r3, r4 = (Signal(signed(8), name=f"r{i}") for i in range(1, 5))
        m.d.sync += v1.eq(active)
        with m.If(active):
            m.d.sync += [acc1.eq(self.acc[k[:clog2(self.lanes)] if self.lanes > 1 else 0]), o1.eq(o0),
                         r1.eq(self.centre[o0[:clog2(self.max_channels)]]), k.eq(k + 1)]
            with m.If(k + 1 == count):
                m.d.sync += active.eq(0)
        # S1: add bias
        m.d.sync += [v2.eq(v1), sum2.eq(acc1 + brd.data), o2.eq(o1), r2.eq(r1)]
        # S2: multiply
        m.d.sync += [v3.eq(v2), prod3.eq(sum2 * Cat(mult, Const(0, 1)).as_signed()), o3.eq(o2), r3.eq(r2)]
        # S3: round, shift, saturate, LUT address (gated: table 1 for the sigmoid half)
        shm1 = Signal(6)
        m.d.comb += shm1.eq(shift - 1)
        rnd = Signal(66)
        m.d.comb += rnd.eq(Const(1, 66) << shm1)
        t = Signal(signed(66))
        m.d.comb += t.eq((prod3 + rnd.as_signed()) >> shift[:6])
        y = Signal(signed(8))
        m.d.comb += y.eq(_sat8(t))
        m.d.comb += [lrd.addr.eq(Cat(y.as_unsigned() ^ 0x80, gated & o3[0], self.cur_layer)), lrd.en.eq(1)]
        m.d.sync += [v4.eq(v3), o4.eq(o3), r4.eq(r3)]
        # S4: LUT data; plain: residual; gated: hold the tanh half, multiply by the sigmoid half
        z = lrd.data
        za = Signal(signed(8))
        d5 = Signal(signed(8))
        p5 = Signal(signed(17))
        with m.If(v4 & gated & ~o4[0]):
            m.d.sync += za.eq(z)
        m.d.sync += [v5.eq(v4 & (~gated | o4[0])), o5.eq(Mux(gated, o4 >> 1, o4)),
                     d5.eq(Mux(residual, _sat8(z + r4), z)), p5.eq(za * z)]
        # S5: gate product * gmult, rounded and shifted (33-bit signed product)
        gsm1 = Signal(5)
        grnd = Signal(34)
        q = Signal(signed(34))
        m.d.comb += [gsm1.eq(gshift - 1), grnd.eq(Const(1, 34) << gsm1),
                     q.eq(p5 * Cat(gmult, Const(0, 1)).as_signed() + grnd.as_signed())]
        d6 = Signal(signed(8))
        m.d.sync += [v6.eq(v5), o6.eq(o5), d6.eq(Mux(gated, _sat8(q >> gshift), d5))]
        m.d.comb += [
            self.out_valid.eq(v6), self.out_o.eq(o6), self.out_data.eq(d6),
            self.reading.eq(active | self.start),
            self.busy.eq(active | self.start | v1 | v2 | v3 | v4 | v5 | v6),
        ]
        return m


class Sampler(wiring.Component):
    """Gumbel-max sampler (twin: ``sampler.SamplerTwin``). Logits arrive one per cycle
    (``in_first`` on level 0, ``in_last`` on level L-1); ``done`` pulses with ``sample`` two cycles
    after the last one."""

    def __init__(self):
        super().__init__({
            "seed_we": In(1), "seed": In(32), "mult": In(16),
            "in_valid": In(1), "in_first": In(1), "in_last": In(1), "in_logit": In(signed(8)),
            "done": Out(1), "sample": Out(8), "busy": Out(1), "state": Out(32),
        })

    def elaborate(self, platform):
        m = Module()
        table = [int(v) for v in S.gumbel_table()]
        m.submodules.gumbel = g = memory.Memory(shape=signed(S.GBITS), depth=len(table), init=table)
        grd = g.read_port()
        x = self.state
        x1, x2, x3 = Signal(32), Signal(32), Signal(32)
        m.d.comb += [x1.eq(x ^ (x << 13)[:32]), x2.eq(x1 ^ (x1 >> 17)), x3.eq(x2 ^ (x2 << 5)[:32])]
        m.d.comb += [grd.addr.eq(x3[32 - S.RBITS:]), grd.en.eq(1)]
        v1, f1, l1 = Signal(), Signal(), Signal()
        lg1 = Signal(signed(8))
        idx, idx1 = Signal(8), Signal(8)
        best = Signal(signed(40))
        with m.If(self.seed_we):
            m.d.sync += x.eq(self.seed)
        with m.Elif(self.in_valid):
            m.d.sync += [x.eq(x3), idx.eq(Mux(self.in_first, 1, idx + 1)), idx1.eq(Mux(self.in_first, 0, idx))]
        m.d.sync += [v1.eq(self.in_valid), f1.eq(self.in_first), l1.eq(self.in_last & self.in_valid),
                     lg1.eq(self.in_logit)]
        score = Signal(signed(40))
        m.d.comb += score.eq(lg1 * self.mult + grd.data)
        m.d.sync += self.done.eq(0)
        with m.If(v1):
            with m.If(f1 | (score > best)):
                m.d.sync += [best.eq(score), self.sample.eq(idx1)]
            with m.If(l1):
                m.d.sync += self.done.eq(1)
        m.d.comb += self.busy.eq(self.in_valid | v1)
        return m
