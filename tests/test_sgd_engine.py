"""SGD engine (hw.sgd) in the Amaranth simulator: each stage, then the whole engine against the bit-exact golden."""
import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from hw.sgd import engine as E
from hw.sgd.engine import SgdEngine
from hw.sgd.layout import beats_per_sample, code_range, lanes, pack_samples, staleness
from hw.sgd.tree import AdderTree
from models.zipml.pack import pack_rows_with_label, double_sample_slots

from sgd_engine_tb import EngineTB, golden, random_problem


# --- stage: adder tree -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [2, 5, 8, 64])
def test_adder_tree_sums_with_latency_and_freezes_without_ce(n):
    dut = AdderTree(n, 34)
    rnd = random.Random(n)
    vectors = [[rnd.randrange(-2**33, 2**33) for _ in range(n)] for _ in range(40)]
    ce_pattern = [rnd.random() < 0.7 for _ in range(40 + dut.latency + 5)]
    got = []

    async def bench(ctx):
        fed = []  # vectors in the order they entered on enabled cycles
        vi = 0
        for cyc, ce in enumerate(ce_pattern):
            vec = vectors[vi % len(vectors)]
            ctx.set(dut.i, vec)
            ctx.set(dut.ce, ce)
            if ce:
                fed.append(sum(vec))
                vi += 1
            await ctx.tick()
            got.append((len(fed), ctx.get(dut.o)))
        # after k enabled cycles the output is the sum fed at enabled cycle k - latency (1-based)
        for k, out in got:
            if k >= dut.latency:
                assert out == fed[k - dut.latency]

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()


def test_adder_tree_of_one_is_a_wire():
    dut = AdderTree(1, 8)
    assert dut.latency == 0

    async def bench(ctx):
        ctx.set(dut.i, [-5])
        assert ctx.get(dut.o) == -5

    sim = Simulator(dut)
    sim.add_testbench(bench)
    sim.run()


# --- layout ------------------------------------------------------------------------------------------------------

def test_beats_per_sample_match_the_xeonfpga_cache_line_table():
    # docs/zipml.md §7.5: cache lines per sample (d+1 incl. bias): float/32-bit, Q8, Q4, Q2
    table = {101: (7, 4, 2, 1), 1001: (63, 32, 16, 8), 781: (49, 25, 13, 7), 2001: (126, 63, 32, 16)}
    for d, want in table.items():
        got = tuple(beats_per_sample(d, b, 512) for b in (32, 8, 4, 2))
        assert got == want, (d, got, want)
    assert lanes(2, 512) == 128 and lanes(32, 512) == 16 and lanes(1, 32) == 16


def test_pack_samples_matches_the_reference_row_layout():
    rng = np.random.default_rng(0)
    q1, q2 = rng.integers(-4, 5, (3, 37)), rng.integers(-4, 5, (3, 37))
    labels = rng.integers(-2**23, 2**23, 3)
    ours = pack_samples(q1, q2, labels, 4, 128)
    ref = pack_rows_with_label(double_sample_slots(q1, q2, 4), 8, labels / 2**23, word_bits=128)
    assert np.array_equal(ours, ref)


def test_staleness_formula():
    assert staleness(12, 2) == 7 and staleness(12, 12) == 2 and staleness(12, 13) == 2 and staleness(7, 1) == 8


# --- whole engine against the golden -----------------------------------------------------------------------------

CASES = [  # bits, bus, signed, source link?, batch mask, n, d
    (1, 32, False, True, 0, 24, 13),
    (1, 128, False, False, 3, 30, 70),
    (2, 64, True, True, 1, 24, 13),
    (2, 512, True, False, 0, 8, 200),
    (4, 64, True, False, 0, 30, 5),      # one beat per sample: staleness grows, RMW back to back
    (4, 64, True, True, 7, 30, 13),
    (4, 256, False, False, 15, 40, 100),
    (8, 64, False, True, 3, 20, 9),
    (8, 128, True, False, 0, 20, 40),
    (32, 64, True, False, 0, 16, 7),
    (32, 128, False, True, 1, 16, 9),
]


@pytest.mark.parametrize("bits,bus,signed,link,mask,n,d", CASES)
def test_engine_equals_golden(bits, bus, signed, link, mask, n, d):
    eng = SgdEngine(bits=bits, bus_bits=bus, max_features=256, store_beats=1024)
    rng = np.random.default_rng(bits * 1000 + bus + d)
    q1, q2, lab, x0 = random_problem(rng, n, d, bits, signed)
    shift = 3
    want = golden(eng, q1, q2, lab, x0, signed=signed, shift=shift, mask=mask)
    tb = EngineTB(eng, seed=d, in_gap=0.4 if link else 0.0, out_stall=0.3)
    x, cnt = tb.run(lambda tb, ctx: tb.train_run(ctx, q1, q2, lab, x0, signed=signed, shift=shift, mask=mask,
                                                   link=link))
    assert np.array_equal(x, want.x), f"{int(np.sum(x != want.x))} of {d} model words differ"
    R = beats_per_sample(d, bits, bus)
    assert cnt["beats"] == n * R and cnt["samples"] == n
    if not link:  # from the store: one beat per clock after a one-cycle start, then the pipeline drains
        assert cnt["stalls"] == 1
        assert cnt["cycles"] == n * R + 1 + eng.pipe_latency + R - 1
    assert bool(cnt["status"] & E.STATUS_T_SATURATED) == want.t_saturated
    assert bool(cnt["status"] & E.STATUS_X_SATURATED) == want.x_saturated
    assert not cnt["status"] & (E.STATUS_RUNNING | E.STATUS_CLEARING | E.STATUS_READING)


@pytest.mark.parametrize("bits,bus,signed,link,mask", [(1, 64, False, True, 1), (2, 64, True, False, 0),
                                                      (4, 32, True, True, 3), (8, 64, False, False, 0)])
def test_shift_add_products_equal_golden(bits, bus, signed, link, mask):
    """The iCE40 variant (partial products instead of multipliers) computes the same thing."""
    eng = SgdEngine(bits=bits, bus_bits=bus, max_features=64, store_beats=256, shift_add=True)
    rng = np.random.default_rng(bits + 77)
    q1, q2, lab, x0 = random_problem(rng, 20, 11, bits, signed)
    want = golden(eng, q1, q2, lab, x0, signed=signed, shift=3, mask=mask)
    x, _ = EngineTB(eng, seed=3, in_gap=0.3 if link else 0).run(
        lambda tb, ctx: tb.train_run(ctx, q1, q2, lab, x0, signed=signed, shift=3, mask=mask, link=link))
    assert np.array_equal(x, want.x)
    q1, q2, lab, x0 = random_problem(rng, 8, 7, bits, signed, extreme=True)
    eng = SgdEngine(bits=bits, bus_bits=bus, max_features=64, store_beats=256, shift_add=True)
    want = golden(eng, q1, q2, lab, x0, signed=signed, shift=0, mask=0)
    x, _ = EngineTB(eng).run(lambda tb, ctx: tb.train_run(ctx, q1, q2, lab, x0, signed=signed, shift=0, mask=0,
                                                          link=False))
    assert np.array_equal(x, want.x)


@pytest.mark.parametrize("bits,signed", [(2, True), (8, False), (32, True)])
def test_saturation_is_flagged_and_matches_golden(bits, signed):
    eng = SgdEngine(bits=bits, bus_bits=64, max_features=64, store_beats=256)
    rng = np.random.default_rng(5)
    q1, q2, lab, x0 = random_problem(rng, 12, 9, bits, signed, extreme=True)
    want = golden(eng, q1, q2, lab, x0, signed=signed, shift=0, mask=0)
    assert want.t_saturated or want.x_saturated
    x, cnt = EngineTB(eng).run(lambda tb, ctx: tb.train_run(ctx, q1, q2, lab, x0, signed=signed, shift=0,
                                                            mask=0, link=False))
    assert np.array_equal(x, want.x)
    assert x.min() >= -2**31 and x.max() <= 2**31 - 1
    status = cnt["status"]
    assert bool(status & E.STATUS_T_SATURATED) == want.t_saturated
    assert bool(status & E.STATUS_X_SATURATED) == want.x_saturated


def test_multi_epoch_run_from_store_copies_has_no_bubbles():
    """Two epoch copies back to back in the store, one RUN over both (the address wraps): no stall between
    epochs; the sample index (and so the minibatch mask) continues across the epoch boundary."""
    bits, bus, signed, n, d, mask = 4, 128, True, 13, 30, 3
    eng = SgdEngine(bits=bits, bus_bits=bus, max_features=64, store_beats=256)
    rng = np.random.default_rng(9)
    a1, a2, lab, x0 = random_problem(rng, n, d, bits, signed)
    b1, b2, _, _ = random_problem(rng, n, d, bits, signed)
    q1, q2, labs = np.vstack([a1, b1]), np.vstack([a2, b2]), np.concatenate([lab, lab])
    want = golden(eng, q1, q2, labs, x0, signed=signed, shift=4, mask=mask)
    R = beats_per_sample(d, bits, bus)

    async def program(tb, ctx):
        await tb.load_model(ctx, x0)
        await tb.configure(ctx, d, 2 * n, signed=signed, shift=4, mask=mask, link=False)
        await tb.write(ctx, E.REG_IN_MODE, E.IN_STORE)
        await tb.write(ctx, E.REG_STORE_WADDR, 0)
        await tb.send(ctx, pack_samples(q1, q2, labs, bits, bus).tobytes())
        await tb.write(ctx, E.REG_STORE_BASE, 0)
        await tb.write(ctx, E.REG_STORE_WRAP, 2 * n * R)
        await tb.write(ctx, E.REG_CMD, E.CMD_RUN)
        await ctx.tick()
        await tb.wait_idle(ctx)
        return await tb.read_model(ctx, d), await tb.counters(ctx)

    x, cnt = EngineTB(eng).run(program)
    assert np.array_equal(x, want.x)
    assert cnt["stalls"] == 1 and cnt["cycles"] == 2 * n * R + eng.pipe_latency + R


def test_clear_and_model_readback_roundtrip():
    eng = SgdEngine(bits=8, bus_bits=64, max_features=40, store_beats=16)
    x0 = np.random.default_rng(1).integers(-2**31, 2**31, 37)

    async def program(tb, ctx):
        await tb.load_model(ctx, x0)
        first = await tb.read_model(ctx, 37)
        await tb.write(ctx, E.REG_CMD, E.CMD_CLEAR_MODEL)
        await ctx.tick()
        await tb.wait_idle(ctx)
        return first, await tb.read_model(ctx, 37)

    first, cleared = EngineTB(eng, out_stall=0.5).run(program)
    assert np.array_equal(first, x0) and not cleared.any()


def test_parameter_registers():
    eng = SgdEngine(bits=2, bus_bits=256, max_features=1000, store_beats=64)

    async def program(tb, ctx):
        return [await tb.read(ctx, r) for r in (E.REG_P_BITS, E.REG_P_BUS_BITS, E.REG_P_LANES,
                                                E.REG_P_MAX_FEATURES, E.REG_P_STORE_BEATS, E.REG_P_PIPE_LATENCY)]

    assert EngineTB(eng).run(program) == [2, 256, 64, 1000, 64, eng.pipe_latency]


@pytest.mark.parametrize("bits,bus,signed,link", [(2, 64, False, True), (4, 64, True, False), (8, 128, False, True),
                                                  (4, 32, False, False)])
def test_stochastic_gradient_rounding_with_twin_rng(bits, bus, signed, link):
    """End-to-end option: the gradient shift rounded with on-chip xorshift32 lanes == golden with the twin RNG;
    two runs in a row (the generator state carries over), d not a multiple of the lanes."""
    from models.zipml.rng import Xorshift32Lanes, lane_seeds
    eng = SgdEngine(bits=bits, bus_bits=bus, max_features=128, store_beats=512, stochastic_grad=True)
    L = eng.lanes
    rng = np.random.default_rng(bits * 3 + bus)
    d = 2 * L + 3
    runs = [random_problem(rng, 15, d, bits, signed) for _ in range(2)]
    x0 = runs[0][3]
    twin = Xorshift32Lanes(seed=11, n_lanes=L)
    x = x0
    for q1, q2, lab, _ in runs:
        x = golden(eng, q1, q2, lab, x, signed=signed, shift=2, mask=1, grad_rng=twin).x
    plain = x0
    for q1, q2, lab, _ in runs:
        plain = golden(eng, q1, q2, lab, plain, signed=signed, shift=2, mask=1).x
    assert not np.array_equal(x, plain)  # the rounding did something

    async def program(tb, ctx):
        await tb.write(ctx, E.REG_IN_MODE, E.IN_RNG)
        await tb.send(ctx, lane_seeds(11, L).astype("<u4").tobytes())
        out = None
        for k, (q1, q2, lab, _) in enumerate(runs):
            if k == 0:
                out, _ = await tb.train_run(ctx, q1, q2, lab, x0, signed=signed, shift=2, mask=1, link=link)
            else:
                out, _ = await tb.train_run(ctx, q1, q2, lab, out, signed=signed, shift=2, mask=1, link=link)
        return out

    got = EngineTB(eng, seed=5, in_gap=0.3 if link else 0.0).run(program)
    assert np.array_equal(got, x)
