"""cocotb testbench: the SGD engine (``hw.sgd.engine.SgdEngine`` alone) against the bit-exact NumPy golden.

Parameters come from the environment (``SGD_BITS``, ``SGD_BUS``, ``SGD_MAXF``, ``SGD_STORE``, ``SGD_ENC``); the golden is
``models.zipml.fixed_point.engine_run`` with the staleness derived from the engine's ``pipe_latency`` register.
Bytes go in with random idle cycles, model bytes come out under random ``ready`` backpressure.
"""
import os

import cocotb
import numpy as np
from cocotb.triggers import FallingEdge, ReadOnly

from hw.sgd import engine as E
from hw.sgd.layout import beats_per_sample, code_range, pack_samples, staleness
from models.zipml.fixed_point import engine_run, ovr_labels
from streams import EngineTB

BITS = int(os.environ.get("SGD_BITS", "4"))
BUS = int(os.environ.get("SGD_BUS", "64"))
MAXF = int(os.environ.get("SGD_MAXF", "256"))
STORE = int(os.environ.get("SGD_STORE", "1024"))
ENC = os.environ.get("SGD_ENC", "pair")


class TB(EngineTB):
    async def start(self):
        await super().start()
        self.pipe_latency = await self.read(E.REG_P_PIPE_LATENCY)
        assert await self.read(E.REG_P_BITS) == BITS and await self.read(E.REG_P_BUS_BITS) == BUS
        assert await self.read(E.REG_P_ENCODING) == E.ENCODING_IDS[ENC]

    async def send(self, data: bytes):
        self.to_dut.extend(data)
        while self.to_dut:
            await FallingEdge(self.dut.clk)

    async def wait_idle(self):
        while True:
            await FallingEdge(self.dut.clk)
            await ReadOnly()
            if not self.dut.busy.value:
                break
        await FallingEdge(self.dut.clk)

    async def load_model(self, x0):
        await self.write(E.REG_IN_MODE, E.IN_MODEL)
        await self.write(E.REG_MODEL_WADDR, 0)
        await self.send((np.asarray(x0, dtype=np.int64) & 0xFFFFFFFF).astype("<u4").tobytes())

    async def read_model(self, d):
        self.from_dut.clear()
        await self.write(E.REG_FEATURES, d)
        await self.write(E.REG_CMD, E.CMD_READ_MODEL)
        while len(self.from_dut) < 4 * d:
            await FallingEdge(self.dut.clk)
        await self.wait_idle()
        assert len(self.from_dut) == 4 * d
        return np.frombuffer(bytes(self.from_dut), dtype="<i4").astype(np.int64)

    async def run(self, q1, q2, lab, *, signed, shift, mask, link, store_base=0, wrap=0, loss="ls", ovr_class=None,
                  shift_neg=None):
        n, d = q1.shape
        R = beats_per_sample(d, BITS, BUS, ENC)
        flags = ((E.FLAG_SIGNED if signed else 0) | (E.FLAG_SOURCE_LINK if link else 0)
                 | (E.FLAG_OVR if ovr_class is not None else 0) | (E.FLAG_CLASS_WEIGHT if shift_neg is not None else 0))
        for reg, v in [(E.REG_FEATURES, d), (E.REG_BEATS, R), (E.REG_RUN_SAMPLES, n), (E.REG_STEP_SHIFT, shift),
                       (E.REG_BATCH_MASK, mask), (E.REG_STORE_WRAP, wrap), (E.REG_FLAGS, flags),
                       (E.REG_LOSS, E.LOSSES[loss]), (E.REG_CLASS, ovr_class or 0),
                       (E.REG_STEP_SHIFT_NEG, shift_neg or 0)]:
            await self.write(reg, v)
        data = pack_samples(q1, q2, lab, BITS, BUS, ENC, signed=signed).tobytes()
        if link:
            await self.write(E.REG_IN_MODE, E.IN_SAMPLES)
            await self.write(E.REG_CMD, E.CMD_RUN)
            await self.send(data)
        else:
            await self.write(E.REG_IN_MODE, E.IN_STORE)
            await self.write(E.REG_STORE_WADDR, store_base)
            await self.send(data)
            await self.write(E.REG_STORE_BASE, store_base)
            await self.write(E.REG_CMD, E.CMD_RUN)
        await self.wait_idle()
        return {name: await self.read(reg) for name, reg in [
            ("cycles", E.REG_CYCLES), ("beats", E.REG_BEATS_IN), ("stalls", E.REG_STALLS),
            ("samples", E.REG_SAMPLES_DONE), ("status", E.REG_STATUS)]}

    def golden(self, x, q1, q2, lab, *, signed, shift, mask, loss="ls", shift_neg=None):
        R = beats_per_sample(q1.shape[1], BITS, BUS, ENC)
        return engine_run(x, q1, q2, lab, BITS, signed=signed, step_shift=shift, batch_mask=mask,
                          delay=staleness(self.pipe_latency, R), loss=loss, step_shift_neg=shift_neg)


def problem(rng, n, d, signed, *, extreme=False):
    lo, hi = code_range(BITS, signed)
    q1 = rng.integers(lo, hi + 1, (n, d))
    q2 = q1.copy() if BITS == 32 else rng.integers(lo, hi + 1, (n, d))
    if extreme:
        q1[:, ::2] = hi
        q1[:, 1::2] = lo
        q2 = q1.copy() if BITS == 32 else np.where(rng.random((n, d)) < 0.5, lo, hi)
        lab = rng.choice([-(2**31), 2**31 - 1], n)
        x0 = rng.choice([-(2**31), 2**31 - 1, 0, 1], d)
    else:
        lab = rng.integers(-(2**24), 2**24, n)
        x0 = rng.integers(-(2**22), 2**22, d)
    if ENC == "compact":  # the second copy in the first's interval: one level up or down, or equal
        q2 = np.clip(q1 + np.sign(q2 - q1), lo, hi)
    return q1, q2, lab, x0


def signed_modes():
    return [False] if BITS == 1 else [True, False]


@cocotb.test()
async def random_data_link_with_idle_and_backpressure(dut):
    """Samples over the byte stream with random idle cycles; model read under random backpressure."""
    tb = TB(dut, idle=0.35, stall=0.4, seed=1)
    await tb.start()
    rng = np.random.default_rng(BITS * 7 + BUS)
    for signed in signed_modes():
        for d, mask in [(5, 0), (37, 3)]:
            q1, q2, lab, x0 = problem(rng, 23, d, signed)
            await tb.load_model(x0)
            cnt = await tb.run(q1, q2, lab, signed=signed, shift=4, mask=mask, link=True)
            want = tb.golden(x0, q1, q2, lab, signed=signed, shift=4, mask=mask)
            got = await tb.read_model(d)
            assert np.array_equal(got, want.x), f"signed={signed} d={d}: {np.sum(got != want.x)} words differ"
            assert cnt["samples"] == 23 and cnt["beats"] == 23 * beats_per_sample(d, BITS, BUS, ENC)
            assert cnt["stalls"] > 0  # the idle input cycles were counted


@cocotb.test()
async def store_runs_minibatch_boundaries_and_counters(dut):
    """From the on-chip store: consecutive runs continue one model; masks 1, 7, 15 with n not a multiple of the
    batch; one beat per clock (exact cycle count)."""
    tb = TB(dut, stall=0.2, seed=2)
    await tb.start()
    rng = np.random.default_rng(BITS * 11 + BUS)
    signed = BITS != 1
    d = 29
    x = rng.integers(-(2**20), 2**20, d)
    await tb.load_model(x)
    R = beats_per_sample(d, BITS, BUS, ENC)
    for n, mask in [(19, 7), (21, 1), (34, 15)]:
        q1, q2, lab, _ = problem(rng, n, d, signed)
        cnt = await tb.run(q1, q2, lab, signed=signed, shift=5, mask=mask, link=False, store_base=3)
        x = tb.golden(x, q1, q2, lab, signed=signed, shift=5, mask=mask).x
        assert cnt["stalls"] == 1 and cnt["cycles"] == n * R + tb.pipe_latency + R
    got = await tb.read_model(d)
    assert np.array_equal(got, x)


@cocotb.test()
async def saturation_at_extreme_values(dut):
    """Extreme codes, labels and models: t and the model saturate (flagged), never wrap."""
    tb = TB(dut, idle=0.2, stall=0.3, seed=3)
    await tb.start()
    rng = np.random.default_rng(BITS + 99)
    for signed in signed_modes():
        d = 11
        q1, q2, lab, x0 = problem(rng, 9, d, signed, extreme=True)
        await tb.load_model(x0)
        cnt = await tb.run(q1, q2, lab, signed=signed, shift=0, mask=0, link=False)
        want = tb.golden(x0, q1, q2, lab, signed=signed, shift=0, mask=0)
        got = await tb.read_model(d)
        assert np.array_equal(got, want.x)
        assert want.t_saturated or want.x_saturated
        assert bool(cnt["status"] & E.STATUS_T_SATURATED) == want.t_saturated
        assert bool(cnt["status"] & E.STATUS_X_SATURATED) == want.x_saturated


@cocotb.test()
async def epochs_back_to_back_from_store_copies(dut):
    """Three epoch copies in the store, one RUN over all (address wraps to the first copy): no bubbles."""
    tb = TB(dut, seed=4)
    await tb.start()
    rng = np.random.default_rng(BITS + 5)
    signed = BITS != 1
    n, d = 10, 17
    R = beats_per_sample(d, BITS, BUS, ENC)
    parts = [problem(rng, n, d, signed) for _ in range(3)]
    q1 = np.vstack([p[0] for p in parts])
    q2 = np.vstack([p[1] for p in parts])
    lab = np.concatenate([parts[0][2]] * 3)
    x0 = parts[0][3]
    await tb.load_model(x0)
    cnt = await tb.run(q1, q2, lab, signed=signed, shift=6, mask=3, link=False, wrap=3 * n * R)
    want = tb.golden(x0, q1, q2, lab, signed=signed, shift=6, mask=3)
    assert cnt["stalls"] == 1 and cnt["cycles"] == 3 * n * R + tb.pipe_latency + R
    assert np.array_equal(await tb.read_model(d), want.x)


@cocotb.test()
async def classifier_losses_one_vs_rest(dut):
    """L2-SVM and logistic (sigmoid table) with class indices as labels (FLAG_OVR), class-weighted steps, from the
    link with idle cycles and from the store; models large enough to reach the sigmoid table's clamped ends."""
    tb = TB(dut, idle=0.3, stall=0.3, seed=5)
    await tb.start()
    rng = np.random.default_rng(BITS * 13 + BUS)
    signed = BITS != 1
    n, d = 31, 23
    for loss, k, shift_neg, link in [("l2svm", 2, 6, True), ("logistic", 0, None, False), ("logistic", 1, 5, True)]:
        q1, q2, _, _ = problem(rng, n, d, signed)
        cls = rng.integers(0, 3, n)
        x0 = rng.integers(-(2**24), 2**24, d)
        await tb.load_model(x0)
        await tb.run(q1, q2, cls, signed=signed, shift=3, mask=1, link=link, loss=loss, ovr_class=k,
                     shift_neg=shift_neg)
        want = tb.golden(x0, q1, q2, ovr_labels(cls, k, loss), signed=signed, shift=3, mask=1, loss=loss,
                         shift_neg=shift_neg)
        got = await tb.read_model(d)
        assert np.array_equal(got, want.x), f"{loss} class {k}: {np.sum(got != want.x)} words differ"
