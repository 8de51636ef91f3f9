"""Amaranth-simulator driver of ConvEngine alone (no link): register writes, bulk bytes in and out
with random stalls. Used by tests/test_conv_*.py."""
import random

from amaranth.sim import Simulator

from hw.pixelcnn import engine as E
from hw.pixelcnn import program as prog


class EngineSim:
    """Script of operations run in one simulation: ``reg(addr, value)``, ``send(bytes)``,
    ``recv(n)``, ``read(addr)``, ``wait_idle()``. ``run()`` executes them and returns results."""

    def __init__(self, engine, *, seed=0, idle=0.0, stall=0.0):
        self.e = engine
        self.rng = random.Random(seed)
        self.idle, self.stall = idle, stall
        self.ops = []

    def reg(self, addr, value):
        self.ops.append(("w", addr, value))

    def read(self, addr, key):
        self.ops.append(("r", addr, key))

    def send(self, data):
        self.ops.append(("send", bytes(data)))

    def recv(self, n, key):
        self.ops.append(("recv", n, key))

    def wait_mode_idle(self):
        self.ops.append(("idle",))

    def program(self, spec, width, height, channels=None, feat=0):
        base = self.load([(spec, width, height)])[0]
        self.select(spec, width, height, base, channels, feat)

    def load(self, runs):
        """Load several (spec, width, height) at once (``program.pack_many``); returns their bases."""
        imgs, bases = prog.pack_many(runs, self.e.cfg)
        self.send(prog.load_stream(imgs, self.e.cfg))
        self.ops.append(("poll", E.REG_STATUS, 1, 1))
        return bases

    def select(self, spec, width, height, base, channels=None, feat=0):
        for reg, value in E.run_registers(spec, width, height, channels, feat, base):
            self.reg(reg, value)

    def run(self, max_cycles=2_000_000, vcd=None):
        e = self.e
        results = {}
        pending = []  # bytes to put on i (a producer testbench runs concurrently)
        state = {"done": False}

        async def producer(ctx):
            while True:
                if pending:
                    while self.rng.random() < self.idle:
                        await ctx.tick()
                    ctx.set(e.i.valid, 1)
                    ctx.set(e.i.payload, pending[0])
                    await ctx.tick().until(e.i.ready)
                    pending.pop(0)
                    ctx.set(e.i.valid, 0)
                else:
                    await ctx.tick()

        cycles = [0]

        class Counting:  # ctx.tick() that counts cycles and stops a hung simulation
            def __init__(self, ctx):
                self.ctx = ctx

            def tick(self):
                cycles[0] += 1
                if cycles[0] > max_cycles:
                    raise TimeoutError(f"engine simulation still running after {max_cycles} cycles "
                                       f"(results so far: {list(results)}, {len(pending)} bytes not taken)")
                return self.ctx.tick()

            def __getattr__(self, name):
                return getattr(self.ctx, name)

        async def main(ctx):
            ctx = Counting(ctx)
            for op in self.ops:
                if op[0] == "w":
                    # wait until earlier bytes are consumed before changing registers
                    while pending:
                        await ctx.tick()
                    for _ in range(4):
                        await ctx.tick()
                    ctx.set(e.reg_addr, op[1])
                    ctx.set(e.reg_wdata, op[2])
                    ctx.set(e.reg_we, 1)
                    await ctx.tick()
                    ctx.set(e.reg_we, 0)
                    await ctx.tick()  # the engine applies a write on the cycle after its pulse (hw.engine)
                elif op[0] == "r":
                    ctx.set(e.reg_addr, op[1])
                    ctx.set(e.reg_re, 1)
                    await ctx.tick()
                    ctx.set(e.reg_re, 0)
                    await ctx.tick()
                    results[op[2]] = ctx.get(e.reg_rdata)
                elif op[0] == "send":
                    pending.extend(op[1])
                elif op[0] == "recv":
                    out = bytearray()
                    while len(out) < op[1]:
                        ready = self.rng.random() >= self.stall
                        ctx.set(e.o.ready, ready)
                        _, _, valid, payload = await ctx.tick().sample(e.o.valid, e.o.payload)
                        if ready and valid:
                            out.append(payload)
                    ctx.set(e.o.ready, 0)
                    results.setdefault(op[2], bytearray()).extend(out)
                elif op[0] in ("idle", "poll"):
                    addr, msk, want = (E.REG_CTRL, 3, 0) if op[0] == "idle" else op[1:]
                    while pending:
                        await ctx.tick()
                    while True:
                        ctx.set(e.reg_addr, addr)
                        ctx.set(e.reg_re, 1)
                        await ctx.tick()
                        ctx.set(e.reg_re, 0)
                        await ctx.tick()
                        if ctx.get(e.reg_rdata) & msk == want:
                            break
                        for _ in range(8):
                            await ctx.tick()
            state["done"] = True

        sim = Simulator(e)
        sim.add_clock(1e-6)
        sim.add_testbench(producer, background=True)
        sim.add_testbench(main)
        if vcd:
            with sim.write_vcd(vcd):
                sim.run()
        else:
            sim.run()
        return results
