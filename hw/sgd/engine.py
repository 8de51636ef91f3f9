"""The ZipML SGD engine: streaming least-squares SGD on double-sampled low-precision samples (issue 4).

Ref: fpgasystems/ZipML-XeonFPGA@a7bdb44 RTL/qFSGD.vhd and its units (shared reference docs/zipml.md §7.4); the
bit-exact golden is ``models.zipml.fixed_point.engine_run``.

Datapath, one bus beat (``W`` bits, ``L`` feature lanes) per clock::

  beat --> S1: model bank Y row k (sync read), decode q1, x_j*q1_j >> nb per lane, masked beyond d
       --> S2: registered terms --> adder tree (log2 L register levels) --> accumulate over the R beats
       --> dot --> sigmoid table read (logistic) --> t = sat32((f(dot) - label) >> step_shift), zero for an
           L2-SVM sample whose margin is met
       --> update pass over the sample's R beats (q2 from the beat FIFO): g_j = (t*q2_j) >> nb,
           x_j = sat32(x_j - g_j) written to bank X (and to bank Y on refresh samples); the X row is read four
           stages before it is written, with the rows written in between forwarded (docs/sgd-engine.md)

Every pipeline register advances only on an *enabled* cycle: a cycle that accepts a beat, or a drain cycle once
the run's last beat is in.  An idle input cycle freezes the whole pipeline, so the arithmetic (including which
updates the dot product sees) depends only on the beat order, never on input timing.  The dot product of sample
``j`` sees the refresh of sample ``i`` iff ``i <= j - staleness(pipe_latency, R)`` (``hw.sgd.layout``).

Losses (register LOSS; the gradient is ``(f(dot) - b) * a``, ZipML's generalized linear models):
least squares (f = identity), L2-SVM / squared hinge as the ZipML-PYNQ design (f = identity, labels +-1, applied
only when ``b * dot < 1``), logistic regression (f = the sigmoid table ``models.zipml.fixed_point.sigmoid_table``,
labels 0/1).  With FLAG_OVR the label word is a class index and the engine trains class CLASS against the rest;
with FLAG_CLASS_WEIGHT negative samples (label <= 0) use STEP_SHIFT_NEG (the PYNQ design's class-weighted steps).
"""
from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, memory

from ..engine import Engine
from models.zipml.fixed_point import SIGMOID_ENTRIES, SIGMOID_IN_SHIFT, sigmoid_table

from .layout import beats_per_sample, check_bits, check_bus_bits, check_encoding, lanes as lanes_of, slot_bits
from .tree import AdderTree, tree_levels

# --- register map (engine-relative indices; the link adds ENGINE_REG_BASE)
REG_CMD = 0            # w: CMD_* below
REG_STATUS = 1         # r: bit0 running, bit1 clearing, bit2 reading model, bit3 t saturated, bit4 model saturated
REG_FEATURES = 2       # rw: d (bias included)
REG_BEATS = 3          # rw: beats per sample R (hw.sgd.layout.beats_per_sample)
REG_RUN_SAMPLES = 4    # rw: samples in the next RUN (epochs x samples per epoch)
REG_STEP_SHIFT = 5     # rw: step 2**-shift
REG_BATCH_MASK = 6     # rw: refresh the dot product's model bank after sample i when (i & mask) == mask
REG_FLAGS = 7          # rw: bit0 signed codes ([-1, 1] data), bit1 source = link (0: on-chip sample store);
                       #     a write during a RUN is ignored
REG_IN_MODE = 8        # rw: where input bytes go: 0 samples to the pipeline, 1 sample store, 2 model words,
                       #     3 RNG lane states (engines built with stochastic_grad)
REG_STORE_WADDR = 9    # rw: next store beat written in IN_MODE 1 (auto-increments)
REG_STORE_BASE = 10    # rw: first store beat of a RUN
REG_STORE_WRAP = 11    # rw: the store read address wraps to 0 here (0 = store depth): cycles epoch copies
REG_MODEL_WADDR = 12   # rw: next model word written in IN_MODE 2 (auto-increments)
REG_LOSS = 13          # rw: LOSS_* below
REG_CLASS = 14         # rw: one-vs-rest: the positive class (FLAG_OVR)
REG_STEP_SHIFT_NEG = 15  # rw: step 2**-shift of negative samples (label <= 0) with FLAG_CLASS_WEIGHT
REG_CYCLES = 16        # r: cycles of the last RUN (start to last model write)
REG_BEATS_IN = 17      # r: beats taken in the last RUN
REG_STALLS = 18        # r: cycles of the last RUN with no beat available before its last beat
REG_SAMPLES_DONE = 19  # r: samples whose update finished in the last RUN
REG_P_MODEL_BITS = 20  # r: stored model word width w (32 = full)
REG_P_MODEL_FRAC = 21  # r: fractional bits f of a stored model word (Q.23 word = stored << (23 - f))
REG_P_BITS = 24        # r: parameters, so a host can check what it talks to
REG_P_BUS_BITS = 25
REG_P_LANES = 26
REG_P_MAX_FEATURES = 27
REG_P_STORE_BEATS = 28
REG_P_PIPE_LATENCY = 29
REG_P_ROWS = 30
REG_P_ENCODING = 31    # r: 0 pair, 1 compact
WRITABLE_REGS = (REG_FEATURES, REG_BEATS, REG_RUN_SAMPLES, REG_STEP_SHIFT, REG_BATCH_MASK, REG_FLAGS, REG_IN_MODE,
                 REG_STORE_WADDR, REG_STORE_BASE, REG_STORE_WRAP, REG_MODEL_WADDR, REG_LOSS, REG_CLASS,
                 REG_STEP_SHIFT_NEG)  # besides REG_CMD

CMD_RUN = 1            # stream RUN_SAMPLES samples through the pipeline (from the store or from the link)
CMD_CLEAR_MODEL = 2    # zero both model banks
CMD_READ_MODEL = 3     # put FEATURES model words (int32 LE, Q.23) on the output stream

IN_SAMPLES, IN_STORE, IN_MODEL, IN_RNG = 0, 1, 2, 3  # IN_RNG: xorshift32 lane states (stochastic_grad)

FLAG_SIGNED = 1
FLAG_SOURCE_LINK = 2
FLAG_OVR = 4           # the label word is a class index: label = +1 if it equals CLASS, else -1 (0 for logistic)
FLAG_CLASS_WEIGHT = 8  # negative samples use STEP_SHIFT_NEG

LOSS_LS, LOSS_L2SVM, LOSS_LOGISTIC = 0, 1, 2
LOSSES = {"ls": LOSS_LS, "l2svm": LOSS_L2SVM, "logistic": LOSS_LOGISTIC}
ENCODING_IDS = {"pair": 0, "compact": 1}

STATUS_RUNNING = 1
STATUS_CLEARING = 2
STATUS_READING = 4
STATUS_T_SATURATED = 8
STATUS_X_SATURATED = 16

PIPE_LATENCY_BASE = 13 # enabled cycles from the last beat of a sample to its first model write, minus the tree


def _pow2_at_least(n):
    p = 1
    while p < n:
        p <<= 1
    return p



def _lane_mask(big, pos, low, lanes: int):
    """Lane j of a beat holds a feature when rem > j (rem: features - the beat's first feature index), from the
    registers big = rem >= lanes, pos = rem > 0 and low = rem's low bits (rem < lanes unless big)."""
    return Cat(*[big | (pos & (low > j)) for j in range(lanes)])

class SgdEngine(Engine):
    """Parameters: ``bits`` in {1, 2, 4, 8, 32}; ``bus_bits`` in {32, ..., 512}; ``max_features`` (model words,
    bias included); ``store_beats`` (depth of the on-chip sample store, in beats); ``shift_add`` (lane products
    as partial-product sums instead of multipliers, for small iCE40 parts; same arithmetic); ``stochastic_grad``
    (end-to-end option: the gradient's ``>> nb`` rounded stochastically with on-chip xorshift32 lanes, the
    twin of ``models.zipml.rng.Xorshift32Lanes``; b in {2, 4, 8}); ``encoding`` (``pair``: 2b-bit slots,
    ``compact``: interval index + one up/down bit per copy, b + 1 bits, ``hw.sgd.layout``); ``model_bits``
    (end-to-end option: the model stored at w < 32 bits with ``model_frac_bits`` fractional bits, written with
    stochastic rounding by on-chip xorshift32 lanes, the twin of ``engine_run(..., model_rng=...)``)."""

    engine_id = "ZSGD"

    def __init__(self, bits: int = 4, bus_bits: int = 512, max_features: int = 4096, store_beats: int = 4096,
                 shift_add: bool = False, stochastic_grad: bool = False, encoding: str = "pair",
                 model_bits: int = 32, model_frac_bits: int | None = None):
        check_bits(bits)
        check_bus_bits(bus_bits)
        check_encoding(bits, encoding)
        if not 4 <= model_bits <= 32:
            raise ValueError(f"model_bits must be in 4..32, got {model_bits}")
        if model_frac_bits is None:
            model_frac_bits = 23 if model_bits == 32 else model_bits - 4  # models within +-8
        if model_bits < 32 and not (0 <= model_frac_bits < 23 and model_bits - 1 + 23 - model_frac_bits <= 31):
            raise ValueError(f"model_frac_bits must be in 0..22 with at most 8 integer bits, got {model_frac_bits} "
                             f"for {model_bits}-bit words")
        self.model_bits = model_bits
        self.model_frac_bits = model_frac_bits if model_bits < 32 else 23
        self.model_drop = 23 - self.model_frac_bits
        if not 1 <= max_features <= 65535:
            raise ValueError(f"max_features must be in 1..65535, got {max_features}")
        if store_beats < 2:
            raise ValueError(f"store_beats must be at least 2, got {store_beats}")
        self.bits = bits
        self.bus_bits = bus_bits
        self.encoding = encoding
        self.slot = slot_bits(bits, encoding)
        self.lanes = lanes_of(bits, bus_bits, encoding)
        self.rows = beats_per_sample(max_features, bits, bus_bits, encoding)
        self.max_features = max_features
        self.tree_latency = tree_levels(self.lanes)
        self.pipe_latency = PIPE_LATENCY_BASE + self.tree_latency
        self.fifo_depth = _pow2_at_least(self.rows + self.pipe_latency + 2)  # beats in flight: <= R + latency
        self.store_beats = store_beats
        self.shift_add = bool(shift_add) and bits != 32
        params = {"bits": bits, "bus_bits": bus_bits, "max_features": max_features, "store_beats": store_beats,
                  "lanes": self.lanes, "pipe_latency": self.pipe_latency}
        if self.shift_add:
            params["shift_add"] = True
        if encoding != "pair":
            params["encoding"] = encoding
        if model_bits < 32:
            params["model_bits"] = model_bits
            params["model_frac_bits"] = self.model_frac_bits
        self.stochastic_grad = bool(stochastic_grad) and bits not in (1, 32)
        if self.stochastic_grad:
            params["stochastic_grad"] = True
        super().__init__(params)
        L = self.lanes
        self.store = memory.Memory(shape=unsigned(bus_bits), depth=store_beats, init=[])
        mw = self.model_bits
        self.model_x = memory.Memory(shape=unsigned(mw * L), depth=self.rows, init=[])
        self.model_y = memory.Memory(shape=unsigned(mw * L), depth=self.rows, init=[])
        self.fifo = memory.Memory(shape=unsigned(bus_bits), depth=self.fifo_depth, init=[])
        self.sigmoid = memory.Memory(shape=unsigned(24), depth=SIGMOID_ENTRIES, init=sigmoid_table().tolist())

    # --- lane arithmetic, shared with the unit tests
    def _codes(self, payload, copy, sgn):
        """Integer codes of every lane of a beat (copy 0 = q1, 1 = q2)."""
        b, s = self.bits, self.slot
        out = []
        for j in range(self.lanes):
            if self.encoding == "compact":  # q = lowest level + interval + up/down bit of the copy
                f = payload[j * s: j * s + s]
                q = Signal(signed(b + 1), name=f"q{copy}_{j}")
                ell = f[:b - 1].as_unsigned()
                up = f[b - 1 + copy]
                self._decoders.append(q.eq(Mux(sgn, ell + up - (1 << (b - 2)), ell + up)))
                out.append(q)
            elif b == 32:
                f = payload[32 * j:32 * j + 32]
                out.append(Mux(sgn, f.as_signed(), f.as_unsigned()))
            else:
                f = payload[j * s + copy * b: j * s + copy * b + b]
                out.append(f.as_unsigned() if b == 1 else Mux(sgn, f.as_signed(), f.as_unsigned()))
        return out

    def _registered_codes(self, m, ce, payload, copy, sgn):
        """The codes of ``payload`` decoded and registered on ``ce`` (the lane products start at a register)."""
        out = []
        for j, q in enumerate(self._codes(payload, copy, sgn)):
            r = Signal(Value.cast(q).shape(), name=f"q{copy}r_{j}")
            with m.If(ce):
                m.d.sync += r.eq(q)
            out.append(r)
        return out

    def _mul(self, x, q):
        """x * q for a small code q.  With ``shift_add`` as explicit partial products (no ``$mul`` cell, so no
        DSP is inferred: for iCE40 parts with few DSPs); same value either way."""
        if self.bits == 2:  # codes in [-2, 2]: select and negate, no multiplier (Fmax, no DSP blocks)
            neg = q < 0
            mag = Mux(neg, -q, q)
            v = Mux(mag[1], x << 1, Mux(mag[0], x, 0))
            return Mux(neg, -v, v)
        if not self.shift_add:
            return x * q
        n = len(q)
        acc = 0
        for k in range(n - 1):
            acc = acc + Mux(q[k], x << k, 0)
        return acc - Mux(q[n - 1], x << (n - 1), 0) if q.shape().signed else acc + Mux(q[n - 1], x << (n - 1), 0)

    def _product_nb(self, x, q, sgn):
        """``(x * q) >> nb``.  Compact Q2 codes are -1, 0, 1 (signed, nb = 0) or 0, 1, 2 (nb = 1): the result is
        one of x, -x, x >> 1 and 0, one mux after a negation of x alone, so no carry chain waits on the code (Fmax).
        (Pair Q2 slots can hold codes outside those ranges: -2, 3.)"""
        if self.bits == 2 and self.encoding == "compact":
            return Mux(sgn, Mux(q[-1], -x, Mux(q[0], x, 0)), Mux(q[1], x, Mux(q[0], x >> 1, 0)))
        return self._shift_nb(self._mul(x, q), sgn)

    def _round_nb(self, prod, rand, sgn):
        """``prod >> nb`` rounded up with probability (dropped bits) / 2**nb, using the top nb bits of ``rand``
        (``models.zipml.rng.stochastic_round_fixed``)."""
        def one(nb):
            if nb == 0:
                return prod
            return (prod >> nb) + (rand[32 - nb:] < prod[:nb])
        return Mux(sgn, one(self.bits - 2), one(self.bits - 1))

    @staticmethod
    def _int32_overflow(v):
        """(v > 2**31 - 1, v < -2**31) for a signed ``v`` wider than 32 bits, as tests of its bits 31 and up (not
        as wide comparisons, which Yosys maps to carry chains: Fmax)."""
        top = v[31:]
        neg = v[-1]
        return ~neg & (top != 0), neg & (top != (1 << len(top)) - 1)

    def _shift_nb(self, v, sgn):
        b = self.bits
        if b == 1:
            return v
        return Mux(sgn, v >> (b - 2), v >> (b - 1))

    def elaborate(self, platform):
        m = Module()
        W, L, b = self.bus_bits, self.lanes, self.bits
        m.submodules.store = self.store
        m.submodules.model_x = self.model_x
        m.submodules.model_y = self.model_y
        m.submodules.fifo = self.fifo
        m.submodules.sigmoid = self.sigmoid
        self._decoders = []
        sw = self.store.write_port()
        sr = self.store.read_port()
        mw, drop = self.model_bits, self.model_drop

        def stored_to_q23(v):  # a stored model word as the int32 Q.23 value it stands for
            return v.as_signed() << drop if mw < 32 else v.as_signed()

        xw = self.model_x.write_port(granularity=mw)
        xr = self.model_x.read_port()
        yw = self.model_y.write_port(granularity=mw)
        yr = self.model_y.read_port()
        fw = self.fifo.write_port()
        fr = self.fifo.read_port()

        # --- configuration registers
        features = Signal(16)
        beats = Signal(16, init=1)
        run_samples = Signal(32)
        # beats - 1, beats - 2, run_samples - 2, beats == 1 and run_samples in {0, 1}, kept as registers beside
        # them: the end-of-sample and end-of-run flags are registers set one step ahead (k == beats - 2 before
        # k + 1), so no subtraction or comparison feeds the pipeline enable (the full build's critical path ran
        # from BEATS through beats - 1 and k == beats - 1 into it: Fmax)
        beats_m1 = Signal(signed(18), init=0)
        beats_m2 = Signal(signed(18), init=-1)
        run_m2 = Signal(signed(34), init=-2)
        beats_one, run_one, run_zero = Signal(init=1), Signal(), Signal(init=1)
        step_shift = Signal(6)
        batch_mask = Signal(32)
        flags = Signal(4)
        loss = Signal(2)
        ovr_class = Signal(32)
        step_shift_neg = Signal(6)
        in_mode = Signal(2)
        store_waddr = Signal(range(self.store_beats))
        store_base = Signal(range(self.store_beats))
        store_wrap = Signal(32)
        model_waddr = Signal(16)
        # next-state values of the registers the pipeline enable depends on (each register takes its value)
        running, in_done = Signal(), Signal()
        running_n, in_done_n, in_mode_n = Signal(), Signal(), Signal(2)
        beat_full, st_valid = Signal(), Signal()
        m.d.comb += [running_n.eq(running), in_done_n.eq(in_done), in_mode_n.eq(in_mode)]
        m.d.sync += [running.eq(running_n), in_done.eq(in_done_n), in_mode.eq(in_mode_n)]
        samples_mode = Signal()  # in_mode == IN_SAMPLES, a register
        m.d.sync += samples_mode.eq(in_mode_n == IN_SAMPLES)
        sgn = Signal()
        src_link = Signal()
        m.d.comb += [sgn.eq(flags[0] & (b != 1)), src_link.eq(flags[1])]

        # --- run state and counters
        clearing = Signal()
        clear_row = Signal(range(self.rows + 1))
        reading = Signal()
        t_sat = Signal()
        x_sat = Signal()
        cnt_cycles = Signal(32)
        cnt_beats = Signal(32)
        cnt_stalls = Signal(32)
        cnt_samples = Signal(32)
        s_last = Signal()        # cnt_samples == run_samples - 1, a register
        run_end = Signal()       # the RUN's last model row is written
        start = Signal()
        cmd_clear = Signal()
        cmd_read = Signal()
        idle = ~running & ~clearing & ~reading

        # --- register port.  A write is applied a cycle after its pulse (hw.engine allows it), from a registered
        # address decode and data: no path runs from the port (in a board build, the clock-domain crossing's
        # copies) through the decode into the pipeline enable (the 100 MHz build's critical path at a981878:
        # reg_addr -> the CMD decode -> start -> the update write enable, 11.0 ns)
        wq_data = Signal(32)
        wq = {addr: Signal(name=f"wq_{addr}") for addr in WRITABLE_REGS}
        wq_run, wq_clear, wq_read = Signal(), Signal(), Signal()
        is_cmd = self.reg_we & (self.reg_addr == REG_CMD)
        m.d.sync += [wq_data.eq(self.reg_wdata),
                     wq_run.eq(is_cmd & (self.reg_wdata == CMD_RUN)),
                     wq_clear.eq(is_cmd & (self.reg_wdata == CMD_CLEAR_MODEL)),
                     wq_read.eq(is_cmd & (self.reg_wdata == CMD_READ_MODEL))]
        m.d.sync += [sig.eq(self.reg_we & (self.reg_addr == addr)) for addr, sig in wq.items()]
        m.d.comb += [start.eq(wq_run & idle), cmd_clear.eq(wq_clear & idle), cmd_read.eq(wq_read & idle)]
        plain = {REG_FEATURES: features, REG_STEP_SHIFT: step_shift, REG_BATCH_MASK: batch_mask,
                 REG_STORE_BASE: store_base, REG_STORE_WRAP: store_wrap, REG_LOSS: loss, REG_CLASS: ovr_class,
                 REG_STEP_SHIFT_NEG: step_shift_neg}  # registers that take the written value as it is
        for addr, reg in plain.items():
            with m.If(wq[addr]):
                m.d.sync += reg.eq(wq_data)
        with m.If(wq[REG_BEATS]):
            m.d.sync += [beats.eq(wq_data), beats_m1.eq(wq_data[:16] - 1),
                         beats_m2.eq(wq_data[:16] - 2), beats_one.eq(wq_data[:16] == 1)]
        with m.If(wq[REG_RUN_SAMPLES]):
            m.d.sync += [run_samples.eq(wq_data), run_m2.eq(wq_data - 2), run_one.eq(wq_data == 1),
                         run_zero.eq(wq_data == 0)]
        with m.If(wq[REG_FLAGS] & ~running):  # (the pipeline enable below relies on it)
            m.d.sync += flags.eq(wq_data)
        rd = Signal(32)
        with m.Switch(self.reg_addr):
            with m.Case(REG_STATUS):
                m.d.comb += rd.eq(Cat(running, clearing, reading, t_sat, x_sat))
            with m.Case(REG_FEATURES):
                m.d.comb += rd.eq(features)
            with m.Case(REG_BEATS):
                m.d.comb += rd.eq(beats)
            with m.Case(REG_RUN_SAMPLES):
                m.d.comb += rd.eq(run_samples)
            with m.Case(REG_STEP_SHIFT):
                m.d.comb += rd.eq(step_shift)
            with m.Case(REG_BATCH_MASK):
                m.d.comb += rd.eq(batch_mask)
            with m.Case(REG_FLAGS):
                m.d.comb += rd.eq(flags)
            with m.Case(REG_IN_MODE):
                m.d.comb += rd.eq(in_mode)
            with m.Case(REG_STORE_WADDR):
                m.d.comb += rd.eq(store_waddr)
            with m.Case(REG_STORE_BASE):
                m.d.comb += rd.eq(store_base)
            with m.Case(REG_STORE_WRAP):
                m.d.comb += rd.eq(store_wrap)
            with m.Case(REG_MODEL_WADDR):
                m.d.comb += rd.eq(model_waddr)
            with m.Case(REG_LOSS):
                m.d.comb += rd.eq(loss)
            with m.Case(REG_CLASS):
                m.d.comb += rd.eq(ovr_class)
            with m.Case(REG_STEP_SHIFT_NEG):
                m.d.comb += rd.eq(step_shift_neg)
            with m.Case(REG_CYCLES):
                m.d.comb += rd.eq(cnt_cycles)
            with m.Case(REG_BEATS_IN):
                m.d.comb += rd.eq(cnt_beats)
            with m.Case(REG_STALLS):
                m.d.comb += rd.eq(cnt_stalls)
            with m.Case(REG_SAMPLES_DONE):
                m.d.comb += rd.eq(cnt_samples)
            with m.Case(REG_P_BITS):
                m.d.comb += rd.eq(b)
            with m.Case(REG_P_BUS_BITS):
                m.d.comb += rd.eq(W)
            with m.Case(REG_P_LANES):
                m.d.comb += rd.eq(L)
            with m.Case(REG_P_MAX_FEATURES):
                m.d.comb += rd.eq(self.max_features)
            with m.Case(REG_P_STORE_BEATS):
                m.d.comb += rd.eq(self.store_beats)
            with m.Case(REG_P_PIPE_LATENCY):
                m.d.comb += rd.eq(self.pipe_latency)
            with m.Case(REG_P_ROWS):
                m.d.comb += rd.eq(self.rows)
            with m.Case(REG_P_MODEL_BITS):
                m.d.comb += rd.eq(mw)
            with m.Case(REG_P_MODEL_FRAC):
                m.d.comb += rd.eq(self.model_frac_bits)
            with m.Case(REG_P_ENCODING):
                m.d.comb += rd.eq(ENCODING_IDS[self.encoding])
        with m.If(self.reg_re):
            m.d.sync += self.reg_rdata.eq(rd)

        # --- input bytes: beat assembler (samples / store) and word assembler (model)
        beat_sr = Signal(W)
        beat_cnt = Signal(range(W // 8))
        beat_take = Signal()
        word_sr = Signal(32)
        word_cnt = Signal(2)
        mode_write, waddr_write, maddr_write = wq[REG_IN_MODE], wq[REG_STORE_WADDR], wq[REG_MODEL_WADDR]
        # host model words go to (row, lane) counters: L need not be a power of two (compact slots).  A write of
        # MODEL_WADDR = v seeks there, one word per clock, before input is taken again.
        model_wrow = Signal(16)
        model_wlane = Signal(range(L))
        model_seek = Signal(16)
        seek_zero = Signal(init=1)  # model_seek == 0, a register
        with m.If((in_mode == IN_MODEL) | (in_mode == IN_RNG)):
            m.d.comb += self.i.ready.eq(idle & seek_zero)
        with m.Else():
            m.d.comb += self.i.ready.eq(~beat_full | beat_take)
        beat_next = Cat(beat_sr[8:], self.i.payload)
        word_next = Cat(word_sr[8:], self.i.payload)
        model_word_we = Signal()
        rng_word_we = Signal()
        # store beats and host model words reach their block RAMs from registers, a cycle after the byte that
        # completes them: the write enable, which Yosys's port sharing puts in front of a RAM's address, does not
        # start at the input handshake (the engine-alone build's critical path, 10.7 ns)
        sw_en, sw_addr, sw_data = Signal(), Signal.like(store_waddr), Signal(W)
        m.d.sync += sw_en.eq(0)
        m.d.comb += [sw.en.eq(sw_en), sw.addr.eq(sw_addr), sw.data.eq(sw_data)]
        with m.If(beat_take):
            m.d.sync += beat_full.eq(0)
        with m.If(self.i.valid & self.i.ready):
            with m.If((in_mode == IN_MODEL) | (in_mode == IN_RNG)):
                m.d.sync += [word_sr.eq(word_next), word_cnt.eq(word_cnt + 1)]
                with m.If(word_cnt == 3):
                    m.d.comb += model_word_we.eq(in_mode == IN_MODEL)
                    m.d.comb += rng_word_we.eq(in_mode == IN_RNG)
            with m.Else():
                m.d.sync += beat_sr.eq(beat_next)
                with m.If(beat_cnt == W // 8 - 1):
                    m.d.sync += beat_cnt.eq(0)
                    with m.If(in_mode == IN_STORE):
                        m.d.sync += [sw_en.eq(1), sw_addr.eq(store_waddr), sw_data.eq(beat_next)]
                        m.d.sync += store_waddr.eq(Mux(store_waddr == self.store_beats - 1, 0, store_waddr + 1))
                    with m.Else():
                        m.d.sync += beat_full.eq(1)
                with m.Else():
                    m.d.sync += beat_cnt.eq(beat_cnt + 1)
        with m.If(mode_write):
            m.d.sync += [beat_cnt.eq(0), word_cnt.eq(0), beat_full.eq(0)]
            m.d.comb += in_mode_n.eq(wq_data)
        with m.If(waddr_write):
            m.d.sync += store_waddr.eq(wq_data)
        def next_word(row, lane):
            return [lane.eq(Mux(lane == L - 1, 0, lane + 1)), row.eq(Mux(lane == L - 1, row + 1, row))]

        with m.If(maddr_write):
            m.d.sync += [model_waddr.eq(wq_data), model_wrow.eq(0), model_wlane.eq(0),
                         model_seek.eq(wq_data), seek_zero.eq(wq_data[:16] == 0)]
        with m.Elif(~seek_zero):
            m.d.sync += [model_seek.eq(model_seek - 1), seek_zero.eq(model_seek == 1),
                         *next_word(model_wrow, model_wlane)]
        with m.Elif(model_word_we):
            m.d.sync += [model_waddr.eq(model_waddr + 1), *next_word(model_wrow, model_wlane)]

        # --- beat source: the on-chip store (one beat per clock) or the link's beat assembler
        src_valid = Signal()
        src_payload = Signal(W)
        core_ready = Signal()
        st_addr = Signal(range(self.store_beats))
        st_limit = Signal(32)  # where the read address wraps, a register (Fmax): ready before a RUN can start
        m.d.sync += st_limit.eq(Mux(store_wrap == 0, self.store_beats, store_wrap))
        st_adv = ~st_valid | core_ready
        m.d.comb += [sr.addr.eq(st_addr), sr.en.eq(st_adv)]
        with m.If(start):
            m.d.sync += [st_addr.eq(store_base), st_valid.eq(0)]
        with m.Elif(st_adv):
            fetch = running & ~src_link & ~in_done
            m.d.sync += st_valid.eq(fetch)
            with m.If(fetch):
                m.d.sync += st_addr.eq(Mux(st_addr + 1 >= st_limit, 0, st_addr + 1))
        with m.If(src_link):
            m.d.comb += [src_valid.eq(beat_full & samples_mode), src_payload.eq(beat_sr),
                         beat_take.eq(core_ready & samples_mode)]
        with m.Else():
            m.d.comb += [src_valid.eq(st_valid), src_payload.eq(sr.data)]

        # --- pipeline control
        accept = Signal()
        last = Signal(init=1)    # k == beats - 1, a register
        i_last = Signal()        # i_in == run_samples - 1, a register
        # ce = accept | (running & in_done), the enable of every pipeline register, is a register itself (its
        # fan-out is thousands of flip-flops: Fmax): computed from the next-state values of what it depends on.
        # The block RAMs' read enables have their own register, ce_mem = ce while running, else 1 (a distinct
        # signal, so synthesis does not merge it into ce), and so have the FIFO and model-bank write enables
        # (fifo_we = ce & v1, upd_we = ce & ud_v, from the next-state values of v1 and ud_v).
        # ce_next is running_n & (in_done_n | the next src_valid), written out from registers so that it is a few
        # LUT levels (through the next-state values it was 8, the 100 MHz build's critical path).  From the
        # store it is running & ~run_end: while running and not done a beat is fetched every clock, and START
        # (which needs ~running) clears st_valid.  From the link, the beat assembler's next state in samples
        # mode (an IN_MODE write clears beat_full, so the mode's next state does not matter) and in_done_n
        # with the link's src_valid.  FLAGS, which picks between them, is not written during a RUN.
        ce, ce_next, ce_mem = Signal(), Signal(), Signal()
        link_beat_n = Signal()     # beat_full's next value & (in_mode_n == IN_SAMPLES)
        link_in_done_n = Signal()  # in_done_n when src_link
        m.d.comb += [core_ready.eq(running & ~in_done),
                     accept.eq(src_valid & core_ready),
                     link_beat_n.eq(~mode_write & samples_mode
                                    & ((self.i.valid & (beat_cnt == W // 8 - 1) & (~beat_full | core_ready))
                                       | (beat_full & ~core_ready))),
                     link_in_done_n.eq(~start & (in_done | (beat_full & samples_mode & running & last & i_last))),
                     ce_next.eq(Mux(src_link, running_n & (link_in_done_n | link_beat_n), running & ~run_end))]
        m.d.sync += [ce.eq(ce_next), ce_mem.eq(~running_n | ce_next)]
        with m.If(running):
            m.d.sync += cnt_cycles.eq(cnt_cycles + 1)
            with m.If(accept):
                m.d.sync += cnt_beats.eq(cnt_beats + 1)
            with m.If(~in_done & ~src_valid):
                m.d.sync += cnt_stalls.eq(cnt_stalls + 1)

        # --- S0: beat position
        k = Signal(16)
        # features - the beat's first feature index, with rem0 >= L and rem0 > 0 kept as registers beside it: the
        # lane mask is then two LUT levels on rem0's low bits (_lane_mask), not a comparison per lane
        w_low = max(1, (L - 1).bit_length())
        rem0 = Signal(signed(18))
        big0, pos0 = Signal(), Signal()
        first_beat = [rem0.eq(features), big0.eq(features >= L), pos0.eq(features != 0)]
        i_in = Signal(32)
        with m.If(start):
            m.d.comb += [running_n.eq(~run_zero), in_done_n.eq(0)]
            m.d.sync += first_beat
            m.d.sync += [k.eq(0), i_in.eq(0), last.eq(beats_one), i_last.eq(run_one),
                         cnt_cycles.eq(0), cnt_beats.eq(0), cnt_stalls.eq(0), cnt_samples.eq(0), s_last.eq(run_one),
                         t_sat.eq(0), x_sat.eq(0)]
        with m.Elif(accept):
            with m.If(last):
                m.d.sync += first_beat
                m.d.sync += [k.eq(0), i_in.eq(i_in + 1), last.eq(beats_one), i_last.eq(i_in == run_m2)]
                with m.If(i_last):
                    m.d.comb += in_done_n.eq(1)
            with m.Else():
                m.d.sync += [k.eq(k + 1), rem0.eq(rem0 - L), big0.eq(rem0 >= 2 * L), pos0.eq(rem0 > L),
                             last.eq(k == beats_m2)]
        m.d.comb += [yr.addr.eq(k), yr.en.eq(ce_mem)]
        fifo_wp = Signal(range(self.fifo_depth))
        fifo_rp = Signal(range(self.fifo_depth))
        fifo_rp_n = Signal.like(fifo_rp)  # its next-state value: the FIFO is read a cycle ahead, at it
        m.d.comb += fifo_rp_n.eq(fifo_rp)
        m.d.sync += fifo_rp.eq(fifo_rp_n)

        # --- S1: model row available; per-lane products
        v1, last1, ref1 = Signal(), Signal(), Signal()
        p1 = Signal(W)
        low1, big1, pos1 = Signal(w_low), Signal(), Signal()
        refresh = ((i_in & batch_mask) == batch_mask) | i_last
        with m.If(ce):
            m.d.sync += [v1.eq(accept), last1.eq(last), ref1.eq(refresh), p1.eq(src_payload),
                         low1.eq(rem0[:w_low]), big1.eq(big0), pos1.eq(pos0)]
        # the beat goes into the FIFO from this register (not from the store's RAM output: Fmax)
        fifo_we = Signal()
        m.d.sync += fifo_we.eq(ce_next & Mux(ce, accept, v1))
        m.d.comb += [fw.addr.eq(fifo_wp), fw.data.eq(p1), fw.en.eq(fifo_we)]
        with m.If(start):
            m.d.sync += fifo_wp.eq(0)
            m.d.comb += fifo_rp_n.eq(0)
        with m.Elif(fifo_we):
            m.d.sync += fifo_wp.eq(fifo_wp + 1)
        raw_lab = p1[W - 32:]
        one = 1 << 23
        tw = 34
        m.submodules.tree = tree = AdderTree(L, tw)
        m.d.comb += tree.ce.eq(ce)
        q1 = self._registered_codes(m, ce, p1, 0, sgn)  # S1b: the beat's q1 codes
        # S1b: the model row and the codes registered once more (the block RAM's clock-to-out is not in front of
        # the lane products: Fmax)
        v1b, last1b, ref1b = Signal(), Signal(), Signal()
        lab1b = Signal(signed(32))
        hit1b = Signal()  # the label word equals CLASS (one-vs-rest); the label is decided from it in S2 (Fmax)
        # the lanes that hold features, decided here from registers: with the decision after it, Yosys shared
        # it across lanes and the lane terms waited on routes across the chip (the engine-alone build's critical
        # path, 13.5 ns)
        mask1b = Signal(L)
        yrow = Signal(mw * L)
        with m.If(ce):
            m.d.sync += [v1b.eq(v1), last1b.eq(last1), ref1b.eq(ref1),
                         lab1b.eq(raw_lab), hit1b.eq(raw_lab == ovr_class),
                         mask1b.eq(_lane_mask(big1, pos1, low1, L)), yrow.eq(yr.data)]
        v2, last2, ref2 = Signal(), Signal(), Signal()
        lab2 = Signal(signed(32))
        terms = Signal(data.ArrayLayout(signed(tw), L))
        with m.If(ce):
            m.d.sync += [v2.eq(v1b), last2.eq(last1b), ref2.eq(ref1b),
                         lab2.eq(Mux(flags[2], Mux(hit1b, one, Mux(loss == LOSS_LOGISTIC, 0, -one)), lab1b))]
            for j in range(L):
                xj = stored_to_q23(yrow[mw * j:mw * j + mw])
                term = self._product_nb(xj, q1[j], sgn)
                m.d.sync += terms[j].eq(Mux(mask1b[j], term, 0))
        m.d.comb += tree.i.eq(terms)
        # delay lines alongside the tree
        va, lasta, refa, laba = v2, last2, ref2, lab2
        for lvl in range(self.tree_latency):
            nv, nl, nr = Signal(name=f"tv{lvl}"), Signal(name=f"tl{lvl}"), Signal(name=f"tr{lvl}")
            nlab = Signal(signed(32), name=f"tlab{lvl}")
            with m.If(ce):
                m.d.sync += [nv.eq(va), nl.eq(lasta), nr.eq(refa), nlab.eq(laba)]
            va, lasta, refa, laba = nv, nl, nr, nlab

        # --- accumulate over the beats of a sample
        acc_w = 32 + 2 + (self.rows * L).bit_length()
        acc = Signal(signed(acc_w))
        dot = Signal(signed(acc_w))
        dv, dref = Signal(), Signal()
        dlab = Signal(signed(32))
        with m.If(ce):
            m.d.sync += dv.eq(va & lasta)
            with m.If(va):
                with m.If(lasta):
                    m.d.sync += [dot.eq(acc + tree.o), acc.eq(0), dlab.eq(laba), dref.eq(refa)]
                with m.Else():
                    m.d.sync += acc.eq(acc + tree.o)
        with m.If(start):
            m.d.sync += acc.eq(0)

        # --- sigmoid table read: index clamp(dot >> SIGMOID_IN_SHIFT) + SIGMOID_ENTRIES / 2
        half = SIGMOID_ENTRIES // 2
        sig_rd = self.sigmoid.read_port()
        coarse = dot >> SIGMOID_IN_SHIFT
        # clamp(coarse, -half, half - 1) + half as bit tests (no carry chain in front of the RAM's address: Fmax):
        # coarse is in range iff its bits from log2(half) up are all equal, and then + half flips bit log2(half)
        hb = half.bit_length() - 1
        top = coarse[hb:]
        in_range = (top == 0) | (top == (1 << len(top)) - 1)
        m.d.comb += [sig_rd.en.eq(ce_mem),
                     sig_rd.addr.eq(Mux(in_range, Cat(coarse[:hb], ~coarse[hb]), Mux(coarse[-1], 0, 2 * half - 1)))]
        sv, sref = Signal(), Signal()
        sdot = Signal(signed(acc_w))
        slab = Signal(signed(32))
        spos = Signal()  # slab > 0, registered beside it (Fmax)
        with m.If(ce):
            m.d.sync += [sv.eq(dv), sref.eq(dref), sdot.eq(dot), slab.eq(dlab), spos.eq(dlab > 0)]

        # --- scalar stage: t = sat32((f(dot) - label) >> shift), 0 when an L2-SVM margin is met.  Four register
        # stages (Fmax): f(dot) (the sigmoid RAM's output or the dot); the difference shifted by the multiple of 8
        # in shift and the margin test (as comparisons of f(dot) with the label, beside the subtraction); the
        # remaining shift by shift mod 8 (no 6-level barrel shifter in one stage); the saturation
        fv, fref, fpos = Signal(), Signal(), Signal()
        f_dot = Signal(signed(acc_w))
        flab = Signal(signed(32))
        fshift = Signal(6)
        with m.If(ce):
            m.d.sync += [fv.eq(sv), fref.eq(sref), fpos.eq(spos), flab.eq(slab),
                         f_dot.eq(Mux(loss == LOSS_LOGISTIC, sig_rd.data, sdot)),
                         fshift.eq(Mux(flags[3] & ~spos, step_shift_neg, step_shift))]
        diff8 = Signal(signed(acc_w + 1))
        dv2, dref2, dactive = Signal(), Signal(), Signal()
        shift_lo = Signal(3)
        with m.If(ce):
            m.d.sync += [diff8.eq((f_dot - flab) >> Cat(Const(0, 3), fshift[3:])), dv2.eq(fv), dref2.eq(fref),
                         shift_lo.eq(fshift[:3]),
                         dactive.eq(Mux(loss == LOSS_L2SVM, Mux(fpos, f_dot < flab, f_dot > flab), 1))]
        shifted = Signal(signed(acc_w + 1))
        active = Signal()
        hv, href = Signal(), Signal()
        with m.If(ce):
            m.d.sync += [shifted.eq(diff8 >> shift_lo), hv.eq(dv2), href.eq(dref2), active.eq(dactive)]
        t_hi, t_lo = self._int32_overflow(shifted)
        tv, tref = Signal(), Signal()
        t = Signal(signed(32))
        with m.If(ce):
            m.d.sync += [tv.eq(hv), tref.eq(href),
                         t.eq(Mux(active, Mux(t_hi, 2**31 - 1, Mux(t_lo, -2**31, shifted)), 0))]
            with m.If(hv & active & (t_hi | t_lo)):
                m.d.sync += t_sat.eq(1)

        # --- update pass: one model row per enabled cycle
        u_active, u_ref = Signal(), Signal()
        u_row = Signal(16)
        u_rem = Signal(signed(18))  # features - the row's first feature index, and its flags (as rem0's)
        u_big, u_pos = Signal(), Signal()
        u_t = Signal(signed(32))
        issue = tv | u_active
        row = Mux(tv, 0, u_row)
        urem = Mux(tv, features, u_rem)
        ubig = Mux(tv, features >= L, u_big)
        upos = Mux(tv, features != 0, u_pos)
        tt = Mux(tv, t, u_t)
        rr = Mux(tv, tref, u_ref)
        # the FIFO row of the beat issued in U0 is read a cycle ahead (at fifo_rp's next-state value) and taken
        # into a register as it is, beside the U0 registers: no logic follows the block RAM's clock-to-out
        # (5.8 ns on the ECP5; the decode behind it was the 100 MHz build's critical path, 10.9 ns).  A beat is in
        # the FIFO long before its update pass reads it (after its dot product)
        fq = Signal(W)
        m.d.comb += [fr.addr.eq(fifo_rp_n), fr.en.eq(1)]
        with m.If(ce):
            m.d.sync += fq.eq(fr.data)
        ua_v, ua_ref, ua_lastrow = Signal(), Signal(), Signal()
        # the rows in flight are as wide as the model banks' address (their forwarding compares: Fmax)
        ua_row = Signal(range(max(2, self.rows)))
        ua_low, ua_big, ua_pos = Signal(w_low), Signal(), Signal()
        ua_t = Signal(signed(32))
        with m.If(ce):
            m.d.sync += [ua_v.eq(issue), ua_row.eq(row), ua_low.eq(urem[:w_low]), ua_big.eq(ubig),
                         ua_pos.eq(upos), ua_t.eq(tt), ua_ref.eq(rr),
                         ua_lastrow.eq(row == beats_m1)]
            with m.If(issue):
                m.d.comb += fifo_rp_n.eq(fifo_rp + 1)
                m.d.sync += [u_row.eq(row + 1), u_rem.eq(urem - L), u_big.eq(urem >= 2 * L),
                             u_pos.eq(urem > L), u_t.eq(tt),
                             u_ref.eq(rr), u_active.eq(row != beats_m1)]
        with m.If(start):
            m.d.sync += u_active.eq(0)
        # U1: the beat's q2 codes (decoded from its FIFO row) registered, so no lane product starts at a decoder
        # (Fmax); the X bank row requested in U0 arrives
        ub_v, ub_ref, ub_lastrow = Signal(), Signal(), Signal()
        ub_row = Signal.like(ua_row)
        ub_mask = Signal(L)  # the lanes that hold features, registered as mask1b (Fmax)
        ub_t = Signal(signed(32))
        with m.If(ce):
            m.d.sync += [ub_v.eq(ua_v), ub_ref.eq(ua_ref), ub_lastrow.eq(ua_lastrow), ub_row.eq(ua_row),
                         ub_mask.eq(_lane_mask(ua_big, ua_pos, ua_low, L)), ub_t.eq(ua_t)]
        q2 = self._registered_codes(m, ce, fq, 1, sgn)
        # xorshift32 lanes (twins of models.zipml.rng.Xorshift32Lanes), loaded in IN_RNG order: the gradient's
        # lanes (stochastic_grad), then the model's (model_bits < 32).  A row with features steps every lane of a
        # set (the twin's element-to-lane mapping: feature j -> lane j % L at step j // L of a sample's request).
        uc_v, uc_ref, uc_lastrow = Signal(), Signal(), Signal()
        uc_row = Signal.like(ua_row)
        uc_pos = Signal()  # the row holds a feature (lane 0's mask bit)
        rng_sets = [name for name, on in [("g", self.stochastic_grad), ("m", mw < 32)] if on]
        all_states = {name: [Signal(32, name=f"rng{name}{j}") for j in range(L)] for name in rng_sets}
        rand = {"g": [None] * L, "m": [None] * L}
        if rng_sets:
            load_order = [st for name in rng_sets for st in all_states[name]]
            rng_lane = Signal(range(len(load_order) + 1))
            with m.If(mode_write):
                m.d.sync += rng_lane.eq(0)
            with m.Elif(rng_word_we):
                m.d.sync += rng_lane.eq(rng_lane + 1)
                with m.Switch(rng_lane):
                    for j, st in enumerate(load_order):
                        with m.Case(j):
                            m.d.sync += st.eq(word_next)
        for name in rng_sets:
            step = ce & (ub_v & ub_mask[0] if name == "g" else uc_v & uc_pos)
            for j, st in enumerate(all_states[name]):
                x1 = Signal(32, name=f"xs{name}{j}a")
                x2 = Signal(32, name=f"xs{name}{j}b")
                x3 = Signal(32, name=f"xs{name}{j}c")
                m.d.comb += [x1.eq(st ^ (st << 13)[:32]), x2.eq(x1 ^ (x1 >> 17)), x3.eq(x2 ^ (x2 << 5)[:32])]
                rand[name][j] = x3
                with m.If(step):
                    m.d.sync += st.eq(x3)
        # U2: g_j = (t * q2_j) >> nb and the X row registered.  The X bank's read does not see the writes of the
        # three rows ahead of it (U3 now, and the two written before, its read having been requested in U0), so
        # U2 forwards the newest of them on a row match (R = 1 rewrites one row on consecutive cycles).  The
        # matches are decided here, one stage early, so U3 only selects.
        gw = 34
        g = Signal(data.ArrayLayout(signed(gw), L))
        xrow = Signal(mw * L)
        ud_v, ud_ref, ud_lastrow = Signal(), Signal(), Signal()
        ud_row = Signal.like(ua_row)
        ud_data = Signal(mw * L)
        ud_sat = Signal(L)
        ue_v, uf_v = Signal(), Signal()
        ue_row, uf_row = Signal.like(ua_row), Signal.like(ua_row)
        ue_data, uf_data = Signal(mw * L), Signal(mw * L)
        # the source of U3's X row, encoded: 3 ud (the row written next), 2 ue, 1 uf, 0 the RAM's row; two select
        # bits make each bit's choice one 4:1 mux (LUT4 pair + PFUMX) instead of a priority chain (Fmax).  One
        # select per lane, forced to the RAM's row in lanes beyond d: there g = 0, so every candidate holds the
        # same word, and the lanes' selects are distinct signals that synthesis keeps apart (fan-out 32, not 32 L)
        x_src = Signal(data.ArrayLayout(2, L))
        fwd_d, fwd_e, fwd_f = uc_v & (uc_row == ub_row), ud_v & (ud_row == ub_row), ue_v & (ue_row == ub_row)
        with m.If(ce):
            m.d.sync += [uc_v.eq(ub_v), uc_ref.eq(ub_ref), uc_lastrow.eq(ub_lastrow), uc_row.eq(ub_row),
                         uc_pos.eq(ub_mask[0]), xrow.eq(xr.data)]
            src = Mux(fwd_d, 3, Mux(fwd_e, 2, Mux(fwd_f, 1, 0)))
            for j in range(L):
                m.d.sync += x_src[j].eq(Mux(ub_mask[j], src, 0))
                if self.stochastic_grad:
                    gj = self._round_nb(self._mul(ub_t, q2[j]), rand["g"][j], sgn)
                else:
                    gj = self._product_nb(ub_t, q2[j], sgn)
                m.d.sync += g[j].eq(Mux(ub_mask[j], gj, 0))
        with m.If(reading):
            m.d.sync += xrow.eq(xr.data)
        x_cur = Signal(mw * L)
        for j in range(L):
            lane = slice(mw * j, mw * j + mw)
            sel = x_src[j]
            m.d.comb += x_cur[lane].eq(Mux(sel[1], Mux(sel[0], ud_data[lane], ue_data[lane]),
                                           Mux(sel[0], uf_data[lane], xrow[lane])))
        # U3: x_j = sat32(x_j - g_j) (then the stochastic rounding to w bits), registered with its saturation bits
        new_lanes = []
        any_sat = []
        for j in range(L):
            xj = stored_to_q23(x_cur[mw * j:mw * j + mw])
            nv = Signal(signed(gw + 1), name=f"new{j}")
            m.d.comb += nv.eq(xj - g[j])
            hi, lo = self._int32_overflow(nv)
            sat = Mux(hi, Const(2**31 - 1, 32), Mux(lo, Const(2**31, 32), nv[:32]))
            if mw < 32:  # stochastic rounding on write to w bits, then saturate to the w-bit range
                n32 = Signal(signed(32), name=f"n32_{j}")
                rnd = Signal(signed(33 - drop), name=f"rnd{j}")
                m.d.comb += [n32.eq(sat), rnd.eq((n32 >> drop) + (rand["m"][j][32 - drop:] < n32[:drop]))]
                whi, wlo = rnd > 2**(mw - 1) - 1, rnd < -2**(mw - 1)
                any_sat.append(hi | lo | whi | wlo)
                new_lanes.append(Mux(whi, Const(2**(mw - 1) - 1, mw), Mux(wlo, Const(2**(mw - 1), mw), rnd[:mw])))
            else:
                any_sat.append(hi | lo)
                new_lanes.append(sat)
        with m.If(ce):
            m.d.sync += [ud_v.eq(uc_v), ud_ref.eq(uc_ref), ud_lastrow.eq(uc_lastrow), ud_row.eq(uc_row),
                         ud_data.eq(Cat(*new_lanes)), ud_sat.eq(Cat(*any_sat)),
                         ue_v.eq(ud_v), ue_row.eq(ud_row), ue_data.eq(ud_data),
                         uf_v.eq(ue_v), uf_row.eq(ue_row), uf_data.eq(ue_data)]
        with m.If(start):
            m.d.sync += [ue_v.eq(0), uf_v.eq(0)]
        # U4: the row written to bank X (and Y on refresh samples)
        upd_we = Signal()
        m.d.sync += upd_we.eq(ce_next & Mux(ce, uc_v, ud_v))
        with m.If(upd_we):
            with m.If(ud_sat.any()):
                m.d.sync += x_sat.eq(1)
            with m.If(ud_lastrow):
                m.d.sync += [cnt_samples.eq(cnt_samples + 1), s_last.eq(cnt_samples == run_m2)]
                m.d.comb += run_end.eq(s_last)
        with m.If(run_end):
            m.d.comb += running_n.eq(0)

        # --- model memory ports: the update pass, clearing, host word writes, host reads
        hw_we, hw_row, hw_lanes, hw_word = Signal(), Signal(16), Signal(L), Signal(mw)  # a host word, registered
        m.d.sync += [hw_we.eq(model_word_we & (model_wrow < self.rows)), hw_row.eq(model_wrow),
                     hw_lanes.eq(Const(1, L) << model_wlane),
                     hw_word.eq(word_next[drop:drop + mw])]  # host words are Q.23; stored truncated to w bits
        all_lanes = (1 << L) - 1
        rd_word = Signal(16)
        rd_row = Signal(16)
        rd_lane = Signal(range(L))
        with m.If(running):
            m.d.comb += [xr.addr.eq(ua_row), xr.en.eq(ce_mem),
                         xw.addr.eq(ud_row), xw.data.eq(ud_data), xw.en.eq(Mux(upd_we, all_lanes, 0)),
                         yw.addr.eq(ud_row), yw.data.eq(ud_data), yw.en.eq(Mux(upd_we & ud_ref, all_lanes, 0))]
            with m.If(hw_we):  # the last host word, a cycle late, when RUN came right after it (no update yet)
                m.d.comb += [xw.addr.eq(hw_row), xw.data.eq(Cat(*([hw_word] * L))), xw.en.eq(hw_lanes),
                             yw.addr.eq(hw_row), yw.data.eq(Cat(*([hw_word] * L))), yw.en.eq(hw_lanes)]
        with m.Elif(clearing):  # (a host word a cycle late is cleared anyway)
            m.d.comb += [xw.addr.eq(clear_row), xw.data.eq(0), xw.en.eq(all_lanes),
                         yw.addr.eq(clear_row), yw.data.eq(0), yw.en.eq(all_lanes)]
        with m.Else():
            m.d.comb += [xr.addr.eq(rd_row), xr.en.eq(1),
                         xw.addr.eq(hw_row), xw.data.eq(Cat(*([hw_word] * L))),
                         yw.addr.eq(hw_row), yw.data.eq(Cat(*([hw_word] * L)))]
            with m.If(hw_we):
                m.d.comb += [xw.en.eq(hw_lanes), yw.en.eq(hw_lanes)]

        with m.If(cmd_clear):
            m.d.sync += [clearing.eq(1), clear_row.eq(0)]
        with m.Elif(clearing):
            m.d.sync += clear_row.eq(clear_row + 1)
            with m.If(clear_row == self.rows - 1):
                m.d.sync += clearing.eq(0)

        # --- model readback: FEATURES words, 4 bytes each, little-endian
        rd_phase = Signal(2)
        rd_byte = Signal(2)
        rd_latch = Signal(32)
        with m.If(cmd_read):
            m.d.sync += [reading.eq(features != 0), rd_word.eq(0), rd_row.eq(0), rd_lane.eq(0), rd_phase.eq(0),
                         rd_byte.eq(0)]
        with m.Elif(reading):
            with m.Switch(rd_phase):
                with m.Case(0):
                    m.d.sync += rd_phase.eq(1)
                with m.Case(1):  # the row registered (below), then one word of it: no lane select at a RAM output
                    m.d.sync += rd_phase.eq(3)
                with m.Case(3):
                    m.d.sync += [rd_latch.eq(stored_to_q23(xrow.word_select(rd_lane, mw))), rd_phase.eq(2)]
                with m.Case(2):
                    m.d.comb += [self.o.valid.eq(1), self.o.payload.eq(rd_latch.word_select(rd_byte, 8))]
                    with m.If(self.o.ready):
                        m.d.sync += rd_byte.eq(rd_byte + 1)
                        with m.If(rd_byte == 3):
                            m.d.sync += [rd_word.eq(rd_word + 1), rd_phase.eq(0), *next_word(rd_row, rd_lane)]
                            with m.If(rd_word + 1 == features):
                                m.d.sync += reading.eq(0)

        m.d.comb += self._decoders
        m.d.comb += self.busy.eq(running | clearing | reading)
        return m
