"""Pipelined binary adder tree with a clock enable (one register level per tree level)."""
from amaranth.hdl import Module, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out


def tree_levels(n: int) -> int:
    levels = 0
    while (1 << levels) < n:
        levels += 1
    return levels


class AdderTree(wiring.Component):
    """Sum of ``n`` signed ``width``-bit inputs, ``latency = ceil(log2 n)`` enabled cycles later.

    Every register advances only while ``ce`` is high, so a frozen pipeline keeps its contents (the SGD engine
    freezes on idle input beats to keep its arithmetic independent of the input timing).  Exact: the output is
    ``width + latency`` bits wide.
    """

    def __init__(self, n: int, width: int):
        if n < 1:
            raise ValueError("adder tree needs at least one input")
        self.n = n
        self.width = width
        self.latency = tree_levels(n)
        super().__init__({
            "i": In(data.ArrayLayout(signed(width), n)),
            "ce": In(1),
            "o": Out(signed(width + self.latency)),
        })

    def elaborate(self, platform):
        m = Module()
        level = [self.i[k] for k in range(self.n)]
        w = self.width
        for lvl in range(self.latency):
            w += 1
            nxt = []
            for k in range(0, len(level), 2):
                r = Signal(signed(w), name=f"l{lvl}_{k // 2}")
                if k + 1 < len(level):
                    expr = level[k] + level[k + 1]
                else:
                    expr = level[k]
                with m.If(self.ce):
                    m.d.sync += r.eq(expr)
                nxt.append(r)
            level = nxt
        m.d.comb += self.o.eq(level[0])
        return m
