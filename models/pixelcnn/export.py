"""Quantise a trained StreamPixelCNN to int8 and write / read / validate the hardware export ``.npz``.

Post-training quantisation (Jacob et al., arXiv 1712.05877 §3): per-layer symmetric int8 weights
(scale max|W*mask|/127), int32 biases at the accumulator scale, activation scales calibrated on
training images (high percentile of the float activations), multiplier+shift requantisation, and
256-entry int8 lookup tables that apply the activation and rescale to the next layer's input scale.
The file layout is documented in docs/pixelcnn-models.md and in ``FORMAT`` below.
"""
import math

import numpy as np
import torch
import torch.nn.functional as F

from . import integer
from .integer import quantize_multiplier
from .layers import make_mask

FORMAT = "zippix-pixelcnn-int8"
VERSION = 1
LAYER_KEYS = ("type", "kernel", "mask", "in", "out", "weight", "bias", "multiplier", "shift", "lut",
              "act", "residual")


class ExportError(ValueError):
    """The export file is malformed or does not match what the caller expects."""


def _rhu(v):
    return np.floor(np.asarray(v, np.float64) + 0.5)


def _act_lut(act, s_in, s_out):
    """int8 LUT: y (scale s_in) -> round_half_up(act(y*s_in) / s_out), saturated."""
    y = np.arange(-128, 128, dtype=np.float64) * s_in
    a = {"relu": np.maximum(y, 0), "none": y, "tanh": np.tanh(y),
         "sigmoid": 1 / (1 + np.exp(-y))}[act]
    return np.clip(_rhu(a / s_out), -128, 127).astype(np.int8)


@torch.no_grad()
def _float_acts(model, x):
    """Float pre-activations of every layer and the residual stream, in the export's layer order."""
    model = model.double().eval()
    h0 = model.scale(torch.from_numpy(x))
    pre, stream = [], []
    z = model.first(h0)
    pre.append(z)
    h = F.relu(z)
    stream.append(h)
    for conv in model.res:
        z = conv(h)
        pre.append(z)
        h = h + F.relu(z)
        stream.append(h)
    z = model.head1(h)
    pre.append(z)
    z2 = model.head2(F.relu(z))
    pre.append(z2)
    return pre, stream


def _convs(model):
    return [model.first, *model.res, model.head1, model.head2]


def calibrate(model, calib, percentile=99.99, stream_percentile=99.0):
    """Activation scales from float activations on calibration images: per layer the accumulator
    output scale ``s_z`` (percentile of ReLU(z), or of |z| for the logits / 127) and one residual
    stream scale ``s_h`` (max of the stream / 127)."""
    pre, stream = _float_acts(model, calib)
    s_z = []
    for li, z in enumerate(pre):
        t = z.abs() if li == len(pre) - 1 else F.relu(z)
        s_z.append(max(float(np.percentile(t.numpy(), percentile)), 1e-8) / 127.0)
    s_h = max(float(np.percentile(s.abs().numpy(), stream_percentile)) for s in stream) / 127.0
    return {"s_z": s_z, "s_h": s_h, "percentile": percentile, "stream_percentile": stream_percentile}


def _out_scales(model, scales):
    nres = len(model.res)
    return [scales["s_h"] if li <= nres else scales["s_z"][li] for li in range(len(_convs(model)))]


def _fq(v, s):
    """Fake quantisation to the int8 grid of scale s with round-half-up; straight-through gradient."""
    q = torch.clamp(torch.floor(v / s + 0.5), -128, 127) * s
    return v + (q - v).detach()


def forward_fake_quant(model, x, scales):
    """Float simulation of the integer forward pass (quantisation-aware training), logits (N,C,L,H,W)."""
    convs, outs = _convs(model), _out_scales(model, scales)
    nres = len(model.res)
    a = model.scale(x)
    for li, conv in enumerate(convs):
        wm = conv.masked_weight()
        s_w = wm.detach().abs().max().clamp_min(1e-12) / 127.0
        wq = wm + (torch.round(wm / s_w) * s_w - wm).detach()
        z = _fq(F.conv2d(a, wq, conv.bias, padding=conv.padding), scales["s_z"][li])
        y = _fq(F.relu(z), outs[li]) if li < len(convs) - 1 else z
        a = _fq(a + y, outs[li]) if 0 < li <= nres else y
    n, _, h, w = a.shape
    return a.view(n, model.channels, model.levels, h, w)


def qat_finetune(model, ds, scales, epochs=10, lr=5e-4, batch_size=64, seed=0, log=print):
    """Quantisation-aware fine-tuning with fixed activation scales (straight-through estimator)."""
    from .models import nll_bits
    torch.manual_seed(seed)
    rng = np.random.RandomState(seed)
    model = model.float().train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * -(-len(ds.train) // batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 * (1 + math.cos(math.pi * min(1.0, t / steps))))
    dims = int(np.prod(ds.shape))
    for ep in range(epochs):
        perm = rng.permutation(len(ds.train))
        for b in range(0, len(perm), batch_size):
            xb = torch.from_numpy(ds.train[perm[b:b + batch_size]])
            loss = (nll_bits(forward_fake_quant(model, xb, scales), xb) / dims).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        with torch.no_grad():
            xt = torch.from_numpy(ds.test)
            te = float((nll_bits(forward_fake_quant(model, xt, scales), xt) / dims).mean())
        log(f"QAT epoch {ep + 1}/{epochs}: fake-quant test bpd {te:.4f}")
    return model.eval()


@torch.no_grad()
def quantize_model(model, scales, meta=None):
    """StreamPixelCNN (float) + activation scales (from ``calibrate``) -> integer spec dict."""
    model = model.double().eval()
    convs, outs = _convs(model), _out_scales(model, scales)
    acts = ["relu"] * (len(convs) - 1) + ["none"]
    s_in = 1.0 / 127.0
    layers = []
    for li, (conv, act) in enumerate(zip(convs, acts)):
        wm = conv.masked_weight().numpy()
        s_w = max(np.abs(wm).max(), 1e-12) / 127.0
        w = np.clip(np.round(wm / s_w), -127, 127).astype(np.int8)
        b = np.round(conv.bias.numpy() / (s_in * s_w))
        s_z, s_out = scales["s_z"][li], outs[li]
        mult, shift = quantize_multiplier(s_in * s_w / s_z)
        layers.append(dict(type="conv", kernel=conv.kernel_size[0], mask=conv.kind, **{"in": conv.in_channels},
                           out=conv.out_channels,
                           weight=w, bias=np.clip(b, integer.INT32_MIN, integer.INT32_MAX).astype(np.int32),
                           multiplier=mult, shift=shift, lut=_act_lut(act, s_z, s_out), act=act,
                           residual=0 < li <= len(model.res), groups=conv.groups_rgb,
                           scale_in=s_in, scale_weight=s_w, scale_acc_out=s_z, scale_out=s_out))
        s_in = s_out
    spec = dict(format=FORMAT, version=VERSION, channels=model.channels, levels=model.levels,
                input_lut=model.in_lut.numpy().astype(np.int8), input_scale=1.0 / 127.0,
                logit_scale=layers[-1]["scale_out"], layers=layers)
    spec.update(meta or {})
    return spec


def save_export(path, spec):
    """Write the spec as a flat .npz (no pickles; strings as numpy unicode scalars)."""
    d = {"format": np.str_(FORMAT), "version": np.int32(VERSION), "channels": np.int32(spec["channels"]),
         "levels": np.int32(spec["levels"]), "height": np.int32(spec["height"]), "width": np.int32(spec["width"]),
         "input_lut": np.asarray(spec["input_lut"], np.int8), "input_scale": np.float64(spec["input_scale"]),
         "logit_scale": np.float64(spec["logit_scale"]), "n_layers": np.int32(len(spec["layers"])),
         "dataset": np.str_(spec.get("dataset", "")),
         "float_bits_per_dim": np.float64(spec.get("float_bits_per_dim", np.nan)),
         "int_bits_per_dim": np.float64(spec.get("int_bits_per_dim", np.nan))}
    for i, l in enumerate(spec["layers"]):
        p = f"layer{i}_"
        d[p + "type"] = np.str_(l["type"])
        d[p + "mask"] = np.str_(l["mask"])
        d[p + "act"] = np.str_(l["act"])
        for k in ("kernel", "in", "out", "multiplier", "shift", "groups"):
            d[p + k] = np.int32(l[k])
        d[p + "residual"] = np.bool_(l["residual"])
        d[p + "weight"] = np.asarray(l["weight"], np.int8)
        d[p + "bias"] = np.asarray(l["bias"], np.int32)
        d[p + "lut"] = np.asarray(l["lut"], np.int8)
        for k in ("scale_in", "scale_weight", "scale_acc_out", "scale_out"):
            d[p + k] = np.float64(l[k])
    np.savez_compressed(path, **d)


def _read_common(z, spec, int_keys):
    """The fields every export format has: ``int_keys``, the input LUT, the scales and the dataset name."""
    for k in int_keys:
        spec[k] = int(_need(z, k, np.int32))
    spec["input_lut"] = _need(z, "input_lut", np.int8, (spec["levels"],))
    for k in ("input_scale", "logit_scale", "float_bits_per_dim", "int_bits_per_dim"):
        spec[k] = float(_need(z, k, np.float64))
    spec["dataset"] = _need(z, "dataset", "str")


def _need(z, key, dtype, shape=None, what=""):
    if key not in z:
        raise ExportError(f"{what}missing key {key!r}")
    v = z[key]
    if dtype == "str":
        if v.dtype.kind != "U":
            raise ExportError(f"{what}{key!r} must be a string, got dtype {v.dtype}")
        return str(v)
    if v.dtype != np.dtype(dtype):
        raise ExportError(f"{what}{key!r} must have dtype {np.dtype(dtype)}, got {v.dtype}")
    if shape is not None and v.shape != tuple(shape):
        raise ExportError(f"{what}{key!r} must have shape {tuple(shape)}, got {v.shape}")
    return v if v.ndim else v.item()


def load_export(path, max_channels=None, kernels=None):
    """Read and validate an export file -> spec dict (as quantize_model returns). Raises ExportError
    with a clear message on any mismatch; optional hardware limits: ``max_channels`` (feature-map
    channels: every layer input and every output except the logits layer's channels*levels)
    and ``kernels`` (allowed kernel sizes)."""
    try:
        with np.load(path, allow_pickle=False) as npz:  # read everything now: no open file on errors
            z = {key: npz[key] for key in npz.files}
    except FileNotFoundError:
        raise ExportError(f"export file {path!r} not found") from None
    except Exception as e:
        raise ExportError(f"{path!r} is not a readable .npz: {e}") from None
    fmt = _need(z, "format", "str")
    if fmt == GRAPH_FORMAT:
        return load_graph_export(z)
    if fmt != FORMAT:
        raise ExportError(f"format is {fmt!r}, expected {FORMAT!r}")
    ver = _need(z, "version", np.int32)
    if ver != VERSION:
        raise ExportError(f"export version {ver} is not supported (this reader handles version {VERSION})")
    spec = {"format": fmt, "version": ver}
    _read_common(z, spec, ("channels", "levels", "height", "width", "n_layers"))
    C, L = spec["channels"], spec["levels"]
    layers, cin = [], C
    for i in range(spec["n_layers"]):
        p, w = f"layer{i}_", f"layer {i}: "
        l = {"type": _need(z, p + "type", "str", what=w), "mask": _need(z, p + "mask", "str", what=w),
             "act": _need(z, p + "act", "str", what=w)}
        for k in ("kernel", "in", "out", "multiplier", "shift", "groups"):
            l[k] = int(_need(z, p + k, np.int32, what=w))
        l["residual"] = bool(_need(z, p + "residual", np.bool_, what=w))
        k, ci, co = l["kernel"], l["in"], l["out"]
        if l["type"] != "conv":
            raise ExportError(f"{w}unknown layer type {l['type']!r}")
        if l["mask"] not in ("A", "B", "none"):
            raise ExportError(f"{w}mask must be 'A', 'B' or 'none', got {l['mask']!r}")
        if k < 1 or k % 2 == 0:
            raise ExportError(f"{w}kernel must be odd, got {k}")
        if ci != cin:
            raise ExportError(f"{w}in channels {ci} != previous layer's out channels {cin}")
        l["weight"] = _need(z, p + "weight", np.int8, (co, ci, k, k), w)
        l["bias"] = _need(z, p + "bias", np.int32, (co,), w)
        l["lut"] = _need(z, p + "lut", np.int8, (256,), w)
        if not (1 <= l["multiplier"] < 2 ** 31 and 1 <= l["shift"] <= 62):
            raise ExportError(f"{w}multiplier {l['multiplier']} / shift {l['shift']} out of range")
        if l["residual"] and ci != co:
            raise ExportError(f"{w}residual layer needs in == out channels, got {ci} -> {co}")
        mask = make_mask(co, ci, k, l["mask"], l["groups"]).numpy()
        if np.any(l["weight"][mask == 0]):
            raise ExportError(f"{w}non-zero weights at taps removed by mask {l['mask']}")
        last = i == spec["n_layers"] - 1  # the logits layer has channels*levels outputs
        if max_channels is not None and max(ci, 0 if last else co) > max_channels:
            raise ExportError(f"{w}{ci}->{co} channels exceed the hardware limit of {max_channels}")
        if kernels is not None and k not in kernels:
            raise ExportError(f"{w}kernel {k} not supported by the hardware (supports {tuple(kernels)})")
        for s in ("scale_in", "scale_weight", "scale_acc_out", "scale_out"):
            l[s] = float(z[p + s]) if p + s in z else float("nan")
        layers.append(l)
        cin = co
    if cin != C * L:
        raise ExportError(f"last layer has {cin} channels, expected channels*levels = {C * L}")
    spec["layers"] = layers
    return spec


def export_checkpoint(ckpt, out, calib_n=500, percentile=99.99, stream_percentile=99.0, qat_epochs=30,
                      qat_ckpt=None, log=print):
    """Checkpoint of a trained StreamPixelCNN -> (optional QAT fine-tune) -> validated .npz export.
    Returns (spec, float bpd of the checkpoint, float bpd after QAT, integer bpd)."""
    from . import data
    from .train import evaluate, load_checkpoint, save_checkpoint
    model, ck = load_checkpoint(ckpt)
    if type(model).__name__ != "StreamPixelCNN":
        raise ExportError("only the 'stream' model (plain masked convs) can be exported to integer")
    ds = data.load(ck["meta"]["dataset"])
    calib = ds.train[np.random.RandomState(0).permutation(len(ds.train))[:calib_n]]
    fb, _ = evaluate(model.double(), ds.test)
    scales = calibrate(model, calib, percentile, stream_percentile)
    if qat_epochs:
        model = qat_finetune(model, ds, scales, qat_epochs, log=log)
        if qat_ckpt:
            save_checkpoint(qat_ckpt, model.float(), None, ck["epoch"], dict(ck["meta"], qat_scales=scales,
                                                                            qat_epochs=qat_epochs))
    fq, _ = evaluate(model.double(), ds.test)
    spec = quantize_model(model, scales, dict(dataset=ds.name, height=ds.shape[1], width=ds.shape[2],
                                              float_bits_per_dim=fb))
    spec["int_bits_per_dim"] = integer.evaluate_int(spec, ds.test)
    save_export(out, spec)
    spec = load_export(out)
    return spec, fb, fq, spec["int_bits_per_dim"]


def main(argv=None):
    import argparse
    p = argparse.ArgumentParser(description="Quantise a trained 'stream' PixelCNN checkpoint to the int8 export",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("out", help="output .npz")
    p.add_argument("--calib", type=int, default=500, help="training images used for calibration")
    p.add_argument("--percentile", type=float, default=99.99, help="activation range percentile")
    p.add_argument("--stream-percentile", type=float, default=99.0, help="residual-stream range percentile")
    p.add_argument("--qat-epochs", type=int, default=30, help="quantisation-aware fine-tuning epochs (0: PTQ)")
    p.add_argument("--qat-checkpoint", default=None, help="save the QAT fine-tuned float model here")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    spec, fb, fq, ib = export_checkpoint(a.checkpoint, a.out, a.calib, a.percentile, a.stream_percentile,
                                         a.qat_epochs, a.qat_checkpoint)
    print(f"{a.out}: {len(spec['layers'])} layers; bits/dim: float {fb:.4f}, float after QAT {fq:.4f}, "
          f"integer {ib:.4f} (integer - float {ib - fb:+.4f})")


def committed_export_path(dataset="digits", kind="stream"):
    """Path of the committed int8 export for ``dataset``: ``kind`` 'stream' (plain masked net: digits,
    faces) or 'gated' (Gated PixelCNN: digits, patches)."""
    import glob
    import os
    d = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")
    p = os.path.join(d, f"{kind}_{dataset}_int8.npz")
    if not os.path.exists(p):
        have = ", ".join(sorted(os.path.basename(f)[len(kind) + 1:-len("_int8.npz")]
                                for f in glob.glob(os.path.join(d, f"{kind}_*_int8.npz"))))
        raise ExportError(f"no committed {kind} integer export for dataset {dataset!r} (have {have})")
    return p


if __name__ == "__main__":
    main()



# --- Gated PixelCNN (vertical + horizontal stacks, no blind spot) -> int8 op graph
#
# Per gated layer l (k x k, ``models.GatedPixelCNN``) three ops (``integer`` op graphs):
#   V_l  (row phase, gated):  vertical conv over v_{l-1} (layer 0: x, mask V0) [+ cond 1x1] -> map v_l
#   H_l  (pixel, gated):      horizontal 1 x k conv over h_{l-1} (layer 0: x, mask HA) + the
#                             vertical->horizontal 1x1 link applied to the vertical pre-activation,
#                             folded into the same accumulator: v2h(V(v) + cv) = (W_v2h W_V)(v) +
#                             W_v2h cv + ..., a k x k conv over v_{l-1} with the vertical mask (exact in
#                             float: nothing nonlinear between V and the link) [+ cond 1x1] -> map g
#   Hout_l (pixel, conv):     1x1 over g, identity table to the stream scale, + h_{l-1} (l > 0) -> h_l
# then head1 (1x1 over relu(h_{L-1}), ReLU) and head2 (1x1 -> logits). The last layer's v is unused
# and not computed. Scales: post-training calibration (high percentiles of the float activations);
# every input of an op gets its own weight scale onto one accumulator scale.

GRAPH_FORMAT = "zippix-pixelcnn-gated-int8"
GRAPH_VERSION = 1  # op graphs with a luma tilt (``tilt_sigma``) are written as version 2
GRAPH_VERSIONS = (1, 2)
GATE_SCALE = 1.0 / 127.0  # tanh / sigmoid table outputs


@torch.no_grad()
def gated_activations(model, x, cond=None):
    """Float intermediates of a GatedPixelCNN in the export's op order (float64 tensors)."""
    from .layers import gate
    model = model.double().eval()
    v = h = model.scale(torch.as_tensor(np.asarray(x)))
    cond = None if cond is None else torch.as_tensor(np.asarray(cond, np.float64))
    layers = []
    for layer in model.layers:
        vp, hp = layer.v(v), layer.h(h)
        if layer.cond is not None:
            cv, chh = layer.cond(cond).chunk(2, dim=1)
            vp, hp = vp + cv, hp + chh
        hp = hp + layer.v2h(vp)
        g = gate(hp)
        hout = layer.h_out(g)
        h = hout if layer.first else hout + h
        v = gate(vp)
        layers.append(dict(vp=vp, v=v, hp=hp, g=g, hout=hout, h=h))
    z1 = model.head1(F.relu(h))
    return dict(layers=layers, z1=z1, logits=model.head2(F.relu(z1)))


def centred_logit_weight(w, channels, levels):
    """A logit layer's (masked) weight (channels * levels, ...) less, per image channel, its mean over the levels."""
    wv = w.view(channels, levels, -1)
    return (wv - wv.mean(1, keepdim=True)).view_as(w)


@torch.no_grad()
def centre_logits(model):
    """Subtract, per image channel, the mean over its levels from the logit layer's weights and biases (in
    place; returns the model). Adding one value to all logits of a sub-pixel leaves its softmax unchanged, so
    the float model's probabilities do not change, but the logits' range (the int8 logit scale) shrinks: with
    256 levels it halves the quantisation loss of the RGB patches model. Idempotent; group masks stay zero."""
    h2 = model.head2
    C, L = model.channels, model.levels
    h2.weight.copy_(centred_logit_weight(h2.weight * h2.mask, C, L))
    b = h2.bias.view(C, L)
    h2.bias.copy_((b - b.mean(1, keepdim=True)).view(-1))
    return model


ACT_PERCENTILE, STREAM_PERCENTILE = 99.99, 99.9  # calibration: |activation| percentile per int8 range


def calibrate_gated(model, calib, cond=None, percentile=ACT_PERCENTILE, stream_percentile=STREAM_PERCENTILE,
                    max_pre=8.0):
    """Activation scales (value per int8 step) of every map of the gated export from calibration
    images: gate pre-activations clipped at ``max_pre`` (tanh/sigmoid are flat beyond), one scale for
    the whole residual stream h."""
    a = gated_activations(model, calib, cond)

    def pct(t, p=percentile):
        return max(float(np.percentile(np.abs(t.numpy()), p)), 1e-8) / 127.0
    per = [dict(vp=min(pct(l["vp"]), max_pre / 127), v=pct(l["v"]), hp=min(pct(l["hp"]), max_pre / 127),
                g=pct(l["g"]), hout=pct(l["hout"])) for l in a["layers"]]
    s_hl = [pct(l["h"], stream_percentile) for l in a["layers"]]
    return {"layers": per, "h": max(s_hl), "h_layers": s_hl, "z1": pct(F.relu(a["z1"])), "logits": pct(a["logits"]),
            "percentile": percentile, "stream_percentile": stream_percentile}


def _mask_taps(mask):
    """(dy, dx) of the kernel positions a (k, k) boolean mask keeps, raster order."""
    k = mask.shape[-1]
    return [(ky - k // 2, kx - k // 2) for ky in range(k) for kx in range(k) if mask[ky, kx]]


def _quant_op(name, kind, phase, out, inputs, bias, s_z, s_out=None, act="none", s_gate=None,
              residual="", relu_in=False):
    """Float op -> integer op dict. ``inputs``: list of (map, float weight (O, C, k, k), keep mask
    (k, k), input scale); inputs on the same map are merged (weights summed, taps united)."""
    merged = {}
    for m, w, keep, s in inputs:
        if m in merged:
            w0, k0, s0 = merged[m]
            assert s0 == s and w0.shape == w.shape
            merged[m] = (w0 + w, k0 | keep, s)
        else:
            merged[m] = (np.asarray(w, np.float64), np.asarray(keep, bool), s)
    s_acc = max(max(float(np.abs(w).max()) * s for w, _, s in merged.values()), 1e-12) / 127.0
    ins = []
    for m, (w, keep, s) in merged.items():
        taps = _mask_taps(keep)
        c = w.shape[-1] // 2
        wt = np.stack([w[:, :, dy + c, dx + c] for dy, dx in taps], axis=-1)
        ins.append(dict(map=m, taps=np.asarray(taps, np.int32).reshape(-1, 2),
                        weight=np.clip(np.round(wt * s / s_acc), -127, 127).astype(np.int8)))
    b = np.clip(np.round(np.asarray(bias, np.float64) / s_acc), integer.INT32_MIN, integer.INT32_MAX)
    mult, shift = quantize_multiplier(s_acc / s_z)
    op = dict(name=name, kind=kind, phase=phase, out=out, inputs=ins, bias=b.astype(np.int32),
              multiplier=mult, shift=shift, residual=residual, relu_in=bool(relu_in),
              gate_multiplier=0, gate_shift=0, scale_acc=s_acc, scale_z=s_z)
    if kind == "gated":
        op["lut"] = np.stack([_act_lut("tanh", s_z, GATE_SCALE), _act_lut("sigmoid", s_z, GATE_SCALE)])
        op["gate_multiplier"], op["gate_shift"] = quantize_multiplier(GATE_SCALE * GATE_SCALE / s_gate)
        op["scale_out"] = s_gate
    else:
        op["lut"] = _act_lut(act, s_z, s_out)
        op["scale_out"] = s_out
    return op


@torch.no_grad()
def quantize_gated(model, scales, meta=None, cond_scale=None, stream="shared"):
    """GatedPixelCNN (float) + ``calibrate_gated`` scales -> integer op-graph spec. ``stream``: ``shared``, one
    int8 scale for the whole residual stream (``Hout_l`` adds h_{l-1} after its table); ``per_layer``, each
    h_l its own scale (``Hout_l`` takes h_{l-1} as a second 1x1 input with identity weights, so the sum is
    requantised onto h_l's scale: more MACs, finer steps where the stream is still small)."""
    if stream not in ("shared", "per_layer"):
        raise ExportError(f"stream must be 'shared' or 'per_layer', got {stream!r}")
    model = model.double().eval()
    L = len(model.layers)
    s_x = 1.0 / 127.0
    s_h = scales["h_layers"] if stream == "per_layer" else [scales["h"]] * L
    ops_v, ops_px = [], []
    for l, layer in enumerate(model.layers):
        sc = scales["layers"][l]
        v_in, s_vin = ("x", s_x) if l == 0 else (f"v{l - 1}", scales["layers"][l - 1]["v"])
        h_in, s_hin = ("x", s_x) if l == 0 else (f"h{l - 1}", s_h[l - 1])
        wv, bv = layer.v.masked_weight().numpy(), layer.v.bias.numpy()
        keep_v = layer.v.mask.numpy().any(axis=(0, 1))
        link = layer.v2h.weight.numpy()[:, :, 0, 0]
        wc = np.einsum("om,mckl->ockl", link, wv)
        bh = layer.h.bias.numpy() + layer.v2h.bias.numpy() + link @ bv
        v_inputs = [(v_in, wv, keep_v, s_vin)]
        h_inputs = [(h_in, layer.h.masked_weight().numpy(), layer.h.mask.numpy().any(axis=(0, 1)), s_hin),
                    (v_in, wc, keep_v, s_vin)]
        if layer.cond is not None:
            if cond_scale is None:
                raise ExportError("a conditioned model needs the conditioning map's int8 scale")
            n2 = 2 * layer.ch
            wcond = layer.cond.weight.numpy()
            ones = np.ones((1, 1), bool)
            v_inputs.append(("cond", wcond[:n2], ones, cond_scale))
            h_inputs.append(("cond", wcond[n2:] + np.einsum("om,mckl->ockl", link, wcond[:n2]), ones, cond_scale))
            bv = bv + layer.cond.bias.numpy()[:n2]
            bh = bh + layer.cond.bias.numpy()[n2:] + link @ layer.cond.bias.numpy()[:n2]
        if l < L - 1:  # the last layer's vertical output feeds nothing
            ops_v.append(_quant_op(f"V{l}", "gated", "row", f"v{l}", v_inputs, bv, sc["vp"], s_gate=sc["v"]))
        ops_px.append(_quant_op(f"H{l}", "gated", "pixel", "g", h_inputs, bh, sc["hp"], s_gate=sc["g"]))
        hout_inputs = [("g", layer.h_out.masked_weight().numpy(), np.ones((1, 1), bool), sc["g"])]
        if stream == "per_layer" and l > 0:
            eye = np.eye(layer.ch)[:, :, None, None]
            hout_inputs.append((f"h{l - 1}", eye, np.ones((1, 1), bool), s_h[l - 1]))
            ops_px.append(_quant_op(f"Hout{l}", "conv", "pixel", f"h{l}", hout_inputs, layer.h_out.bias.numpy(),
                                    s_h[l], s_h[l], "none"))
        else:
            ops_px.append(_quant_op(f"Hout{l}", "conv", "pixel", f"h{l}", hout_inputs, layer.h_out.bias.numpy(),
                                    sc["hout"], s_h[l], "none", residual="" if l == 0 else f"h{l - 1}"))
    ops_px.append(_quant_op("head1", "conv", "pixel", "head",
                            [(f"h{L - 1}", model.head1.masked_weight().numpy(), np.ones((1, 1), bool), s_h[L - 1])],
                            model.head1.bias.numpy(), scales["z1"], scales["z1"], "relu", relu_in=True))
    ops_px.append(_quant_op("head2", "conv", "pixel", "logits",
                            [("head", model.head2.masked_weight().numpy(), np.ones((1, 1), bool), scales["z1"])],
                            model.head2.bias.numpy(), scales["logits"], scales["logits"], "none"))
    spec = dict(format=GRAPH_FORMAT, version=GRAPH_VERSION, architecture="gated", channels=model.channels,
                levels=model.levels, input_lut=_input_lut(model.levels), input_scale=s_x,
                logit_scale=scales["logits"], cond_channels=model.cond_ch, ops=ops_v + ops_px)
    spec.update(meta or {})
    return spec


def _input_lut(levels):
    from .models import input_lut
    return input_lut(levels).numpy().astype(np.int8)


OP_INT_KEYS = ("multiplier", "shift", "gate_multiplier", "gate_shift")
OP_STR_KEYS = ("name", "kind", "phase", "out", "residual")


def save_graph_export(path, spec):
    """Write an op-graph spec as a flat .npz (no pickles)."""
    np.savez_compressed(path, **graph_arrays(spec))


def graph_arrays(spec):
    """The flat arrays of an op-graph spec (``save_graph_export``; bundles prefix their keys)."""
    tilt = float(spec.get("tilt_sigma") or 0.0)
    d = {"format": np.str_(GRAPH_FORMAT), "version": np.int32(2 if tilt else GRAPH_VERSION),
         "architecture": np.str_(spec.get("architecture", "gated"))}
    if tilt:
        d["tilt_sigma"] = np.float64(tilt)
    for k in ("channels", "levels", "height", "width", "cond_channels"):
        d[k] = np.int32(spec.get(k, 0))
    d["input_lut"] = np.asarray(spec["input_lut"], np.int8)
    for k in ("input_scale", "logit_scale", "float_bits_per_dim", "int_bits_per_dim"):
        d[k] = np.float64(spec.get(k, np.nan))
    d["dataset"] = np.str_(spec.get("dataset", ""))
    d["n_ops"] = np.int32(len(spec["ops"]))
    for i, op in enumerate(spec["ops"]):
        p = f"op{i}_"
        for k in OP_STR_KEYS:
            d[p + k] = np.str_(op.get(k, ""))
        for k in OP_INT_KEYS:
            d[p + k] = np.int32(op[k])
        d[p + "relu_in"] = np.bool_(op.get("relu_in", False))
        d[p + "delay"] = np.int32(op.get("delay", 0))
        d[p + "parity"] = np.bool_(op.get("parity", False))
        d[p + "bias"] = np.asarray(op["bias"], np.int32)
        d[p + "lut"] = np.asarray(op["lut"], np.int8)
        d[p + "n_inputs"] = np.int32(len(op["inputs"]))
        for k, inp in enumerate(op["inputs"]):
            q = f"{p}in{k}_"
            d[q + "map"] = np.str_(inp["map"])
            d[q + "taps"] = np.asarray(inp["taps"], np.int32).reshape(-1, 2)
            d[q + "weight"] = np.asarray(inp["weight"], np.int8)
    return d


def load_graph_export(z, what=""):
    """Validate the arrays ``z`` of an op-graph export -> spec dict (ExportError on any mismatch)."""
    spec = {"format": GRAPH_FORMAT, "version": _need(z, "version", np.int32),
            "architecture": _need(z, "architecture", "str")}
    if spec["version"] not in GRAPH_VERSIONS:
        raise ExportError(f"gated export version {spec['version']} is not supported (reader: {GRAPH_VERSIONS})")
    _read_common(z, spec, ("channels", "levels", "height", "width", "cond_channels", "n_ops"))
    spec["tilt_sigma"] = float(_need(z, "tilt_sigma", np.float64)) if spec["version"] >= 2 else 0.0
    C, L = spec["channels"], spec["levels"]
    chans = {"x": C}
    if spec["cond_channels"]:
        chans["cond"] = spec["cond_channels"]
    ops = []
    for i in range(spec["n_ops"]):
        p, w = f"op{i}_", f"op {i}: "
        op = {k: _need(z, p + k, "str", what=w) for k in OP_STR_KEYS}
        for k in OP_INT_KEYS:
            op[k] = int(_need(z, p + k, np.int32, what=w))
        op["relu_in"] = bool(_need(z, p + "relu_in", np.bool_, what=w))
        # non-causal conditioner ops (optional keys: exports before them have neither)
        op["delay"] = int(_need(z, p + "delay", np.int32, what=w)) if p + "delay" in z else 0
        op["parity"] = bool(_need(z, p + "parity", np.bool_, what=w)) if p + "parity" in z else False
        op["bias"] = _need(z, p + "bias", np.int32, what=w)
        if op["kind"] not in ("conv", "gated") or op["phase"] not in ("row", "pixel"):
            raise ExportError(f"{w}kind {op['kind']!r} / phase {op['phase']!r} unknown (conv|gated, row|pixel)")
        nacc = len(op["bias"])
        gated = op["kind"] == "gated"
        op["lut"] = _need(z, p + "lut", np.int8, (2, 256) if gated else (256,), w)
        if gated and (nacc % 2 or not (1 <= op["gate_multiplier"] < 2 ** 16 and 1 <= op["gate_shift"] <= 31)):
            raise ExportError(f"{w}gated op needs an even accumulator count and gate multiplier/shift in range")
        if not (1 <= op["multiplier"] < 2 ** 31 and 1 <= op["shift"] <= 62):
            raise ExportError(f"{w}multiplier {op['multiplier']} / shift {op['shift']} out of range")
        op["inputs"] = []
        for k in range(int(_need(z, p + "n_inputs", np.int32, what=w))):
            q = f"{p}in{k}_"
            m = _need(z, q + "map", "str", what=w)
            if m not in chans:
                raise ExportError(f"{w}input map {m!r} is not written by an earlier op")
            taps = _need(z, q + "taps", np.int32, what=w)
            if taps.ndim != 2 or taps.shape[1] != 2 or np.abs(taps).max(initial=0) > 2:
                raise ExportError(f"{w}taps of {m!r} must be (T, 2) offsets in -2..2")
            wt = _need(z, q + "weight", np.int8, (nacc, chans[m], len(taps) * (4 if op["parity"] else 1)), w)
            op["inputs"].append(dict(map=m, taps=taps, weight=wt))
        if op["residual"] and chans.get(op["residual"]) != nacc:
            raise ExportError(f"{w}residual map {op['residual']!r} must exist with {nacc} channels")
        chans[op["out"]] = nacc // 2 if gated else nacc
        ops.append(op)
    if spec["architecture"] != "conditioner" and (not ops or chans[ops[-1]["out"]] != C * L):
        raise ExportError(f"the last op must output channels*levels = {C * L} logits")
    if spec["tilt_sigma"] and not (spec["tilt_sigma"] > 0 and C == 3 and chans.get(integer.TILT_MAP) == 1 and
                                   sum(op["out"] == integer.TILT_MAP for op in ops) == 1):
        raise ExportError(f"a luma tilt needs RGB, a width > 0 (got {spec['tilt_sigma']}) and one op writing the "
                          f"1-channel map {integer.TILT_MAP!r}")
    spec["ops"] = ops
    return spec


def export_gated_checkpoint(ckpt, out, calib_n=500, log=print, percentile=99.99, centre=False, max_pre=8.0,
                            stream="shared"):
    """Checkpoint of a trained unconditional GatedPixelCNN -> calibrated int8 op graph (.npz); ``percentile``:
    of the activations and ``max_pre`` the gate pre-activations' clip (``calibrate_gated``); ``centre``: ``centre_logits`` first. Returns (spec, float bpd,
    integer bpd); ``stream``: the residual stream's scales (``quantize_gated``)."""
    from . import data
    from .train import evaluate, load_checkpoint
    model, ck = load_checkpoint(ckpt)
    if type(model).__name__ != "GatedPixelCNN" or model.cond_ch:
        raise ExportError("export_gated_checkpoint takes an unconditional 'pixelcnn' (GatedPixelCNN) checkpoint")
    ds = data.load(ck["meta"]["dataset"])
    calib = ds.train[np.random.RandomState(0).permutation(len(ds.train))[:calib_n]]
    if centre:
        centre_logits(model.double())
    fb, _ = evaluate(model.double(), ds.test)
    scales = calibrate_gated(model, calib, percentile=percentile, max_pre=max_pre)
    spec = quantize_gated(model, scales, dict(dataset=ds.name, height=ds.shape[1], width=ds.shape[2],
                                              float_bits_per_dim=fb, calib_percentile=percentile,
                                              centred_logits=bool(centre)), stream=stream)
    spec["int_bits_per_dim"] = integer.evaluate_int(spec, ds.test)
    save_graph_export(out, spec)
    spec = load_export(out)
    log(f"{out}: {len(spec['ops'])} ops; bits/dim float {fb:.4f}, integer {spec['int_bits_per_dim']:.4f}")
    return spec, fb, spec["int_bits_per_dim"]
