"""Integer Grayscale and Pyramid PixelCNNs with their own conditioning networks, for the conv engine.

``python -m models.pixelcnn.cond_export {gray|pyramid} CHECKPOINT OUT.npz`` quantises a trained
``GrayscalePixelCNN`` / ``PyramidPixelCNN`` (``models.pixelcnn.train``) stage by stage into one *bundle*
of int8 op graphs (post-training calibration, ``export.quantize_gated`` for the gated stages):

gray (Kolesnikov & Lampert arXiv 1612.08185 §3, p(x) <= p(g) p(x | g), g = floor(x G / L)):
  ``prior``  Gated PixelCNN over g;
  ``cond``   CondNet over the whole g: non-causal 3x3 convs (+ ReLU) run as a conditioner pass (row ops
             delayed by 2, 3, 4 rows) whose last op fills the engine's feature memory;
  ``colour`` Gated PixelCNN over x whose every gated op adds a 1x1 over that feature map; with the
             luma tilt (``luma_tilt=1``) also the op ``tilt`` (a 1x1 over the rectified feature map: d, the
             tilt target's learnt part in steps of ``integer.TILT_D_STEP`` luma sums) and ``tilt_sigma``.
pyramid (one coarser level, x_1 = 2x2 average pool of x):
  ``coarse``    Gated PixelCNN over x_1;
  ``up_coarse`` UpCondNet's first 3x3 conv (+ ReLU) over x_1 (conditioner pass at the coarse size);
  ``up_fine``   the 2x2 stride-2 transposed conv (+ ReLU; a 1x1 with four parity weight blocks over the
                nearest-upsampled coarse features) and the last 3x3 conv, at the fine size;
  ``fine``      Gated PixelCNN over x conditioned on those features.

The chain functions (``aux_image``, ``feature_maps``, ``reference_bits``) are NumPy only and are the
integer reference the host compares the engine with.
"""

import numpy as np

from . import export as X
from . import integer as I

BUNDLE_FORMAT = "zippix-pixelcnn-bundle-int8"
STAGES = {"gray": ("prior", "cond", "colour"), "pyramid": ("coarse", "up_coarse", "up_fine", "fine")}
MODEL_OF = {"gray-pixelcnn": "gray", "pyramid-pixelcnn": "pyramid"}


# --- NumPy chain (integer reference; the host runs the same stages on the engine)

def aux_image(bundle, x):
    """The auxiliary image a = f(x) (N, 1, H', W'): the gray view, or the 2x2 average-pooled image."""
    x = np.asarray(x, np.int64)
    if bundle["model"] == "gray":  # models.to_gray: RGB through the ITU-R 601 luma
        if x.shape[1] == 3:
            y = sum(w * x[:, c:c + 1] for c, w in enumerate(I.LUMA))
            return (y * bundle["aux_levels"]) // (1000 * bundle["levels"])
        return (x * bundle["aux_levels"]) // bundle["levels"]
    n, c, h, w = x.shape
    s = x.reshape(n, c, h // 2, 2, w // 2, 2).sum(axis=(3, 5))
    return (2 * s + 4) // 8  # round-half-up mean, models.pool_levels


def feature_maps(bundle, a):
    """The conditioner passes over the auxiliary image a: the int8 map the conditional stage reads."""
    st = bundle["stages"]
    if bundle["model"] == "gray":
        return I.graph_forward(st["cond"], a)
    return I.graph_forward(st["up_fine"], None, I.upsample2(I.graph_forward(st["up_coarse"], a)))


def allowed(bundle, x, a):
    """The colour stage's exclusion of values inconsistent with the gray image a (``exact`` RGB gray bundles:
    ``integer.luma_allowed``, the rule the engine's sampler applies); else None."""
    if bundle["model"] != "gray" or not bundle.get("exact") or np.asarray(x).shape[1] != 3:
        return None
    return I.luma_allowed(x, a, bundle["levels"], bundle["aux_levels"])


def engine_outputs(spec, x, cond=None):
    """What the engine streams out per pixel in likelihood mode (N, K, H, W): the logits, preceded by the
    luma tilt's d when the spec has one (``engine.REG_TILT``)."""
    out, maps = I.graph_forward(spec, x, cond, trace=True)
    return np.concatenate([maps[I.TILT_MAP], out], 1) if spec.get("tilt_sigma") else out


def stage_bits(spec, outputs, target, ok=None, aux=None, aux_levels=None):
    """Bits per image of ``target`` under a stage's ``engine_outputs``; a tilted colour stage needs the gray
    image ``aux`` and its levels (the luma bounds of the tilt's target)."""
    n, c, h, w = target.shape
    L = spec["levels"]
    outputs, pen = np.asarray(outputs), None
    if spec.get("tilt_sigma"):
        lo, hi = I.luma_bounds(np.asarray(aux)[:, 0], L, aux_levels)
        pen = np.zeros((n, c, L, h, w), np.int64)
        pen[:, 1] = I.tilt_penalty(target[:, 0], outputs[:, 0], lo, hi, I.tilt_table(spec["tilt_sigma"], L), L)
        outputs = outputs[:, 1:]
    return I.bits_per_image(outputs.reshape(n, c, L, h, w), target, spec["logit_scale"], ok, pen)


def reference_bits(bundle, x):
    """Integer reference: bits per image of the auxiliary stage and of x given it (two arrays (N,))."""
    st = bundle["stages"]
    prior, cond = (st["prior"], st["colour"]) if bundle["model"] == "gray" else (st["coarse"], st["fine"])
    a = aux_image(bundle, x)
    x = np.asarray(x, np.int64)
    return (stage_bits(prior, I.graph_forward(prior, a), a),
            stage_bits(cond, engine_outputs(cond, x, feature_maps(bundle, a)), x, allowed(bundle, x, a), a,
                       bundle["aux_levels"]))


# --- bundle file

def save_bundle(path, bundle):
    d = {"format": np.str_(BUNDLE_FORMAT), "model": np.str_(bundle["model"]), "dataset": np.str_(bundle["dataset"])}
    for k in ("channels", "levels", "height", "width", "aux_levels"):
        d[k] = np.int32(bundle[k])
    d["exact"] = np.int32(bundle.get("exact", 0))
    d["float_bits_per_dim"] = np.float64(bundle["float_bits_per_dim"])
    d["float_parts"] = np.asarray(bundle["float_parts"], np.float64)
    for name, spec in bundle["stages"].items():
        d.update({f"{name}__{k}": v for k, v in X.graph_arrays(spec).items()})
    np.savez_compressed(path, **d)


def load_bundle(path):
    """Read and validate a bundle -> dict(model, dataset, channels, levels, height, width, aux_levels,
    float_bits_per_dim, float_parts, stages={name: op-graph spec}); ExportError on any problem."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            z = {k: npz[k] for k in npz.files}
    except FileNotFoundError:
        raise X.ExportError(f"export file {path!r} not found") from None
    except Exception as e:
        raise X.ExportError(f"{path!r} is not a readable .npz: {e}") from None
    fmt = str(z.get("format", ""))
    if fmt != BUNDLE_FORMAT:
        raise X.ExportError(f"{path}: format {fmt!r} is not a Grayscale/Pyramid bundle ({BUNDLE_FORMAT!r}; "
                            f"write one with python -m models.pixelcnn.cond_export)")
    b = {"model": X._need(z, "model", "str"), "dataset": X._need(z, "dataset", "str")}
    if b["model"] not in STAGES:
        raise X.ExportError(f"{path}: unknown model {b['model']!r} (gray or pyramid)")
    for k in ("channels", "levels", "height", "width", "aux_levels"):
        b[k] = int(X._need(z, k, np.int32))
    b["exact"] = int(X._need(z, "exact", np.int32)) if "exact" in z else 0  # gray: colour exclusion
    b["float_bits_per_dim"] = float(X._need(z, "float_bits_per_dim", np.float64))
    b["float_parts"] = [float(v) for v in z.get("float_parts", [])]
    b["stages"] = {}
    for name in STAGES[b["model"]]:
        sub = {k[len(name) + 2:]: v for k, v in z.items() if k.startswith(name + "__")}
        try:
            b["stages"][name] = X.load_graph_export(sub)
        except X.ExportError as e:
            raise X.ExportError(f"{path}: stage {name}: {e}") from None
    return b


# --- float -> int8

def _pct(t, p=99.99):
    return max(float(np.percentile(np.abs(np.asarray(t)), p)), 1e-8) / 127.0


def _conv_op(name, out, in_map, w, b, s_in, s_pre, s_out, act, delay, parity=False):
    w = np.asarray(w, np.float64)
    op = X._quant_op(name, "conv", "row", out, [(in_map, w, np.ones(w.shape[-2:], bool), s_in)],
                     np.asarray(b, np.float64), s_pre, s_out, act)
    if parity:  # the 2x2 kernel's taps are the four parity blocks of one (0, 0) tap (raster = (i&1)*2 + (j&1))
        op["inputs"][0]["taps"] = np.zeros((1, 2), np.int32)
    op.update(delay=int(delay), parity=bool(parity))
    return op


def _conditioner(name_ops, channels, levels, cond_channels=0):
    return dict(format=X.GRAPH_FORMAT, version=X.GRAPH_VERSION, architecture="conditioner", channels=channels,
                levels=levels, input_lut=X._input_lut(levels), input_scale=1 / 127, logit_scale=1.0,
                cond_channels=cond_channels, ops=name_ops)


def _gated(net, calib, stream, centre, max_pre, cond=None, cond_scale=None):
    """One gated stage -> op graph (``centre``: ``export.centre_logits`` first; ``max_pre``: gate clip)."""
    if centre:
        X.centre_logits(net)
    return X.quantize_gated(net, X.calibrate_gated(net, calib, cond=cond, max_pre=max_pre), cond_scale=cond_scale,
                            stream=stream)


def quantize_gray(model, calib, levels, stream="shared", centre=False, max_pre=8.0):
    """GrayscalePixelCNN (float, ``cond_dilated=0``) -> bundle stages and the feature scale; ``stream``: the
    residual stream's scales (``export.quantize_gated``); ``centre``, ``max_pre``: see ``export_checkpoint``."""
    import torch
    import torch.nn.functional as F
    from hw.pixelcnn.program import conditioner_delays
    model = model.double().eval()
    convs = [m for m in model.cond_net.net if isinstance(m, torch.nn.Conv2d)]
    if any(c.dilation[0] != 1 or c.kernel_size[0] > 5 for c in convs):
        raise X.ExportError("the engine runs CondNet without dilation (cond_dilated=0), kernels up to 5")
    g = model.aux(torch.as_tensor(calib))
    with torch.no_grad():
        h = model.prior.scale(g)
        s_in, in_map, ops = 1 / 127, "x", []
        delays = conditioner_delays([c.kernel_size[0] for c in convs])
        for i, c in enumerate(convs):
            pre = c(h)
            last = i == len(convs) - 1
            s_pre = _pct(pre)
            s_out = s_pre if last else _pct(F.relu(pre))
            ops.append(_conv_op(f"cond{i}", f"c{i}", in_map, c.weight.detach().numpy(), c.bias.detach().numpy(), s_in, s_pre, s_out,
                                "none" if last else "relu", delays[i]))
            h = pre if last else F.relu(pre)
            s_in, in_map = s_out, f"c{i}"
        feat = h
    prior = _gated(model.prior, g.numpy(), stream, centre, max_pre)
    colour = _gated(model.colour, calib, stream, centre, max_pre, feat.numpy(), s_in)
    if model.luma_tilt:  # d in steps of TILT_D_STEP luma sums, first of the pixel ops (before G's logits)
        step = I.TILT_D_STEP * model._luma_unit
        op = X._quant_op("tilt", "conv", "pixel", I.TILT_MAP, [("cond", model.tilt.weight.detach().numpy(),
                                                                 np.ones((1, 1), bool), s_in)],
                         model.tilt.bias.detach().numpy(), step, step, "none", relu_in=True)
        k = next(i for i, o in enumerate(colour["ops"]) if o["phase"] == "pixel")
        colour["ops"].insert(k, op)
        colour["tilt_sigma"] = float(torch.exp(model.tilt_log_sigma.detach()))
    return {"prior": prior, "cond": _conditioner(ops, 1, model.gray_levels), "colour": colour}, int(model.exact)


def quantize_pyramid(model, calib, levels, stream="shared", centre=False, max_pre=8.0):
    """PyramidPixelCNN (float, 2 levels, ``logit_prior=0``) -> bundle stages."""
    import torch
    import torch.nn.functional as F
    model = model.double().eval()
    if model.n_levels != 2 or model.logit_prior:
        raise X.ExportError("the engine runs a 2-level PyramidPixelCNN without a logit prior (logit_prior=0)")
    xc = model.pyramid(torch.as_tensor(calib))[1]
    c0, _, ct, _, c2 = model.cond_nets[0].net
    with torch.no_grad():
        p0 = c0(model.coarse.scale(xc))
        a0 = F.relu(p0)
        p1 = ct(a0)
        a1 = F.relu(p1)
        p2 = c2(a1)
    s0p, s0, s1p, s1, s2 = _pct(p0), _pct(a0), _pct(p1), _pct(a1), _pct(p2)
    up_coarse = _conditioner([_conv_op("up0", "u0", "x", c0.weight.detach().numpy(), c0.bias.detach().numpy(), 1 / 127, s0p, s0,
                                       "relu", 2)], c0.in_channels, levels)
    w_t = ct.weight.detach().numpy().transpose(1, 0, 2, 3)  # (Cin, Cout, 2, 2) -> (Cout, Cin, a, b)
    up_fine = _conditioner([_conv_op("upT", "u1", "cond", w_t, ct.bias.detach().numpy(), s0, s1p, s1, "relu", 0, parity=True),
                            _conv_op("up2", "u2", "u1", c2.weight.detach().numpy(), c2.bias.detach().numpy(), s1, s2, s2, "none", 1)],
                           0, levels, cond_channels=c0.out_channels)
    coarse = _gated(model.coarse, xc.numpy(), stream, centre, max_pre)
    fine = _gated(model.fine[0], calib, stream, centre, max_pre, p2.numpy(), s2)
    return {"coarse": coarse, "up_coarse": up_coarse, "up_fine": up_fine, "fine": fine}, 0


def export_checkpoint(kind, ckpt, out, calib_n=500, log=print, stream="shared", centre=False, max_pre=8.0):
    """Trained checkpoint -> bundle .npz; returns (bundle, float bits/dim, integer bits/dim). ``centre``: the
    gated stages' logits centred per sub-pixel first (``export.centre_logits``: same probabilities, smaller
    int8 logit scale); ``max_pre``: their gate pre-activations' clip (``export.calibrate_gated``)."""
    import torch
    from . import data
    from .train import load_checkpoint
    model, ck = load_checkpoint(ckpt)
    want = {"gray": "GrayscalePixelCNN", "pyramid": "PyramidPixelCNN"}[kind]
    if type(model).__name__ != want:
        raise X.ExportError(f"{ckpt}: a {type(model).__name__} checkpoint, expected {want}")
    ds = data.load(ck["meta"]["dataset"])
    calib = ds.train[np.random.RandomState(0).permutation(len(ds.train))[:calib_n]]
    stages, exact = (quantize_gray if kind == "gray" else quantize_pyramid)(model, calib, ds.levels, stream, centre,
                                                                           max_pre)
    if exact and ds.shape[0] != 3:
        raise X.ExportError("the engine's gray exclusion (exact=1) is for RGB images; train 1-channel gray models with exact=0")
    model = model.double().eval()
    with torch.no_grad():
        parts = model.loss_parts(torch.as_tensor(ds.test))
    fparts = [float(v.sum()) / ds.test.size for v in parts.values()]
    bundle = dict(model=kind, dataset=ds.name, channels=ds.test.shape[1], levels=ds.levels, height=ds.shape[1],
                  width=ds.shape[2], aux_levels=model.gray_levels if kind == "gray" else ds.levels,
                  float_bits_per_dim=sum(fparts), float_parts=fparts, stages=stages, exact=exact)
    for spec in stages.values():
        spec.setdefault("dataset", ds.name)
    save_bundle(out, bundle)
    bundle = load_bundle(out)
    ib = sum(float(b.sum()) for b in reference_bits(bundle, ds.test)) / ds.test.size
    log(f"{out}: {kind} bundle, stages {', '.join(stages)}; bits/dim float {sum(fparts):.4f} "
        f"({' + '.join(f'{v:.4f}' for v in fparts)}), integer {ib:.4f}")
    return bundle, sum(fparts), ib


def main(argv=None):
    import argparse
    p = argparse.ArgumentParser(description="Trained Grayscale / Pyramid checkpoint -> int8 bundle for the conv engine",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("kind", choices=sorted(STAGES), help="the checkpoint's model")
    p.add_argument("checkpoint", help="trained checkpoint (.pt)")
    p.add_argument("out", help="bundle to write (.npz)")
    p.add_argument("--calib-n", type=int, default=500, help="calibration images from the training set")
    p.add_argument("--stream", choices=("shared", "per_layer"), default="shared",
                   help="residual stream scales: one for all layers, or one per layer (more MACs, finer steps)")
    p.add_argument("--centre", action="store_true",
                   help="centre each sub-pixel's logits first (same probabilities, finer int8 logit steps)")
    p.add_argument("--max-pre", type=float, default=8.0, help="clip of the gate pre-activations' int8 range")
    a = p.parse_args(argv)
    return export_checkpoint(a.kind, a.checkpoint, a.out, a.calib_n, stream=a.stream, centre=a.centre,
                             max_pre=a.max_pre)


if __name__ == "__main__":
    main()
