"""Integer (int8) PixelCNN: the NumPy golden model of the hardware streaming convolution engine.

Pure integer arithmetic (NumPy int64 holding int8 / int32 values); the only float is the final
conversion of integer logits to bits/dim. Every layer is a masked KxK (mask A, B or none) or 1x1 conv
over an H x W map with zero padding K//2, so the network runs as a raster-order pixel stream.

Per layer, for output channel o at pixel (i, j) (x = the layer's int8 input, 0 outside the image)::

    acc  = bias[o] + sum_{c,ky,kx} w[o,c,ky,kx] * x[c, i+ky-K//2, j+kx-K//2]      # int32 (checked)
    y    = clamp((acc * multiplier + 2**(shift-1)) >> shift, -128, 127)         # int64 product,
                                                                               # arithmetic shift
    z    = lut[y + 128]                                                        # int8 table
    out  = clamp(z + x[o, i, j], -128, 127)  if residual else z

``>>`` is an arithmetic (floor) shift, so the rounding is round-half-up (towards +inf) of
acc * multiplier / 2**shift. Network input: x0 = input_lut[pixel level]; output: the last layer's
int8 map, channel c*levels + v = logit of value v for image channel c; logits in nats are
``logit_scale * int_logit``.

Ref: integer-only inference with a fixed-point multiplier and shift, Jacob et al. CVPR 2018
(arXiv 1712.05877) §2.2; TFLite/gemmlowp requantisation; masks from arXiv 1601.06759 §3.4.
"""
import math

import numpy as np

INT8_MIN, INT8_MAX = -128, 127
INT32_MIN, INT32_MAX = -(2 ** 31), 2 ** 31 - 1


def round_half_up_shift(v, shift):
    """floor(v / 2**shift + 1/2) for int64 arrays, shift >= 1 (arithmetic shift)."""
    return (v + (np.int64(1) << np.int64(shift - 1))) >> np.int64(shift)


def requantize(acc, multiplier, shift):
    """int32 accumulator -> int8: clamp(round_half_up(acc * multiplier / 2**shift), -128, 127)."""
    acc = np.asarray(acc, np.int64)
    return np.clip(round_half_up_shift(acc * np.int64(multiplier), shift), INT8_MIN, INT8_MAX)


def saturate8(v):
    return np.clip(v, INT8_MIN, INT8_MAX)


def quantize_multiplier(real, bits=15):
    """Positive real scale -> (multiplier, shift) with multiplier in [2**(bits-1), 2**bits) and
    multiplier / 2**shift ~= real (relative error < 2**-bits)."""
    if not real > 0:
        raise ValueError(f"requantisation scale must be positive, got {real}")
    e = math.floor(math.log2(real))
    shift = bits - 1 - e
    mult = int(round(real * 2.0 ** shift))
    if mult >= 2 ** bits:
        mult //= 2
        shift -= 1
    if not 1 <= shift <= 62:
        raise ValueError(f"scale {real} needs shift {shift}, outside 1..62")
    return mult, shift


def conv_int(x, w, b):
    """Integer 'same' convolution with zero padding K//2. x (N,Cin,H,W), w (Cout,Cin,K,K), b (Cout,).
    Taps whose weights are all zero (masked) are skipped. Returns int64 (N,Cout,H,W)."""
    x = np.asarray(x, np.int64)
    w = np.asarray(w, np.int64)
    n, cin, h, wd = x.shape
    k = w.shape[-1]
    c = k // 2
    xp = np.zeros((n, cin, h + 2 * c, wd + 2 * c), np.int64)
    xp[:, :, c:c + h, c:c + wd] = x
    acc = np.broadcast_to(np.asarray(b, np.int64)[None, :, None, None], (n, w.shape[0], h, wd)).copy()
    for ky in range(k):
        for kx in range(k):
            wt = w[:, :, ky, kx]
            if not wt.any():
                continue
            acc += np.einsum("oc,nchw->nohw", wt, xp[:, :, ky:ky + h, kx:kx + wd])
    return acc


def layer_forward(layer, x):
    """One integer layer (see module docstring). ``layer`` is a dict from export.load_export."""
    acc = conv_int(x, layer["weight"], layer["bias"])
    if acc.min() < INT32_MIN or acc.max() > INT32_MAX:
        raise OverflowError("int32 accumulator overflow")
    y = requantize(acc, layer["multiplier"], layer["shift"])
    z = np.asarray(layer["lut"], np.int64)[y + 128]
    if layer["residual"]:
        z = saturate8(z + x)
    return z


def forward_int(spec, x, trace=False):
    """Integer forward pass. x: int image (N,C,H,W) or (C,H,W) of levels 0..L-1.
    Returns int64 logits (N, C, L, H, W) holding int8 values (and the list of per-layer maps if trace)."""
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[None]
    if not np.issubdtype(x.dtype, np.integer):
        raise TypeError("forward_int needs an integer image")
    C, L = spec["channels"], spec["levels"]
    if x.shape[1] != C or x.min() < 0 or x.max() >= L:
        raise ValueError(f"image must be (N,{C},H,W) with values in 0..{L - 1}")
    if "ops" in spec:  # op graph (gated PixelCNN)
        a, gm = graph_forward(spec, x, trace=True)
        n, _, h, w = a.shape
        logits = a.reshape(n, C, L, h, w)
        return (logits, gm) if trace else logits
    a = np.asarray(spec["input_lut"], np.int64)[x]
    maps = [a]
    for layer in spec["layers"]:
        a = layer_forward(layer, a)
        maps.append(a)
    n, _, h, w = a.shape
    logits = a.reshape(n, C, L, h, w)
    return (logits, maps) if trace else logits


def log_probs(logits_int, logit_scale, allowed=None, penalty=None):
    """float64 log-softmax (nats) over the level axis (axis 2) of logit_scale * integer logits;
    ``allowed`` (bool, same shape): excluded levels get probability 0 (logit -inf) before the softmax;
    ``penalty`` (int, same shape): subtracted from the logits in units of 2**-TILT_FRAC nats (luma tilt)."""
    z = np.asarray(logits_int, np.float64) * float(logit_scale)
    if penalty is not None:
        z = z - np.asarray(penalty, np.float64) / (1 << TILT_FRAC)
    if allowed is not None:
        z = np.where(allowed, z, -np.inf)
    m = z.max(axis=2, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=2, keepdims=True))


def bits_per_image(logits_int, x, logit_scale, allowed=None, penalty=None):
    """Bits of each image x (N,C,H,W) under the integer logits (float64; ``allowed``, ``penalty``: see log_probs)."""
    lp = log_probs(logits_int, logit_scale, allowed, penalty)
    x = np.asarray(x, np.int64)
    if x.ndim == 3:
        x = x[None]
    sel = np.take_along_axis(lp, x[:, :, None], axis=2)[:, :, 0]
    return -sel.reshape(len(x), -1).sum(1) / math.log(2.0)


def bits_per_dim(logits_int, x, logit_scale, allowed=None):
    """Mean bits/dim of images x under integer logits: -sum log2 p(x) / (N*C*H*W), float64."""
    x = np.asarray(x)
    return float(bits_per_image(logits_int, x, logit_scale, allowed).sum() / x.size)


# --- exclusion of colours inconsistent with a known gray pixel (Grayscale PixelCNN colour stage)
#
# g = floor(Y G / (1000 L)), Y = 299 R + 587 G + 114 B (``models.to_gray``): the gray pixel bounds Y to
# [lo, hi] (``luma_bounds``). Sub-pixel c (R, G, B in order) may take value v iff, with ``partial`` the luma
# of the sub-pixels already fixed, partial + w_c v + (max luma of the later sub-pixels) >= lo and
# partial + w_c v <= hi. The engine's sampler applies this rule (accumulating w_c v as it walks the
# levels); the likelihood applies it to the logits (``luma_allowed``). Equal to the exact
# ``models.gray_consistent`` when a gray bin is wider than the blue weight's step (tests check it).

LUMA = (299, 587, 114)


def luma_bounds(g, levels, gray_levels):
    """Luma range (lo, hi) of gray values g (int arrays): the NumPy twin of ``models.luma_bin``."""
    g = np.asarray(g, np.int64)
    return -((-g * 1000 * levels) // gray_levels), -((-(g + 1) * 1000 * levels) // gray_levels) - 1


def luma_ok(prev, c, levels, lo, hi):
    """Bool (levels,): the values of sub-pixel c allowed after the earlier sub-pixels ``prev`` (c values)."""
    partial = sum(w * int(p) for w, p in zip(LUMA, prev))
    y = partial + LUMA[c] * np.arange(levels, dtype=np.int64)
    return (y + sum(LUMA[c + 1:]) * (levels - 1) >= lo) & (y <= hi)


def luma_allowed(x, g, levels, gray_levels):
    """Bool (N, 3, L, H, W): ``luma_ok`` for every sub-pixel of the RGB images x (N, 3, H, W) given their
    gray view g (N, 1, H, W) (causal: sub-pixel c's row uses only x's sub-pixels before c)."""
    x = np.asarray(x, np.int64)
    lo, hi = luma_bounds(np.asarray(g)[:, 0], levels, gray_levels)
    v = np.arange(levels, dtype=np.int64)[None, :, None, None]
    partial = np.zeros_like(x[:, 0])
    out = []
    for c in range(3):
        y = partial[:, None] + LUMA[c] * v
        out.append((y + sum(LUMA[c + 1:]) * (levels - 1) >= lo[:, None]) & (y <= hi[:, None]))
        partial = partial + LUMA[c] * x[:, c]
    return np.stack(out, 1)


def evaluate_int(spec, x, batch=256):
    """Test-set bits/dim of the integer model."""
    tot = 0.0
    for i in range(0, len(x), batch):
        xb = x[i:i + batch]
        tot += float(bits_per_image(forward_int(spec, xb), xb, spec["logit_scale"]).sum())
    return tot / np.asarray(x).size


def stream_forward_int(spec, x):
    """Same result as forward_int, computed in raster order one pixel at a time, every layer at
    pixel p only reading earlier layers at pixels <= p (a check that the net is streamable, and the
    model of line-buffered hardware). Slow: for tests on small images."""
    x = np.asarray(x, np.int64)
    if x.ndim == 3:
        x = x[None]
    C, L = spec["channels"], spec["levels"]
    n, _, h, w = x.shape
    layers = spec["layers"]
    pad = max(l["kernel"] for l in layers) // 2
    bufs = [np.zeros((n, spec["channels"], h + 2 * pad, w + 2 * pad), np.int64)]
    bufs += [np.zeros((n, l["out"], h + 2 * pad, w + 2 * pad), np.int64) for l in layers]
    lut_in = np.asarray(spec["input_lut"], np.int64)
    for i in range(h):
        for j in range(w):
            bufs[0][:, :, pad + i, pad + j] = lut_in[x[:, :, i, j]]
            for li, l in enumerate(layers):
                c = l["kernel"] // 2
                win = bufs[li][:, :, pad + i - c:pad + i + c + 1, pad + j - c:pad + j + c + 1]
                acc = np.einsum("ocyx,ncyx->no", np.asarray(l["weight"], np.int64), win) + l["bias"]
                y = requantize(acc, l["multiplier"], l["shift"])
                z = np.asarray(l["lut"], np.int64)[y + 128]
                if l["residual"]:
                    z = saturate8(z + bufs[li][:, :, pad + i, pad + j])
                bufs[li + 1][:, :, pad + i, pad + j] = z
    out = bufs[-1][:, :, pad:pad + h, pad:pad + w]
    return out.reshape(n, C, L, h, w)


# --- op graphs (the gated PixelCNN export): named int8 maps, multi-input convs, gated requantisation
#
# A graph spec has ``ops`` instead of ``layers``. Each op reads one or more named int8 maps ("x": the
# input-LUT codes of the image, "cond": a conditioning map, the rest written by earlier ops) through
# its own tap list per input, and writes one map (the last op's map is the logits)::
#
#     acc[o] = bias[o] + sum_inputs sum_{c, (dy,dx)} w[o, c, t] * m[c, i+dy, j+dx]   (0 outside; relu(m)
#                                                                                     if relu_in)
#     conv : z = lut[requant(acc) + 128];  out = sat8(z + res[o]) if residual (res: a map at (i, j))
#     gated: acc has 2*ch rows [a | b]: t = lut[0][requant(acc_a)+128], s = lut[1][requant(acc_b)+128]
#            out[o] = clamp((t*s*gate_multiplier + 2**(gate_shift-1)) >> gate_shift, -128, 127)
#
# The gated unit is tanh(a) * sigmoid(b) of the Gated PixelCNN (arXiv 1606.05328 eq. 2) with both
# functions as 256-entry tables and the product requantised like any accumulator.

def gate_int(t, s, gate_multiplier, gate_shift):
    """Requantised product of the two int8 gate halves (t = tanh table output, s = sigmoid)."""
    p = np.asarray(t, np.int64) * np.asarray(s, np.int64)
    return np.clip(round_half_up_shift(p * np.int64(gate_multiplier), gate_shift), INT8_MIN, INT8_MAX)


def shifted(m, dy, dx):
    """m[..., i+dy, j+dx] with zeros outside the image (N, C, H, W)."""
    n, c, h, w = m.shape
    out = np.zeros_like(m)
    ys, yd = (slice(dy, h), slice(0, h - dy)) if dy >= 0 else (slice(0, h + dy), slice(-dy, h))
    xs, xd = (slice(dx, w), slice(0, w - dx)) if dx >= 0 else (slice(0, w + dx), slice(-dx, w))
    out[:, :, yd, xd] = m[:, :, ys, xs]
    return out


def upsample2(m):
    """Nearest upsampling by 2: out[..., i, j] = m[..., i // 2, j // 2]."""
    return np.repeat(np.repeat(np.asarray(m), 2, axis=-2), 2, axis=-1)


def parity_select(parts):
    """Four maps (N, C, H, W) -> one: parts[(i & 1) * 2 + (j & 1)] at (i, j)."""
    out = parts[0].copy()
    h, w = out.shape[-2:]
    i, j = np.arange(h)[:, None] & 1, np.arange(w)[None, :] & 1
    for p in range(1, 4):
        sel = (2 * i + j) == p
        out[..., sel] = parts[p][..., sel]
    return out


def op_accumulate(op, maps):
    """int64 accumulators (N, Cacc, H, W) of one op (int32 overflow is an error). A ``parity`` op
    (a 2x2 stride-2 transposed conv over a nearest-upsampled map) has four weight blocks per input,
    ``weight[:, :, p * T:(p + 1) * T]``, block p = (i & 1) * 2 + (j & 1) at output (i, j)."""
    acc = None
    nblk = 4 if op.get("parity") else 1
    for inp in op["inputs"]:
        m = np.asarray(maps[inp["map"]], np.int64)
        if op.get("relu_in"):
            m = np.maximum(m, 0)
        w = np.asarray(inp["weight"], np.int64)  # (Cacc, C, T * nblk)
        taps = np.asarray(inp["taps"]).reshape(-1, 2)
        for t, (dy, dx) in enumerate(taps):
            sh = shifted(m, int(dy), int(dx))
            parts = [np.einsum("oc,nchw->nohw", w[:, :, b * len(taps) + t], sh) for b in range(nblk)]
            part = parity_select(parts) if nblk > 1 else parts[0]
            acc = part if acc is None else acc + part
    acc = acc + np.asarray(op["bias"], np.int64)[None, :, None, None]
    if acc.min() < INT32_MIN or acc.max() > INT32_MAX:
        raise OverflowError(f"op {op.get('name', '?')}: int32 accumulator overflow")
    return acc


def op_forward(op, maps):
    """One op's output map (N, Cout, H, W) from the maps so far (see the section comment)."""
    acc = op_accumulate(op, maps)
    lut = np.asarray(op["lut"], np.int64)
    if op["kind"] == "gated":
        ch = acc.shape[1] // 2
        t = lut[0][requantize(acc[:, :ch], op["multiplier"], op["shift"]) + 128]
        s = lut[1][requantize(acc[:, ch:], op["multiplier"], op["shift"]) + 128]
        return gate_int(t, s, op["gate_multiplier"], op["gate_shift"])
    z = lut.reshape(-1)[requantize(acc, op["multiplier"], op["shift"]) + 128]
    if op.get("residual"):
        z = saturate8(z + np.asarray(maps[op["residual"]], np.int64))
    return z


def graph_forward(spec, x, cond=None, trace=False):
    """Integer forward pass of a graph spec over integer images x (N, C, H, W) of levels (None for a
    graph without image input: a conditioner pass over ``cond`` only); ``cond``: int8 conditioning map
    (N, cond_channels, H, W) when the spec has one. Returns the last op's map (N, C*L, H, W) int64, a
    conditioner's feature map (and the dict of all maps if trace). Non-causal taps (dy > 0) are plain
    zero-padded convolution taps here; the engine runs them as delayed row-phase ops."""
    maps = {}
    if x is not None:
        x = np.asarray(x, np.int64)
        if x.ndim == 3:
            x = x[None]
        maps["x"] = np.asarray(spec["input_lut"], np.int64)[x]
    if spec.get("cond_channels"):
        if cond is None:
            raise ValueError(f"this model needs a conditioning map with {spec['cond_channels']} channels")
        maps["cond"] = np.asarray(cond, np.int64)
    out = None
    for op in spec["ops"]:
        out = maps[op["out"]] = op_forward(op, maps)
    return (out, maps) if trace else out


# --- luma tilt (``GrayscalePixelCNN(luma_tilt=1)``): a Gaussian pull of G's logits towards a luma target
#
# The float model adds -(y - t)^2 / (2 sigma^2) (luma units) to the logit of G = v, y = (299 R + 587 v) * u,
# t = 0.886 * (bin centre) + d, u = 255 / (levels - 1) / 1000 (one luma-sum step in luma units). In integers
# (luma sums Y as in ``luma_bounds``): T = ((lo + hi) * TILT_CENTRE_MULT >> TILT_CENTRE_SHIFT) + TILT_D_STEP * d,
# d the int8 output of the model's tilt op (a 1x1 over the rectified conditioning map), and the penalty
# ``tilt_table(...)[tilt_index(299 R + 587 v - T)]`` is subtracted from G's scores (units 2**-frac nats):
# the sampler's table lookup, and what the likelihood subtracts (frac = TILT_FRAC, temperature 1).

TILT_CENTRE_MULT, TILT_CENTRE_SHIFT = 29032, 16  # 0.443 (= 0.886 / 2) in 16 fraction bits
TILT_D_STEP = 125     # luma sum per step of d (1/8 luma unit at 256 levels)
TILT_SHIFT = 6        # table step: 64 luma-sum units (0.064 luma units at 256 levels)
TILT_ENTRIES = 2048   # table covers |Y - T| < 2**16 (65 luma units); the ends repeat beyond
TILT_BITS = 20        # unsigned table entries (penalties saturate at 2**20 - 1)
TILT_FRAC = 10        # fraction bits of the likelihood's penalties (the sampler's GFRAC)
TILT_MAP = "tilt"     # the op-graph map that holds d


def tilt_target(lo, hi, d):
    """Luma-sum target T of pixels with luma bounds lo, hi and tilt outputs d (int arrays)."""
    lo, hi, d = (np.asarray(a, np.int64) for a in (lo, hi, d))
    return (((lo + hi) * TILT_CENTRE_MULT) >> TILT_CENTRE_SHIFT) + TILT_D_STEP * d


def tilt_index(delta):
    """Table index of luma-sum offsets Y - T: floor(delta / 2**TILT_SHIFT), clamped to the table."""
    h = TILT_ENTRIES // 2
    return np.clip(np.asarray(delta, np.int64) >> TILT_SHIFT, -h, h - 1) + h


def tilt_table(sigma, levels, frac=TILT_FRAC, temperature=1.0):
    """Penalties (TILT_ENTRIES,) int64: round(dy^2 / (2 sigma^2) * 2**frac / temperature) at each cell's
    centre dy (luma units), saturated to TILT_BITS bits."""
    if not sigma > 0 or not temperature > 0:
        raise ValueError(f"tilt width {sigma} and temperature {temperature} must be > 0")
    k = np.arange(TILT_ENTRIES, dtype=np.float64) - TILT_ENTRIES // 2 + 0.5
    dy = k * (1 << TILT_SHIFT) * 255.0 / (levels - 1) / 1000.0
    pen = np.floor(dy * dy / (2.0 * sigma * sigma) * (1 << frac) / temperature + 0.5)
    return np.minimum(pen, (1 << TILT_BITS) - 1).astype(np.int64)


def tilt_penalty(red, d, lo, hi, table, levels):
    """Penalties (N, L, H, W) of every G value given R (N, H, W), the tilt map d (N, H, W) and the luma bounds."""
    t = tilt_target(lo, hi, d)
    v = np.arange(levels, dtype=np.int64)[None, :, None, None]
    y = LUMA[0] * np.asarray(red, np.int64)[:, None] + LUMA[1] * v
    return np.asarray(table, np.int64)[tilt_index(y - t[:, None])]
