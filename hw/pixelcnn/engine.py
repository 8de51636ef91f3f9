"""ConvEngine: a whole integer PixelCNN on chip, pixel by pixel in raster order.

The network is a list of *ops* (``program.engine_ops``): a plain masked-conv export runs one op per
layer; a Gated PixelCNN runs its vertical stack as row-phase ops (once per row, every column, before
the row's first pixel: the vertical stack at row i sees only rows < i of the image, and the next
layer's vertical and horizontal convs read it one column ahead) and its horizontal stack, links and
heads as pixel ops. An op reads any feature maps of the line buffers through its tap list
(map, dy, dx, channels) and writes one map; gated ops pair their accumulators (tanh and sigmoid tables,
requantised product). A conditioning map (COND register) is streamed in per row, before the row phase,
or filled from the whole-image feature memory (FEAT register).

Conditioner passes (non-causal convs over a fully known image, ``program.is_conditioner``): row-phase
ops only, each with a row ``delay`` d (at stream row r it computes output row r - d, its taps reading
rows r - d + dy, dy up to +2), FLUSH extra rows after the image with no input, and the last op writing
the feature memory instead of the output stream. A later pass's COND map is filled from that memory,
optionally nearest-upsampled by 2; a ``parity`` op picks one of four weight blocks by (i & 1, j & 1)
(the 2x2 stride-2 transposed conv). REG_BASE selects one of several specs loaded at once.

Schedule (per pixel p, layers in order): for each layer, for each group of ``lanes`` output channels,
one MAC beat per (tap, input channel) of the layer's nonzero-tap list (taps masked out are not in the
list, so they cost nothing); the finished group goes to the serial requantiser (bias, multiplier,
round, shift, saturate, LUT, residual) which writes the layer's outputs at p into the next layer's
line buffer while the MAC array already works on the next group. A masked conv in raster order needs
only pixels <= p, so three rows per layer are enough (kernels up to 5x5) and every layer's output at
p is final as soon as it is computed. The last layer's outputs (logits) go either to the output
stream (likelihood mode) or to the Gumbel-max sampler (sample mode), whose level is written back as
the input at p: on-chip generation costs one pixel's work per pixel.

Modes (register CTRL): 0 idle/load (``i`` carries load packets: target byte (program.T_*), word count
u16 LE, then the words, little-endian, each written from address 0 on), 1 likelihood
(``i``: CHANNELS level bytes per pixel; ``o``: the last layer's outputs per pixel), 2 sample
(``i``: CHANNELS-1 conditioning bytes per pixel; ``o``: one sampled level per pixel; NIMAGES images,
then back to 0). Register map: see ``REGISTERS`` and docs/conv-engine.md.
"""
from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, fifo, memory

from models.pixelcnn import integer as I

from ..engine import Engine
from . import program as prog
from .units import TILT_DY_BITS, BankedMemory, LineBuffer, MacArray, Requant, Sampler, clog2

LayerConfig = data.StructLayout({
    "cout": 16, "groups": 8, "ntaps": 8, "wbase": 16, "bbase": 16,
    "mult": 32, "shift": 8, "flags": 8, "out_map": 8, "gshift": 8, "gmult": 16, "delay": 8, "wblock": 16, "pad": 24,
})
assert LayerConfig.size == 8 * prog.CONFIG_BYTES

MODE_IDLE, MODE_LIKELIHOOD, MODE_SAMPLE = 0, 1, 2

# engine register indexes (link address = ENGINE_REG_BASE + index)
REG_CTRL = 0        # w: mode (bits 1:0); bit 8 clears the counters. r: mode
REG_LOAD_SEL = 1    # r: target of the last load packet (program.T_*)
REG_NLAYERS = 2
REG_WIDTH = 3
REG_HEIGHT = 4
REG_CHANNELS = 5    # input channels per pixel (channel 0 = the modelled image, others conditioning)
REG_LEVELS = 6      # levels sampled (logits 0..LEVELS-1 of the last layer)
REG_SEED = 7        # w: sampler RNG state (nonzero); r: current state
REG_LOGIT_MULT = 8  # sampler: score = logit * LOGIT_MULT + gumbel
REG_NIMAGES = 9     # sample mode: images to generate
REG_NROW = 10       # ops 0..NROW-1 run in the row phase (before each row's first pixel, every column)
REG_COND = 11       # conditioning bytes per pixel (bits 7:0), streamed per row before its row phase,
#                     into map bits 15:8 (raw int8, no input table)
REG_FLUSH = 12      # rows run after the image's last row (row phase only: delayed non-causal convs)
REG_FEAT = 13       # feature memory: bit 0 the COND map is filled from it (not streamed); bit 1 the last
#                     op writes it (no output bytes); bit 2 fill reads (row >> 1, col >> 1) (nearest
#                     upsampling by 2); bits 15:8 row base of the fill; bits 23:16 row base of the writes
FEAT_IN, FEAT_OUT, FEAT_UP = 1, 2, 4
REG_BASE = 14       # bits 7:0 index of the run's first op in the op memories (several programs loaded at
#                     once, ``program.pack_many``); bits 16:8 offset of its input table (program.INPUT_TABLE entries)
REG_SUBPIX = 15     # sample mode, op graphs: bits 1:0 sub-pixels sampled per pixel (0/1: channel 0; 3: R, G, B,
#                     each fed back before the next: the pixel ops run once per sub-pixel); bit 8 gray
#                     exclusion: 6 bytes per pixel first (luma bounds lo, hi, 24-bit LE; integer.luma_ok)
SUBPIX_EXCL = 0x100
LUMA_W = (299, 587, 114)  # models.to_gray's luma weights (integer.LUMA)
REG_CYC_ACTIVE = 16  # r: cycles spent computing (not waiting for input bytes or output space)
REG_MAC_BEATS = 17   # r: MAC beats issued (each = `lanes` multiplies)
REG_PIXELS = 18      # r: pixels finished
REG_IMAGES = 19      # r: images finished
REG_PARAMS = 20      # r: lanes | max_channels << 8 | max_width << 16 | max_layers << 24
REG_DEPTHS = 21      # r: weight_depth | bias_depth << 16
REG_LOAD_ADDR = 22   # r: words written to the current load target
REG_CYC_WAIT = 23    # r: cycles in a run mode spent waiting for input/output
REG_STATUS = 24      # r: bit0 load path idle (no byte queued, no packet open), bit1 sequencer idle
REG_LOAD_WORDS = 25  # r: words written by load packets since reset
REG_TILT = 26        # luma tilt of G (integer.tilt_*): bit 0 on, bits 15:8 the map of the op whose output 0 is d.
#                     Sample mode (with the gray exclusion): the tilt table's penalty is subtracted from G's
#                     scores; likelihood mode: d goes out first, then the pixel's logits

REGISTERS = {k: v for k, v in globals().items() if k.startswith("REG_")}


def run_registers(spec, width, height, channels=None, feat=0, base=(0, 0), excl=False):
    """(register, value) pairs that set up a run of ``spec`` on a ``width`` x ``height`` image
    (after its memories are loaded); ``channels`` overrides the input bytes per pixel; ``feat``: the
    REG_FEAT value (a conditioner pass writes the feature memory: FEAT_OUT is set for it); ``base``:
    (first op, input-table offset) of the spec in memories loaded by ``program.pack_many``; ``excl``: the
    sampler's gray exclusion (REG_SUBPIX bit 8). Op graphs sample all their channels (REG_SUBPIX); a spec
    with a luma tilt (``program.tilt_map``) turns it on (REG_TILT)."""
    g = prog.geometry(spec)
    tmap = prog.tilt_map(spec)
    if prog.is_conditioner(spec):
        feat |= FEAT_OUT
    return [(REG_BASE, base[0] | (base[1] << 8)), (REG_NLAYERS, g["nops"]), (REG_NROW, g["nrow"]), (REG_WIDTH, width), (REG_HEIGHT, height),
            (REG_CHANNELS, g["channels"] if channels is None else channels), (REG_LEVELS, spec["levels"]),
            (REG_COND, g["cond_channels"] | (g["cond_map"] << 8)), (REG_FLUSH, g["flush"]), (REG_FEAT, feat),
            (REG_SUBPIX, (g["channels"] if "ops" in spec else 1) | (SUBPIX_EXCL if excl else 0)),
            (REG_TILT, 0 if tmap is None else 1 | (tmap << 8))]


class ConvEngine(Engine):
    engine_id = "CONV"

    def __init__(self, lanes=16, max_channels=32, max_width=32, max_layers=32, weight_depth=8192,
                 bias_depth=2048, in_fifo=512, out_fifo=4096, max_maps=16, row_slots=4, feat_rows=32, max_outputs=256):
        self.cfg = prog.EngineParams(lanes=lanes, max_channels=max_channels, max_width=max_width,
                                     max_layers=max_layers, weight_depth=weight_depth, bias_depth=bias_depth,
                                     in_fifo=in_fifo, out_fifo=out_fifo, max_maps=max_maps, row_slots=row_slots,
                                     feat_rows=feat_rows, max_outputs=max_outputs)
        super().__init__(self.cfg.as_dict())

    def elaborate(self, platform):
        m = Module()
        c = self.cfg
        P = c.lanes
        lbits, wbits, cbits = clog2(c.max_layers), clog2(c.max_width), clog2(c.max_channels)
        mbits = clog2(c.max_maps)
        sbits, fbits = clog2(c.row_slots), clog2(c.feat_rows)

        m.submodules.inq = inq = fifo.SyncFIFOBuffered(width=8, depth=c.in_fifo)
        m.submodules.outq = outq = fifo.SyncFIFOBuffered(width=8, depth=c.out_fifo)
        m.d.comb += [inq.w_data.eq(self.i.payload), inq.w_en.eq(self.i.valid), self.i.ready.eq(inq.w_rdy),
                     self.o.payload.eq(outq.r_data), self.o.valid.eq(outq.r_rdy), outq.r_en.eq(self.o.ready)]

        m.submodules.lb = lb = LineBuffer(c.max_maps, c.max_width, c.max_channels, c.row_slots)
        # whole-image feature memory: a conditioner pass's last op writes it, a later pass fills its
        # COND map from it (address {row, column, channel})
        m.submodules.fmem = fmem = memory.Memory(shape=signed(8), depth=c.feat_rows << (wbits + cbits), init=[])
        frd, fwr = fmem.read_port(), fmem.write_port()
        m.submodules.mac = mac = MacArray(P)
        m.submodules.rq = rq = Requant(P, c.max_layers, c.bias_depth, c.max_channels)
        m.submodules.smp = smp = Sampler()
        m.submodules.wmem = wmem = BankedMemory(8 * P, c.weight_depth)
        m.submodules.tmem = tmem = memory.Memory(shape=unsigned(8 * prog.TAP_BYTES), depth=c.max_layers * prog.MAX_TAPS,
                                                 init=[])
        m.submodules.cmem = cmem = memory.Memory(shape=LayerConfig, depth=c.max_layers, init=[])
        m.submodules.imem = imem = memory.Memory(shape=signed(8), depth=prog.INPUT_TABLE, init=[])
        trd1, trd2, twr = tmem.read_port(), tmem.read_port(), tmem.write_port()
        crd, cwr = cmem.read_port(domain="comb"), cmem.write_port()
        ird, iwr = imem.read_port(), imem.write_port()

        # --- registers
        mode = Signal(2)
        load_sel = Signal(3)
        nlayers = Signal(lbits + 1)
        width = Signal(wbits + 1)
        height = Signal(16)
        channels = Signal(cbits + 1)
        levels = Signal(9)
        lmult = Signal(16)
        nimages = Signal(32)
        nrow = Signal(lbits + 1)
        cond_n = Signal(8)
        cond_map = Signal(mbits)
        flush = Signal(8)
        feat_in, feat_out, feat_up = Signal(), Signal(), Signal()
        feat_rbase, feat_wbase = Signal(8), Signal(8)
        nsub, excl = Signal(2), Signal()  # REG_SUBPIX
        tilt_en, tilt_map = Signal(), Signal(mbits)  # REG_TILT
        cyc_active, cyc_wait, beats, pixels, images = (Signal(32, name=n) for n in
                                                       ("cyc_active", "cyc_wait", "beats", "pixels", "images"))
        # register writes take effect one cycle after the router's pulse: the pulse, its address decoded and the
        # data come from flip-flops, so the router's (or the clock-domain crossing's) port starts no path into the
        # engine's control logic
        wr_we, wr_addr, wr_data = Signal(), Signal.like(self.reg_addr), Signal.like(self.reg_wdata)
        ctrl_we, seed_we = Signal(), Signal()
        m.d.sync += [wr_we.eq(self.reg_we), wr_addr.eq(self.reg_addr), wr_data.eq(self.reg_wdata),
                     ctrl_we.eq(self.reg_we & (self.reg_addr == REG_CTRL)),
                     seed_we.eq(self.reg_we & (self.reg_addr == REG_SEED))]

        # --- load path (mode 0): packets ``target, count u16 LE, count words`` on ``i`` -> memory
        word_bytes = Array([1, P, 4, 1, prog.TAP_BYTES, prog.CONFIG_BYTES, 1, 4])
        wbuf = Signal(8 * max(P, prog.CONFIG_BYTES, 4))
        kbyte = Signal(8)
        laddr = Signal(16)
        lstate = Signal(2)  # 0 target, 1 count lo, 2 count hi, 3 data
        lcount = Signal(16)
        pend = Signal()
        pend_sel = Signal(3)
        load_byte = Signal()  # a byte is taken from inq for loading this cycle
        m.d.comb += [
            wmem.wr_addr.eq(laddr), wmem.wr_data.eq(wbuf), wmem.wr_en.eq(pend & (pend_sel == prog.T_WEIGHTS)),
            rq.bias_waddr.eq(laddr), rq.bias_wdata.eq(wbuf[:32]), rq.bias_we.eq(pend & (pend_sel == prog.T_BIAS)),
            rq.lut_waddr.eq(laddr), rq.lut_wdata.eq(wbuf[:8]), rq.lut_we.eq(pend & (pend_sel == prog.T_LUT)),
            twr.addr.eq(laddr), twr.data.eq(wbuf[:8 * prog.TAP_BYTES]), twr.en.eq(pend & (pend_sel == prog.T_TAPS)),
            cwr.addr.eq(laddr), cwr.data.eq(wbuf[:LayerConfig.size]), cwr.en.eq(pend & (pend_sel == prog.T_CONFIG)),
            iwr.addr.eq(laddr), iwr.data.eq(wbuf[:8]), iwr.en.eq(pend & (pend_sel == prog.T_INLUT)),
            smp.tilt_waddr.eq(laddr), smp.tilt_wdata.eq(wbuf[:I.TILT_BITS]),
            smp.tilt_we.eq(pend & (pend_sel == prog.T_TILT)),
        ]
        load_words = Signal(32)
        m.d.sync += pend.eq(0)
        with m.If(pend):
            m.d.sync += [laddr.eq(laddr + 1), load_words.eq(load_words + 1)]
        with m.If(load_byte):
            with m.Switch(lstate):
                with m.Case(0):
                    m.d.sync += [load_sel.eq(inq.r_data), lstate.eq(1), laddr.eq(0), kbyte.eq(0)]
                with m.Case(1):
                    m.d.sync += [lcount[:8].eq(inq.r_data), lstate.eq(2)]
                with m.Case(2):
                    m.d.sync += [lcount[8:].eq(inq.r_data), lstate.eq(Mux(Cat(lcount[:8], inq.r_data) == 0, 0, 3))]
                with m.Case(3):
                    m.d.sync += wbuf.word_select(kbyte[:clog2(wbuf.shape().width // 8)], 8).eq(inq.r_data)
                    with m.If(kbyte + 1 == word_bytes[load_sel]):
                        m.d.sync += [kbyte.eq(0), pend.eq(1), pend_sel.eq(load_sel), lcount.eq(lcount - 1)]
                        with m.If(lcount == 1):
                            m.d.sync += lstate.eq(0)
                    with m.Else():
                        m.d.sync += kbyte.eq(kbyte + 1)

        # --- sequencer state
        row = Signal(16)
        col = Signal(wbits + 1)
        layer = Signal(lbits + 1)   # the op being computed
        og = Signal(8)
        tap = Signal(8)
        ch = Signal(cbits + 1)
        wptr = Signal(range(c.weight_depth + 1))
        primed = Signal()           # LAYER_START has set the tap ports to the op's first taps
        rowmode = Signal()          # computing the row phase (row-phase ops over every column)
        row_done = Signal()         # the current row's row phase is done
        cfg = crd.data
        op_base, in_base = Signal(8), Signal(range(prog.INPUT_TABLE))
        in_byte = Signal(8)  # an input byte, registered before its input-table read
        poff_q = Signal(16)  # a parity op's weight-block offset, registered in LAYER_START
        # a feature-memory byte on its way to the COND map: registered twice after the memory (the first
        # register free-running, so it can sit near the block RAMs, which are spread over the chip)
        feat_raw, feat_q = Signal(signed(8)), Signal(signed(8))
        abs_layer = Signal(lbits + 1)  # the op's index in the op memories
        m.d.comb += [abs_layer.eq(layer + op_base), crd.addr.eq(abs_layer)]
        last_layer = Signal()
        m.d.comb += last_layer.eq(layer + 1 == nlayers)
        rq_og = Signal(8)
        centre = Signal(data.ArrayLayout(signed(8), c.max_channels))

        op_row = Signal(signed(18))  # the op's output row (row-phase ops of a conditioner: delayed)
        rq_row = Signal(signed(18))  # output row of the group the requantiser drains
        m.d.comb += op_row.eq(row - cfg.delay)
        with m.If(mac.out_valid):
            m.d.sync += rq_row.eq(op_row)
        row_end, row_skip = Signal(), Signal()  # ROW_OPS: no row op left; this op has no output row now
        op_row_q = Signal(signed(18))  # op_row registered in LAYER_START: the line buffer's reads in MAC
        m.d.comb += [lb.row.eq(op_row_q), lb.height.eq(height), lb.col.eq(col), lb.width.eq(width)]
        # Tap words without a memory read in the issue path: ``tw`` = word of the current tap, ``tw1`` = word of
        # the next one (taps wrap at ntaps: the next group starts at tap 0). Two registered read ports fetch
        # the words two and three taps ahead (indices n2, n3 kept in registers, k mod ntaps at an op's start);
        # on an advance tw <- tw1, tw1 <- the word two taps ahead of the old tap (port 1's data, or port 2's
        # when the previous cycle advanced too). LAYER_START primes them.
        tbits = clog2(prog.MAX_TAPS)
        ntaps = cfg.ntaps
        c1, c2, c3 = (Mux(ntaps == 1, 0, 1), Mux(ntaps <= 2, 0, 2),
                      Mux(ntaps == 1, 0, Mux(ntaps == 2, 1, Mux(ntaps == 3, 0, 3))))  # 1, 2, 3 mod ntaps
        n2, n3 = Signal(tbits), Signal(tbits)  # indices of the taps two and three after the current one
        tw, tw1 = Signal(8 * prog.TAP_BYTES), Signal(8 * prog.TAP_BYTES)
        adv_q = Signal()  # the tap advanced in the previous cycle
        priming = Signal()  # LAYER_START: the ports read taps 0 and 1 of the op
        layer_start = Signal()  # LAYER_START: the ports read taps 2 and 3 (mod ntaps) of the op
        m.d.comb += [trd1.addr.eq(Cat(Mux(priming, 0, Mux(layer_start, c2, n2)), abs_layer[:lbits])),
                     trd2.addr.eq(Cat(Mux(priming, c1, Mux(layer_start, c3, n3)), abs_layer[:lbits]))]
        tw2 = Mux(adv_q, trd2.data, trd1.data)
        tap_dy = tw[:3].as_signed()
        tap_dx = tw[3:6].as_signed()
        tap_res = tw[6]
        tap_src = tw[8:8 + mbits]
        tap_nch = tw[16:24]

        # MAC beat issue (combinational strobe `issue` in state MAC); the beat's data arrive
        # LineBuffer.READ_LATENCY = 4 cycles later (stage a: addresses registered, b: memories read, c: bank words
        # registered, then the selected word registered); the weight memory (BankedMemory) is read in stage b,
        # its bank words registered in stage c, and the selected word registered alongside
        issue = Signal()
        beat_first = (tap == 0) & (ch == 0)
        # the op's tap and group counts, registered in LAYER_START (the config's LUT-RAM read, addressed by
        # layer + op_base, stays out of the beat-issue decision)
        ntaps_q, groups_q = Signal.like(cfg.ntaps), Signal.like(cfg.groups)
        # ch + 1 == tap_nch and tap + 1 == ntaps kept in registers (set with ch and tap), out of the issue decision
        ch_last, tap_last = Signal(), Signal()
        beat_last = tap_last & ch_last
        a_issue, a_first, a_last, a_res, a_relu = Signal(), Signal(), Signal(), Signal(), Signal()
        a_ch = Signal(cbits)
        a_wptr = Signal.like(wptr)
        b_issue, b_first, b_last, b_res, b_relu = Signal(), Signal(), Signal(), Signal(), Signal()
        b_ch = Signal(cbits)
        c_issue, c_first, c_last, c_res, c_relu = Signal(), Signal(), Signal(), Signal(), Signal()
        c_ch = Signal(cbits)
        issued, i_first, i_last, i_res, i_relu = Signal(), Signal(), Signal(), Signal(), Signal()
        i_ch = Signal(cbits)
        w_q = Signal(8 * P)
        m.d.comb += [
            lb.rd_en.eq(issue), lb.rd_layer.eq(tap_src), lb.rd_dy.eq(tap_dy), lb.rd_dx.eq(tap_dx), lb.rd_c.eq(ch),
            wmem.rd_addr.eq(a_wptr), wmem.rd_en.eq(a_issue),
        ]
        m.d.sync += [a_issue.eq(issue), a_first.eq(beat_first), a_last.eq(beat_last), a_ch.eq(ch), a_wptr.eq(wptr),
                     a_res.eq(tap_res & (og == 0)), a_relu.eq(cfg.flags[2]),
                     b_issue.eq(a_issue), b_first.eq(a_first), b_last.eq(a_last), b_ch.eq(a_ch),
                     b_res.eq(a_res), b_relu.eq(a_relu),
                     c_issue.eq(b_issue), c_first.eq(b_first), c_last.eq(b_last), c_ch.eq(b_ch),
                     c_res.eq(b_res), c_relu.eq(b_relu),
                     issued.eq(c_issue), i_first.eq(c_first), i_last.eq(c_last), i_ch.eq(c_ch),
                     i_res.eq(c_res), i_relu.eq(c_relu)]
        with m.If(c_issue):
            m.d.sync += w_q.eq(wmem.rd_data)
        act = Signal(signed(8))
        m.d.comb += act.eq(Mux(i_relu & lb.rd_data[7], 0, lb.rd_data))
        m.d.comb += [mac.in_valid.eq(issued), mac.in_first.eq(i_first), mac.in_last.eq(i_last),
                     mac.in_a.eq(act), mac.in_w.eq(w_q)]
        with m.If(issued & i_res):  # residual values: the flagged tap's map at the centre, unrectified
            m.d.sync += centre[i_ch].eq(lb.rd_data)

        # requantiser: started by each finished group
        remaining = Signal(16)
        m.d.comb += remaining.eq(cfg.cout - rq_og * P)
        m.d.comb += [
            rq.start.eq(mac.out_valid), rq.count.eq(Mux(remaining > P, P, remaining)),
            rq.base.eq(rq_og * P), rq.acc.eq(mac.out_acc), rq.centre.eq(centre),
            rq.bbase.eq(cfg.bbase), rq.mult.eq(cfg.mult), rq.shift.eq(cfg.shift), rq.residual.eq(cfg.flags[0]),
            rq.gated.eq(cfg.flags[1]), rq.gmult.eq(cfg.gmult), rq.gshift.eq(cfg.gshift), rq.out_map.eq(cfg.out_map),
            rq.layer.eq(abs_layer),
        ]
        with m.If(mac.out_valid):
            m.d.sync += rq_og.eq(rq_og + 1)
        # The next op starts while the requantiser still drains the previous one (it latched that
        # op's parameters); beats at the centre tap (any map at the current pixel may be the one that
        # drain writes) and group ends (a new requant start) wait for the drain.
        # Both conditions are registered (one cycle late: conservative, as neither can rise within an op's beats
        # but through a last beat issued in the previous cycle, which a_last covers).
        prev_pending = Signal()
        m.d.sync += prev_pending.eq(rq.busy & (rq.cur_layer != abs_layer[:lbits]))
        in_flight = a_issue | b_issue | c_issue | issued
        last_block = Signal()
        m.d.sync += last_block.eq(rq.reading | (a_issue & a_last) | (b_issue & b_last) | (c_issue & c_last) |
                                  mac.last_pending | rq.busy & (rq.cur_layer != abs_layer[:lbits]))
        can_last = ~(last_block | (a_issue & a_last))
        all_idle = ~(in_flight | mac.busy | rq.busy | smp.busy)
        mac_idle = ~(in_flight | mac.busy)
        beat_centre = (tap_dy == 0) & (tap_dx == 0)

        # requantiser outputs: their map in the line buffers, or the output stream / sampler
        in_wr_en, in_wr_c, in_wr_data, in_wr_map = Signal(), Signal(cbits), Signal(signed(8)), Signal(mbits)
        out_last = Signal()
        m.d.comb += out_last.eq(rq.cur_layer + 1 == op_base + nlayers)
        to_next = rq.out_valid & ~out_last
        m.d.comb += [
            lb.slot.eq(Mux(to_next, rq_row, row)[:sbits]),
            fwr.addr.eq(Cat(rq.out_o[:cbits], col[:wbits], (rq_row + feat_wbase)[:fbits])),
            fwr.data.eq(rq.out_data), fwr.en.eq(rq.out_valid & out_last & feat_out),
            lb.wr_en.eq(to_next | in_wr_en),
            lb.wr_layer.eq(Mux(to_next, rq.cur_map, in_wr_map)),
            lb.wr_c.eq(Mux(to_next, rq.out_o, in_wr_c)),
            lb.wr_data.eq(Mux(to_next, rq.out_data, in_wr_data)),
        ]
        sample_push = Signal()
        # RGB sampling (REG_SUBPIX): sub-pixel ``sub`` of the pixel takes logits sub_base .. sub_base + levels - 1;
        # gray exclusion: luma_y = partial + w_sub * v for the logit of level v in flight (accumulated as the
        # logits arrive), luma_rest = the largest luma of the later sub-pixels, [luma_lo, luma_hi] streamed
        sub = Signal(2)
        sub_base = Signal(16)
        partial, luma_acc, luma_rest = Signal(20), Signal(20), Signal(20)
        luma_lo, luma_hi = Signal(24), Signal(24)
        bin_k = Signal(3)
        bin_have = Signal()
        w_sub = Signal(10)
        m.d.comb += w_sub.eq(Array([Const(w, 10) for w in LUMA_W + (0,)])[sub])
        luma_y = Signal(20)
        m.d.comb += luma_y.eq(Mux(rq.out_o == sub_base, partial, luma_acc))
        with m.If(smp.in_valid):
            m.d.sync += luma_acc.eq(luma_y + w_sub)
        # rest_max[k] = (sum of the luma weights after sub-pixel k) * (levels - 1), recomputed every cycle from the
        # levels register (written long before a run starts), so no multiplier sits behind the control logic
        rest_max = Array([*(Signal(20, name=f"rest_max{k}") for k in range(3)), Const(0, 20)])
        m.d.sync += [rest_max[k].eq(sum(LUMA_W[k + 1:]) * (levels - 1)) for k in range(3)]

        # luma tilt of G: d (the tilt op's output 0, written to map ``tilt_map``) and the target
        # T = ((lo + hi) * TILT_CENTRE_MULT >> TILT_CENTRE_SHIFT) + TILT_D_STEP * d in free-running registers (the
        # bounds arrive before the pixel's ops run, d long before its logits); the product in two halves
        tilt_d = Signal(signed(8))
        tilt_out = Signal()
        m.d.comb += tilt_out.eq(tilt_en & rq.out_valid & ~out_last & (rq.cur_map == tilt_map) & (rq.out_o == 0))
        with m.If(tilt_out):
            m.d.sync += tilt_d.eq(rq.out_data)
        lohi = Signal(25)
        prod_lo, prod_hi = Signal(28), Signal(28)
        tilt_base, tilt_t = Signal(20), Signal(signed(TILT_DY_BITS))
        m.d.sync += [lohi.eq(luma_lo + luma_hi), prod_lo.eq(lohi[:12] * I.TILT_CENTRE_MULT),
                     prod_hi.eq(lohi[12:] * I.TILT_CENTRE_MULT),
                     tilt_base.eq((prod_lo + (prod_hi << 12)) >> I.TILT_CENTRE_SHIFT),
                     tilt_t.eq(tilt_base + tilt_d * I.TILT_D_STEP)]

        def sub_reset():
            m.d.sync += [sub.eq(0), sub_base.eq(0), partial.eq(0), bin_have.eq(0), bin_k.eq(0),
                         luma_rest.eq(rest_max[0])]
        m.d.comb += [
            outq.w_en.eq(((rq.out_valid & out_last | tilt_out) & (mode == MODE_LIKELIHOOD) & ~feat_out) | sample_push),
            outq.w_data.eq(Mux(sample_push, smp.sample, rq.out_data)),
            smp.in_valid.eq(rq.out_valid & out_last & (mode == MODE_SAMPLE) & ~feat_out &
                            (rq.out_o >= sub_base) & (rq.out_o < sub_base + levels)),
            smp.in_first.eq(rq.out_o == sub_base), smp.in_last.eq(rq.out_o + 1 == sub_base + levels),
            smp.in_ok.eq(~excl | ((luma_y + luma_rest >= luma_lo) & (luma_y <= luma_hi))),
            smp.in_logit.eq(rq.out_data), smp.mult.eq(lmult),
            smp.in_tilt.eq(tilt_en & excl & (sub == 1)), smp.in_dy.eq(luma_y - tilt_t),
            smp.seed.eq(wr_data), smp.seed_we.eq(seed_we),
        ]

        space = Signal()
        m.d.comb += space.eq(outq.level < c.out_fifo - c.max_outputs)  # room for a pixel's outputs and d
        waiting = Signal()
        first_ch = Mux(mode == MODE_SAMPLE, Mux(nsub > 1, nsub, 1), 0)
        has_row_phase = (nrow != 0) | (cond_n != 0)
        flushing = Signal()  # a flush row after the image (row phase only, no pixels)
        m.d.comb += flushing.eq(row >= height)
        no_pixel_ops = nrow == nlayers  # a conditioner pass: the pixels only fill map 0

        def next_row():
            m.d.sync += [col.eq(0), row.eq(row + 1), row_done.eq(0)]
            with m.If(row + 1 == height + flush):
                m.d.sync += [row.eq(0), images.eq(images + 1)]
                with m.If((mode == MODE_SAMPLE) & (images + 1 >= nimages)):
                    m.d.sync += mode.eq(MODE_IDLE)
                    m.next = "IDLE"

        # the COND map's fill from the feature memory: (row, col) or nearest-upsampled (row/2, col/2)
        m.d.comb += frd.addr.eq(Cat(ch[:cbits], Mux(feat_up, col >> 1, col)[:wbits],
                                    (Mux(feat_up, row >> 1, row) + feat_rbase)[:fbits]))

        m.d.sync += feat_raw.eq(frd.data)
        with m.FSM() as fsm:
            with m.State("IDLE"):
                m.d.comb += [load_byte.eq(inq.r_rdy & ~pend), inq.r_en.eq(load_byte)]
                m.d.comb += waiting.eq(1)
                with m.If((mode != MODE_IDLE) & ~ctrl_we):
                    m.next = "PIX_START"
            with m.State("PIX_START"):
                m.d.sync += layer.eq(nrow)
                with m.If((mode == MODE_IDLE) | ctrl_we):
                    m.next = "IDLE"
                with m.Elif((col == 0) & ~row_done & has_row_phase):
                    # likelihood: not before the row's first byte is here (a run may end after any
                    # image, and a mode change must find the sequencer idle)
                    with m.If((mode == MODE_SAMPLE) | inq.r_rdy | flushing | (channels == 0)):
                        m.d.sync += [ch.eq(0), layer.eq(0)]
                        with m.If((cond_n == 0) | flushing):
                            m.next = "ROW_OPS"
                        with m.Elif(feat_in):
                            m.next = "COND_FEAT"
                        with m.Else():
                            m.next = "COND_WAIT"
                    with m.Else():
                        m.d.comb += waiting.eq(1)
                with m.Elif(flushing):
                    next_row()
                with m.Elif(~space):
                    m.d.comb += waiting.eq(1)
                with m.Elif((mode == MODE_SAMPLE) & excl & ~bin_have):
                    m.next = "BIN_WAIT"
                with m.Elif(first_ch < channels):
                    m.d.sync += ch.eq(first_ch)
                    m.next = "IN_WAIT"
                with m.Elif(no_pixel_ops):
                    m.next = "ADVANCE"
                with m.Else():
                    m.next = "LAYER_START"
            # row phase, 1 (feature memory): the COND map's row from the feature memory, 4 cycles a byte (the
            # memory's read mux registered twice before the line buffer's write data)
            with m.State("COND_FEAT"):
                m.d.comb += frd.en.eq(1)
                m.next = "COND_FEAT_R"
            with m.State("COND_FEAT_R"):
                m.next = "COND_FEAT_Q"
            with m.State("COND_FEAT_Q"):
                m.d.sync += feat_q.eq(feat_raw)
                m.next = "COND_FEAT_WR"
            with m.State("COND_FEAT_WR"):
                m.d.comb += [in_wr_en.eq(1), in_wr_map.eq(cond_map), in_wr_c.eq(ch), in_wr_data.eq(feat_q)]
                m.d.sync += ch.eq(ch + 1)
                m.next = "COND_FEAT"
                with m.If(ch + 1 == cond_n):
                    m.d.sync += [ch.eq(0), col.eq(col + 1)]
                    with m.If(col + 1 == width):
                        m.d.sync += col.eq(0)
                        m.next = "ROW_OPS"
            # row phase, 1: the row's conditioning bytes (raw int8) into the conditioning map
            with m.State("COND_WAIT"):
                m.d.comb += [inq.r_en.eq(1), waiting.eq(~inq.r_rdy),
                             in_wr_en.eq(inq.r_rdy), in_wr_map.eq(cond_map), in_wr_c.eq(ch),
                             in_wr_data.eq(inq.r_data)]
                with m.If(ctrl_we | (mode == MODE_IDLE)):
                    m.d.comb += [inq.r_en.eq(0), in_wr_en.eq(0)]
                    m.next = "IDLE"
                with m.Elif(inq.r_rdy):
                    m.d.sync += ch.eq(ch + 1)
                    with m.If(ch + 1 == cond_n):
                        m.d.sync += [ch.eq(0), col.eq(col + 1)]
                        with m.If(col + 1 == width):
                            m.d.sync += col.eq(0)
                            m.next = "ROW_OPS"
            # row phase, 2: ops 0..NROW-1, each over every column of the row
            # row phase, 2: the row ops; each op's row test (its config's LUT-RAM read, row - delay, the bounds
            # compare) registered a cycle before the state acts on it
            with m.State("ROW_OPS"):
                m.d.sync += [row_end.eq(layer == nrow), row_skip.eq((op_row < 0) | (op_row >= height))]
                m.next = "ROW_OPS_NEXT"
            with m.State("ROW_OPS_NEXT"):
                m.next = "ROW_OPS"
                with m.If(row_end):
                    m.d.sync += [row_done.eq(1), col.eq(0)]
                    m.next = "PIX_START"
                with m.Elif(row_skip):  # a delayed op before/after its rows
                    m.d.sync += layer.eq(layer + 1)
                with m.Else():
                    m.d.sync += rowmode.eq(1)
                    m.next = "LAYER_START"
            # sample mode with gray exclusion: the pixel's luma bounds lo, hi (3 bytes each, LE)
            with m.State("BIN_WAIT"):
                m.d.comb += [inq.r_en.eq(1), waiting.eq(~inq.r_rdy)]
                with m.If(ctrl_we | (mode == MODE_IDLE)):
                    m.d.comb += inq.r_en.eq(0)
                    m.next = "IDLE"
                with m.Elif(inq.r_rdy):
                    m.d.sync += [Cat(luma_lo, luma_hi).word_select(bin_k, 8).eq(inq.r_data), bin_k.eq(bin_k + 1)]
                    with m.If(bin_k == 5):
                        m.d.sync += [bin_k.eq(0), bin_have.eq(1)]
                        m.next = "PIX_START"
            with m.State("IN_WAIT"):  # the byte registered (no add on the FIFO's RAM output), then its table read
                m.d.comb += [inq.r_en.eq(1), waiting.eq(~inq.r_rdy)]
                with m.If(ctrl_we | (mode == MODE_IDLE)):
                    m.d.comb += inq.r_en.eq(0)
                    m.next = "IDLE"
                with m.Elif(inq.r_rdy):
                    m.d.sync += in_byte.eq(inq.r_data)
                    m.next = "IN_READ"
            with m.State("IN_READ"):
                m.d.comb += [ird.addr.eq(in_byte + in_base), ird.en.eq(1)]
                m.next = "IN_WRITE"
            with m.State("IN_WRITE"):
                m.d.comb += [in_wr_en.eq(1), in_wr_c.eq(ch), in_wr_data.eq(ird.data), in_wr_map.eq(0)]
                m.d.sync += ch.eq(ch + 1)
                with m.If(ch + 1 != channels):
                    m.next = "IN_WAIT"
                with m.Elif(no_pixel_ops):
                    m.next = "ADVANCE"
                with m.Else():
                    m.next = "LAYER_START"
            with m.State("LAYER_START"):  # the tap ports read taps 0 and 1 at least once, then tw/tw1 load
                m.d.comb += [priming.eq(1), layer_start.eq(1)]
                # parity ops (transposed conv): weight block (i & 1) * 2 + (j & 1) of the output pixel; its offset,
                # the op's row and tap/group counts registered here (LAYER_START lasts two cycles or more, with
                # the op, row and column unchanged)
                poff = Mux(op_row[0], cfg.wblock << 1, 0) + Mux(col[0], cfg.wblock, 0)
                m.d.sync += [primed.eq(1), poff_q.eq(Mux(cfg.flags[3], poff, 0)), op_row_q.eq(op_row),
                             ntaps_q.eq(cfg.ntaps), groups_q.eq(cfg.groups)]
                with m.If(mac_idle & primed):
                    m.d.comb += priming.eq(0)  # now the ports read the taps two and three ahead of tap 0
                    m.d.sync += [og.eq(0), tap.eq(0), ch.eq(0), rq_og.eq(0), wptr.eq(cfg.wbase + poff_q),
                                 ch_last.eq(trd1.data[16:24] == 1), tap_last.eq(ntaps_q == 1),
                                 tw.eq(trd1.data), tw1.eq(trd2.data), adv_q.eq(0), primed.eq(0),
                                 n2.eq(c2), n3.eq(c3)]
                    m.next = "MAC"
            with m.State("MAC"):
                m.d.sync += adv_q.eq(0)
                with m.If((~beat_last | can_last) & ~(beat_centre & prev_pending)):
                    m.d.comb += issue.eq(1)
                    m.d.sync += [wptr.eq(wptr + 1), beats.eq(beats + 1)]
                    with m.If(ch_last):
                        m.d.sync += [ch.eq(0), tw.eq(tw1), tw1.eq(tw2), adv_q.eq(1), ch_last.eq(tw1[16:24] == 1),
                                     n2.eq(n3), n3.eq(Mux(n3 + 1 >= ntaps_q, 0, n3 + 1))]
                        with m.If(tap_last):
                            m.d.sync += [tap.eq(0), og.eq(og + 1), tap_last.eq(ntaps_q == 1)]
                            with m.If(og + 1 == groups_q):
                                m.next = "LAYER_END"
                        with m.Else():
                            m.d.sync += [tap.eq(tap + 1), tap_last.eq(tap + 2 == ntaps_q)]
                    with m.Else():
                        m.d.sync += [ch.eq(ch + 1), ch_last.eq(ch + 2 == tap_nch)]
            with m.State("LAYER_END"):
                with m.If(rowmode):  # a row-phase op: drain, then the next column, then the next op
                    with m.If(all_idle):
                        m.next = "LAYER_START"
                        with m.If(col + 1 == width):
                            m.d.sync += [col.eq(0), layer.eq(layer + 1), rowmode.eq(0)]
                            m.next = "ROW_OPS"
                        with m.Else():
                            m.d.sync += col.eq(col + 1)
                with m.Elif(last_layer):
                    with m.If(all_idle):
                        m.next = "PIX_END"
                with m.Elif(mac_idle):
                    m.d.sync += layer.eq(layer + 1)
                    m.next = "LAYER_START"
            with m.State("PIX_END"):
                with m.If(mode == MODE_SAMPLE):
                    m.d.comb += [ird.addr.eq(smp.sample + in_base), ird.en.eq(1)]
                    m.next = "SAMPLE_WRITE"
                with m.Else():
                    m.next = "ADVANCE"
            with m.State("SAMPLE_WRITE"):  # the level into the image map, then the next sub-pixel or pixel
                m.d.comb += [in_wr_en.eq(1), in_wr_c.eq(sub), in_wr_data.eq(ird.data), in_wr_map.eq(0),
                             sample_push.eq(1)]
                m.next = "ADVANCE"
                with m.If(sub + 1 < nsub):  # RGB: the pixel ops again, now seeing this sub-pixel
                    m.d.sync += [sub.eq(sub + 1), sub_base.eq(sub_base + levels), layer.eq(nrow),
                                 partial.eq(partial + w_sub * smp.sample),
                                 luma_rest.eq(rest_max[sub + 1])]
                    m.next = "LAYER_START"
            with m.State("ADVANCE"):
                m.d.sync += pixels.eq(pixels + 1)
                sub_reset()
                m.next = "PIX_START"
                with m.If(col + 1 == width):
                    next_row()
                with m.Else():
                    m.d.sync += col.eq(col + 1)

        computing = ~fsm.ongoing("IDLE") & ~waiting
        m.d.comb += self.busy.eq(computing | pend | load_byte | mac.busy | rq.busy | wr_we)
        with m.If(mode != MODE_IDLE):
            with m.If(computing):
                m.d.sync += cyc_active.eq(cyc_active + 1)
            with m.Else():
                m.d.sync += cyc_wait.eq(cyc_wait + 1)

        # --- register writes
        with m.If(wr_we):
            with m.Switch(wr_addr):
                with m.Case(REG_CTRL):
                    m.d.sync += [mode.eq(wr_data[:2]), row.eq(0), col.eq(0), images.eq(0),
                                 row_done.eq(0), rowmode.eq(0)]
                    sub_reset()
                    with m.If(wr_data[8]):
                        m.d.sync += [cyc_active.eq(0), cyc_wait.eq(0), beats.eq(0), pixels.eq(0)]
                with m.Case(REG_NLAYERS):
                    m.d.sync += nlayers.eq(wr_data)
                with m.Case(REG_WIDTH):
                    m.d.sync += width.eq(wr_data)
                with m.Case(REG_HEIGHT):
                    m.d.sync += height.eq(wr_data)
                with m.Case(REG_CHANNELS):
                    m.d.sync += channels.eq(wr_data)
                with m.Case(REG_LEVELS):
                    m.d.sync += levels.eq(wr_data)
                with m.Case(REG_LOGIT_MULT):
                    m.d.sync += lmult.eq(wr_data)
                with m.Case(REG_NIMAGES):
                    m.d.sync += nimages.eq(wr_data)
                with m.Case(REG_NROW):
                    m.d.sync += nrow.eq(wr_data)
                with m.Case(REG_COND):
                    m.d.sync += [cond_n.eq(wr_data[:8]), cond_map.eq(wr_data[8:16])]
                with m.Case(REG_BASE):
                    m.d.sync += [op_base.eq(wr_data[:8]), in_base.eq(wr_data[8:8 + clog2(prog.INPUT_TABLE)])]
                with m.Case(REG_FLUSH):
                    m.d.sync += flush.eq(wr_data[:8])
                with m.Case(REG_SUBPIX):
                    m.d.sync += [nsub.eq(wr_data[:2]), excl.eq(wr_data[8])]
                with m.Case(REG_TILT):
                    m.d.sync += [tilt_en.eq(wr_data[0]), tilt_map.eq(wr_data[8:16])]
                with m.Case(REG_FEAT):
                    m.d.sync += [feat_in.eq(wr_data[0]), feat_out.eq(wr_data[1]),
                                 feat_up.eq(wr_data[2]), feat_rbase.eq(wr_data[8:16]),
                                 feat_wbase.eq(wr_data[16:24])]

        # --- register reads (data the cycle after reg_re)
        params = P | (c.max_channels << 8) | (c.max_width << 16) | (c.max_layers << 24)
        with m.If(self.reg_re):
            with m.Switch(self.reg_addr):
                for addr, sig in ((REG_CTRL, mode), (REG_LOAD_SEL, load_sel), (REG_NLAYERS, nlayers),
                                  (REG_WIDTH, width), (REG_HEIGHT, height), (REG_CHANNELS, channels),
                                  (REG_LEVELS, levels), (REG_SEED, smp.state), (REG_LOGIT_MULT, lmult),
                                  (REG_NIMAGES, nimages), (REG_NROW, nrow),
                                  (REG_COND, Cat(cond_n, cond_map)), (REG_FLUSH, flush), (REG_BASE, Cat(op_base, in_base)),
                                  (REG_FEAT, Cat(feat_in, feat_out, feat_up, Signal(5), feat_rbase, feat_wbase)),
                                  (REG_SUBPIX, Cat(nsub, Signal(6), excl)), (REG_TILT, Cat(tilt_en, Signal(7), tilt_map)),
                                  (REG_CYC_ACTIVE, cyc_active), (REG_MAC_BEATS, beats),
                                  (REG_PIXELS, pixels), (REG_IMAGES, images), (REG_PARAMS, params),
                                  (REG_DEPTHS, c.weight_depth | (c.bias_depth << 16)), (REG_LOAD_ADDR, laddr),
                                  (REG_CYC_WAIT, cyc_wait), (REG_LOAD_WORDS, load_words),
                                  (REG_STATUS, Cat((lstate == 0) & ~pend & ~inq.r_rdy, fsm.ongoing("IDLE")))):
                    with m.Case(addr):
                        m.d.sync += self.reg_rdata.eq(sig)
                with m.Default():
                    m.d.sync += self.reg_rdata.eq(0)
        return m
