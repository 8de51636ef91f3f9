"""SGD engine (hw.sgd) in the Amaranth simulator: each stage, then the whole engine against the bit-exact golden."""
import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from hw.sgd import engine as E
from hw.sgd.engine import SgdEngine
from hw.sgd.layout import beats_per_sample, code_range, lanes, pack_samples, staleness
from hw.sgd.tree import AdderTree
from models.zipml.fixed_point import engine_run
from models.zipml.pack import pack_rows_with_label, double_sample_slots

from sgd_engine_tb import EngineTB, compact_pair, golden, random_problem


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


def test_pipe_latency_is_thirteen_plus_the_tree():
    """13 enabled cycles plus one per adder-tree level from a sample's last beat to its first model write: S1-S9
    and the update's U0-U4 (docs/sgd-engine.md, Architecture); the cycle counts below check it in simulation."""
    assert SgdEngine(bits=2, bus_bits=64, encoding="compact").pipe_latency == 13 + 5   # 21 lanes
    assert SgdEngine(bits=4, bus_bits=512, encoding="compact").pipe_latency == 13 + 7  # 102 lanes
    assert SgdEngine(bits=32, bus_bits=32).pipe_latency == 13                          # 1 lane: no tree level


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


def test_flags_written_during_a_run_are_ignored():
    """FLAGS picks the pipeline's beat source and code signedness, which its enable is computed from: a write
    during a RUN (here: source = link, unsigned) is dropped, and the run ends equal to the golden."""
    bits, bus, signed, n, d = 4, 64, True, 9, 20
    eng = SgdEngine(bits=bits, bus_bits=bus, max_features=32, store_beats=128)
    q1, q2, lab, x0 = random_problem(np.random.default_rng(4), n, d, bits, signed)
    want = golden(eng, q1, q2, lab, x0, signed=signed, shift=4, mask=0)

    async def program(tb, ctx):
        await tb.load_model(ctx, x0)
        await tb.configure(ctx, d, n, signed=signed, shift=4, mask=0, link=False)
        await tb.write(ctx, E.REG_IN_MODE, E.IN_STORE)
        await tb.write(ctx, E.REG_STORE_WADDR, 0)
        await tb.send(ctx, pack_samples(q1, q2, lab, bits, bus, signed=signed).tobytes())
        await tb.write(ctx, E.REG_STORE_BASE, 0)
        await tb.write(ctx, E.REG_CMD, E.CMD_RUN)
        await ctx.tick()
        assert ctx.get(tb.eng.busy)
        await tb.write(ctx, E.REG_FLAGS, E.FLAG_SOURCE_LINK)
        await tb.wait_idle(ctx, limit=2000)  # taken, it would wait for link beats that never come
        return await tb.read_model(ctx, d), await tb.read(ctx, E.REG_FLAGS)

    x, flags = EngineTB(eng).run(program)
    assert flags == E.FLAG_SIGNED
    assert np.array_equal(x, want.x)


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


# --- compact double-sample encoding (interval index + one up/down bit per copy) ----------------------------------

def test_compact_layout_q2_at_d1000_beats_the_32bit_baseline_by_more_than_10x():
    # d = 1000 + bias: 63 beats at 32 bits; compact Q2 packs 170 three-bit slots per 512-bit beat
    assert lanes(2, 512, "compact") == 170 and lanes(4, 512, "compact") == 102 and lanes(8, 512, "compact") == 56
    assert beats_per_sample(1001, 32, 512) == 63 and beats_per_sample(1001, 2, 512, "compact") == 6
    assert beats_per_sample(1001, 32, 512) / beats_per_sample(1001, 2, 512, "compact") >= 10
    # the label needs the top 32 bits of the last beat: 170 Q2 features fill 510 bits, so a second beat
    assert beats_per_sample(170, 2, 512, "compact") == 2 and beats_per_sample(160, 2, 512, "compact") == 1


COMPACT_CASES = [  # bits, bus, signed, link, mask, n, d
    (2, 64, True, True, 0, 24, 45),      # 21 lanes, 3 beats, lane count not a power of two
    (2, 128, False, False, 3, 20, 30),
    (4, 64, True, False, 0, 30, 5),      # one beat per sample
    (4, 128, False, True, 1, 20, 60),
    (8, 64, True, True, 7, 20, 17),
    (8, 128, False, False, 0, 10, 70),
]


@pytest.mark.parametrize("bits,bus,signed,link,mask,n,d", COMPACT_CASES)
def test_compact_engine_equals_golden(bits, bus, signed, link, mask, n, d):
    eng = SgdEngine(bits=bits, bus_bits=bus, max_features=128, store_beats=512, encoding="compact")
    rng = np.random.default_rng(bits * 7 + bus + d)
    q1, q2, lab, x0 = random_problem(rng, n, d, bits, signed)
    q2 = compact_pair(q1, q2, bits, signed)
    lo, hi = code_range(bits, signed)
    q1[0, :] = hi  # the top level: interval index clamps to the last interval, both up bits set
    q2[0, :] = hi
    q1[1, :], q2[1, :] = lo, lo + 1
    want = golden(eng, q1, q2, lab, x0, signed=signed, shift=3, mask=mask)
    tb = EngineTB(eng, seed=d, in_gap=0.4 if link else 0.0, out_stall=0.3)
    x, cnt = tb.run(lambda tb, ctx: tb.train_run(ctx, q1, q2, lab, x0, signed=signed, shift=3, mask=mask,
                                                   link=link))
    assert np.array_equal(x, want.x), f"{int(np.sum(x != want.x))} of {d} model words differ"
    R = beats_per_sample(d, bits, bus, "compact")
    assert cnt["beats"] == n * R
    if not link:
        assert cnt["cycles"] == n * R + 1 + eng.pipe_latency + R - 1


def test_compact_engine_does_not_accept_pair_packing():
    """The compact engine fed pair-packed beats (same beat count) misses the golden: the decode really reads
    the compact slots."""
    bits, bus, signed, n, d = 4, 64, True, 12, 9
    rng = np.random.default_rng(3)
    q1, q2, lab, x0 = random_problem(rng, n, d, bits, signed)
    q2 = compact_pair(q1, q2, bits, signed)
    eng = SgdEngine(bits=bits, bus_bits=bus, max_features=32, store_beats=64, encoding="compact")
    assert beats_per_sample(d, bits, bus, "pair") == beats_per_sample(d, bits, bus, "compact")
    want = golden(eng, q1, q2, lab, x0, signed=signed, shift=3, mask=0).x
    wrong = pack_samples(q1, q2, lab, bits, bus, "pair")

    async def program(tb, ctx):
        await tb.load_model(ctx, x0)
        await tb.configure(ctx, d, n, signed=signed, shift=3, mask=0, link=True)
        await tb.write(ctx, E.REG_BEATS, wrong.shape[1] * 32 // bus)
        await tb.write(ctx, E.REG_IN_MODE, E.IN_SAMPLES)
        await tb.write(ctx, E.REG_CMD, E.CMD_RUN)
        await tb.send(ctx, wrong.tobytes())
        await ctx.tick()
        await tb.wait_idle(ctx)
        return await tb.read_model(ctx, d)

    assert not np.array_equal(EngineTB(eng).run(program), want)


# --- classifier losses: L2-SVM (squared hinge), logistic (sigmoid table), one-vs-rest, class-weighted steps ----

@pytest.mark.parametrize("loss,enc,bits,bus,link,mask", [
    ("l2svm", "compact", 4, 64, True, 0), ("l2svm", "pair", 8, 128, False, 1),
    ("logistic", "compact", 2, 128, False, 0), ("logistic", "pair", 4, 64, True, 3),
    ("logistic", "pair", 32, 64, False, 0)])
def test_classifier_losses_equal_golden(loss, enc, bits, bus, link, mask):
    from models.zipml.fixed_point import ovr_labels
    eng = SgdEngine(bits=bits, bus_bits=bus, max_features=64, store_beats=512, encoding=enc)
    rng = np.random.default_rng(len(loss) * 100 + bits + bus)
    n, d, signed = 40, 11, True
    q1, q2, _, x0 = random_problem(rng, n, d, bits, signed)
    q2 = compact_pair(q1, q2, bits, signed)
    x0 = rng.integers(-2**24, 2**24, d)  # dots well past the sigmoid table's +-8 range too
    cls = rng.integers(0, 3, n)
    runs = []
    for k, shift_neg in [(1, None), (2, 5)]:
        want = golden(eng, q1, q2, ovr_labels(cls, k, loss), x0, signed=signed, shift=3, mask=mask, loss=loss,
                      shift_neg=shift_neg)
        plain = golden(eng, q1, q2, ovr_labels(cls, k, loss), x0, signed=signed, shift=3, mask=mask)
        assert not np.array_equal(want.x, plain.x)  # the loss changes the arithmetic
        runs.append((k, shift_neg, want.x))

    async def program(tb, ctx):
        out = []
        for k, shift_neg, _ in runs:
            x, _ = await tb.train_run(ctx, q1, q2, cls, x0, signed=signed, shift=3, mask=mask, link=link,
                                      loss=loss, shift_neg=shift_neg, ovr_class=k)
            out.append(x)
        return out

    got = EngineTB(eng, seed=4, in_gap=0.3 if link else 0.0, out_stall=0.2).run(program)
    for (k, shift_neg, want), x in zip(runs, got):
        assert np.array_equal(x, want), (k, shift_neg, int(np.sum(x != want)))


@pytest.mark.parametrize("loss,shift,shift_neg", [("ls", 9, None), ("l2svm", 8, 13)])
def test_step_shifts_of_eight_and_more_equal_golden(loss, shift, shift_neg):
    # the scalar stage shifts by the multiple of 8 in one register stage and by the rest in the next
    from models.zipml.fixed_point import ovr_labels
    eng = SgdEngine(bits=2, bus_bits=64, max_features=64, store_beats=256, encoding="compact")
    rng = np.random.default_rng(shift)
    n, d, signed = 24, 30, True
    q1, q2, _, x0 = random_problem(rng, n, d, 2, signed)
    q2 = compact_pair(q1, q2, 2, signed)
    lab = ovr_labels(rng.integers(0, 2, n), 1, loss) if loss == "l2svm" else rng.integers(-2**26, 2**26, n)
    want = golden(eng, q1, q2, lab, x0, signed=signed, shift=shift, mask=0, loss=loss, shift_neg=shift_neg)
    slower = golden(eng, q1, q2, lab, x0, signed=signed, shift=shift + 1, mask=0, loss=loss, shift_neg=shift_neg)
    assert not np.array_equal(want.x, slower.x)  # the step reaches the model words
    x, _ = EngineTB(eng).run(lambda tb, ctx: tb.train_run(ctx, q1, q2, lab, x0, signed=signed, shift=shift,
                                                           mask=0, link=False, loss=loss, shift_neg=shift_neg))
    assert np.array_equal(x, want.x), f"{int(np.sum(x != want.x))} of {d} model words differ"


def test_sigmoid_table_twin():
    from models.zipml.fixed_point import sigmoid_fixed, sigmoid_table
    tab = sigmoid_table()
    assert tab.shape == (512,) and tab.min() >= 0 and tab.max() < 2**24 and np.all(np.diff(tab) >= 0)
    z = np.linspace(-7.99, 7.99, 4001)
    approx = sigmoid_fixed(np.floor(z * 2**23).astype(np.int64)) / 2**23
    assert np.max(np.abs(approx - 1 / (1 + np.exp(-z)))) < 0.004  # half a bin (1/64) times the steepest slope (1/4)
    assert sigmoid_fixed(-2**40) == tab[0] and sigmoid_fixed(2**40) == tab[-1]


# --- end-to-end low precision: model stored at w bits, stochastic rounding on write by the twin RNG --------------

@pytest.mark.parametrize("model_bits,frac,bits,enc,grad,link", [(16, 12, 4, "compact", False, True),
                                                               (8, 7, 2, "pair", True, False),
                                                               (12, 10, 32, "pair", False, False)])
def test_model_width_with_stochastic_rounding_equals_golden(model_bits, frac, bits, enc, grad, link):
    from models.zipml.rng import Xorshift32Lanes, lane_seeds
    eng = SgdEngine(bits=bits, bus_bits=64, max_features=64, store_beats=512, encoding=enc,
                    model_bits=model_bits, model_frac_bits=frac, stochastic_grad=grad)
    L, drop = eng.lanes, 23 - frac
    rng = np.random.default_rng(model_bits + bits)
    d, signed = 2 * L + 1, True
    q1, q2, lab, _ = random_problem(rng, 25, d, bits, signed)
    q2 = compact_pair(q1, q2, bits, signed)
    lim = 1 << (model_bits - 1)
    x0 = rng.integers(-lim, lim, d) << drop
    x0[:2] = [(lim - 1) << drop, -lim << drop]  # at the ends of the w-bit range: saturation
    gtwin = Xorshift32Lanes(seed=3, n_lanes=L) if grad else None
    mtwin = Xorshift32Lanes(seed=4, n_lanes=L)
    want = engine_run(x0, q1, q2, lab, bits, signed=signed, step_shift=2, batch_mask=1,
                      delay=staleness(eng.pipe_latency, beats_per_sample(d, bits, 64, enc)), grad_rng=gtwin,
                      model_bits=model_bits, model_frac_bits=frac, model_rng=mtwin)
    assert np.all(want.x % (1 << drop) == 0) and want.x.max() <= (lim - 1) << drop
    seeds = ([lane_seeds(3, L)] if grad else []) + [lane_seeds(4, L)]

    async def program(tb, ctx):
        await tb.write(ctx, E.REG_IN_MODE, E.IN_RNG)
        await tb.send(ctx, np.concatenate(seeds).astype("<u4").tobytes())
        x, cnt = await tb.train_run(ctx, q1, q2, lab, x0, signed=signed, shift=2, mask=1, link=link)
        return x, cnt, [await tb.read(ctx, r) for r in (E.REG_P_MODEL_BITS, E.REG_P_MODEL_FRAC)]

    x, cnt, params = EngineTB(eng, seed=7, in_gap=0.3 if link else 0.0).run(program)
    assert params == [model_bits, frac]
    assert np.array_equal(x, want.x), f"{int(np.sum(x != want.x))} of {d} words differ"
    assert bool(cnt["status"] & E.STATUS_X_SATURATED) == want.x_saturated
