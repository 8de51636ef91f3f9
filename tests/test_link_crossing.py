"""The engine clock-domain crossing (``hw.link.crossing``) in the Amaranth simulator, with two unrelated clocks
and random backpressure; and the link core with the crossing in front of an engine, through the host API."""
import random

import pytest
from amaranth.sim import Simulator

from hw.echo import REG_COUNT, REG_XOR, EchoEngine
from hw.link.crossing import EngineCrossing
from hw.testing import stream_get, stream_put

N_BYTES = 150


async def reg_access(ctx, dut, addr, *, wdata=None, limit=200):
    """One register access as the router makes it: a one-cycle pulse, then wait for ``reg_ack``; the read data."""
    ctx.set(dut.reg_addr, addr)
    ctx.set(dut.reg_wdata, wdata or 0)
    ctx.set(dut.reg_we if wdata is not None else dut.reg_re, 1)
    await ctx.tick()
    ctx.set(dut.reg_we, 0)
    ctx.set(dut.reg_re, 0)
    ctx.set(dut.reg_addr, 0x55)  # the crossing must have latched what it needs
    ctx.set(dut.reg_wdata, 0xDEADBEEF)
    for _ in range(limit):
        _, _, ack, rdata = await ctx.tick().sample(dut.reg_ack, dut.reg_rdata)
        if ack:
            return rdata
    raise AssertionError(f"no reg_ack within {limit} cycles (addr {addr})")


@pytest.mark.parametrize("engine_ns,idle,stall", [(7.3, 0.3, 0.3), (23.7, 0.0, 0.6), (10.0, 0.5, 0.0)])
def test_crossing_keeps_bytes_and_registers(engine_ns, idle, stall):
    """Bytes arrive in order through the engine (XORed with its register, so a wrong register value shows), every
    register write lands and every read returns the engine's value; the link clock is 10 ns, the engine's
    ``engine_ns`` (faster, slower, same period with another phase)."""
    rng = random.Random(f"cross{engine_ns}{idle}{stall}")
    dut = EngineCrossing(EchoEngine(depth=8), fifo_depth=4)
    phases = [(0x5A, bytes(rng.randrange(256) for _ in range(N_BYTES))),
              (0xC3, bytes(rng.randrange(256) for _ in range(N_BYTES)))]
    got = []
    counts = []
    state = {"phase_done": -1, "sent": 0}

    async def control(ctx):
        for k, (xor, data) in enumerate(phases):
            assert await reg_access(ctx, dut, REG_XOR, wdata=xor) is not None
            assert await reg_access(ctx, dut, REG_XOR) == xor
            for byte in data:
                await stream_put(ctx, dut.i, byte, rng=rng, idle=idle)
                state["sent"] += 1
                if rng.random() < 0.05:  # reads interleaved with the stream
                    counts.append((state["sent"], await reg_access(ctx, dut, REG_COUNT)))
            while state["phase_done"] < k:  # the next XOR must not touch bytes still in flight
                await ctx.tick()
        counts.append((state["sent"], await reg_access(ctx, dut, REG_COUNT)))

    async def drain(ctx):
        for k, (_, data) in enumerate(phases):
            for _ in data:
                got.append(await stream_get(ctx, dut.o, rng=rng, stall=stall))
            state["phase_done"] = k

    sim = Simulator(dut)
    sim.add_clock(10e-9, domain="sync")
    sim.add_clock(engine_ns * 1e-9, domain="engine", phase=3.1e-9)
    sim.add_testbench(control)
    sim.add_testbench(drain)
    sim.run()
    expected = [b ^ xor for xor, data in phases for b in data]
    assert got == expected
    assert counts[-1] == (2 * N_BYTES, 2 * N_BYTES)
    assert len(counts) > 5
    for sent, count in counts:  # bytes the engine has taken: never more than were sent
        assert count <= sent



def test_sgd_training_through_the_router_and_a_crossing_matches_the_direct_link():
    """The link core with the SGD engine behind the crossing (one clock for both domains, as simulations run it):
    every register access waits for its acknowledge, the store and model move over the link, and the trained model
    and the engine's cycle count equal the engine's without a crossing (and the golden)."""
    from host.backends.amaranth_sim import AmaranthTransport
    from host.device import Device
    from host.sgd_train import design_for, train

    class LinkOnly:  # no simulator backdoor: the store goes over the link (the backdoor addresses the engine)
        def __init__(self, inner):
            self._inner = inner

        def __getattr__(self, name):
            if name == "write_engine_memory":
                raise AttributeError(name)
            return getattr(self._inner, name)

    design = design_for(2, bus_bits=32, max_features=16, store_beats=64)
    runs = [train(Device(LinkOnly(AmaranthTransport(design.make_core(crossing=crossing))), timeout=30),
                  dataset="diabetes", bits=2, epochs=1, progress=False, max_samples=40)
            for crossing in (None, "same-clock")]
    direct, crossed = runs
    assert crossed["golden_match"] is True
    assert crossed["model_q23"] == direct["model_q23"] and crossed["cycles_per_epoch"] == direct["cycles_per_epoch"]
