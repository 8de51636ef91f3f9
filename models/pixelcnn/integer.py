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
    a = np.asarray(spec["input_lut"], np.int64)[x]
    maps = [a]
    for layer in spec["layers"]:
        a = layer_forward(layer, a)
        maps.append(a)
    n, _, h, w = a.shape
    logits = a.reshape(n, C, L, h, w)
    return (logits, maps) if trace else logits


def log_probs(logits_int, logit_scale):
    """float64 log-softmax (nats) over the level axis (axis 2) of logit_scale * integer logits."""
    z = np.asarray(logits_int, np.float64) * float(logit_scale)
    m = z.max(axis=2, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=2, keepdims=True))


def bits_per_image(logits_int, x, logit_scale):
    """Bits of each image x (N,C,H,W) under the integer logits (float64)."""
    lp = log_probs(logits_int, logit_scale)
    x = np.asarray(x, np.int64)
    if x.ndim == 3:
        x = x[None]
    sel = np.take_along_axis(lp, x[:, :, None], axis=2)[:, :, 0]
    return -sel.reshape(len(x), -1).sum(1) / math.log(2.0)


def bits_per_dim(logits_int, x, logit_scale):
    """Mean bits/dim of images x under integer logits: -sum log2 p(x) / (N*C*H*W), float64."""
    x = np.asarray(x)
    return float(bits_per_image(logits_int, x, logit_scale).sum() / x.size)


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
