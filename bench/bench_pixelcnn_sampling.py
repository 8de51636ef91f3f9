"""Sampling time per image: naive (a full forward pass per sub-pixel) vs cached (vertical stack once
per row, horizontal stack + head at the new pixel only) for the baseline Gated PixelCNN, and
coarse-to-fine Pyramid and gray-then-colour Grayscale sampling (cached); PNG grids of samples next to
test images for every committed model.

    python bench/bench_pixelcnn_sampling.py --out results

Writes OUT/pixelcnn_sampling.json (s_per_image) and OUT/pixelcnn_samples_<model>_<dataset>.png.
Ref: Ramachandran et al. arXiv 1704.06001 (cached fast generation); Kolesnikov & Lampert 2017 §3.2.
"""
import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from models.pixelcnn import data, sample  # noqa: E402
from models.pixelcnn.train import load_checkpoint  # noqa: E402

WEIGHTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "models", "pixelcnn", "weights")


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--out", default="results")
    ap.add_argument("-n", "--samples", type=int, default=16, help="images per timed batch and per grid")
    ap.add_argument("--datasets", nargs="*", default=["digits", "faces", "patches"])
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    os.makedirs(a.out, exist_ok=True)
    res = {"batch_images": a.samples, "threads": 1, "datasets": {}}
    for name in a.datasets:
        ds = data.load(name)
        row = {}
        for m in ("pixelcnn", "gray", "pyramid"):
            path = os.path.join(WEIGHTS, f"bench_{m}_{name}.pt")
            if not os.path.exists(path):
                continue
            model, _ = load_checkpoint(path)
            model.eval()
            x, dt = timed(lambda: sample.sample_model(model, a.samples, ds.shape, seed=0, cached=True))
            row[f"{m}_cached_s_per_image"] = dt / a.samples
            if m == "pixelcnn":
                u = sample.uniform_stream(a.samples, ds.shape, 0)
                xn, dn = timed(lambda: sample.sample_naive(model, u))
                row["pixelcnn_naive_s_per_image"] = dn / a.samples
                row["pixelcnn_naive_equals_cached"] = bool(torch.equal(xn, x))
            png = os.path.join(a.out, f"pixelcnn_samples_{m}_{name}.png")
            sample.save_grid(png, x.numpy(), ds.test[:a.samples], ds.levels, ncol=4 if a.samples <= 16 else 8)
            print(f"{name:8s} {m:9s} cached {dt / a.samples:.4f} s/image -> {png}", flush=True)
        if "pixelcnn_naive_s_per_image" in row:
            row["cached_speedup"] = row["pixelcnn_naive_s_per_image"] / row["pixelcnn_cached_s_per_image"]
            print(f"{name:8s} pixelcnn  naive  {row['pixelcnn_naive_s_per_image']:.4f} s/image "
                  f"(cached speed-up {row['cached_speedup']:.1f}x)", flush=True)
        res["datasets"][name] = row
    with open(os.path.join(a.out, "pixelcnn_sampling.json"), "w") as fh:
        json.dump(res, fh, indent=1)
    return res


if __name__ == "__main__":
    main()
