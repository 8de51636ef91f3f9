"""On-chip sampler: Gumbel-max over integer logits with a lookup table, and its bit-exact twin.

For each level v of the pixel (in order 0..L-1) the xorshift32 generator steps once,
``r = state >> (32 - RBITS)`` indexes ``gumbel_table()`` (fixed point, ``GFRAC`` fraction bits), and

    score[v] = logit[v] * logit_mult + G[r]          (logit_mult = round(logit_scale * 2**GFRAC / T))

the sample is the first v with the largest score. Gumbel-max draws exactly from softmax(logits);
here the uniform is quantised to 2**RBITS cells (u = (r + 1/2) / 2**RBITS), a small approximation
that the NumPy twin below reproduces bit for bit.
Ref: Gumbel-max trick (Gumbel 1954; Maddison et al. arXiv 1411.0030 §2).
"""
import math

import numpy as np

RBITS = 10
GFRAC = 10
GBITS = 18  # signed width of table entries


def gumbel_table():
    """int table G[r] = round(-ln(-ln((r + 1/2) / 2**RBITS)) * 2**GFRAC), r in 0..2**RBITS-1."""
    n = 1 << RBITS
    u = (np.arange(n, dtype=np.float64) + 0.5) / n
    g = np.floor(-np.log(-np.log(u)) * (1 << GFRAC) + 0.5).astype(np.int64)
    assert g.min() >= -(1 << (GBITS - 1)) and g.max() < (1 << (GBITS - 1))
    return g


def logit_mult(logit_scale, temperature=1.0):
    """Integer multiplier of the int8 logits in the score (fits 16 bits unsigned)."""
    m = int(math.floor(logit_scale * (1 << GFRAC) / temperature + 0.5))
    if not 1 <= m < (1 << 16):
        raise ValueError(f"sampler multiplier {m} out of range 1..65535 (logit_scale {logit_scale}, T {temperature})")
    return m


def xorshift32(x):
    x &= 0xFFFFFFFF
    x ^= (x << 13) & 0xFFFFFFFF
    x ^= x >> 17
    x ^= (x << 5) & 0xFFFFFFFF
    return x


class SamplerTwin:
    """Bit-exact software copy of the gateware sampler (state carried across pixels and images)."""

    def __init__(self, seed, mult):
        if not 0 < seed < 2 ** 32:
            raise ValueError("seed must be a nonzero 32-bit value")
        self.state = seed
        self.mult = mult
        self.table = gumbel_table()

    def draw(self, logits, ok=None, penalty=None):
        """One level from ``logits``; ``ok`` (bool per level): only allowed levels compete (the generator
        steps for every level); none allowed: 0. ``penalty`` (int per level, luma tilt): subtracted from the
        scores."""
        best = arg = None
        for v, lg in enumerate(logits):
            self.state = xorshift32(self.state)
            s = int(lg) * self.mult + int(self.table[self.state >> (32 - RBITS)])
            if penalty is not None:
                s -= int(penalty[v])
            if (ok is None or ok[v]) and (best is None or s > best):
                best, arg = s, v
        return 0 if arg is None else arg


def sample_images_twin(spec, n, height, width, seed, mult, cond=None, bounds=None, tilt=None):
    """Generate n images exactly as the engine does. Plain masked nets: channel 0 sampled, channels 1..
    from ``cond`` (n, C-1, H, W). Op graphs (``cond``: their int8 conditioning map): every channel,
    R then G then B per pixel, each fed back before the next; ``bounds`` (n, 2, H, W) luma bounds of the
    known gray pixels (``integer.luma_bounds``): the sampler's exclusion (``integer.luma_ok``); ``tilt``
    (with ``bounds``): the luma tilt's penalty table (``integer.tilt_table``), applied to G with the spec's
    tilt map (``integer.TILT_MAP``) as d. Returns int64 (n, C, H, W) levels (C = 1 for plain nets)."""
    from models.pixelcnn.integer import TILT_MAP, graph_forward, luma_ok, tilt_penalty

    from .program import logits_any
    L = spec["levels"]
    tw = SamplerTwin(seed, mult)
    graph = "ops" in spec  # op graphs take ``cond`` as their int8 conditioning map
    C = spec["channels"] if graph else spec["layers"][0]["in"]
    S = C if graph else 1  # sampled sub-pixels
    out = np.zeros((n, S, height, width), np.int64)
    for k in range(n):
        x = np.zeros((1, C, height, width), np.int64)
        if not graph and C > 1:
            x[0, 1:] = cond[k]
        kw = {"cond": cond[k:k + 1]} if graph and spec.get("cond_channels") else {}
        for i in range(height):
            for j in range(width):
                for c in range(S):
                    if tilt is not None and c == 1:
                        full, maps = graph_forward(spec, x, trace=True, **kw)
                        lo, hi = bounds[k, :, i, j]
                        pen = tilt_penalty(x[:1, 0, i:i + 1, j:j + 1], maps[TILT_MAP][:1, 0, i:i + 1, j:j + 1],
                                           lo, hi, tilt, L)[0, :, 0, 0]
                        lg = full[0, L:2 * L, i, j]
                    else:
                        pen = None
                        lg = logits_any(spec, x, **kw)[0, c * L:(c + 1) * L, i, j]
                    ok = None if bounds is None else luma_ok(x[0, :c, i, j], c, L, *bounds[k, :, i, j])
                    x[0, c, i, j] = tw.draw(lg, ok, pen)
        out[k] = x[0, :S]
    return out
