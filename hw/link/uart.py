"""UART PHY: 8N1 serial line <-> ``lib.stream`` bytes.

Both directions are parameterised by ``divisor``, the number of clock cycles per bit
(``clk_hz // baud``; see ``uart_divisor``). There is no flow control: the receiver cannot stall the
line, so a byte that arrives while the previous one is still unread is dropped and counted
(``overruns``); put a FIFO behind ``UartRx.o`` if the consumer can stall.

Receiver: the line goes through a 2-FF synchroniser; a low level while idle starts a frame, the start
bit is re-checked half a bit later (a shorter low pulse is a glitch and ignored), then every bit is
sampled at its middle, LSB first. A low stop bit is a framing error: the byte is dropped, counted in
``frame_errors``, and the receiver waits for the line to return high (a break) before looking for the
next start bit. The receiver re-arms at the middle of the stop bit, so it tolerates a transmitter up
to a few percent fast or slow.

Transmitter: idle high; start bit, eight data bits LSB first, one stop bit, each exactly ``divisor``
cycles. A byte offered while the stop bit is in its last cycle is taken at once, so back-to-back
bytes leave no idle gap.
"""
from amaranth.hdl import Cat, Const, Module, Signal
from amaranth.lib import cdc, stream, wiring
from amaranth.lib.wiring import In, Out

MIN_DIVISOR = 4
COUNTER_BITS = 16  # width of the error counters (they saturate)


def uart_divisor(clk_hz: float, baud: int, max_error: float = 0.01) -> int:
    """Cycles per bit for ``baud`` at ``clk_hz``; ValueError if too small or too far off ``baud``."""
    if baud <= 0:
        raise ValueError(f"baud must be positive, got {baud}")
    divisor = int(clk_hz // baud)
    if divisor < MIN_DIVISOR:
        raise ValueError(f"baud {baud} is too fast for a {clk_hz / 1e6:g} MHz clock: "
                         f"{clk_hz / baud:.2f} cycles per bit, the UART needs at least {MIN_DIVISOR}")
    actual = clk_hz / divisor
    error = abs(actual - baud) / baud
    if error > max_error:
        raise ValueError(f"baud {baud} at {clk_hz / 1e6:g} MHz: the nearest rate is {actual:.0f} "
                         f"({error:.1%} off, more than {max_error:.1%})")
    return divisor


def _check_divisor(divisor) -> int:
    if not isinstance(divisor, int) or isinstance(divisor, bool):
        raise TypeError(f"divisor must be an int (clock cycles per bit), got {divisor!r}")
    if divisor < MIN_DIVISOR:
        raise ValueError(f"divisor must be at least {MIN_DIVISOR} clock cycles per bit, got {divisor}")
    return divisor


class UartRx(wiring.Component):
    """Serial line in, bytes out.

    Members: ``rx`` (the line, idle high), ``o`` (received bytes), ``frame_errors`` and ``overruns``
    (saturating counts of dropped bytes), ``error`` (one-cycle pulse when a byte is dropped),
    ``busy`` (a frame is being received).
    """

    rx: In(1, init=1)
    o: Out(stream.Signature(8))
    frame_errors: Out(COUNTER_BITS)
    overruns: Out(COUNTER_BITS)
    error: Out(1)
    busy: Out(1)

    def __init__(self, divisor: int):
        self.divisor = _check_divisor(divisor)
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        divisor = self.divisor

        line = Signal(init=1)
        m.submodules.sync_rx = cdc.FFSynchronizer(self.rx, line, init=1, stages=2)

        timer = Signal(range(divisor))
        bits = Signal(range(10))   # bits sampled so far in this frame (after the start bit)
        shreg = Signal(8)

        with m.If(self.o.ready):
            m.d.sync += self.o.valid.eq(0)

        def bump(counter):
            with m.If(counter != (1 << COUNTER_BITS) - 1):
                m.d.sync += counter.eq(counter + 1)

        with m.FSM():
            with m.State("IDLE"):
                with m.If(~line):
                    m.d.sync += timer.eq(divisor // 2 - 1)
                    m.next = "START"

            with m.State("START"):
                m.d.comb += self.busy.eq(1)
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Elif(line):
                    m.next = "IDLE"  # glitch shorter than half a bit
                with m.Else():
                    m.d.sync += [timer.eq(divisor - 1), bits.eq(0)]
                    m.next = "DATA"

            with m.State("DATA"):
                m.d.comb += self.busy.eq(1)
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Elif(bits != 8):
                    m.d.sync += [timer.eq(divisor - 1), bits.eq(bits + 1), shreg.eq(Cat(shreg[1:], line))]
                with m.Elif(line):  # good stop bit, sampled at its middle: deliver and re-arm
                    with m.If(~self.o.valid | self.o.ready):
                        m.d.sync += [self.o.valid.eq(1), self.o.payload.eq(shreg)]
                    with m.Else():
                        m.d.comb += self.error.eq(1)
                        bump(self.overruns)
                    m.next = "IDLE"
                with m.Else():  # framing error
                    m.d.comb += self.error.eq(1)
                    bump(self.frame_errors)
                    m.next = "BREAK"

            with m.State("BREAK"):
                m.d.comb += self.busy.eq(1)
                with m.If(line):
                    m.next = "IDLE"
        return m


class UartTx(wiring.Component):
    """Bytes in, serial line out (8N1, idle high). ``busy`` is high while a frame is on the line."""

    i: In(stream.Signature(8))
    tx: Out(1, init=1)
    busy: Out(1)

    def __init__(self, divisor: int):
        self.divisor = _check_divisor(divisor)
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        divisor = self.divisor

        timer = Signal(range(divisor))
        bits = Signal(range(10))  # bits still to send after the one on the line now
        shreg = Signal(9)         # data bits then the stop bit
        active = Signal()

        last_cycle = (timer == 0) & (bits == 0)
        m.d.comb += [
            self.i.ready.eq(~active | last_cycle),
            self.busy.eq(active),
        ]

        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [
                active.eq(1),
                self.tx.eq(0),  # start bit
                shreg.eq(Cat(self.i.payload, Const(1, 1))),
                bits.eq(9),
                timer.eq(divisor - 1),
            ]
        with m.Elif(active):
            with m.If(timer != 0):
                m.d.sync += timer.eq(timer - 1)
            with m.Elif(bits != 0):
                m.d.sync += [
                    self.tx.eq(shreg[0]),
                    shreg.eq(shreg >> 1),
                    bits.eq(bits - 1),
                    timer.eq(divisor - 1),
                ]
            with m.Else():
                m.d.sync += [active.eq(0), self.tx.eq(1)]
        return m
