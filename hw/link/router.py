"""The link core: frames in, commands executed against the link registers and an engine, replies out.

See ``hw.protocol`` for the wire format. A received frame is held in a frame buffer (one block RAM)
while its CRC is checked; only a frame with a good CRC is acted on, so a corrupted WRITE_REG or
WRITE_BULK never reaches the engine. Frames are executed one at a time, in the order they arrive (the host
may send several WRITE_BULK frames before the first reply comes back).

Duplicates (``hw.protocol``, "Recovery"): the reply of the last state-changing request is written into a
second buffer (one more block RAM) as it is sent; a repeat of that request (same sequence number and CRC)
is answered from the buffer instead of being executed. WRITE_BULK frames carry their stream position, so
the engine takes every byte once and in order whatever was lost, repeated or cut short.
"""
import hashlib
import json

from amaranth.hdl import Cat, ClockDomain, ClockSignal, Module, Mux, ResetSignal, Signal, unsigned
from amaranth.lib import fifo, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from .. import protocol as P
from .cobs import CobsDecoder, CobsEncoder
from .crc import CRC_INIT, CrcAppender, crc16_update
from .crossing import EngineCrossing

HEADER_BYTES = 7  # seq, cmd and up to five argument bytes are kept in registers
READ_IDLE_CYCLES = 64  # READ_BULK stops after this many cycles without a byte from the engine
STALL_CYCLES = 1024  # WRITE_BULK replies early (with the count taken) after the engine stalls this long


def design_info(engine, max_frame: int, extra_params: dict | None = None) -> tuple[bytes, int]:
    """The info blob (compact JSON of every design parameter) and its 32-bit digest."""
    params = {
        "protocol": P.PROTOCOL_VERSION,
        "max_frame": max_frame,
        "engine": engine.engine_id,
        "engine_params": engine.params,
        **(extra_params or {}),
    }
    blob = json.dumps(params, sort_keys=True, separators=(",", ":")).encode()
    return blob, int.from_bytes(hashlib.sha256(blob).digest()[:4], "big")


CROSSINGS = (None, "external", "same-clock")


class LinkCore(wiring.Component):
    """Byte streams on one side (from a UART PHY or a simulation bridge), an engine on the other.

    ``crossing``: None, the engine runs in the link's ``sync`` domain; ``"external"``, the engine runs in the
    ``engine`` clock domain behind a ``hw.link.crossing.EngineCrossing``, and the parent defines that domain (the
    board top, from the PLL); ``"same-clock"``, the same crossing with the ``engine`` domain defined here from the
    ``sync`` clock and reset (simulation: one clock drives both sides, the FIFOs and handshakes still work).
    """

    rx: In(stream.Signature(8))
    tx: Out(stream.Signature(8))
    busy: Out(1)

    def __init__(self, engine, *, max_frame: int = 512, extra_params: dict | None = None,
                 crossing: str | None = None):
        if not 16 <= max_frame <= 4096:
            raise ValueError(f"max_frame must be in 16..4096 bytes, got {max_frame}")
        if crossing not in CROSSINGS:
            raise ValueError(f"crossing must be one of {', '.join(map(repr, CROSSINGS))}, got {crossing!r}")
        self.crossing = crossing
        self.engine = engine if crossing is None else EngineCrossing(engine, domain="engine")
        self.max_frame = max_frame
        self.info_blob, self.digest = design_info(engine, max_frame, extra_params)
        if len(self.info_blob) > 0xFFFF:
            raise ValueError("design parameters too large for the info blob")
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        eng = self.engine
        max_frame = self.max_frame
        max_reply_data = max_frame - P.FRAME_OVERHEAD

        m.submodules.engine = eng
        if self.crossing == "same-clock":
            m.domains.engine = ClockDomain("engine")
            m.d.comb += [ClockSignal("engine").eq(ClockSignal("sync")), ResetSignal("engine").eq(ResetSignal("sync"))]
        # a register access is done when the engine acknowledges it (``hw.engine``): with ``reg_ack`` whenever the
        # engine raises it, without it on the cycle after the pulse (a write needs no wait then)
        has_ack = "reg_ack" in eng.signature.members
        reg_ack = Signal()
        if has_ack:
            m.d.comb += reg_ack.eq(eng.reg_ack)
        else:
            m.d.sync += reg_ack.eq(eng.reg_re | eng.reg_we)
        m.submodules.decoder = dec = CobsDecoder()
        m.submodules.appender = app = CrcAppender()
        m.submodules.encoder = enc = CobsEncoder()
        wiring.connect(m, wiring.flipped(self.rx), dec.i)
        # a registered 2-entry buffer between the CRC appender and the COBS encoder: the reply byte mux (block-RAM
        # reads among its sources) and the encoder's control are then in different cycles (ECP5 conv build:
        # 15.4 ns through both)
        m.submodules.txbuf = txbuf = fifo.SyncFIFOBuffered(width=len(app.o.payload.as_value()), depth=2)
        m.d.comb += [txbuf.w_data.eq(app.o.payload), txbuf.w_en.eq(app.o.valid), app.o.ready.eq(txbuf.w_rdy),
                     enc.i.payload.eq(txbuf.r_data), enc.i.valid.eq(txbuf.r_rdy), txbuf.r_en.eq(enc.i.ready)]
        wiring.connect(m, enc.o, wiring.flipped(self.tx))
        txq = app.i

        m.submodules.frame = frame = memory.Memory(shape=unsigned(8), depth=max_frame, init=[])
        fwr = frame.write_port()
        frd = frame.read_port()
        m.submodules.saved = saved = memory.Memory(shape=unsigned(8), depth=max_frame, init=[])
        swr = saved.write_port()
        srd = saved.read_port()
        info = self.info_blob
        m.submodules.info = info_rom = memory.Memory(shape=unsigned(8), depth=len(info), init=info)
        ird = info_rom.read_port()

        # --- counters and link registers
        cycles = Signal(64)
        cycles_hi_latch = Signal(32)
        frames_ok = Signal(32)
        frames_dropped = Signal(32)
        frames_rejected = Signal(32)
        frames_replayed = Signal(32)
        scratch = Signal(32)
        session = Signal(32)
        in_pos = Signal(32)  # bytes the engine has taken from WRITE_BULK frames
        m.d.sync += cycles.eq(cycles + 1)

        # --- receive state
        length = Signal(range(max_frame + 1))
        overflow = Signal()
        crc = Signal(16, init=CRC_INIT)
        tail = Signal(16)  # the last two bytes received: at the end of a frame, its CRC field
        hdr = [Signal(8, name=f"hdr{i}") for i in range(HEADER_BYTES)]
        seq, cmd = hdr[0], hdr[1]
        arg_u16 = Cat(hdr[2], hdr[3])
        reg_addr = hdr[2]
        reg_wdata = Cat(hdr[3], hdr[4], hdr[5], hdr[6])
        bulk_pos = Cat(hdr[2], hdr[3], hdr[4], hdr[5])
        n_args = Signal(range(max_frame + 1))
        m.d.comb += n_args.eq(length - P.FRAME_OVERHEAD)
        bulk_data_at = 2 + P.BULK_POS_BYTES  # frame offset of WRITE_BULK's first data byte
        n_bulk = Signal(range(max_frame + 1))
        bulk_skip = Signal(32)  # bytes of this WRITE_BULK frame the engine already has
        m.d.comb += [n_bulk.eq(n_args - P.BULK_POS_BYTES), bulk_skip.eq(in_pos - bulk_pos)]

        # --- the last state-changing request and its reply (for duplicates)
        last_seq = Signal(8)
        last_crc = Signal(16)
        have_last = Signal()
        saved_len = Signal(range(max_frame + 1))
        recording = Signal()  # this request changes state: its reply is being saved
        rec_len = Signal(range(max_frame + 1))
        replaying = Signal()
        changes_state = Signal()
        m.d.comb += changes_state.eq(Cat(*[cmd == c for c in P.STATE_CHANGING]).any())

        # --- execute state
        status = Signal(8)
        value = Signal(32)       # word to send (register value, count, total)
        value_bytes = Signal(3)  # bytes of ``value`` left to send
        ptr = Signal(17)  # wide enough for any u16 offset without wrapping
        stop = Signal(17)
        budget = Signal(range(max_reply_data + 1))
        idle = Signal(range(max(READ_IDLE_CYCLES, STALL_CYCLES) + 1))
        op = Signal(3)
        OP_NONE, OP_REG, OP_BULK_IN, OP_BULK_OUT, OP_INFO = range(5)

        m.d.comb += [
            eng.reg_addr.eq(reg_addr - P.ENGINE_REG_BASE),
            eng.reg_wdata.eq(reg_wdata),
            frd.addr.eq(ptr),
            ird.addr.eq(ptr),
            srd.addr.eq(ptr),
            swr.addr.eq(rec_len),
            swr.data.eq(txq.payload.data),
            fwr.addr.eq(length),
            fwr.data.eq(dec.o.payload.data),
        ]

        with m.FSM() as fsm:
            with m.State("RECV"):
                m.d.comb += dec.o.ready.eq(1)
                with m.If(dec.o.valid):
                    with m.If(dec.o.payload.end):
                        m.d.sync += [length.eq(0), overflow.eq(0), crc.eq(CRC_INIT)]
                        with m.If(length == 0):
                            pass  # empty frame: a bare delimiter, used to resynchronise
                        with m.Elif(dec.o.payload.err | overflow | (length < P.FRAME_OVERHEAD) | (crc != 0)):
                            m.d.sync += frames_dropped.eq(frames_dropped + 1)
                        with m.Else():
                            m.d.sync += length.eq(length)  # keep it: DISPATCH needs the frame length
                            m.next = "DISPATCH"
                    with m.Elif(length == max_frame):
                        m.d.sync += overflow.eq(1)
                    with m.Else():
                        m.d.comb += fwr.en.eq(1)
                        m.d.sync += [length.eq(length + 1), crc.eq(crc16_update(crc, dec.o.payload.data)),
                                     tail.eq(Cat(dec.o.payload.data, tail[:8]))]
                        for i in range(HEADER_BYTES):
                            with m.If(length == i):
                                m.d.sync += hdr[i].eq(dec.o.payload.data)

            with m.State("DISPATCH"):
                m.d.sync += [status.eq(P.STATUS_OK), op.eq(OP_NONE), value_bytes.eq(0), rec_len.eq(0)]
                with m.If(changes_state & have_last & (seq == last_seq) & (tail == last_crc)):
                    m.d.comb += srd.addr.eq(0)
                    m.d.sync += [replaying.eq(1), ptr.eq(0)]
                    m.next = "REPLAY"
                with m.Else():
                    m.d.sync += recording.eq(changes_state)
                    with m.Switch(cmd):
                        with m.Case(P.CMD_READ_REG):
                            with m.If(n_args == 1):
                                m.d.comb += eng.reg_re.eq(reg_addr >= P.ENGINE_REG_BASE)
                                m.next = "REG_READ"
                            with m.Else():
                                m.d.sync += status.eq(P.STATUS_BAD_LEN)
                                m.next = "HDR_SEQ"
                        with m.Case(P.CMD_WRITE_REG):
                            with m.If(n_args == 5):
                                m.d.comb += eng.reg_we.eq(reg_addr >= P.ENGINE_REG_BASE)
                                with m.If(reg_addr == P.REG_SCRATCH):
                                    m.d.sync += scratch.eq(reg_wdata)
                                with m.If(reg_addr == P.REG_SESSION):
                                    m.d.sync += session.eq(reg_wdata)
                                m.next = "HDR_SEQ"
                                if has_ack:
                                    with m.If(reg_addr >= P.ENGINE_REG_BASE):
                                        m.next = "REG_WRITE"
                            with m.Else():
                                m.d.sync += status.eq(P.STATUS_BAD_LEN)
                                m.next = "HDR_SEQ"
                        with m.Case(P.CMD_WRITE_BULK):
                            with m.If(n_args < P.BULK_POS_BYTES):
                                m.d.sync += status.eq(P.STATUS_BAD_LEN)
                                m.next = "HDR_SEQ"
                            with m.Elif(bulk_skip < n_bulk):  # the device's position lies in this frame
                                m.d.comb += frd.addr.eq(bulk_data_at + bulk_skip)
                                m.d.sync += [ptr.eq(bulk_data_at + bulk_skip), stop.eq(length - 2), idle.eq(0)]
                                m.next = "BULK_IN"
                            with m.Else():  # a duplicate, or a gap after a lost frame: take nothing
                                m.d.sync += [ptr.eq(0), stop.eq(0), idle.eq(0)]
                                m.next = "BULK_IN"
                        with m.Case(P.CMD_READ_BULK):
                            with m.If(n_args == 2):
                                m.d.sync += [op.eq(OP_BULK_OUT), idle.eq(0),
                                             budget.eq(Mux(arg_u16 > max_reply_data, max_reply_data, arg_u16))]
                            with m.Else():
                                m.d.sync += status.eq(P.STATUS_BAD_LEN)
                            m.next = "HDR_SEQ"
                        with m.Case(P.CMD_INFO):
                            with m.If(n_args == 2):
                                end = Signal.like(stop)
                                m.d.comb += end.eq(Mux(arg_u16 + (max_reply_data - 2) > len(info), len(info),
                                                       arg_u16 + (max_reply_data - 2)))
                                m.d.comb += ird.addr.eq(arg_u16)
                                m.d.sync += [op.eq(OP_INFO), ptr.eq(arg_u16), stop.eq(end),
                                             value.eq(len(info)), value_bytes.eq(2)]
                            with m.Else():
                                m.d.sync += status.eq(P.STATUS_BAD_LEN)
                            m.next = "HDR_SEQ"
                        with m.Default():
                            m.d.sync += status.eq(P.STATUS_BAD_CMD)
                            m.next = "HDR_SEQ"

            with m.State("REPLAY"):
                m.d.comb += [txq.valid.eq(ptr < saved_len), txq.payload.data.eq(srd.data)]
                with m.If(ptr >= saved_len):
                    m.next = "END"
                with m.Elif(txq.ready):
                    m.d.comb += srd.addr.eq(ptr + 1)
                    m.d.sync += ptr.eq(ptr + 1)

            with m.State("REG_WRITE"):  # an engine behind a crossing: wait for the write's acknowledge
                with m.If(reg_ack):
                    m.next = "HDR_SEQ"

            with m.State("REG_READ"):
                m.d.sync += [value_bytes.eq(4), op.eq(OP_REG)]
                with m.If(reg_addr >= P.ENGINE_REG_BASE):
                    m.d.sync += value.eq(eng.reg_rdata)
                    with m.If(reg_ack):
                        m.next = "HDR_SEQ"
                with m.Else():
                    with m.Switch(reg_addr):
                        with m.Case(P.REG_ID):
                            m.d.sync += value.eq(P.ID_VALUE)
                        with m.Case(P.REG_DIGEST):
                            m.d.sync += value.eq(self.digest)
                        with m.Case(P.REG_ENGINE_ID):
                            m.d.sync += value.eq(P.engine_id_value(eng.engine_id))
                        with m.Case(P.REG_SCRATCH):
                            m.d.sync += value.eq(scratch)
                        with m.Case(P.REG_CYCLES_LO):
                            m.d.sync += [value.eq(cycles[:32]), cycles_hi_latch.eq(cycles[32:])]
                        with m.Case(P.REG_CYCLES_HI):
                            m.d.sync += value.eq(cycles_hi_latch)
                        with m.Case(P.REG_FRAMES_OK):
                            m.d.sync += value.eq(frames_ok)
                        with m.Case(P.REG_FRAMES_DROPPED):
                            m.d.sync += value.eq(frames_dropped)
                        with m.Case(P.REG_FRAMES_REJECTED):
                            m.d.sync += value.eq(frames_rejected)
                        with m.Case(P.REG_MAX_FRAME):
                            m.d.sync += value.eq(max_frame)
                        with m.Case(P.REG_BULK_IN_POS):
                            m.d.sync += value.eq(in_pos)
                        with m.Case(P.REG_SESSION):
                            m.d.sync += value.eq(session)
                        with m.Case(P.REG_FRAMES_REPLAYED):
                            m.d.sync += value.eq(frames_replayed)
                        with m.Default():
                            m.d.sync += value.eq(0)
                    m.next = "HDR_SEQ"

            with m.State("BULK_IN"):
                # nothing is offered in the cycle that ends the frame, so ``in_pos`` is final there
                m.d.comb += [eng.i.valid.eq((ptr != stop) & (idle != STALL_CYCLES)), eng.i.payload.eq(frd.data)]
                with m.If(eng.i.valid & eng.i.ready):
                    m.d.comb += frd.addr.eq(ptr + 1)
                    m.d.sync += [ptr.eq(ptr + 1), idle.eq(0), in_pos.eq(in_pos + 1)]
                with m.Elif(eng.i.valid):
                    m.d.sync += idle.eq(idle + 1)
                with m.If((ptr == stop) | (idle == STALL_CYCLES)):
                    m.d.sync += [value.eq(in_pos), value_bytes.eq(4)]
                    m.next = "HDR_SEQ"

            with m.State("HDR_SEQ"):
                m.d.comb += [txq.valid.eq(1), txq.payload.data.eq(seq)]
                with m.If(txq.ready):
                    m.next = "HDR_STATUS"

            with m.State("HDR_STATUS"):
                m.d.comb += [txq.valid.eq(1), txq.payload.data.eq(status)]
                with m.If(txq.ready):
                    m.next = "WORD"

            with m.State("WORD"):
                m.d.comb += [txq.valid.eq(value_bytes != 0), txq.payload.data.eq(value[:8])]
                with m.If(value_bytes == 0):
                    with m.Switch(op):
                        with m.Case(OP_BULK_OUT):
                            m.next = "BULK_OUT"
                        with m.Case(OP_INFO):
                            m.next = "INFO_OUT"
                        with m.Default():
                            m.next = "END"
                with m.Elif(txq.ready):
                    m.d.sync += [value.eq(value >> 8), value_bytes.eq(value_bytes - 1)]

            with m.State("BULK_OUT"):
                with m.If(budget != 0):
                    m.d.comb += [txq.valid.eq(eng.o.valid), txq.payload.data.eq(eng.o.payload),
                                 eng.o.ready.eq(txq.ready)]
                with m.If((budget == 0) | (idle == READ_IDLE_CYCLES)):
                    m.next = "END"
                with m.Elif(eng.o.valid & txq.ready):
                    m.d.sync += [budget.eq(budget - 1), idle.eq(0)]
                with m.Elif(~eng.o.valid):
                    m.d.sync += idle.eq(idle + 1)

            with m.State("INFO_OUT"):
                m.d.comb += [txq.valid.eq(ptr < stop), txq.payload.data.eq(ird.data)]
                with m.If(ptr >= stop):
                    m.next = "END"
                with m.Elif(txq.ready):
                    m.d.comb += ird.addr.eq(ptr + 1)
                    m.d.sync += ptr.eq(ptr + 1)

            with m.State("END"):
                m.d.comb += [txq.valid.eq(1), txq.payload.end.eq(1)]
                with m.If(txq.ready):
                    with m.If(replaying):
                        m.d.sync += frames_replayed.eq(frames_replayed + 1)
                    with m.Elif(status == P.STATUS_OK):
                        m.d.sync += frames_ok.eq(frames_ok + 1)
                    with m.Else():
                        m.d.sync += frames_rejected.eq(frames_rejected + 1)
                    with m.If(recording):
                        m.d.sync += [last_seq.eq(seq), last_crc.eq(tail), have_last.eq(1), saved_len.eq(rec_len)]
                    m.d.sync += [length.eq(0), recording.eq(0), replaying.eq(0)]
                    m.next = "RECV"

        # every reply byte of a state-changing request goes into the reply buffer as it is sent
        with m.If(recording & txq.valid & txq.ready & ~txq.payload.end):
            m.d.comb += swr.en.eq(1)
            m.d.sync += rec_len.eq(rec_len + 1)

        m.d.comb += self.busy.eq(~fsm.ongoing("RECV") | app.busy | txbuf.r_rdy | enc.busy | self.tx.valid | eng.busy)
        return m
