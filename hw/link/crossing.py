"""A clock-domain crossing between the link's router (the ``sync`` domain) and any engine (its own domain).

The engine runs in the domain named ``domain`` (``DomainRenamer``); the crossing faces the router with the
engine contract (``hw.engine``) plus ``reg_ack``:

- the ``i`` and ``o`` byte streams pass through ``amaranth.lib.fifo.AsyncFIFO``s (Cummings' Gray-pointer FIFO),
  each with a ``SyncFIFOBuffered`` on its engine side so that no handshake path runs from a FIFO pointer
  through the engine;
- a register access is a request/acknowledge handshake (toggle synchronisers, as in Cummings and Mitra,
  "Clock Domain Crossing (CDC) Design & Verification Techniques Using SystemVerilog", SNUG 2008, §5.8): the
  router's ``reg_we``/``reg_re`` pulse latches address, data and direction in the link domain and flips a
  request toggle; the engine side sees the flip two flip-flops later, pulses the engine's ``reg_we`` or
  ``reg_re`` from a register on the next engine cycle (address and data from engine-domain copies), captures ``reg_rdata`` on the next engine cycle and flips the acknowledge toggle; the link side
  pulses ``reg_ack`` when it sees that flip, with ``reg_rdata`` stable. Every multi-bit value that crosses is
  held still from before its toggle flips until after the other side has acted on it;
- ``busy`` is the engine's ``busy`` or data in any FIFO (engine side, synchronised) or an access in flight.

The router issues the next register access only after ``reg_ack``, so one access is in flight at a time.
"""
from amaranth.hdl import DomainRenamer, Module, Signal
from amaranth.lib import fifo, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import Out

from ..engine import ENGINE_MEMBERS

FIFO_DEPTH = 16


class EngineCrossing(wiring.Component):
    """``engine`` (a ``hw.engine`` component written for ``sync``) run in clock domain ``domain``, seen from the
    ``sync`` domain.  ``engine_id`` and ``params`` are the engine's (the design digest does not change)."""

    def __init__(self, engine, *, domain: str = "engine", fifo_depth: int = FIFO_DEPTH):
        if domain == "sync":
            raise ValueError("the engine domain of a crossing must not be 'sync' (the router's domain)")
        if fifo_depth < 2:
            raise ValueError(f"crossing FIFO depth must be at least 2, got {fifo_depth}")
        self.engine = engine
        self.domain = domain
        self.fifo_depth = fifo_depth
        self.engine_id = engine.engine_id
        self.params = engine.params
        super().__init__({**ENGINE_MEMBERS, "reg_ack": Out(1)})

    def elaborate(self, platform):
        m = Module()
        dom = self.domain
        eng = self.engine
        m.submodules.engine = DomainRenamer(dom)(eng)

        # --- byte streams
        m.submodules.i_fifo = i_fifo = fifo.AsyncFIFO(width=8, depth=self.fifo_depth, w_domain="sync",
                                                      r_domain=dom)
        m.submodules.o_fifo = o_fifo = fifo.AsyncFIFO(width=8, depth=self.fifo_depth, w_domain=dom,
                                                      r_domain="sync")
        # a 3-entry buffered FIFO in the engine domain on each side: the engine's handshake meets only its
        # registers, and each AsyncFIFO's engine-side enable only their registered levels (the 100 MHz SGD
        # build's worst path ran synchronised pointer -> empty -> engine ready -> read pointer -> FIFO RAM)
        m.submodules.i_buf = i_buf = DomainRenamer(dom)(fifo.SyncFIFOBuffered(width=8, depth=3))
        m.submodules.o_buf = o_buf = DomainRenamer(dom)(fifo.SyncFIFOBuffered(width=8, depth=3))
        wiring.connect(m, wiring.flipped(self.i), i_fifo.w_stream)
        wiring.connect(m, i_fifo.r_stream, i_buf.w_stream)
        wiring.connect(m, i_buf.r_stream, eng.i)
        wiring.connect(m, eng.o, o_buf.w_stream)
        wiring.connect(m, o_buf.r_stream, o_fifo.w_stream)
        wiring.connect(m, o_fifo.r_stream, wiring.flipped(self.o))

        # --- register port: request (link -> engine) and acknowledge (engine -> link) toggles
        req_addr = Signal.like(self.reg_addr)
        req_wdata = Signal.like(self.reg_wdata)
        req_read = Signal()
        req_toggle = Signal()
        pending = Signal()
        with m.If(self.reg_we | self.reg_re):
            m.d.sync += [req_addr.eq(self.reg_addr), req_wdata.eq(self.reg_wdata), req_read.eq(self.reg_re),
                         req_toggle.eq(~req_toggle), pending.eq(1)]

        req_seen = Signal()  # req_toggle in the engine domain
        req_done = Signal()  # the last request the engine side has carried out
        m.submodules.req_sync = FFSynchronizer(req_toggle, req_seen, o_domain=dom)
        rdata = Signal.like(self.reg_rdata)
        ack_toggle = Signal()
        reading = Signal()  # engine side: the read pulsed last cycle; its data is on the engine's reg_rdata now
        # the engine's port is driven from engine-domain flip-flops only (address and data copied every cycle,
        # stable long before the synchronised toggle arrives; the pulses registered one cycle after it), so no
        # synchroniser output or link-domain register starts a path into the engine's register logic
        eng_we, eng_re = Signal(), Signal()
        m.d[dom] += [eng.reg_addr.eq(req_addr), eng.reg_wdata.eq(req_wdata), eng_we.eq(0), eng_re.eq(0)]
        m.d.comb += [eng.reg_we.eq(eng_we), eng.reg_re.eq(eng_re)]
        m.d[dom] += reading.eq(eng_re)
        with m.If(req_seen != req_done):
            m.d[dom] += req_done.eq(req_seen)
            with m.If(req_read):
                m.d[dom] += eng_re.eq(1)
            with m.Else():
                m.d[dom] += eng_we.eq(1)
        with m.If(eng_we):
            m.d[dom] += ack_toggle.eq(~ack_toggle)
        with m.If(reading):
            m.d[dom] += [rdata.eq(eng.reg_rdata), ack_toggle.eq(~ack_toggle)]

        ack_seen = Signal()  # ack_toggle in the link domain
        ack_done = Signal()
        m.submodules.ack_sync = FFSynchronizer(ack_toggle, ack_seen, o_domain="sync")
        m.d.comb += self.reg_rdata.eq(rdata)
        with m.If(ack_seen != ack_done):
            m.d.sync += [ack_done.eq(ack_seen), pending.eq(0)]
            m.d.comb += self.reg_ack.eq(1)

        # --- busy: the engine's, or bytes in a FIFO (seen from the engine side, where they are exact), synchronised;
        # or an access in flight, or bytes the link side has written or can read
        engine_busy = Signal()
        m.d[dom] += engine_busy.eq(eng.busy | i_fifo.r_rdy | (i_buf.r_level != 0) | (o_buf.w_level != 0) |
                                   o_buf.w_en | (o_fifo.w_level != 0) | o_fifo.w_en)
        busy_seen = Signal()
        m.submodules.busy_sync = FFSynchronizer(engine_busy, busy_seen, o_domain="sync")
        m.d.comb += self.busy.eq(busy_seen | pending | (i_fifo.w_level != 0) | o_fifo.r_rdy)
        return m
