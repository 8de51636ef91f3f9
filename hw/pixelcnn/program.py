"""Host side of the convolution engine: engine parameters, fit checks, memory images, cycle model.

Shared by ``host.pixelcnn_run``, the tests and the benchmark. Pure Python/NumPy (no gateware).

Layer execution on the engine (per pixel, layers in order): output channels in groups of ``lanes``;
for each group, every (tap, input channel) pair of the layer's nonzero-tap list is one MAC beat
(``lanes`` multiplies in parallel, one activation broadcast); masked-out taps are not in the list.
"""
from dataclasses import asdict, dataclass

import numpy as np

from models.pixelcnn.integer import layer_forward

# load targets (register LOAD_SEL) and their word widths in bytes (weights: lanes bytes)
T_WEIGHTS, T_BIAS, T_LUT, T_TAPS, T_CONFIG, T_INLUT = 1, 2, 3, 4, 5, 6
CONFIG_BYTES = 16
MAX_TAPS = 32  # tap-list slots per layer
MAX_ROWS_BACK = 2  # line buffers hold 3 rows: kernels up to 5x5 (masks A/B), any 1x1


class EngineFitError(ValueError):
    """The model does not fit the engine's parameters (message says which limit and layer)."""


@dataclass(frozen=True)
class EngineParams:
    lanes: int = 16           # P: parallel multiply-accumulates (output channels per group)
    max_channels: int = 32    # feature-map channels (layer inputs); power of two
    max_width: int = 32       # image width; power of two
    max_layers: int = 8       # power of two
    weight_depth: int = 2048  # weight words of `lanes` bytes
    bias_depth: int = 512     # int32 biases (all layers)
    in_fifo: int = 512
    out_fifo: int = 4096
    max_outputs: int = 256    # output channels of one layer (logits: channels * levels)

    def __post_init__(self):
        for k in ("max_channels", "max_width", "max_layers"):
            v = getattr(self, k)
            if v < 2 or v & (v - 1):
                raise ValueError(f"{k} must be a power of two >= 2, got {v}")
        if not 1 <= self.lanes <= 64:
            raise ValueError(f"lanes must be in 1..64, got {self.lanes}")

    def as_dict(self):
        return asdict(self)


def mask_taps(kernel, mask, groups=1):
    """(dy, dx) offsets of the taps the mask keeps (union over channel groups), raster order."""
    c = kernel // 2
    taps = []
    for ky in range(kernel):
        for kx in range(kernel):
            if mask == "none":
                keep = True
            elif ky < c or (ky == c and kx < c):
                keep = True
            elif ky == c and kx == c:
                keep = mask == "B" or (mask == "A" and groups > 1)
            else:
                keep = False
            if keep:
                taps.append((ky - c, kx - c))
    return taps


def layer_taps(layer):
    return mask_taps(layer["kernel"], layer["mask"], layer.get("groups", 1))


def input_codes(spec, x):
    """int8 layer-0 input of an integer image x (N, C, H, W): input_lut per channel."""
    lut = np.asarray(spec["input_lut"], np.int64)
    return lut[np.asarray(x, np.int64)]


def logits_any(spec, x, trace=False):
    """Integer forward pass returning the last layer's raw map (N, Cout, H, W) (any input channels;
    equals ``integer.forward_int`` reshaped for the standard export)."""
    a = input_codes(spec, x)
    maps = [a]
    for layer in spec["layers"]:
        a = layer_forward(layer, a)
        maps.append(a)
    return (a, maps) if trace else a


def check_fits(spec, params: EngineParams, width=None, height=None):
    """Raise EngineFitError with a clear message if ``spec`` cannot run on an engine with ``params``."""
    p = params
    layers = spec["layers"]
    width = spec.get("width") if width is None else width
    if len(layers) > p.max_layers:
        raise EngineFitError(f"{len(layers)} layers, the engine holds at most {p.max_layers}")
    if width is not None and not 1 <= width <= p.max_width:
        raise EngineFitError(f"image width {width} exceeds the engine's line buffers ({p.max_width})")
    if height is not None and height < 1:
        raise EngineFitError("image height must be positive")
    if len(spec["input_lut"]) > 256:
        raise EngineFitError(f"{len(spec['input_lut'])} levels, the input table holds 256")
    wwords = bwords = 0
    for li, l in enumerate(layers):
        w = f"layer {li}: "
        k, ci, co = l["kernel"], l["in"], l["out"]
        if ci > p.max_channels:
            raise EngineFitError(f"{w}{ci} input channels exceed the engine's {p.max_channels}")
        if li < len(layers) - 1 and co > p.max_channels:
            raise EngineFitError(f"{w}{co} output channels exceed the engine's {p.max_channels}")
        if co > p.max_outputs:
            raise EngineFitError(f"{w}{co} output channels exceed the engine's {p.max_outputs}")
        if l["mask"] not in ("A", "B", "none"):
            raise EngineFitError(f"{w}mask {l['mask']!r} not supported (A, B, none)")
        if l["mask"] == "none" and k > 1:
            raise EngineFitError(f"{w}a non-causal {k}x{k} conv needs future rows; the streaming engine "
                                 "runs mask 'none' only as 1x1")
        if k // 2 > MAX_ROWS_BACK:
            raise EngineFitError(f"{w}kernel {k} needs {k // 2} rows back, the line buffers hold {MAX_ROWS_BACK}")
        taps = layer_taps(l)
        if len(taps) > MAX_TAPS:
            raise EngineFitError(f"{w}{len(taps)} taps exceed {MAX_TAPS}")
        wt = np.asarray(l["weight"])
        c = k // 2
        keep = np.zeros((k, k), bool)
        for dy, dx in taps:
            keep[dy + c, dx + c] = True
        if np.any(wt[:, :, ~keep]):
            raise EngineFitError(f"{w}nonzero weights outside the mask's taps")
        if l["residual"]:
            if ci != co:
                raise EngineFitError(f"{w}residual needs in == out channels")
            if (0, 0) not in taps:
                raise EngineFitError(f"{w}residual add needs the centre tap (mask B or none)")
        if not (1 <= l["multiplier"] < 2 ** 31 and 1 <= l["shift"] <= 62):
            raise EngineFitError(f"{w}multiplier/shift out of range")
        if len(l["lut"]) != 256:
            raise EngineFitError(f"{w}LUT must have 256 entries")
        wwords += -(-co // p.lanes) * len(taps) * ci
        bwords += co
    if wwords > p.weight_depth:
        raise EngineFitError(f"weights need {wwords} words of {p.lanes} bytes, the engine has {p.weight_depth}")
    if bwords > p.bias_depth:
        raise EngineFitError(f"biases need {bwords} entries, the engine has {p.bias_depth}")


def pack(spec, params: EngineParams, width=None, height=None):
    """Memory images (bytes per load target) for ``spec``; checks the fit first."""
    check_fits(spec, params, width, height)
    P = params.lanes
    wbytes, bbytes, lbytes = bytearray(), bytearray(), bytearray()
    taps_img = bytearray(params.max_layers * MAX_TAPS)
    cfg = bytearray()
    wbase = bbase = 0
    for li, l in enumerate(spec["layers"]):
        taps = layer_taps(l)
        k, ci, co = l["kernel"], l["in"], l["out"]
        c = k // 2
        wt = np.asarray(l["weight"], np.int64)
        groups = -(-co // P)
        for g in range(groups):
            for dy, dx in taps:
                for ch in range(ci):
                    lane = np.zeros(P, np.int64)
                    n = min(P, co - g * P)
                    lane[:n] = wt[g * P:g * P + n, ch, dy + c, dx + c]
                    wbytes += (lane & 0xFF).astype(np.uint8).tobytes()
        for t, (dy, dx) in enumerate(taps):
            taps_img[li * MAX_TAPS + t] = ((dy & 7) | ((dx & 7) << 3))
        bbytes += np.asarray(l["bias"], "<i4").tobytes()
        lbytes += (np.asarray(l["lut"], np.int64) & 0xFF).astype(np.uint8).tobytes()
        cfg += bytes([ci]) + co.to_bytes(2, "little") + bytes([groups, len(taps)])
        cfg += wbase.to_bytes(2, "little") + bbase.to_bytes(2, "little")
        cfg += int(l["multiplier"]).to_bytes(4, "little") + bytes([l["shift"], int(bool(l["residual"])), 0])
        wbase += groups * len(taps) * ci
        bbase += co
    lbytes += bytes(256 * (params.max_layers - len(spec["layers"])))
    inlut = (np.asarray(spec["input_lut"], np.int64) & 0xFF).astype(np.uint8).tobytes()
    return {T_WEIGHTS: bytes(wbytes), T_BIAS: bytes(bbytes), T_LUT: bytes(lbytes), T_TAPS: bytes(taps_img),
            T_CONFIG: bytes(cfg), T_INLUT: inlut}


def useful_macs_per_pixel(spec):
    return sum(len(layer_taps(l)) * l["in"] * l["out"] for l in spec["layers"])


def dense_macs_per_pixel(spec):
    return sum(l["kernel"] ** 2 * l["in"] * l["out"] for l in spec["layers"])


def mac_beats_per_pixel(spec, lanes):
    return sum(-(-l["out"] // lanes) * len(layer_taps(l)) * l["in"] for l in spec["layers"])


def random_spec(rng, layers=(("A", 5, 1, 8, False), ("B", 3, 8, 8, True), ("B", 1, 8, 6, False)), levels=6,
                channels=1, wmax=40, bias_max=2000, shift=(17, 21)):
    """A random integer network in the export's spec format, for tests. ``layers``: tuples
    (mask, kernel, in, out, residual); the last layer's out should be channels*levels (or levels for
    conditioned nets). Multipliers/shifts are drawn so outputs cover the int8 range and saturate."""
    spec_layers = []
    for mask, k, ci, co, res in layers:
        w = rng.integers(-wmax, wmax + 1, size=(co, ci, k, k))
        keep = np.zeros((k, k), bool)
        for dy, dx in mask_taps(k, mask):
            keep[dy + k // 2, dx + k // 2] = True
        w[:, :, ~keep] = 0
        spec_layers.append(dict(type="conv", kernel=k, mask=mask, groups=1, act="relu", residual=res,
                                weight=w.astype(np.int8), bias=rng.integers(-bias_max, bias_max + 1, co).astype(np.int32),
                                multiplier=int(rng.integers(1 << 14, 1 << 15)), shift=int(rng.integers(*shift)),
                                lut=rng.integers(-128, 128, 256).astype(np.int8), **{"in": ci, "out": co}))
    inlut = np.floor((2 * np.arange(levels) / (levels - 1) - 1) * 127 + 0.5).astype(np.int8)
    return dict(channels=channels, levels=levels, input_lut=inlut, logit_scale=0.05, layers=spec_layers)


def word_bytes(target, params: EngineParams):
    return {T_WEIGHTS: params.lanes, T_BIAS: 4, T_CONFIG: CONFIG_BYTES}.get(target, 1)


def load_stream(images, params: EngineParams):
    """Bytes that load ``images`` (from ``pack``) in mode 0: per target ``target, words u16 LE, data``."""
    out = bytearray()
    for target, blob in images.items():
        n = len(blob) // word_bytes(target, params)
        assert n * word_bytes(target, params) == len(blob) and n < 65536
        out += bytes([target]) + n.to_bytes(2, "little") + blob
    return bytes(out)
