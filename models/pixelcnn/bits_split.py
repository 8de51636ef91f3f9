"""Where the bits go: split a baseline PixelCNN's bits into the gray part and the colour-given-gray part
that it implies, so a Grayscale PixelCNN can be compared with it part by part.

Because g = f(x) is a function of the image, -log2 p(x) = -log2 p(g) - log2 p(x | g) for ANY model p,
with p(g) = sum of p(x') over the images x' whose gray view is g. That sum is estimated by sequential
importance sampling over the baseline's own R -> G -> B predictions: draw x' from the baseline with
every value inconsistent with g removed (``models.gray_consistent``, the Grayscale model's exact mask)
and renormalised; the weight of a draw is the product over sub-pixels of the mass Z_t the baseline gave
the consistent values, and E[prod Z_t] = p(g) exactly (each x' with f(x') = g is drawn with probability
p(x') / prod Z_t). The gray part is -log2 of the mean of K weights: by Jensen its expectation is >= the
true -log2 p(g), so the gray part is slightly over- and the colour part slightly under-estimated; both
converge as K grows (``-k 16 64 256 1024`` shows the trend).

The baseline *restricted to the known gray* (``restricted_bits``: its own conditional logits with the
gray-inconsistent values removed and renormalised, which is what a Grayscale colour network warm-started from
the baseline computes before any conditioning training) is a colour-given-gray model in its own right, and its
colour part is exact (no sampling). It uses the gray values of the current pixel only, not the later ones, so
it pays the implied colour part plus what the later gray values say about the current colour:
sum_t log2 p(g_t | g_<t) - log2 p(g_t | x_<t) over pixels t, on average.

    python -m models.pixelcnn.bits_split models/pixelcnn/weights/bench_pixelcnn_patches.pt -n 200 -k 16

Ref: Kolesnikov & Lampert 2017 §3 (the bound -log p(f(x)) - log p(x | f(x)) is tight when f is a
function of x); sequential importance sampling: Doucet & Johansen, "A tutorial on particle filtering" §3.
"""
import argparse
import json
import math
import sys
import time

import numpy as np
import torch
from tqdm import tqdm

from .models import GatedPixelCNN, gray_consistent, nll_bits, to_gray
from .sample import sample_cached, uniform_stream

LN2 = math.log(2.0)


def _mask_offset(x_like_g, levels, gray_levels):
    g = x_like_g

    def off(x, i=None, j=None):
        if i is None:
            ok = gray_consistent(x, g, levels, gray_levels)
            return torch.zeros(ok.shape, device=x.device).masked_fill_(~ok, float("-inf"))
        ok = gray_consistent(x[:, :, i:i + 1, j:j + 1], g[:, :, i:i + 1, j:j + 1], levels, gray_levels)
        return torch.zeros(ok.shape[:3], device=x.device).masked_fill_(~ok[..., 0, 0], float("-inf"))
    return off


@torch.no_grad()
def gray_log_weights(model: GatedPixelCNN, g, levels, gray_levels, k=16, seed=0, sampler=sample_cached, smc=True):
    """Natural-log importance weights (N, k) of p(g) for gray images g (N, 1, H, W) under ``model``.
    ``smc``: the k draws of an image are particles resampled after every pixel (sequential Monte Carlo,
    ``sample.resample_groups``); every column then holds the image's one SMC estimate. Else k
    independent sequential-importance draws (``sampler`` may then be ``sample_naive``)."""
    n, _, H, W = g.shape
    C = model.channels
    gk = g.repeat_interleave(k, 0).to(next(model.parameters()).device)
    log_w = torch.zeros(n * k, dtype=torch.float64)
    kw = {"particles": k, "seed": seed} if smc else {}
    sampler(model, uniform_stream(n * k, (C, H, W), seed), offset=_mask_offset(gk, levels, gray_levels),
            log_mass=log_w, **kw)
    return log_w.view(n, k)


@torch.no_grad()
def split_bits(model: GatedPixelCNN, x, gray_levels, k=16, batch=64, seed=0, progress=False, smc=True):
    """Per-image bits (N,) of the whole image, the implied gray part (importance-sampled, k draws or SMC
    particles per image) and the colour-given-gray part (the difference), for integer images x (N, C, H, W)."""
    if not isinstance(model, GatedPixelCNN):
        raise TypeError(f"split_bits needs a GatedPixelCNN baseline, got {type(model).__name__}")
    x = torch.as_tensor(np.asarray(x)).long()
    levels = model.levels
    dev = next(model.parameters()).device
    total, gray = [], []
    for b in tqdm(range(0, len(x), batch), desc="bits split", disable=not progress, file=sys.stderr):
        xb = x[b:b + batch]
        g = to_gray(xb, levels, gray_levels)
        total.append(model.nll(xb.to(dev)).double().cpu())
        lw = gray_log_weights(model, g, levels, gray_levels, k, seed + b, smc=smc)
        gray.append(-(torch.logsumexp(lw, 1) - math.log(k)) / LN2)
    total, gray = torch.cat(total), torch.cat(gray)
    return {"total": total, "gray": gray, "colour_given_gray": total - gray}


@torch.no_grad()
def restricted_bits(model: GatedPixelCNN, x, gray_levels, batch=256):
    """Per-image bits (N,) of x under the baseline restricted to the known gray view g = f(x): every
    sub-pixel's softmax over the values ``gray_consistent`` leaves (given g and the pixel's earlier
    channels), renormalised. Exact; the rest of the baseline's bits, total - restricted, is
    -log2 prod_t p(g_t | x_<t), its autoregressive gray code length."""
    if not isinstance(model, GatedPixelCNN):
        raise TypeError(f"restricted_bits needs a GatedPixelCNN baseline, got {type(model).__name__}")
    x = torch.as_tensor(np.asarray(x)).long()
    dev = next(model.parameters()).device
    out = []
    for b in range(0, len(x), batch):
        xb = x[b:b + batch].to(dev)
        ok = gray_consistent(xb, to_gray(xb, model.levels, gray_levels), model.levels, gray_levels)
        out.append(nll_bits(model(xb).masked_fill(~ok, float("-inf")), xb).double().cpu())
    return torch.cat(out)


def split_bits_per_dim(model, x, gray_levels, k=16, batch=64, seed=0, progress=False, smc=True):
    """{part: bits/dim of the full image} (total, gray, colour_given_gray) averaged over x."""
    parts = split_bits(model, x, gray_levels, k, batch, seed, progress, smc)
    dims = int(np.prod(np.asarray(x).shape[1:]))
    return {name: float(v.mean()) / dims for name, v in parts.items()}


def main(argv=None):
    from . import data
    from .train import DEVICES, load_checkpoint
    p = argparse.ArgumentParser(description="A baseline PixelCNN's implied gray / colour-given-gray split",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("checkpoint", help="a GatedPixelCNN (model 'pixelcnn') checkpoint")
    p.add_argument("-d", "--dataset", default=None, help="dataset (default: the checkpoint's)")
    p.add_argument("-g", "--gray-levels", type=int, default=None,
                   help="gray levels of f(x) (default: as the Grayscale model, 16 for 256 levels else 4)")
    p.add_argument("-n", "--images", type=int, default=200, help="images used (the first n)")
    p.add_argument("-k", "--draws", type=int, nargs="*", default=[16],
                   help="importance draws per image; several values show the convergence; none (a bare -k): only "
                        "the exact parts (the restricted baseline and --compare)")
    p.add_argument("--compare", default=None,
                   help="a Grayscale ('gray') checkpoint whose own gray and colour parts are evaluated on the same "
                        "images (with the exact mask)")
    p.add_argument("--photo", default=None,
                   help="use the training images of this photo (patches: data.hold_out_photo, e.g. the validation "
                        "photo of train --val-photo) instead of the test images")
    p.add_argument("--extra", default=None,
                   help="use this named extra test set of the dataset instead (patches: same_photos, the bottom "
                        "20 %% of the training photos' rows)")
    p.add_argument("--no-smc", action="store_true", help="independent draws instead of SMC particles")
    p.add_argument("-s", "--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument("--json", default=None, help="write the result here")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    model, ck = load_checkpoint(a.checkpoint, a.device)
    if not isinstance(model, GatedPixelCNN):
        raise SystemExit(f"error: {a.checkpoint} holds a {ck['meta']['model']!r} model; needs 'pixelcnn'")
    ds = data.load(a.dataset or ck["meta"]["dataset"])
    G = a.gray_levels or (16 if ds.levels > 32 else 4)
    if a.photo and a.extra:
        raise SystemExit("error: --photo and --extra each choose the images; give one")
    if a.extra and a.extra not in ds.extra:
        raise SystemExit(f"error: dataset {ds.name!r} has no extra test set {a.extra!r}; it has {sorted(ds.extra) or 'none'}")
    pool = ds.extra[a.extra] if a.extra else ds.test if a.photo is None else data.hold_out_photo(ds, a.photo)[1]
    res = {"checkpoint": a.checkpoint, "dataset": ds.name, "images_from": a.photo or a.extra or "test", "gray_levels": G,
           "smc": not a.no_smc, "images": min(a.images, len(pool)), "bits_per_dim": {}}
    xs = pool[:res["images"]]
    dims = int(np.prod(xs.shape[1:]))
    rb = float(restricted_bits(model.eval(), xs, G).mean()) / dims
    with torch.no_grad():
        total = float(model.nll(torch.from_numpy(xs).to(next(model.parameters()).device)).double().mean()) / dims
    res["restricted_baseline"] = {"colour_given_gray": rb, "autoregressive_gray": total - rb, "total": total}
    print(f"baseline restricted to the known gray (exact): colour|gray {rb:.4f} + autoregressive gray "
          f"{total - rb:.4f} = {total:.4f} bits/dim", flush=True)
    if a.compare:
        from .train import evaluate
        gm, _ = load_checkpoint(a.compare, a.device)
        if not hasattr(gm, "exact"):
            raise SystemExit(f"error: --compare {a.compare} is not a Grayscale PixelCNN checkpoint")
        gm.exact = True
        gb, gp = evaluate(gm, xs)
        res["compare"] = {"checkpoint": a.compare, "bits_per_dim": gb, "parts_bits_per_dim": gp}
        print(f"Grayscale {a.compare}: {gb:.4f} = {gp}", flush=True)
    for k in a.draws:
        t0 = time.time()
        r = split_bits_per_dim(model.eval(), xs, G, k, seed=a.seed, progress=True, smc=not a.no_smc)
        r["seconds"] = time.time() - t0
        res["bits_per_dim"][f"k{k}"] = r
        print(f"k={k:4d}: total {r['total']:.4f} = gray {r['gray']:.4f} + colour|gray "
              f"{r['colour_given_gray']:.4f} bits/dim", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    return res


if __name__ == "__main__":
    main()
