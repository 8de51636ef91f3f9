"""Host side of the convolution engine: engine parameters, fit checks, memory images, cycle model.

Shared by ``host.pixelcnn_run``, the tests and the benchmark. Pure Python/NumPy (no gateware).

Both export formats run as one list of engine *ops*: a plain masked-conv export (``layers``) becomes
one op per layer (map l -> map l+1), a gated op graph (``ops``, ``models.pixelcnn.integer``) keeps its
ops and names its maps by index. Op execution (per pixel, ops in order; row-phase ops once per row for
every column before the row's first pixel): accumulators in groups of ``lanes``; for each group, every
(tap, input channel) pair of the op's tap list (taps over several maps) is one MAC beat (``lanes``
multiplies in parallel, one activation broadcast); masked-out taps are not in the list. Conditioner
passes (``is_conditioner``) are op graphs of delayed row-phase ops whose last op fills the engine's
feature memory; ``pack_many`` loads several specs at once.
"""
from dataclasses import asdict, dataclass

import numpy as np

from models.pixelcnn.integer import TILT_MAP, graph_forward, layer_forward, tilt_table

# load targets (register LOAD_SEL) and their word widths in bytes (weights: lanes bytes)
T_WEIGHTS, T_BIAS, T_LUT, T_TAPS, T_CONFIG, T_INLUT, T_TILT = 1, 2, 3, 4, 5, 6, 7
CONFIG_BYTES = 24
TAP_BYTES = 3      # dy | dx << 3 | residual << 6, source map, channels
LUT_PER_OP = 512   # two 256-entry tables per op (gated: tanh, sigmoid)
MAX_TAPS = 32  # tap-list slots per op
INPUT_TABLE = 512  # input-table entries (level -> int8 code) of all specs loaded together (identical ones shared)
MAX_ROWS_BACK = 2  # causal (pixel-phase) taps: rows -2..0 (kernels up to 5x5 with masks A/B)
MAX_DY = 2         # row-phase taps of a non-causal conv: rows -2..+2 of the op's output row (K <= 5)
FLAG_RESIDUAL, FLAG_GATED, FLAG_RELU_IN, FLAG_PARITY = 1, 2, 4, 8


class EngineFitError(ValueError):
    """The model does not fit the engine's parameters (message says which limit and layer)."""


@dataclass(frozen=True)
class EngineParams:
    lanes: int = 16           # P: parallel multiply-accumulates (output channels per group)
    max_channels: int = 32    # feature-map channels (layer inputs); power of two
    max_width: int = 32       # image width; power of two
    max_layers: int = 32      # ops (layers, of all specs loaded at once); power of two
    weight_depth: int = 8192  # weight words of `lanes` bytes
    bias_depth: int = 2048    # int32 biases (all ops)
    in_fifo: int = 512
    out_fifo: int = 4096
    max_outputs: int = 256    # outputs of one op (logits: channels * levels; RGB 3 x 256 = 768)
    max_maps: int = 16        # feature maps in the line buffers; power of two
    row_slots: int = 4        # rows per map in the line buffers (ring); non-causal 5x5 convs need 8
    feat_rows: int = 32       # rows of the whole-image feature memory (feat_rows x max_width x max_channels)

    def __post_init__(self):
        for k in ("max_channels", "max_width", "max_layers", "max_maps", "row_slots", "feat_rows"):
            v = getattr(self, k)
            if v < 2 or v & (v - 1):
                raise ValueError(f"{k} must be a power of two >= 2, got {v}")
        if self.row_slots < 4:
            raise ValueError(f"row_slots must be >= 4, got {self.row_slots}")
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


def logits_any(spec, x, trace=False, cond=None):
    """Integer forward pass returning the last layer's raw map (N, Cout, H, W) (any input channels;
    equals ``integer.forward_int`` reshaped for the standard export; op graphs: ``graph_forward``)."""
    if "ops" in spec:
        return graph_forward(spec, x, cond, trace)
    a = input_codes(spec, x)
    maps = [a]
    for layer in spec["layers"]:
        a = layer_forward(layer, a)
        maps.append(a)
    return (a, maps) if trace else a


def _check_layers(spec, params: EngineParams, width=None, height=None):
    """Fit checks of a plain masked-conv export (``layers``)."""
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



def engine_ops(spec):
    """Either export format -> (ops, number of maps, number of leading row-phase ops, cond map index).

    An engine op is a dict: ``row`` (row phase), ``gated``, ``out`` (map index; the last op's outputs
    leave the engine), ``cout`` (accumulators; gated ops interleave them as pairs a_m, b_m so that a
    pair is adjacent in the serial requantiser), ``taps`` [(map, dy, dx, channels, residual)] with
    ``tap_weights`` [(cout, channels) int arrays], ``bias``, ``mult``, ``shift``, ``gmult``, ``gshift``,
    ``lut`` (512 int8: two tables), ``relu_in``, ``residual`` (a tap flagged residual supplies the
    values added at the centre: the op's own input, or a zero-weight tap over another map), ``delay``
    (row-phase ops: the op computes output row ``row - delay``; non-causal convs of a conditioner pass),
    ``blocks`` (parity ops: four ``tap_weights`` lists, block (i & 1) * 2 + (j & 1) at output (i, j))."""
    ops = []
    if "ops" not in spec:
        layers = spec["layers"]
        for li, l in enumerate(layers):
            c = l["kernel"] // 2
            w = np.asarray(l["weight"], np.int64)
            taps = [(li, dy, dx, l["in"], bool(l["residual"]) and dy == 0 and dx == 0) for dy, dx in layer_taps(l)]
            ops.append(dict(name=f"layer{li}", row=False, gated=False, out=li + 1, cout=l["out"], taps=taps,
                            delay=0, blocks=None,
                            tap_weights=[w[:, :, dy + c, dx + c] for _, dy, dx, _, _ in taps],
                            bias=np.asarray(l["bias"], np.int64), mult=int(l["multiplier"]), shift=int(l["shift"]),
                            gmult=0, gshift=0, relu_in=False, residual=bool(l["residual"]),
                            lut=np.concatenate([np.asarray(l["lut"], np.int64), np.zeros(256, np.int64)])))
        return ops, len(layers), 0, None
    idx = {"x": 0}
    if spec.get("cond_channels"):
        idx["cond"] = 1
    chans = {"x": spec["channels"], "cond": spec.get("cond_channels", 0)}
    for op in spec["ops"]:
        gated = op["kind"] == "gated"
        cout = len(op["bias"])
        perm = np.arange(cout)
        if gated:
            perm = np.stack([np.arange(cout // 2), cout // 2 + np.arange(cout // 2)], 1).reshape(-1)
        taps, tw = [], []
        nblk = 4 if op.get("parity") else 1
        blocks = [[] for _ in range(nblk)]
        for inp in op["inputs"]:
            if inp["map"] not in idx:
                raise EngineFitError(f"op {op['name']}: map {inp['map']!r} is read before any op writes it")
            w = np.asarray(inp["weight"], np.int64)[perm]
            tl = np.asarray(inp["taps"]).reshape(-1, 2)
            for t, (dy, dx) in enumerate(tl):
                taps.append([idx[inp["map"]], int(dy), int(dx), w.shape[1], False])
                tw.append(w[:, :, t])
                for b in range(nblk):
                    blocks[b].append(w[:, :, b * len(tl) + t])
        if op.get("residual"):
            r = idx[op["residual"]]
            hit = [t for t in taps if t[0] == r and t[1] == 0 and t[2] == 0]
            if hit:
                hit[0][4] = True
            else:
                taps.append([r, 0, 0, cout, True])
                tw.append(np.zeros((cout, cout), np.int64))
        lut = np.asarray(op["lut"], np.int64).reshape(-1)
        if op is not spec["ops"][-1] and op["out"] not in idx:
            idx[op["out"]] = len(idx)
            chans[op["out"]] = cout // 2 if gated else cout
        ops.append(dict(name=op["name"], row=op["phase"] == "row", gated=gated, delay=int(op.get("delay", 0)),
                        blocks=blocks if nblk > 1 else None,
                        out=idx.get(op["out"], 0), cout=cout, taps=[tuple(t) for t in taps], tap_weights=tw,
                        bias=np.asarray(op["bias"], np.int64)[perm], mult=int(op["multiplier"]),
                        shift=int(op["shift"]), gmult=int(op["gate_multiplier"]), gshift=int(op["gate_shift"]),
                        relu_in=bool(op.get("relu_in")), residual=bool(op.get("residual")),
                        lut=np.concatenate([lut, np.zeros(LUT_PER_OP - len(lut), np.int64)])))
    nrow = 0
    while nrow < len(ops) and ops[nrow]["row"]:
        nrow += 1
    if any(o["row"] for o in ops[nrow:]):
        raise EngineFitError("row-phase ops must come before all pixel ops")
    return ops, len(idx), nrow, idx.get("cond")


def tilt_map(spec):
    """Engine map index of the luma tilt's d (the op writing ``integer.TILT_MAP``) of a spec with a tilt
    (``tilt_sigma`` > 0), else None."""
    if not spec.get("tilt_sigma"):
        return None
    ops = engine_ops(spec)[0]
    k = [i for i, op in enumerate(spec["ops"]) if op["out"] == TILT_MAP]
    if len(k) != 1 or ops[k[0]]["cout"] != 1:
        raise EngineFitError(f"a luma tilt needs exactly one op writing the 1-channel map {TILT_MAP!r}")
    return ops[k[0]]["out"]


def is_conditioner(spec):
    """An op graph that computes a feature map (non-causal conditioning network pass) instead of logits:
    its last op writes the engine's whole-image feature memory."""
    return spec.get("architecture") == "conditioner"


def _row_window(ops, nrow, k, src, cond_map):
    """Rows of map ``src`` that op ``k`` may read, relative to the stream row r, when it runs:
    (oldest still in the line buffers' ring, newest written) as offsets, given the schedule (row phase:
    the conditioning map is filled first, then row-phase ops in order; then the pixels, map 0)."""
    if src == cond_map:
        return 0
    if src == 0:  # the image: its row r arrives in the pixel phase
        return -1 if k < nrow else 0
    for j, o in enumerate(ops[:nrow]):
        if o["out"] == src:
            return -o["delay"] - (0 if j < k or k >= nrow else 1)
    return 0  # written by pixel ops: up to the current pixel (checked per tap below)


def _check_ops(spec, params: EngineParams, width=None):
    """Fit checks of an op graph (gated export or conditioner pass)."""
    p = params
    ops, nmaps, nrow, cond_map = engine_ops(spec)
    cond = is_conditioner(spec)
    if len(ops) > p.max_layers:
        raise EngineFitError(f"{len(ops)} ops, the engine holds at most {p.max_layers}")
    if nmaps > p.max_maps:
        raise EngineFitError(f"{nmaps} feature maps, the engine's line buffers hold {p.max_maps}")
    if width is not None and not 1 <= width <= p.max_width:
        raise EngineFitError(f"image width {width} exceeds the engine's line buffers ({p.max_width})")
    if cond:
        if nrow != len(ops):
            raise EngineFitError("a conditioner pass runs row-phase ops only")
    elif nrow == len(ops) or ops[-1]["gated"]:
        raise EngineFitError("the last op must be a plain pixel-phase conv (the logits)")
    if spec.get("cond_channels", 0) > p.max_channels:
        raise EngineFitError(f"{spec['cond_channels']} conditioning channels exceed the engine's {p.max_channels}")
    for i, o in enumerate(ops):
        w = f"op {i} ({o['name']}): "
        last = i == len(ops) - 1
        nout = o["cout"] // 2 if o["gated"] else o["cout"]
        limit = p.max_outputs if last and not cond else p.max_channels
        if o["cout"] > p.max_outputs or nout > limit:
            raise EngineFitError(f"{w}{nout} output channels exceed the engine's {limit}")
        if o["gated"] and (p.lanes % 2 or not (1 <= o["gmult"] < 2 ** 16 and 1 <= o["gshift"] <= 31)):
            raise EngineFitError(f"{w}a gated op needs an even number of lanes ({p.lanes}) and a gate "
                                 "multiplier < 2**16, shift <= 31")
        if len(o["taps"]) > MAX_TAPS:
            raise EngineFitError(f"{w}{len(o['taps'])} taps exceed {MAX_TAPS}")
        if not (1 <= o["mult"] < 2 ** 31 and 1 <= o["shift"] <= 62):
            raise EngineFitError(f"{w}multiplier/shift out of range")
        if not 0 <= o["delay"] <= 255 or (o["delay"] and not o["row"]):
            raise EngineFitError(f"{w}delay {o['delay']}: only row-phase ops are delayed (0..255 rows)")
        if o["blocks"] is not None and (o["residual"] or o["gated"]):
            raise EngineFitError(f"{w}a parity (transposed-conv) op is a plain conv without residual")
        for src, dy, dx, nch, res in o["taps"]:
            if nch > p.max_channels:
                raise EngineFitError(f"{w}{nch} input channels exceed the engine's {p.max_channels}")
            if not (-MAX_DY <= dy <= (MAX_DY if o["row"] else 0) and -2 <= dx <= 2):
                raise EngineFitError(f"{w}tap ({dy}, {dx}) outside the line buffers (rows "
                                     f"{-MAX_DY}..{MAX_DY if o['row'] else 0}, columns -2..2)")
            newest = _row_window(ops, nrow, i, src, cond_map)
            rel = dy - o["delay"]
            if o["row"] and rel > newest:
                raise EngineFitError(f"{w}tap ({dy}, {dx}) reads row {rel:+d} (from the current row) of map {src}, which exists only up "
                                     f"to row {newest:+d} (give the op a delay of at least {o['delay'] + rel - newest})")
            if rel < newest - (p.row_slots - 1):
                raise EngineFitError(f"{w}tap ({dy}, {dx}) reads row {rel:+d} of map {src}, but the line buffers "
                                     f"keep {p.row_slots} rows (newest {newest:+d}); use an engine with more row_slots")
            row_ready = src != 0 and newest == 0 and (src == cond_map or any(x["out"] == src for x in ops[:nrow]))
            if not o["row"] and dy == 0 and dx > 0 and not row_ready:
                raise EngineFitError(f"{w}tap ({dy}, {dx}) reads a future pixel of map {src}")
    wwords = sum(-(-o["cout"] // p.lanes) * sum(t[3] for t in o["taps"]) * (4 if o["blocks"] else 1) for o in ops)
    bwords = sum(o["cout"] for o in ops)
    if wwords > p.weight_depth:
        raise EngineFitError(f"weights need {wwords} words of {p.lanes} bytes, the engine has {p.weight_depth}")
    if bwords > p.bias_depth:
        raise EngineFitError(f"biases need {bwords} entries, the engine has {p.bias_depth}")


def check_fits(spec, params: EngineParams, width=None, height=None):
    """Raise EngineFitError with a clear message if ``spec`` cannot run on an engine with ``params``."""
    if height is not None and height < 1:
        raise EngineFitError("image height must be positive")
    if len(spec["input_lut"]) > 256:
        raise EngineFitError(f"{len(spec['input_lut'])} levels, the input table holds 256")
    if "ops" in spec:
        _check_ops(spec, params, width)
    else:
        _check_layers(spec, params, width, height)
        if len(spec["layers"]) > params.max_maps:
            raise EngineFitError(f"{len(spec['layers'])} layers need as many maps, the engine holds {params.max_maps}")


def pack(spec, params: EngineParams, width=None, height=None):
    """Memory images (bytes per load target) for ``spec``; checks the fit first."""
    return pack_many([(spec, width, height)], params)[0]


def pack_many(runs, params: EngineParams):
    """Memory images holding several specs at once (``runs``: (spec, width, height) each; the engine runs
    one of them at a time, chosen by its REG_BASE: first op and input-table offset). Checks every spec's fit
    and the totals; returns (images, [(op base, input-table base)] per spec)."""
    tilts = {(float(s["tilt_sigma"]), s["levels"]) for s, _, _ in runs if tilt_map(s) is not None}
    if len(tilts) > 1:
        raise EngineFitError("the engine holds one luma-tilt table: load specs with different tilts separately")
    P = params.lanes
    wbytes, bbytes, lbytes, inlut = bytearray(), bytearray(), bytearray(), bytearray()
    taps_img = bytearray(params.max_layers * MAX_TAPS * TAP_BYTES)
    cfg = bytearray()
    wbase = bbase = i = 0
    bases = []
    tables = {}  # identical input tables (same levels) are loaded once
    for spec, width, height in runs:
        check_fits(spec, params, width, height)
        table = (np.asarray(spec["input_lut"], np.int64) & 0xFF).astype(np.uint8).tobytes()
        if table not in tables:
            tables[table] = len(inlut)
            inlut += table
        bases.append((i, tables[table]))
        for o in engine_ops(spec)[0]:
            if i >= params.max_layers:
                raise EngineFitError(f"{sum(len(engine_ops(r[0])[0]) for r in runs)} ops together, the engine "
                                     f"holds at most {params.max_layers}")
            co = o["cout"]
            groups = -(-co // P)
            for tws in o["blocks"] or [o["tap_weights"]]:  # parity ops: four blocks of `wblock` words
                for g in range(groups):
                    n = min(P, co - g * P)
                    for w in tws:
                        for ch in range(w.shape[1]):
                            lane = np.zeros(P, np.int64)
                            lane[:n] = w[g * P:g * P + n, ch]
                            wbytes += (lane & 0xFF).astype(np.uint8).tobytes()
            for t, (src, dy, dx, nch, res) in enumerate(o["taps"]):
                a = (i * MAX_TAPS + t) * TAP_BYTES
                taps_img[a:a + 3] = bytes([(dy & 7) | ((dx & 7) << 3) | (int(res) << 6), src, nch])
            bbytes += np.asarray(o["bias"], "<i4").tobytes()
            lbytes += (o["lut"] & 0xFF).astype(np.uint8).tobytes()
            flags = FLAG_RESIDUAL * o["residual"] | FLAG_GATED * o["gated"] | FLAG_RELU_IN * o["relu_in"] | \
                FLAG_PARITY * (o["blocks"] is not None)
            wblock = groups * sum(t[3] for t in o["taps"])
            cfg += co.to_bytes(2, "little") + bytes([groups, len(o["taps"])])
            cfg += wbase.to_bytes(2, "little") + bbase.to_bytes(2, "little")
            cfg += o["mult"].to_bytes(4, "little") + bytes([o["shift"], flags, o["out"], o["gshift"]])
            cfg += o["gmult"].to_bytes(2, "little") + bytes([o["delay"]]) + wblock.to_bytes(2, "little")
            cfg += bytes(CONFIG_BYTES - 21)
            wbase += wblock * (4 if o["blocks"] else 1)
            bbase += co
            i += 1
    if wbase > params.weight_depth:
        raise EngineFitError(f"weights need {wbase} words of {P} bytes together, the engine has {params.weight_depth}")
    if bbase > params.bias_depth:
        raise EngineFitError(f"biases need {bbase} entries together, the engine has {params.bias_depth}")
    if len(inlut) > INPUT_TABLE:
        raise EngineFitError(f"input tables need {len(inlut)} entries together, the engine has {INPUT_TABLE}")
    images = {T_WEIGHTS: bytes(wbytes), T_BIAS: bytes(bbytes), T_LUT: bytes(lbytes), T_TAPS: bytes(taps_img),
              T_CONFIG: bytes(cfg), T_INLUT: bytes(inlut)}
    if tilts:  # the sampler's penalties at temperature 1 (``integer.tilt_table``)
        images[T_TILT] = np.asarray(tilt_table(*tilts.pop()), "<u4").tobytes()
    return images, bases


def geometry(spec):
    """Register values a run needs besides the image size: ops, row-phase ops, input channels per pixel,
    conditioning channels per pixel (streamed per row, or filled from the feature memory) and their
    map, flush rows after the image (the largest op delay)."""
    ops, _, nrow, cond_map = engine_ops(spec)
    chans = spec["channels"] if "ops" in spec else spec["layers"][0]["in"]
    return dict(nops=len(ops), nrow=nrow, channels=chans, cond_channels=spec.get("cond_channels", 0) if "ops" in spec else 0,
                cond_map=cond_map or 0, flush=max(o["delay"] for o in ops))


def useful_macs_per_pixel(spec):
    """Multiplies per pixel by weights that are not forced to zero (zero-weight residual reads excluded)."""
    return sum(o["cout"] * t[3] for o in engine_ops(spec)[0] for t, w in zip(o["taps"], o["tap_weights"])
               if not (t[4] and not np.any(w)))


def dense_macs_per_pixel(spec):
    if "ops" in spec:  # every input as a full square kernel of its tap extent
        return sum(len(op["bias"]) * inp["weight"].shape[1] * (2 * int(np.abs(inp["taps"]).max(initial=0)) + 1) ** 2
                   for op in spec["ops"] for inp in op["inputs"])
    return sum(l["kernel"] ** 2 * l["in"] * l["out"] for l in spec["layers"])


def mac_beats_per_pixel(spec, lanes):
    """MAC beats per output pixel (a conditioner pass computes every op once per pixel of its map)."""
    return sum(-(-o["cout"] // lanes) * sum(t[3] for t in o["taps"]) for o in engine_ops(spec)[0])


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


V0_TAPS = ((-1, -1), (-1, 0), (-1, 1))                    # 3x3 vertical, first layer: rows above
V_TAPS = V0_TAPS + ((0, -1), (0, 0), (0, 1))              # later layers: rows above and this row
HA_TAPS, HB_TAPS = ((0, -1),), ((0, -1), (0, 0))          # 1x3 horizontal, first / later layers


def random_gated_spec(rng, hidden=4, n_layers=2, levels=5, head=6, cond_channels=0, wmax=40, bias_max=2000,
                      shift=(15, 19), gate_shift=(17, 21), channels=1, tilt_sigma=None):
    """A random integer Gated PixelCNN op graph with the structure ``export.quantize_gated`` writes
    (k = 3; vertical ops in the row phase, the link folded into the horizontal op), for tests.
    ``channels`` 3: RGB, the centre taps zeroed by the channel-group masks (``models.pixelcnn.layers``:
    output group o reads input group i at the current pixel iff i < o over x, i <= o over hidden maps).
    ``tilt_sigma`` (RGB): a luma tilt, its d from a first pixel op over the rectified conditioning map (or,
    without one, the image's pixels above and to the left), as ``cond_export.quantize_gray`` writes."""
    ch, C = hidden, channels

    def grp(k, n):
        return k * C // n

    def inp(m, taps, cin, cout, strict=None, per=None):
        w = rng.integers(-wmax, wmax + 1, (cout, cin, len(taps)))
        if C > 1 and strict is not None:  # group mask at the centre tap
            t = [k for k, tp in enumerate(taps) if tuple(tp) == (0, 0)]
            per = per or cout
            for o in range(cout):
                for i in range(cin):
                    gi, go = grp(i, cin), grp(o % per, per)
                    if gi > go or (gi == go and strict):
                        w[o, i, t] = 0
        return dict(map=m, taps=np.asarray(taps, np.int32), weight=w.astype(np.int8))

    def op(name, kind, phase, out, inputs, cout, residual="", relu_in=False):
        cond = [inp("cond", [(0, 0)], cond_channels, cout)] if cond_channels and kind == "gated" else []
        return dict(name=name, kind=kind, phase=phase, out=out, inputs=inputs + cond, residual=residual,
                    relu_in=relu_in, bias=rng.integers(-bias_max, bias_max + 1, cout).astype(np.int32),
                    multiplier=int(rng.integers(1 << 14, 1 << 15)), shift=int(rng.integers(*shift)),
                    lut=rng.integers(-128, 128, (2, 256) if kind == "gated" else 256).astype(np.int8),
                    gate_multiplier=int(rng.integers(1 << 14, 1 << 15)) if kind == "gated" else 0,
                    gate_shift=int(rng.integers(*gate_shift)) if kind == "gated" else 0)
    vops, pops = [], []
    for l in range(n_layers):
        v_in, cin, vt = ("x", C, V0_TAPS) if l == 0 else (f"v{l - 1}", ch, V_TAPS)
        if l < n_layers - 1:
            vops.append(op(f"V{l}", "gated", "row", f"v{l}", [inp(v_in, vt, cin, 2 * ch)], 2 * ch))
        hin = [inp("x", V0_TAPS + HA_TAPS + (((0, 0),) if C > 1 else ()), C, 2 * ch, True, ch)] if l == 0 else \
            [inp(f"h{l - 1}", HB_TAPS, ch, 2 * ch, False, ch), inp(v_in, vt, ch, 2 * ch)]
        pops.append(op(f"H{l}", "gated", "pixel", "g", hin, 2 * ch))
        pops.append(op(f"Hout{l}", "conv", "pixel", f"h{l}", [inp("g", [(0, 0)], ch, ch, False)], ch,
                       residual="" if l == 0 else f"h{l - 1}"))
    pops.append(op("head1", "conv", "pixel", "head", [inp(f"h{n_layers - 1}", [(0, 0)], ch, head, False)], head,
                   relu_in=True))
    pops.append(op("head2", "conv", "pixel", "logits", [inp("head", [(0, 0)], head, C * levels, False)], C * levels))
    if tilt_sigma:
        src = inp("cond", [(0, 0)], cond_channels, 1) if cond_channels else inp("x", V0_TAPS + HA_TAPS, C, 1)
        pops.insert(0, op("tilt", "conv", "pixel", TILT_MAP, [src], 1, relu_in=True))
    inlut = np.floor((2 * np.arange(levels) / (levels - 1) - 1) * 127 + 0.5).astype(np.int8)
    return dict(format="zippix-pixelcnn-gated-int8", architecture="gated", channels=C, levels=levels,
                input_lut=inlut, logit_scale=0.05, cond_channels=cond_channels, ops=vops + pops,
                tilt_sigma=float(tilt_sigma or 0.0))


def conditioner_delays(kernels, from_image=True):
    """Row delays of a chain of non-causal convs (kernel k_l, each over the previous one's output): the
    first reads the image (its row r arrives after the row phase: delay 1 + k // 2) or the conditioning
    map (filled before it: k // 2); each later op k_l // 2 more than the one before."""
    d, out = (1 if from_image else 0), []
    for k in kernels:
        d += k // 2
        out.append(d)
    return out


def random_conditioner_spec(rng, kernels=(3, 3), hidden=4, levels=5, cond_channels=0, parity=False, wmax=40,
                            bias_max=2000, shift=(19, 22)):
    """A random conditioner pass (op graph, architecture 'conditioner'), for tests: a chain of
    non-causal k x k convs (all taps, ReLU-like random tables) over the image (levels, ``cond_channels``
    = 0) or over a conditioning map filled from the feature memory; ``parity``: first a 1x1 transposed-
    conv op with four weight blocks (the map upsampled by 2)."""
    ks = ([1] if parity else []) + list(kernels)
    delays = conditioner_delays(ks, from_image=not cond_channels)
    src, cin = ("cond", cond_channels) if cond_channels else ("x", 1)
    ops = []
    for i, (k, d) in enumerate(zip(ks, delays)):
        c = k // 2
        taps = np.asarray([(dy, dx) for dy in range(-c, c + 1) for dx in range(-c, c + 1)], np.int32)
        nb = 4 if parity and i == 0 else 1
        ops.append(dict(name=f"C{i}", kind="conv", phase="row", out=f"c{i}", delay=d, parity=nb == 4,
                        inputs=[dict(map=src, taps=taps, weight=rng.integers(-wmax, wmax + 1, (hidden, cin, nb * len(taps))
                                                                             ).astype(np.int8))],
                        residual="", relu_in=False, bias=rng.integers(-bias_max, bias_max + 1, hidden).astype(np.int32),
                        multiplier=int(rng.integers(1 << 14, 1 << 15)), shift=int(rng.integers(*shift)),
                        lut=rng.integers(-128, 128, 256).astype(np.int8), gate_multiplier=0, gate_shift=0))
        src, cin = f"c{i}", hidden
    inlut = np.floor((2 * np.arange(levels) / (levels - 1) - 1) * 127 + 0.5).astype(np.int8)
    return dict(format="zippix-pixelcnn-gated-int8", architecture="conditioner", channels=0 if cond_channels else 1,
                levels=levels, input_lut=inlut, logit_scale=1.0, cond_channels=cond_channels, ops=ops)


def input_stream(spec, x, cond=None, sample=False, feat=False):
    """Bytes a run streams in: per row, the conditioning map's bytes of the row (pixel-major, int8; op
    graphs with ``cond_channels``, unless ``feat``: the engine fills that map from its feature memory),
    then (likelihood) the row's pixels' input bytes (``x``: (N, C, H, W) levels; sample mode: channels
    1.. of ``x`` only, the sampled channel 0 is the engine's)."""
    x = np.asarray(x, np.int64)
    n, C, H, W = x.shape
    cc = spec.get("cond_channels", 0) if "ops" in spec and not feat else 0
    px = x[:, 1:] if sample else x
    out = bytearray()
    for k in range(n):
        for i in range(H):
            if cc:
                out += (np.asarray(cond[k, :, i], np.int64).T.reshape(-1) & 0xFF).astype(np.uint8).tobytes()
            out += px[k, :, i].T.reshape(-1).astype(np.uint8).tobytes()
    return bytes(out)


def bounds_stream(bounds):
    """Bytes a sample run with the gray exclusion streams in (REG_SUBPIX bit 8): per pixel (raster order, image
    after image) the luma bounds lo, hi of its known gray value, 3 bytes each, little-endian. ``bounds``
    (N, 2, H, W) from ``integer.luma_bounds``."""
    b = np.asarray(bounds, np.int64)
    if b.min() < 0 or b.max() >= 1 << 24:
        raise ValueError("luma bounds must be in 0..2**24-1")
    px = b.transpose(0, 2, 3, 1).reshape(-1, 2)
    return bytes(np.stack([(px >> (8 * k)) & 0xFF for k in range(3)], -1).reshape(-1).astype(np.uint8))


def word_bytes(target, params: EngineParams):
    return {T_WEIGHTS: params.lanes, T_BIAS: 4, T_CONFIG: CONFIG_BYTES, T_TAPS: TAP_BYTES, T_TILT: 4}.get(target, 1)


def load_stream(images, params: EngineParams):
    """Bytes that load ``images`` (from ``pack``) in mode 0: per target ``target, words u16 LE, data``."""
    out = bytearray()
    for target, blob in images.items():
        n = len(blob) // word_bytes(target, params)
        assert n * word_bytes(target, params) == len(blob) and n < 65536
        out += bytes([target]) + n.to_bytes(2, "little") + blob
    return bytes(out)
