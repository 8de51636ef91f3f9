"""Hardware-twin random source for on-chip stochastic rounding: one xorshift32 per lane.

Ref: Marsaglia, "Xorshift RNGs", J. Stat. Softw. 8(14), 2003 (triple 13, 17, 5); seeding mix = MurmurHash3 ``fmix32``
(Appleby, public domain). Used by ZipML §3 (end-to-end quantization: model and gradient stochastically rounded) in
place of the host-side ``rand()/RAND_MAX`` of fpgasystems/ZipML-XeonFPGA SW/zipml_sgd.h, which the FPGA cannot run.

The gateware of the SGD engine reproduces this module bit for bit.  Exact algorithm (all arithmetic modulo 2**32,
``<<`` / ``>>`` are logical shifts of a 32-bit unsigned word):

Seeding (done once, by the host or by the gateware at reset; lane index ``l`` counts from 0)::

    h = (seed + 0x9E3779B9 * (l + 1)) mod 2**32          # seed: any 32-bit integer
    h ^= h >> 16;  h = h * 0x85EBCA6B mod 2**32
    h ^= h >> 13;  h = h * 0xC2B2AE35 mod 2**32
    h ^= h >> 16                                          # MurmurHash3 fmix32 (a bijection)
    state[l] = h if h != 0 else 0x6D2B79F5                # xorshift32 must never hold 0

Step (every lane advances once per step, in parallel; the *new* state is that lane's output word)::

    x ^= x << 13;  x ^= x >> 17;  x ^= x << 5;  out = x

Element-to-lane mapping.  A request for ``n`` random words consumes ``ceil(n / L)`` steps of all ``L`` lanes; the
words are taken step-major: element ``i`` of the request gets the output of lane ``i % L`` at step ``i // L`` of
that request.  Words of lanes left over in the last step are discarded (the lanes still advanced).  A
multi-dimensional request is flattened in C (row-major) order first.  State carries over between requests.

Stochastic rounding with k threshold bits (1 <= k <= 32; see :func:`stochastic_round_fixed`)::

    r    = out >> (32 - k)                  # top k bits of the lane's word
    frac = v & (2**k - 1)                   # the k bits of v that are dropped (v is a two's-complement integer)
    q    = (v >> k) + (1 if r < frac else 0)   # ``>>`` on v is arithmetic (floor)

so ``P(round up) = frac / 2**k`` up to the 2**-32 bias of xorshift32 never producing 0, i.e. ``E[q] = v / 2**k``.
Floating-point inputs are first turned into that fixed-point form with ``floor(value * 2**k)``
(see :func:`models.zipml.quantize.quantize_codes`).
"""

from __future__ import annotations

import numpy as np

__all__ = ["Xorshift32Lanes", "lane_seeds", "fmix32", "xorshift32_step", "stochastic_round_fixed"]

_M32 = np.uint64(0xFFFFFFFF)
GOLDEN = 0x9E3779B9
ZERO_REPLACEMENT = 0x6D2B79F5


def fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3 finaliser on uint32 words (vectorised)."""
    h = np.asarray(h, dtype=np.uint64) & _M32
    h ^= h >> np.uint64(16)
    h = (h * np.uint64(0x85EBCA6B)) & _M32
    h ^= h >> np.uint64(13)
    h = (h * np.uint64(0xC2B2AE35)) & _M32
    h ^= h >> np.uint64(16)
    return h.astype(np.uint32)


def lane_seeds(seed: int, n_lanes: int) -> np.ndarray:
    """Initial xorshift32 state of each lane, as documented in the module docstring (uint32 array)."""
    if n_lanes < 1:
        raise ValueError("n_lanes must be >= 1")
    lanes = np.arange(1, n_lanes + 1, dtype=np.uint64)
    h = (np.uint64(int(seed) & 0xFFFFFFFF) + np.uint64(GOLDEN) * lanes) & _M32
    s = fmix32(h)
    s[s == 0] = ZERO_REPLACEMENT
    return s


def xorshift32_step(x: np.ndarray) -> np.ndarray:
    """One xorshift32 (13, 17, 5) step of every element of a uint32 array."""
    x = np.asarray(x, dtype=np.uint32)
    x = x ^ (x << np.uint32(13))
    x = x ^ (x >> np.uint32(17))
    x = x ^ (x << np.uint32(5))
    return x


def _apply_linear(cols: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Apply the GF(2)-linear map whose image of bit i is ``cols[i]`` to every word of ``v``."""
    out = np.zeros(v.shape, dtype=np.uint32)
    for i in range(32):
        bit = (v >> np.uint32(i)) & np.uint32(1)
        out ^= cols[i] * bit  # bit is 0 or 1, so this selects cols[i] or 0
    return out


_STEP_COLS = xorshift32_step(np.uint32(1) << np.arange(32, dtype=np.uint32))


class Xorshift32Lanes:
    """``n_lanes`` independent xorshift32 generators stepped in lockstep (see the module docstring).

    >>> g = Xorshift32Lanes(seed=1, n_lanes=4)
    >>> words = g.words(10)          # 3 steps of 4 lanes, 2 words dropped
    >>> g.steps
    3
    """

    def __init__(self, seed: int = 0, n_lanes: int = 64):
        self.seed = int(seed)
        self.n_lanes = int(n_lanes)
        self.state = lane_seeds(self.seed, self.n_lanes)
        self.steps = 0

    def step_block(self, n_steps: int) -> np.ndarray:
        """Advance all lanes ``n_steps`` times; return the outputs as a ``(n_steps, n_lanes)`` uint32 array.

        Uses the GF(2)-linearity of xorshift (x_t = M^t x_0) to produce the block by doubling: O(32 log n) NumPy
        operations instead of one Python iteration per step.  Bit-identical to repeated :func:`xorshift32_step`.
        """
        n_steps = int(n_steps)
        if n_steps <= 0:
            return np.zeros((0, self.n_lanes), dtype=np.uint32)
        block = xorshift32_step(self.state)[None, :]  # x_1
        cols = _STEP_COLS.copy()  # columns of M^len(block)
        while block.shape[0] < n_steps:
            need = min(block.shape[0], n_steps - block.shape[0])
            block = np.concatenate([block, _apply_linear(cols, block[:need])])
            if block.shape[0] < n_steps:
                cols = _apply_linear(cols, cols)  # M^(2 len) columns
        self.state = block[-1].copy()
        self.steps += n_steps
        return block

    def words(self, shape) -> np.ndarray:
        """Random uint32 words of the given shape, taken step-major across lanes."""
        shape = (shape,) if np.isscalar(shape) else tuple(shape)
        n = int(np.prod(shape, dtype=np.int64))
        n_steps = -(-n // self.n_lanes)
        return self.step_block(n_steps).reshape(-1)[:n].reshape(shape)

    def threshold(self, shape, k: int) -> np.ndarray:
        """Top ``k`` bits of each word (the rounding threshold), as int64."""
        if not 1 <= k <= 32:
            raise ValueError("k must be in 1..32")
        return (self.words(shape) >> np.uint32(32 - k)).astype(np.int64)

    def __repr__(self) -> str:
        return f"Xorshift32Lanes(seed={self.seed}, n_lanes={self.n_lanes}, steps={self.steps})"


def stochastic_round_fixed(v, k: int, rng) -> np.ndarray:
    """Stochastically drop the ``k`` low bits of the two's-complement integers ``v`` (the gateware operation).

    ``rng`` is a :class:`Xorshift32Lanes` (bit-exact twin) or a NumPy ``Generator`` (its uint32 words are used
    the same way).  Returns ``(v >> k) + (r < (v & (2**k - 1)))`` with ``r`` the top ``k`` bits of a fresh word.
    """
    v = np.asarray(v, dtype=np.int64)
    if isinstance(rng, Xorshift32Lanes):
        r = rng.threshold(v.shape, k)
    else:
        r = (rng.integers(0, 2**32, size=v.shape, dtype=np.uint32) >> np.uint32(32 - k)).astype(np.int64)
    frac = v & ((1 << k) - 1)
    return (v >> k) + (r < frac)
