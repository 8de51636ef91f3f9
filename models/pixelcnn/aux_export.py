"""Integer Grayscale and Pyramid PixelCNNs for the streaming convolution engine (issue 6; owned by the
conv engine). ``python -m models.pixelcnn.aux_export [gray|pyramid] [DATASET] [EPOCHS]``.

Pyramid (``build_pyramid``): the same two-stage scheme with f(x) = the 2x2 average-pooled image
(``models.pool_levels``, one coarser level, half size, same levels); the conditional stage streams the
coarse pixel under (i, j), the one to its right and the one below.

Kolesnikov & Lampert's auxiliary-variable factorisation p(x) <= p(g) p(x | g) with g = f(x) the
quantised gray view (``models.to_gray``), both parts as plain masked-conv stream networks so each runs
on the engine:

- prior: a ``StreamPixelCNN`` over g (G levels), the standard export;
- conditional: a ``StreamPixelCNN`` over x whose input has extra *conditioning channels* built from
  the whole g (known before x is generated): g at (i, j), (i, j+1) and (i+1, j), coded as x levels.
  Layer 0 is a 5x5 mask-B conv over [x, cond...] with x's own centre tap removed, so the prediction
  of x[i, j] sees x only at earlier pixels but g also slightly ahead (non-causal conditioning through
  shifted channels, streamable because the host supplies them with each pixel).

Both are quantised with ``export.calibrate``, a short quantisation-aware fine-tune through
``export.forward_fake_quant`` and ``export.quantize_model``, and written with ``export.save_export``; ``load_aux`` reads them back (the conditional one has more
layer-0 input channels than image channels, which ``export.load_export`` by design refuses).
"""
import math
import os

import numpy as np
import torch

from . import export as X
from .models import StreamPixelCNN, nll_bits, pool_levels, to_gray

COND_OFFSETS = ((0, 0), (0, 1), (1, 0))  # (dy, dx) of the gray pixels fed with pixel (i, j)
WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "hw", "pixelcnn", "weights")


def gray_of(x, levels, gray_levels):
    return to_gray(torch.as_tensor(np.asarray(x)), levels, gray_levels).numpy()


def cond_channels(g, levels, gray_levels):
    """(N,1,H,W) gray -> (N, len(COND_OFFSETS), H, W) conditioning channels as x levels (0 outside)."""
    g = np.asarray(g, np.int64)
    n, _, h, w = g.shape
    code = (g * (levels - 1) + (gray_levels - 1) // 2) // (gray_levels - 1)
    out = np.zeros((n, len(COND_OFFSETS), h, w), np.int64)
    for k, (dy, dx) in enumerate(COND_OFFSETS):
        out[:, k, :h - dy, :w - dx] = code[:, 0, dy:, dx:]
    return out


def cond_input(x, levels, gray_levels):
    """Conditional stage input [x, cond...] (N, 1+K, H, W)."""
    g = gray_of(x, levels, gray_levels)
    return np.concatenate([np.asarray(x, np.int64), cond_channels(g, levels, gray_levels)], axis=1)


# --- generic auxiliary views: "gray" (4-level gray view, same size) and "pyramid" (2x2 average-pooled
# image, half size, same levels; Pyramid PixelCNN with one coarser level)
AUX_KINDS = ("gray", "pyramid")


def aux_levels(kind, levels):
    return 4 if kind == "gray" else levels


def aux_view(kind, x, levels):
    """The deterministic auxiliary variable f(x) as an integer image (N, 1, H', W')."""
    if kind == "gray":
        return gray_of(x, levels, 4)
    return pool_levels(torch.as_tensor(np.asarray(x)), 2).numpy().astype(np.int64)


def aux_cond_channels(kind, a, levels, height, width):
    """Conditioning channels (N, 3, H, W), as x levels, streamed with pixel (i, j) of x."""
    if kind == "gray":
        return cond_channels(a, levels, 4)
    a = np.asarray(a, np.int64)
    n, _, h, w = a.shape
    out = np.zeros((n, len(COND_OFFSETS), height, width), np.int64)
    i = np.arange(height)[:, None] // 2
    j = np.arange(width)[None, :] // 2
    for k, (dy, dx) in enumerate(COND_OFFSETS):  # coarse pixel of (i, j), the one right, the one below
        ii, jj = i + dy, j + dx
        ok = (ii < h) & (jj < w)
        out[:, k] = np.where(ok, a[:, 0, np.minimum(ii, h - 1), np.minimum(jj, w - 1)], 0)
    return out


def aux_cond_input(kind, x, levels):
    x = np.asarray(x, np.int64)
    a = aux_view(kind, x, levels)
    return np.concatenate([x, aux_cond_channels(kind, a, levels, x.shape[2], x.shape[3])], axis=1)


def conditional_model(levels, n_cond=len(COND_OFFSETS), hidden=32):
    m = StreamPixelCNN(channels=1, levels=levels, hidden=hidden)
    from .layers import MaskedConv2d
    first = MaskedConv2d(1 + n_cond, hidden, 5, "B", 1)
    first.mask[:, 0, 2, 2] = 0  # x never sees itself
    m.first = first
    return m


def _train(model, xin, target, epochs, lr=2e-3, batch=64, seed=0, log=print):
    torch.manual_seed(seed)
    rng = np.random.RandomState(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    xin_t, tgt_t = torch.from_numpy(xin), torch.from_numpy(target)
    dims = target[0].size
    steps = epochs * -(-len(xin) // batch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 * (1 + math.cos(math.pi * min(1.0, t / steps))))
    model.train()
    for ep in range(epochs):
        perm = rng.permutation(len(xin))
        tot = 0.0
        for b in range(0, len(perm), batch):
            idx = perm[b:b + batch]
            loss = (nll_bits(model(xin_t[idx]), tgt_t[idx]) / dims).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            tot += float(loss.detach()) * len(idx)
        log(f"  epoch {ep + 1}/{epochs}: train bpd {tot / len(xin):.4f}")
    return model.eval()


def _qat(model, xin, target, scales, epochs, lr=5e-4, batch=64, seed=0, log=print):
    """Quantisation-aware fine-tuning through ``export.forward_fake_quant`` (fixed scales)."""
    torch.manual_seed(seed)
    rng = np.random.RandomState(seed)
    model = model.float().train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    xin_t, tgt_t = torch.from_numpy(xin), torch.from_numpy(target)
    dims = target[0].size
    for ep in range(epochs):
        perm = rng.permutation(len(xin))
        tot = 0.0
        for b in range(0, len(perm), batch):
            idx = perm[b:b + batch]
            loss = (nll_bits(X.forward_fake_quant(model, xin_t[idx], scales), tgt_t[idx]) / dims).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            tot += float(loss.detach()) * len(idx)
        log(f"  QAT epoch {ep + 1}/{epochs}: fake-quant train bpd {tot / len(xin):.4f}")
    return model.eval()


@torch.no_grad()
def _float_bits(model, xin, target):
    model = model.double().eval()
    return float(nll_bits(model(torch.from_numpy(xin)), torch.from_numpy(target)).sum())


def _export_stages(stages, ds, dataset, stem, label, epochs, qat_epochs, out_dir, log):
    """Train, calibrate, fine-tune (QAT) and save each ``(name, model, x_in, target, x_test, target_test)``
    stage as ``<stem>_<dataset>_<name>_int8.npz``; returns the paths."""
    calib = np.random.RandomState(0).permutation(len(ds.train))[:500]
    dims = ds.test[0].size * len(ds.test)
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for name, model, xin, tgt, xte, tte in stages:
        log(f"{label} {name}: training {epochs} epochs")
        model = _train(model.float(), xin, tgt, epochs, log=log)
        fb = _float_bits(model, xte, tte) / dims
        scales = X.calibrate(model.double(), xin[calib])
        if qat_epochs:
            model = _qat(model, xin, tgt, scales, qat_epochs, log=log)
        model = model.double()
        spec = X.quantize_model(model, scales, dict(dataset=dataset, height=xin.shape[2], width=xin.shape[3],
                                                    float_bits_per_dim=fb))
        spec["int_bits_per_dim"] = float("nan")
        path = os.path.join(out_dir, f"{stem}_{dataset}_{name}_int8.npz")
        X.save_export(path, spec)
        log(f"  float test bits (per x dim) {fb:.4f} -> {path}")
        paths.append(path)
    return tuple(paths)


def build_gray(dataset="digits", gray_levels=4, epochs=15, qat_epochs=8, out_dir=WEIGHTS_DIR, log=print):
    """Train, quantise and save both stages; returns (prior_path, cond_path)."""
    from . import data
    torch.set_num_threads(1)
    ds = data.load(dataset)
    L = ds.levels
    g_tr, g_te = gray_of(ds.train, L, gray_levels), gray_of(ds.test, L, gray_levels)
    c_tr, c_te = cond_input(ds.train, L, gray_levels), cond_input(ds.test, L, gray_levels)
    stages = (("prior", StreamPixelCNN(1, gray_levels), g_tr, g_tr, g_te, g_te),
              ("cond", conditional_model(L), c_tr, ds.train, c_te, ds.test))
    return _export_stages(stages, ds, dataset, f"gray{gray_levels}", "gray-pixelcnn", epochs, qat_epochs,
                          out_dir, log)


def load_aux(path):
    """Read an export written by ``save_export``. Standard files go through ``export.load_export``;
    a conditional stage (layer 0 has more inputs than the image has channels, which ``load_export``
    refuses by design) is read key by key; ``hw.pixelcnn.program.check_fits`` then checks masks,
    shapes and ranges against the engine."""
    try:
        return X.load_export(path)
    except X.ExportError as e:
        if "layer 0: in channels" not in str(e):
            raise
    z = np.load(path, allow_pickle=False)
    layers = []
    for i in range(int(z["n_layers"])):
        p = f"layer{i}_"
        l = {k: str(z[p + k]) for k in ("type", "mask", "act")}
        l.update({k: z[p + k] for k in ("weight", "bias", "lut")})
        for k in ("kernel", "in", "out", "multiplier", "shift", "groups"):
            l[k] = int(z[p + k])
        l["residual"] = bool(z[p + "residual"])
        if l["weight"].shape != (l["out"], l["in"], l["kernel"], l["kernel"]) or l["weight"].dtype != np.int8:
            raise X.ExportError(f"{path}: layer {i}: bad weight array")
        layers.append(l)
    return {"format": str(z["format"]), "version": int(z["version"]), "channels": int(z["channels"]),
            "levels": int(z["levels"]), "height": int(z["height"]), "width": int(z["width"]),
            "input_lut": z["input_lut"], "logit_scale": float(z["logit_scale"]),
            "float_bits_per_dim": float(z["float_bits_per_dim"]), "dataset": str(z["dataset"]), "layers": layers}


def build_pyramid(dataset="digits", epochs=15, qat_epochs=8, out_dir=WEIGHTS_DIR, log=print):
    """Pyramid PixelCNN with one coarser level: prior over the 2x2-pooled image, x | coarse."""
    from . import data
    torch.set_num_threads(1)
    ds = data.load(dataset)
    L = ds.levels
    a_tr, a_te = aux_view("pyramid", ds.train, L), aux_view("pyramid", ds.test, L)
    c_tr, c_te = aux_cond_input("pyramid", ds.train, L), aux_cond_input("pyramid", ds.test, L)
    stages = (("prior", StreamPixelCNN(1, L), a_tr, a_tr, a_te, a_te),
              ("cond", conditional_model(L), c_tr, ds.train, c_te, ds.test))
    return _export_stages(stages, ds, dataset, "pyramid2", "pyramid-pixelcnn", epochs, qat_epochs, out_dir, log)


def aux_paths(kind, dataset="digits"):
    return gray_paths(dataset) if kind == "gray" else _paths("pyramid2", dataset, "pyramid")


def _paths(stem, dataset, kind):
    p = [os.path.join(WEIGHTS_DIR, f"{stem}_{dataset}_{s}_int8.npz") for s in ("prior", "cond")]
    if not all(os.path.exists(q) for q in p):
        raise X.ExportError(f"no {kind}-pixelcnn exports for {dataset!r}; build them with "
                            f"python -m models.pixelcnn.aux_export {kind} {dataset}")
    return tuple(p)


def gray_paths(dataset="digits", gray_levels=4):
    p = [os.path.join(WEIGHTS_DIR, f"gray{gray_levels}_{dataset}_{s}_int8.npz") for s in ("prior", "cond")]
    if not all(os.path.exists(q) for q in p):
        raise X.ExportError(f"no gray-pixelcnn exports for {dataset!r}; build them with "
                            f"python -m models.pixelcnn.aux_export {dataset}")
    return tuple(p)


if __name__ == "__main__":
    import sys
    argv = sys.argv[1:]
    kind = argv.pop(0) if argv and argv[0] in AUX_KINDS else "gray"
    ds_name = argv[0] if argv else "digits"
    ep = int(argv[1]) if len(argv) > 1 else 15
    (build_gray if kind == "gray" else build_pyramid)(ds_name, epochs=ep)
