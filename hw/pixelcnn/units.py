"""Building blocks of the convolution engine: line buffers, MAC array, requantiser, sampler.

All are ``wiring.Component``s with plain signal ports so that each can be unit-tested alone in the
Amaranth simulator; ``engine.ConvEngine`` wires them to the sequencer. Arithmetic is bit-exact with
``models.pixelcnn.integer`` (see that module's docstring) and ``hw.pixelcnn.sampler``.
"""
from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, wiring
from amaranth.lib.wiring import In, Out

from models.pixelcnn import integer as I

from . import sampler as S

TILT_DY_BITS = 22  # signed luma-sum offset Y - T of the sampler's tilt (|Y|, |T| < 2**20)
assert I.TILT_FRAC == S.GFRAC  # the tilt's penalties are in the scores' units

def clog2(n):
    return max(1, (n - 1).bit_length())


def _sat8(v):
    return Mux(v > 127, 127, Mux(v < -128, -128, v))


class BankedMemory(wiring.Component):
    """``depth`` words of ``width`` bits in block-RAM banks of ``bank_depth`` words, read in two steps: every
    bank is read (``rd_en``, ``rd_addr``), every bank's word is registered beside its RAM (free-running), and
    ``rd_data`` is the addressed bank's registered word, two cycles after ``rd_en`` (a mux of registers, for the
    reader to register). On the ECP5 the banks of a large memory sit in block-RAM columns across the die; without
    the bank registers a RAM's 5.8 ns clock-to-out, the route to a far reader and the read mux were one path
    (line buffer and weight memory: 13.8-14.0 ns in the 75 MHz builds, docs/conv-engine.md)."""

    def __init__(self, width, depth, bank_depth=2048):
        if depth < 2 or depth & (depth - 1) or bank_depth < 2 or bank_depth & (bank_depth - 1):
            raise ValueError(f"memory depth {depth} and bank depth {bank_depth} must be powers of two >= 2")
        self.width, self.depth, self.bank_depth = width, depth, min(bank_depth, depth)
        abits = clog2(depth)
        super().__init__({"rd_addr": In(abits), "rd_en": In(1), "rd_data": Out(width),
                          "wr_addr": In(abits), "wr_data": In(width), "wr_en": In(1)})

    def elaborate(self, platform):
        m = Module()
        nbanks = self.depth // self.bank_depth
        obits = clog2(self.bank_depth)  # address bits within a bank; the bits above select the bank
        sbits = max(1, clog2(nbanks))
        sel_r, sel_s = Signal(sbits), Signal(sbits)
        en_r = Signal()
        m.d.sync += en_r.eq(self.rd_en)
        with m.If(self.rd_en):
            m.d.sync += sel_r.eq(self.rd_addr[obits:])
        with m.If(en_r):
            m.d.sync += sel_s.eq(sel_r)
        words = []
        for k in range(nbanks):
            bank = memory.Memory(shape=unsigned(self.width), depth=self.bank_depth, init=[])
            m.submodules[f"bank{k}"] = bank
            rd, wr = bank.read_port(), bank.write_port()
            word = Signal(self.width, name=f"bank{k}_q")
            m.d.sync += word.eq(rd.data)
            words.append(word)
            m.d.comb += [rd.addr.eq(self.rd_addr[:obits]), rd.en.eq(self.rd_en), wr.addr.eq(self.wr_addr[:obits]),
                         wr.data.eq(self.wr_data),
                         wr.en.eq(self.wr_en & (self.wr_addr[obits:] == k) if nbanks > 1 else self.wr_en)]
        m.d.comb += self.rd_data.eq(Array(words)[sel_s] if nbanks > 1 else words[0])
        return m


class LineBuffer(wiring.Component):
    """Every layer's input feature map, ``row_slots`` rows deep (a ring of row slots: row r lives in
    slot r mod row_slots), in block-RAM banks of ``bank_depth`` words.

    Address = ``{layer, slot, column, channel}`` (power-of-two fields, no multiplier). A read names a
    tap ``(dy, dx)`` (dy, dx in -2..2) relative to ``(row, col)`` (``row``: signed, the reading op's
    output row) and a channel; taps above, below (row + dy >= ``height``) or left/right of the image
    read 0 (zero padding). Four read stages: the address and the padding flag are registered; every bank
    is read; every bank's word is registered (free-running registers beside their RAMs: the banks are spread
    over the chip, and one memory's RAM -> 32:1 read mux -> register path was the 75 MHz ECP5 build's
    critical path, 13.8 ns with 6.7 ns of routing); the selected bank's (padded) word is registered:
    ``rd_data`` holds it ``READ_LATENCY`` = 4 cycles after ``rd_en``. Writes go to column ``col`` of a
    layer's map in slot ``slot``.
    """

    READ_LATENCY = 4

    def __init__(self, max_layers=8, max_width=32, max_channels=32, row_slots=4, bank_depth=2048):
        self.max_layers, self.max_width, self.max_channels = max_layers, max_width, max_channels
        self.lbits, self.wbits, self.cbits = clog2(max_layers), clog2(max_width), clog2(max_channels)
        self.sbits = clog2(row_slots)
        self.bank_depth = bank_depth
        super().__init__({
            "row": In(signed(17)), "height": In(16), "col": In(self.wbits + 1), "slot": In(self.sbits),
            "width": In(self.wbits + 1),
            "rd_en": In(1), "rd_layer": In(self.lbits), "rd_dy": In(signed(3)), "rd_dx": In(signed(3)),
            "rd_c": In(self.cbits), "rd_data": Out(signed(8)),
            "wr_en": In(1), "wr_layer": In(self.lbits), "wr_c": In(self.cbits), "wr_data": In(signed(8)),
        })

    def elaborate(self, platform):
        m = Module()
        abits = self.lbits + self.sbits + self.wbits + self.cbits
        depth = 1 << abits

        rrow = Signal(signed(18))
        m.d.comb += rrow.eq(self.row + self.rd_dy)
        rslot = rrow[:self.sbits]
        colx = Signal(signed(self.wbits + 3))
        m.d.comb += colx.eq(self.col + self.rd_dx)
        inside = (colx >= 0) & (colx < self.width) & (rrow >= 0) & (rrow < self.height)
        # stage 1: address and padding flag registered
        addr_q = Signal(abits)
        en_q, pad_q = Signal(), Signal()
        m.d.sync += en_q.eq(self.rd_en)
        with m.If(self.rd_en):
            m.d.sync += [addr_q.eq(Cat(self.rd_c, colx[:self.wbits], rslot, self.rd_layer)), pad_q.eq(~inside)]
        # stages 2 and 3: every bank read, every bank's word registered (BankedMemory); stage 4: the selected
        # (padded) word registered
        m.submodules.mem = mem = BankedMemory(8, depth, self.bank_depth)
        en_r, en_s, pad_r, pad_s = Signal(), Signal(), Signal(), Signal()
        m.d.sync += [en_r.eq(en_q), en_s.eq(en_r)]
        with m.If(en_q):
            m.d.sync += pad_r.eq(pad_q)
        with m.If(en_r):
            m.d.sync += pad_s.eq(pad_r)
        m.d.comb += [mem.rd_addr.eq(addr_q), mem.rd_en.eq(en_q),
                     mem.wr_addr.eq(Cat(self.wr_c, self.col[:self.wbits], self.slot, self.wr_layer)),
                     mem.wr_data.eq(self.wr_data), mem.wr_en.eq(self.wr_en)]
        with m.If(en_s):
            m.d.sync += self.rd_data.eq(Mux(pad_s, 0, mem.rd_data.as_signed()))
        return m


class MacArray(wiring.Component):
    """``lanes`` int8 x int8 multiply-accumulators sharing one activation (weights differ per lane).

    Beat in (``in_valid``): ``in_first`` starts a new sum, ``in_last`` ends it. Three stages: the beat
    is registered, its products are registered, then accumulated into int32. When a ``last`` beat has
    been accumulated the sums are copied to ``out_acc`` and ``out_valid`` pulses for one cycle (the next
    group may already be accumulating). ``last_pending``: a ``last`` beat is in flight.
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
        # stage 0: the beat registered (the activation/weight memories' outputs go straight to a FF)
        v0, f0, l0 = Signal(), Signal(), Signal()
        a0 = Signal(signed(8))
        w0 = Signal(data.ArrayLayout(signed(8), P))
        m.d.sync += [v0.eq(self.in_valid), f0.eq(self.in_first), l0.eq(self.in_last & self.in_valid)]
        with m.If(self.in_valid):
            m.d.sync += [a0.eq(self.in_a), w0.eq(self.in_w)]
        # stage 1: products
        va, fa, la = Signal(), Signal(), Signal()
        m.d.sync += [va.eq(v0), fa.eq(f0), la.eq(l0 & v0)]
        with m.If(v0):
            m.d.sync += [prod[p].eq(a0 * w0[p]) for p in range(P)]
        # stage 2: accumulate
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
            self.busy.eq(self.in_valid | v0 | va | self.out_valid),
            self.last_pending.eq((self.in_valid & self.in_last) | l0 | la),
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
    ``LATENCY``-cycle latency (a register after every arithmetic step). ``start`` latches
    ``count``/``base`` and the op's parameters (``bbase``, ``mult``, ``shift``, ``residual``, ``gated``,
    ``gmult``, ``gshift``, ``layer`` -> ``cur_layer``, ``out_map`` -> ``cur_map``), so the sequencer may move on to the next op while the last group drains; ``acc``
    must hold until ``reading`` drops, and parameters may only change (a new ``start`` with another
    op) once ``busy`` has dropped. Bias and LUT memories live here. Twin: ``integer.op_forward``.
    """

    LATENCY = 14  # cycles from an accumulator's selection to its output

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
        ocnt, bptr = Signal(16), Signal(16)  # output index base + k and its bias address bbase + base + k
        mult, shift, residual = Signal(32), Signal(8), Signal()
        gated, gmult, gshift = Signal(), Signal(16), Signal(5)
        with m.If(self.start):
            m.d.sync += [active.eq(self.count != 0), k.eq(0), count.eq(self.count), ocnt.eq(self.base),
                         bptr.eq(self.bbase + self.base), mult.eq(self.mult), shift.eq(self.shift),
                         residual.eq(self.residual), self.cur_layer.eq(self.layer), gated.eq(self.gated),
                         gmult.eq(self.gmult), gshift.eq(self.gshift), self.cur_map.eq(self.out_map)]
        # Each stage carries (valid, output index, residual value) to the next; every arithmetic step
        # (bias read, bias add, 33x32 multiply as four 17x17 partial products, 66-bit sum, variable shift,
        # saturation, table reads, gate product) has a register after it.
        L = self.LATENCY
        v = [Signal(name=f"v{i}") for i in range(L + 1)]
        o = [Signal(16, name=f"o{i}") for i in range(L + 1)]
        r = [Signal(signed(8), name=f"r{i}") for i in range(L + 1)]
        for i in range(1, L + 1):
            if i != 11:  # stage 10 drops the tanh half of a gated pair and halves the index
                m.d.sync += [v[i].eq(v[i - 1]), o[i].eq(o[i - 1]), r[i].eq(r[i - 1])]
        # S0: select the accumulator, read the bias, pick the residual
        m.d.comb += [v[0].eq(active), o[0].eq(ocnt), brd.addr.eq(bptr), brd.en.eq(1)]
        acc1 = Signal(signed(32))
        with m.If(active):
            m.d.sync += [acc1.eq(self.acc[k[:clog2(self.lanes)] if self.lanes > 1 else 0]), k.eq(k + 1),
                         ocnt.eq(ocnt + 1), bptr.eq(bptr + 1)]
            with m.If(k + 1 == count):
                m.d.sync += active.eq(0)
        m.d.comb += r[0].eq(self.centre[ocnt[:clog2(self.max_channels)]])
        # S1: the bias registered (no add on the RAM's output); S2: add it
        acc2, bias2 = Signal(signed(32)), Signal(signed(32))
        sum2 = Signal(signed(32))
        m.d.sync += [acc2.eq(acc1), bias2.eq(brd.data), sum2.eq(acc2 + bias2)]
        # S3: partial products of sum (signed 32 = sh:sl) * mult (unsigned 32 = mh:ml)
        sl, sh = sum2[:16], sum2[16:].as_signed()
        ml, mh = mult[:16], mult[16:]
        p_ll, p_lh = Signal(32), Signal(33)
        p_hl, p_hh = Signal(signed(33)), Signal(signed(33))
        m.d.sync += [p_ll.eq(sl * ml), p_lh.eq(sl * mh), p_hl.eq(sh * ml), p_hh.eq(sh * mh)]
        # S4: middle partial sum; outer products concatenate (p_ll < 2**32)
        mid = Signal(signed(35))
        outer = Signal(signed(65))
        m.d.sync += [mid.eq(p_lh.as_signed() + p_hl), outer.eq(Cat(p_ll, p_hh).as_signed())]
        # S5: + rounding 2**(shift-1) on the middle term
        shm1 = Signal(6)
        m.d.comb += shm1.eq(shift - 1)
        rnd = Signal(66)
        m.d.comb += rnd.eq(Const(1, 66) << shm1)
        mid_r = Signal(signed(68))
        outer4 = Signal(signed(65))
        m.d.sync += [mid_r.eq((mid << 16) + rnd.as_signed()), outer4.eq(outer)]
        # S6: the full (sum * mult + round)
        t5 = Signal(signed(69))
        m.d.sync += t5.eq(outer4 + mid_r)
        # S7: arithmetic shift
        t6 = Signal(signed(69))
        m.d.sync += t6.eq(t5 >> shift[:6])
        # S8: saturate, LUT address (gated: table 1 for the sigmoid half)
        y = Signal(signed(8))
        m.d.comb += y.eq(_sat8(t6))
        m.d.comb += [lrd.addr.eq(Cat(y.as_unsigned() ^ 0x80, gated & o[8][0], self.cur_layer)), lrd.en.eq(1)]
        # S9: LUT data registered
        z = Signal(signed(8))
        m.d.sync += z.eq(lrd.data)
        # S10: plain: residual; gated: hold the tanh half, multiply by the sigmoid half
        za = Signal(signed(8))
        d10 = Signal(signed(8))
        p10 = Signal(signed(17))
        with m.If(v[10] & gated & ~o[10][0]):
            m.d.sync += za.eq(z)
        m.d.sync += [v[11].eq(v[10] & (~gated | o[10][0])), o[11].eq(Mux(gated, o[10] >> 1, o[10])),
                     d10.eq(Mux(residual, _sat8(z + r[10]), z)), p10.eq(za * z)]
        # S11: gate product * gmult (33-bit signed product)
        pg = Signal(signed(34))
        d11 = Signal(signed(8))
        m.d.sync += [pg.eq(p10 * Cat(gmult, Const(0, 1)).as_signed()), d11.eq(d10)]
        # S12: + rounding 2**(gshift-1)
        gsm1 = Signal(5)
        grnd = Signal(34)
        q = Signal(signed(34))
        d12 = Signal(signed(8))
        m.d.comb += [gsm1.eq(gshift - 1), grnd.eq(Const(1, 34) << gsm1)]
        m.d.sync += [q.eq(pg + grnd.as_signed()), d12.eq(d11)]
        # S13: shift, saturate
        d13 = Signal(signed(8))
        m.d.sync += d13.eq(Mux(gated, _sat8(q >> gshift), d12))
        m.d.comb += [
            self.out_valid.eq(v[L]), self.out_o.eq(o[L]), self.out_data.eq(d13),
            self.reading.eq(active | self.start),
            self.busy.eq(active | self.start | Cat(v[1:]).any()),
        ]
        return m


class Sampler(wiring.Component):
    """Gumbel-max sampler (twin: ``sampler.SamplerTwin``). Logits arrive one per cycle
    (``in_first`` on level 0, ``in_last`` on level L-1); ``done`` pulses with ``sample`` five cycles
    after the last one (table reads, scaled logit, Gumbel sum, penalty, argmax). ``in_ok`` = 0 excludes a
    level from the argmax (the generator still steps for it); with no level allowed the sample is 0.
    Luma tilt (``integer.tilt_table``): with ``in_tilt`` the penalty ``table[tilt_index(in_dy)]`` (a loadable
    table, ``tilt_we``/``tilt_waddr``/``tilt_wdata``) is subtracted from the level's score."""

    def __init__(self):
        super().__init__({
            "seed_we": In(1), "seed": In(32), "mult": In(16),
            "in_valid": In(1), "in_first": In(1), "in_last": In(1), "in_logit": In(signed(8)), "in_ok": In(1, init=1),
            "in_tilt": In(1), "in_dy": In(signed(TILT_DY_BITS)),
            "tilt_we": In(1), "tilt_waddr": In(range(I.TILT_ENTRIES)), "tilt_wdata": In(I.TILT_BITS),
            "done": Out(1), "sample": Out(8), "busy": Out(1), "state": Out(32),
        })

    def elaborate(self, platform):
        m = Module()
        table = [int(v) for v in S.gumbel_table()]
        m.submodules.gumbel = g = memory.Memory(shape=signed(S.GBITS), depth=len(table), init=table)
        m.submodules.tilt = t = memory.Memory(shape=unsigned(I.TILT_BITS), depth=I.TILT_ENTRIES, init=[])
        grd, trd, twr = g.read_port(), t.read_port(), t.write_port()
        m.d.comb += [twr.addr.eq(self.tilt_waddr), twr.data.eq(self.tilt_wdata), twr.en.eq(self.tilt_we)]
        x = self.state
        x1, x2, x3 = Signal(32), Signal(32), Signal(32)
        m.d.comb += [x1.eq(x ^ (x << 13)[:32]), x2.eq(x1 ^ (x1 >> 17)), x3.eq(x2 ^ (x2 << 5)[:32])]
        m.d.comb += [grd.addr.eq(x3[32 - S.RBITS:]), grd.en.eq(1)]
        v1, f1, l1, ok1, ok2, ok3, ok4, have = (Signal(name=n) for n in ("v1", "f1", "l1", "ok1", "ok2", "ok3", "ok4",
                                                                          "have"))
        t1, t2 = Signal(), Signal()
        lg1 = Signal(signed(8))
        dy1 = Signal(signed(TILT_DY_BITS))
        idx, idx1 = Signal(8), Signal(8)
        # score = logit * mult + G - penalty: 25 + 18 bits signed, less 20 bits unsigned: 28 bits (and best)
        best = Signal(signed(28))
        with m.If(self.seed_we):
            m.d.sync += x.eq(self.seed)
        with m.Elif(self.in_valid):
            m.d.sync += [x.eq(x3), idx.eq(Mux(self.in_first, 1, idx + 1)), idx1.eq(Mux(self.in_first, 0, idx))]
        m.d.sync += [v1.eq(self.in_valid), f1.eq(self.in_first), l1.eq(self.in_last & self.in_valid),
                     lg1.eq(self.in_logit), ok1.eq(self.in_ok), ok2.eq(ok1), ok3.eq(ok2), ok4.eq(ok3),
                     t1.eq(self.in_tilt), t2.eq(t1), dy1.eq(self.in_dy)]
        # the tilt table's address: dy1 >> TILT_SHIFT clamped to the table, offset to 0 .. TILT_ENTRIES - 1
        half = I.TILT_ENTRIES // 2
        q = dy1 >> I.TILT_SHIFT
        m.d.comb += [trd.addr.eq(Mux(q < -half, 0, Mux(q >= half, I.TILT_ENTRIES - 1, q + half))), trd.en.eq(1)]
        # stage 2: the scaled logit and the Gumbel value registered; stage 3: their sum and the penalty;
        # stage 4: the score; then the argmax
        v2, f2, l2, v3, f3, l3, v4, f4, l4 = (Signal(name=n) for n in ("v2", "f2", "l2", "v3", "f3", "l3",
                                                                        "v4", "f4", "l4"))
        idx2, idx3, idx4 = Signal(8), Signal(8), Signal(8)
        sl2 = Signal(signed(26))
        g2 = Signal(signed(S.GBITS))
        sg3 = Signal(signed(27))
        pen3 = Signal(I.TILT_BITS)
        score = Signal(signed(28))
        # score > best as the sign of best - score: a carry chain, not a LUT comparator, ahead of the argmax's
        # register enables (a 14.8 ns path in the 75 MHz ECP5 build)
        beaten = Signal(signed(29))
        m.d.comb += beaten.eq(best - score)
        m.d.sync += [v2.eq(v1), f2.eq(f1), l2.eq(l1), idx2.eq(idx1), sl2.eq(lg1 * self.mult), g2.eq(grd.data),
                     v3.eq(v2), f3.eq(f2), l3.eq(l2), idx3.eq(idx2), sg3.eq(sl2 + g2), pen3.eq(Mux(t2, trd.data, 0)),
                     v4.eq(v3), f4.eq(f3), l4.eq(l3), idx4.eq(idx3), score.eq(sg3 - pen3)]
        m.d.sync += self.done.eq(0)
        with m.If(v4):
            with m.If(ok4 & (f4 | ~have | beaten[-1])):
                m.d.sync += [best.eq(score), self.sample.eq(idx4), have.eq(1)]
            with m.Elif(f4):
                m.d.sync += [self.sample.eq(0), have.eq(0)]
            with m.If(l4):
                m.d.sync += self.done.eq(1)
        m.d.comb += self.busy.eq(self.in_valid | v1 | v2 | v3 | v4)
        return m
