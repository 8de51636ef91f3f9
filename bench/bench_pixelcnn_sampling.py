"""Sampling time per image: naive (a full forward pass per sub-pixel) vs cached (vertical stack once
per row, horizontal stack + head at the new pixel only) for the baseline Gated PixelCNN, and
coarse-to-fine Pyramid and gray-then-colour Grayscale sampling (cached); PNG grids of samples next to
test images for every committed model. Because wall time at small batches measures Python overhead, each
model's cost is also given as MACs per sampled image (counted) and sequential steps per image, next to
its test bits/dim, and its wall time at ``--cost-batch`` images on ``--device``; every cost is also given
as a ratio to the baseline's, measured in the same run (``<model>_vs_baseline``).

    python bench/bench_pixelcnn_sampling.py --out docs/results --no-grids     # committed (CPU, 1 thread)
    python bench/bench_pixelcnn_sampling.py --out results --device cuda      # on a GPU

Writes OUT/pixelcnn_sampling.json (checkpoint, bits_per_dim, s_per_image, macs_per_image,
sequential_steps_per_image, macs_per_sequential_step) and OUT/pixelcnn_samples_<model>_<dataset>.png.
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
from models.pixelcnn.train import DEVICES, evaluate, load_checkpoint, resolve_device  # noqa: E402

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
    ap.add_argument("--cost-batch", type=int, default=64, help="images per batch of the cost measurement")
    ap.add_argument("--device", default="cpu", choices=DEVICES, help="device of the cost measurement")
    ap.add_argument("--no-grids", action="store_true", help="skip the PNG sample grids")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    os.makedirs(a.out, exist_ok=True)
    dev = resolve_device(a.device)
    res = {"batch_images": a.samples, "threads": 1, "cost_device": dev.type,
           "cost_device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
           "torch": torch.__version__, "datasets": {}}
    for name in a.datasets:
        ds = data.load(name)
        row = {}
        for m in ("pixelcnn", "gray", "pyramid"):
            path = os.path.join(WEIGHTS, f"bench_{m}_{name}.pt")
            if not os.path.exists(path):
                continue
            model, _ = load_checkpoint(path)
            model.eval()
            row[f"{m}_checkpoint"] = os.path.relpath(path, os.path.join(WEIGHTS, "..", "..", ".."))
            x, dt = timed(lambda: sample.sample_model(model, a.samples, ds.shape, seed=0, cached=True))
            row[f"{m}_cached_s_per_image"] = dt / a.samples
            if m == "pixelcnn":
                u = sample.uniform_stream(a.samples, ds.shape, 0)
                xn, dn = timed(lambda: sample.sample_naive(model, u))
                row["pixelcnn_naive_s_per_image"] = dn / a.samples
                row["pixelcnn_naive_equals_cached"] = bool(torch.equal(xn, x))
            row[f"{m}_bits_per_dim"] = evaluate(model, ds.test)[0]
            cost = sample.sampling_cost(model.to(dev), ds.shape, a.cost_batch)
            model.cpu()
            row[f"{m}_macs_per_image"] = cost["macs_per_image"]
            row[f"{m}_sequential_steps_per_image"] = cost["sequential_steps_per_image"]
            row[f"{m}_batch{a.cost_batch}_s_per_image"] = cost["s_per_image"]
            row[f"{m}_macs_per_sequential_step"] = cost["macs_per_image"] / cost["sequential_steps_per_image"]
            if m != "pixelcnn" and "pixelcnn_macs_per_image" in row:
                row[f"{m}_vs_baseline"] = {
                    "bits_per_dim_difference": row[f"{m}_bits_per_dim"] - row["pixelcnn_bits_per_dim"],
                    "macs_ratio": cost["macs_per_image"] / row["pixelcnn_macs_per_image"],
                    "sequential_steps_ratio": cost["sequential_steps_per_image"] / row["pixelcnn_sequential_steps_per_image"],
                    f"batch{a.cost_batch}_time_ratio": cost["s_per_image"] / row[f"pixelcnn_batch{a.cost_batch}_s_per_image"]}
            print(f"{name:8s} {m:9s} {row[f'{m}_bits_per_dim']:.3f} bits/dim, {cost['macs_per_image'] / 1e6:.2f} M MACs, "
                  f"{cost['sequential_steps_per_image']} steps, {cost['s_per_image']:.4f} s/image at batch "
                  f"{a.cost_batch} ({dev.type})", flush=True)
            png = os.path.join(a.out, f"pixelcnn_samples_{m}_{name}.png")
            if not a.no_grids:
                sample.save_grid(png, x.numpy(), ds.test[:a.samples], ds.levels, ncol=4 if a.samples <= 16 else 8)
            print(f"{name:8s} {m:9s} cached {dt / a.samples:.4f} s/image at batch {a.samples}"
                  + ("" if a.no_grids else f" -> {png}"), flush=True)
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
