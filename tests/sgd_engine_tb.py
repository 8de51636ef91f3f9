"""Amaranth-simulator driver for the SGD engine alone (register port, byte streams), shared by the tests."""
import random

import numpy as np
from amaranth.sim import Simulator

from hw.sgd import engine as E
from hw.sgd.layout import beats_per_sample, pack_samples, staleness
from models.zipml.fixed_point import engine_run


def random_problem(rng, n, d, bits, signed, *, extreme=False):
    """Random codes, labels (Q.23) and initial model (int32 Q.23)."""
    if bits == 32:
        nb = 30 if signed else 31
    else:
        nb = 0 if bits == 1 else (bits - 2 if signed else bits - 1)
    lo, hi = (-(1 << nb), 1 << nb) if signed else (0, 1 << nb)
    q1 = rng.integers(lo, hi + 1, (n, d))
    q2 = q1.copy() if bits == 32 else rng.integers(lo, hi + 1, (n, d))
    if extreme:
        labels = rng.choice([-(2**31), 2**31 - 1], n)
        x0 = rng.choice([-(2**31), 2**31 - 1, 0], d)
        q1[:, :] = hi
        q2[:, :] = lo if signed else hi
        if bits == 32:  # one copy: the baseline uses the same code in the dot product and the gradient
            q1[:, 1::2] = lo
            q2 = q1.copy()
    else:
        labels = rng.integers(-(2**23), 2**23, n)
        x0 = rng.integers(-(2**22), 2**22, d)
    return q1, q2, labels, x0


def compact_pair(q1, q2, bits, signed):
    """Make ``q2`` a second rounding in ``q1``'s interval (what the compact encoding can hold)."""
    if bits in (1, 32):
        return q2
    nb = bits - 2 if signed else bits - 1
    lo, hi = (-(1 << nb), 1 << nb) if signed else (0, 1 << nb)
    step = np.where(q2 > q1, 1, np.where(q2 < q1, -1, 0))
    return np.clip(q1 + step, lo, hi)


def golden(eng, q1, q2, labels, x0, *, signed, shift, mask, grad_rng=None, loss="ls", shift_neg=None):
    d = q1.shape[1]
    R = beats_per_sample(d, eng.bits, eng.bus_bits, eng.encoding)
    return engine_run(x0, q1, q2, labels, eng.bits, signed=signed, step_shift=shift, batch_mask=mask,
                      delay=staleness(eng.pipe_latency, R), grad_rng=grad_rng, loss=loss,
                      step_shift_neg=shift_neg)


class EngineTB:
    """Drives an ``SgdEngine`` through its ports; ``run(program)`` runs an async program ``program(tb, ctx)``."""

    def __init__(self, eng, *, seed=0, in_gap=0.0, out_stall=0.0):
        self.eng = eng
        self.rnd = random.Random(seed)
        self.in_gap = in_gap
        self.out_stall = out_stall

    async def write(self, ctx, addr, value):
        e = self.eng
        ctx.set(e.reg_addr, addr)
        ctx.set(e.reg_wdata, value & 0xFFFFFFFF)
        ctx.set(e.reg_we, 1)
        await ctx.tick()
        ctx.set(e.reg_we, 0)
        await ctx.tick()  # the engine applies a write on the cycle after its pulse (hw.engine)

    async def read(self, ctx, addr):
        e = self.eng
        ctx.set(e.reg_addr, addr)
        ctx.set(e.reg_re, 1)
        await ctx.tick()
        ctx.set(e.reg_re, 0)
        return ctx.get(e.reg_rdata)

    async def send(self, ctx, data: bytes):
        e = self.eng
        for byte in data:
            while self.in_gap and self.rnd.random() < self.in_gap:
                ctx.set(e.i.valid, 0)
                await ctx.tick()
            ctx.set(e.i.valid, 1)
            ctx.set(e.i.payload, byte)
            await ctx.tick().until(e.i.ready)
        ctx.set(e.i.valid, 0)

    async def recv(self, ctx, n):
        e = self.eng
        out = bytearray()
        while len(out) < n:
            ready = not (self.out_stall and self.rnd.random() < self.out_stall)
            ctx.set(e.o.ready, ready)
            _, _, valid, payload = await ctx.tick().sample(e.o.valid, e.o.payload)
            if valid and ready:
                out.append(payload)
        ctx.set(e.o.ready, 0)
        return bytes(out)

    async def wait_idle(self, ctx, limit=10**7):
        for _ in range(limit):
            if not ctx.get(self.eng.busy):
                return
            await ctx.tick()
        raise TimeoutError("engine stayed busy")

    async def load_model(self, ctx, x0):
        await self.write(ctx, E.REG_IN_MODE, E.IN_MODEL)
        await self.write(ctx, E.REG_MODEL_WADDR, 0)
        await self.send(ctx, (np.asarray(x0, dtype=np.int64) & 0xFFFFFFFF).astype("<u4").tobytes())

    async def read_model(self, ctx, d):
        await self.write(ctx, E.REG_FEATURES, d)
        await self.write(ctx, E.REG_CMD, E.CMD_READ_MODEL)
        raw = await self.recv(ctx, 4 * d)
        await self.wait_idle(ctx)
        return np.frombuffer(raw, dtype="<i4").astype(np.int64)

    async def configure(self, ctx, d, n, *, signed, shift, mask, link, loss="ls", shift_neg=None, ovr_class=None):
        R = beats_per_sample(d, self.eng.bits, self.eng.bus_bits, self.eng.encoding)
        flags = ((E.FLAG_SIGNED if signed else 0) | (E.FLAG_SOURCE_LINK if link else 0)
                 | (E.FLAG_CLASS_WEIGHT if shift_neg is not None else 0) | (E.FLAG_OVR if ovr_class is not None else 0))
        for addr, v in [(E.REG_FEATURES, d), (E.REG_BEATS, R), (E.REG_RUN_SAMPLES, n), (E.REG_STEP_SHIFT, shift),
                        (E.REG_BATCH_MASK, mask), (E.REG_FLAGS, flags), (E.REG_LOSS, E.LOSSES[loss]),
                        (E.REG_STEP_SHIFT_NEG, shift_neg or 0), (E.REG_CLASS, ovr_class or 0)]:
            await self.write(ctx, addr, v)

    async def counters(self, ctx):
        return {name: await self.read(ctx, reg) for name, reg in [
            ("cycles", E.REG_CYCLES), ("beats", E.REG_BEATS_IN), ("stalls", E.REG_STALLS),
            ("samples", E.REG_SAMPLES_DONE), ("status", E.REG_STATUS)]}

    async def train_run(self, ctx, q1, q2, labels, x0, *, signed, shift, mask, link, store_base=0, **loss_kw):
        """Load x0, run the samples once (from the link or after loading the store), return (model, counters).
        ``loss_kw``: ``loss``, ``shift_neg``, ``ovr_class`` (then ``labels`` are class indices)."""
        n, d = q1.shape
        e = self.eng
        beats = pack_samples(q1, q2, labels, e.bits, e.bus_bits, e.encoding, signed=signed).tobytes()
        await self.load_model(ctx, x0)
        await self.configure(ctx, d, n, signed=signed, shift=shift, mask=mask, link=link, **loss_kw)
        if link:
            await self.write(ctx, E.REG_IN_MODE, E.IN_SAMPLES)
            await self.write(ctx, E.REG_CMD, E.CMD_RUN)
            await self.send(ctx, beats)
        else:
            await self.write(ctx, E.REG_IN_MODE, E.IN_STORE)
            await self.write(ctx, E.REG_STORE_WADDR, store_base)
            await self.send(ctx, beats)
            await self.write(ctx, E.REG_STORE_BASE, store_base)
            await self.write(ctx, E.REG_CMD, E.CMD_RUN)
        await ctx.tick()
        await self.wait_idle(ctx)
        cnt = await self.counters(ctx)
        x = await self.read_model(ctx, d)
        return x, cnt

    def run(self, program, vcd=None):
        sim = Simulator(self.eng)
        sim.add_clock(1e-6)
        result = {}

        async def bench(ctx):
            result["value"] = await program(self, ctx)

        sim.add_testbench(bench)
        if vcd:
            with sim.write_vcd(vcd):
                sim.run()
        else:
            sim.run()
        return result["value"]
