"""Helpers for Amaranth-simulator testbenches: stream producers/consumers with random stalls.

Used by the unit tests of every core (randomised valid/ready timing is the most valuable stream test).
"""
import random


async def stream_put(ctx, stream, payload, *, rng: random.Random | None = None, idle: float = 0.0):
    """Send one item; with ``rng`` insert idle cycles (probability ``idle`` per cycle) before it."""
    while rng is not None and rng.random() < idle:
        await ctx.tick()
    ctx.set(stream.valid, 1)
    ctx.set(stream.payload, payload)
    await ctx.tick().until(stream.ready)
    ctx.set(stream.valid, 0)


async def stream_get(ctx, stream, *, rng: random.Random | None = None, stall: float = 0.0):
    """Receive one item; with ``rng`` hold ``ready`` low (probability ``stall`` per cycle)."""
    while True:
        ready = rng is None or rng.random() >= stall
        ctx.set(stream.ready, ready)
        _, _, valid, payload = await ctx.tick().sample(stream.valid, stream.payload)
        if ready and valid:
            ctx.set(stream.ready, 0)
            return payload
