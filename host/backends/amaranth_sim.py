"""The Amaranth simulator as a transport: pure Python, no compiler needed.

The link core is driven at the byte-stream level (one byte per clock at most, no UART bit timing).
The simulation advances only while the host waits for bytes, and stops early when the design is
quiescent (no input left, nothing busy, nothing being sent), so a missing reply is known at once.
"""
import time
from collections import deque

from amaranth.sim import Simulator

CLOCK_PERIOD_S = 1e-6  # simulated; only ratios of cycles are meaningful
RUN_CHUNK_CYCLES = 64
QUIET_CYCLES = 4


class AmaranthTransport:
    timeout_hint = "the simulated design went quiet without answering"

    def __init__(self, core):
        self.core = core
        self.name = "amaranth"
        self.cycles = 0
        self._in = deque()
        self._out = bytearray()
        self._quiet = 0
        self._now = 0.0
        self._pokes = deque()  # (memory, first row, values) for write_engine_memory
        self._sim = Simulator(core)
        self._sim.add_clock(CLOCK_PERIOD_S)
        self._sim.add_testbench(self._bridge, background=True)

    async def _bridge(self, ctx):
        core = self.core
        ctx.set(core.tx.ready, 1)
        while True:
            while self._pokes:
                mem, first, values = self._pokes.popleft()
                for row, value in enumerate(values, first):
                    ctx.set(mem.data[row], value)
            has_input = bool(self._in)
            ctx.set(core.rx.valid, has_input)
            if has_input:
                ctx.set(core.rx.payload, self._in[0])
            _, _, rx_ready, tx_valid, tx_data, busy = await ctx.tick().sample(
                core.rx.ready, core.tx.valid, core.tx.payload, core.busy)
            self.cycles += 1
            if has_input and rx_ready:
                self._in.popleft()
            if tx_valid:
                self._out.append(tx_data)
            self._quiet = self._quiet + 1 if not (self._in or busy or tx_valid) else 0

    def _run(self, cycles: int):
        self._now += cycles * CLOCK_PERIOD_S
        self._sim.run_until(self._now)

    def write(self, data: bytes):
        self._in.extend(data)
        self._quiet = 0

    def read(self, timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        while not self._out and not self.quiescent() and time.monotonic() < deadline:
            self._run(RUN_CHUNK_CYCLES)
        out = bytes(self._out)
        self._out.clear()
        return out

    def quiescent(self) -> bool:
        return self._quiet >= QUIET_CYCLES and not self._out

    def run_cycles(self, cycles: int):
        """Let the design run (for engines that work on their own)."""
        self._run(cycles)

    def write_engine_memory(self, name: str, first: int, values) -> None:
        """Optional backdoor (used by ``host.sgd_train``): write ``values`` (ints) into rows ``first...`` of the
        engine's ``lib.memory.Memory`` attribute ``name``, leaving the design exactly as if they had been
        loaded over the link, at no link cost.  Other transports may lack it; callers then use the link."""
        mem = getattr(self.core.engine, name)
        if first < 0 or first + len(values) > mem.depth:
            raise ValueError(f"rows {first}..{first + len(values) - 1} outside {name} (depth {mem.depth})")
        self._pokes.append((mem, first, list(values)))
        self._quiet = 0
        while self._pokes:
            self._run(1)

    def close(self):
        pass
