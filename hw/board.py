"""Board top: the link core behind a UART on a real board.

    uart.rx pin -> UartRx -> SyncFIFOBuffered -> LinkCore.rx
    LinkCore.tx -> UartTx -> uart.tx pin

The clock is the platform's default clock (the ``sync`` domain Amaranth creates from it), or the PLL's
(``hw.build --clk-mhz``). With ``engine_clk_hz`` the engine runs in its own ``engine`` domain behind
``hw.link.crossing.EngineCrossing``; the PLL's second output clocks the link and UART (``clk_hz``) and its first the
engine (in simulation, without a platform, one clock drives both domains). LEDs, when
the board has them: 0 = heartbeat (about 1 Hz), 1 = serial activity, 2 = a byte was dropped (framing
error or overrun; sticky until reset). Board-level parameters go into the design's info blob and
digest (``extra_params``), so ``host/run.py info`` shows which board/clock/baud a bitstream was built for.
"""
from amaranth.build import ResourceError
from amaranth.hdl import ClockDomain, ClockSignal, Elaboratable, Module, ResetSignal, Signal
from amaranth.lib import fifo, io, wiring
from amaranth.lib.wiring import In, Out

from .design import Design
from .link.uart import UartRx, UartTx, uart_divisor

DEFAULT_BAUD = 115200
RX_FIFO_DEPTH = 16


class BoardTop(Elaboratable):
    def __init__(self, design: Design, *, board: str, clk_hz: float, baud: int = DEFAULT_BAUD,
                 rx_fifo_depth: int = RX_FIFO_DEPTH, engine_clk_hz: float | None = None):
        self.design = design
        self.board = board
        self.clk_hz = clk_hz  # the link and UART clock (the sync domain)
        self.engine_clk_hz = engine_clk_hz  # None: the engine runs in the sync domain
        self.baud = baud
        self.divisor = uart_divisor(clk_hz, baud)
        self.rx_fifo_depth = rx_fifo_depth
        self.core = design.make_core(extra_params=self.board_params(),
                                     crossing=None if engine_clk_hz is None else "external")
        # created here so a simulation (``elaborate(None)``: no pins) can drive ``uart_rx.rx`` and
        # watch ``uart_tx.tx``
        self.uart_rx = UartRx(self.divisor)
        self.uart_tx = UartTx(self.divisor)
        # hw.pll.PllConfig: clock the sync domain from the FPGA's PLL at clk_hz (hw.build --clk-mhz); with
        # engine_clk_hz, CLKOP at engine_clk_hz and CLKOS at clk_hz
        self.pll = None

    def board_params(self) -> dict:
        params = {"board": self.board, "clk_hz": int(round(self.clk_hz)), "baud": self.baud}
        if self.engine_clk_hz is not None:
            params["engine_clk_hz"] = int(round(self.engine_clk_hz))
        return params

    def elaborate(self, platform):
        m = Module()
        m.submodules.uart_rx = rx = self.uart_rx
        m.submodules.rx_fifo = q = fifo.SyncFIFOBuffered(width=8, depth=self.rx_fifo_depth)
        m.submodules.core = core = self.core
        m.submodules.uart_tx = tx = self.uart_tx
        wiring.connect(m, rx.o, q.w_stream)
        wiring.connect(m, q.r_stream, core.rx)
        wiring.connect(m, core.tx, tx.i)

        if platform is None:  # simulation / plain elaboration: no pins; one clock for both domains
            if self.engine_clk_hz is not None:
                m.domains.engine = ClockDomain("engine")
                m.d.comb += [ClockSignal("engine").eq(ClockSignal("sync")),
                             ResetSignal("engine").eq(ResetSignal("sync"))]
            return m

        if self.pll is not None:
            from .pll import add_pll_domains, add_pll_sync_domain
            if self.engine_clk_hz is not None:
                add_pll_domains(m, platform, self.pll)
            else:
                add_pll_sync_domain(m, platform, self.pll)
        elif self.engine_clk_hz is not None:
            raise ValueError("an engine clock of its own needs the PLL (BoardTop.pll)")

        uart = platform.request("uart", 0, dir="-")
        m.submodules.uart_rx_pin = rx_pin = io.Buffer("i", uart.rx)
        m.submodules.uart_tx_pin = tx_pin = io.Buffer("o", uart.tx)
        m.d.comb += [rx.rx.eq(rx_pin.i), tx_pin.o.eq(tx.tx)]

        leds = []
        for i in range(3):
            try:
                port = platform.request("led", i, dir="-")
            except ResourceError:
                break
            m.submodules[f"led{i}"] = buf = io.Buffer("o", port)
            leds.append(buf.o)

        half_second = max(1, int(self.clk_hz // 2))
        beat = Signal(range(half_second))
        beat_led = Signal()
        with m.If(beat == half_second - 1):
            m.d.sync += [beat.eq(0), beat_led.eq(~beat_led)]
        with m.Else():
            m.d.sync += beat.eq(beat + 1)

        # activity: stretched to ~20 ms so single bytes are visible
        stretch = max(1, int(self.clk_hz // 50))
        act = Signal(range(stretch + 1))
        with m.If(rx.busy | tx.busy):
            m.d.sync += act.eq(stretch)
        with m.Elif(act != 0):
            m.d.sync += act.eq(act - 1)

        dropped = Signal()
        with m.If(rx.error):
            m.d.sync += dropped.eq(1)

        for led, value in zip(leds, [beat_led, act != 0, dropped]):
            m.d.comb += led.eq(value)
        return m


class BoardSim(wiring.Component):
    """The board top with its UART pins as ports, for simulation: exactly what a bitstream holds between the
    pins (UART PHY, FIFO, link, engine), without the LEDs. ``busy`` is high while anything is in flight
    (a byte on either line, in the FIFO, or the link or engine at work), so a simulator can idle otherwise.
    """

    rx: In(1, init=1)
    tx: Out(1, init=1)
    busy: Out(1)

    def __init__(self, design: Design, *, board: str, clk_hz: float, baud: int = DEFAULT_BAUD):
        self.top = BoardTop(design, board=board, clk_hz=clk_hz, baud=baud)
        self.info_blob = self.top.core.info_blob
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        m.submodules.top = top = self.top
        m.d.comb += [
            top.uart_rx.rx.eq(self.rx),
            self.tx.eq(top.uart_tx.tx),
            self.busy.eq(top.core.busy | top.uart_rx.busy | top.uart_tx.busy | top.core.rx.valid),
        ]
        return m
