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
    if fmt != FORMAT:
        raise ExportError(f"format is {fmt!r}, expected {FORMAT!r}")
    ver = _need(z, "version", np.int32)
    if ver != VERSION:
        raise ExportError(f"export version {ver} is not supported (this reader handles version {VERSION})")
    spec = {"format": fmt, "version": ver}
    for k in ("channels", "levels", "height", "width", "n_layers"):
        spec[k] = int(_need(z, k, np.int32))
    C, L = spec["channels"], spec["levels"]
    spec["input_lut"] = _need(z, "input_lut", np.int8, (L,))
    for k in ("input_scale", "logit_scale", "float_bits_per_dim", "int_bits_per_dim"):
        spec[k] = float(_need(z, k, np.float64))
    spec["dataset"] = _need(z, "dataset", "str")
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


def committed_export_path(dataset="digits"):
    """Path of the committed int8 export for ``dataset`` (digits or faces)."""
    import os
    p = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights", f"stream_{dataset}_int8.npz")
    if not os.path.exists(p):
        raise ExportError(f"no committed integer export for dataset {dataset!r} (have digits, faces)")
    return p


if __name__ == "__main__":
    main()

