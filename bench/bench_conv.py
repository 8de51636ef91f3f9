#!/usr/bin/env python3
"""Benchmark of the convolution engine on the Verilator backend (hardware cycle counters).

For the digits PixelCNN export (32 channels, 7 layers) on 8x8 and 16x16 images and for a sweep of
MAC lanes P: likelihood cycles per image, cycles per sampled pixel with on-chip generation (one pixel's
work per pixel, line buffers as the cache) vs the naive sampler (a full forward pass of the image on
the same engine for every new pixel = likelihood cycles per image), MAC utilization, and the cycle
model ``sum_layers ceil(Cout/P) * taps * Cin`` + overhead. Writes ``bench_conv.json`` and
``bench_conv.png`` to ``--out``.

    python bench/bench_conv.py --out results
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from host import pixelcnn_run as R  # noqa: E402
from host.backends import open_device  # noqa: E402
from hw.pixelcnn import program as prog  # noqa: E402
from models.pixelcnn import data  # noqa: E402
from models.pixelcnn.export import committed_export_path, load_export  # noqa: E402
from models.pixelcnn.integer import forward_int  # noqa: E402


def measure(spec, lanes, sizes, images, log):
    words = prog.mac_beats_per_pixel(spec, lanes)  # weight words = MAC beats per pixel
    design = R.default_design(lanes=lanes, weight_depth=1 << (words - 1).bit_length())
    rows = []
    test = data.load("digits").test
    with open_device("verilator", design=design, timeout=600.0) as dev:
        cd = R.ConvDevice(dev, timeout=600.0)
        for s in sizes:
            x = test[:images] if s == 8 else np.kron(test[:images], np.ones((1, 1, s // 8, s // 8), np.int64))
            cd.program(spec, s, s)
            lg, lc = cd.likelihood_logits(x)
            exact = bool(np.array_equal(lg.reshape(len(x), 1, 17, s, s), forward_int(spec, x)))
            _, sc = cd.sample(1)
            rep = R.cycle_report(spec, cd.params, lc, len(x), sc, 1, s, s)
            row = {"size": s, "lanes": lanes, "logits_equal_reference": exact,
                   "likelihood_cycles_per_image": rep["cycles_per_image"],
                   "likelihood_cycles_per_pixel": rep["cycles_per_pixel_likelihood"],
                   "cycles_per_sampled_pixel": rep["cycles_per_sampled_pixel"],
                   "cycles_per_sampled_image": rep["cycles_per_sampled_image"],
                   "naive_cycles_per_sampled_pixel": rep["naive_cycles_per_sampled_pixel"],
                   "naive_cycles_per_sampled_image": rep["naive_cycles_per_sampled_pixel"] * s * s,
                   "naive_over_onchip": rep["naive_over_onchip"],
                   "mac_utilization": rep["mac_utilization"], "lane_occupancy": rep["lane_occupancy"],
                   "mac_beats_per_pixel": rep["mac_beats_per_pixel"],
                   "model_beats_per_pixel": prog.mac_beats_per_pixel(spec, lanes),
                   "useful_macs_per_pixel": rep["useful_macs_per_pixel"],
                   "dense_macs_per_pixel": rep["dense_macs_per_pixel"]}
            log(f"P={lanes:2d} {s}x{s}: likelihood {row['likelihood_cycles_per_image']:,.0f} cycles/image, "
                f"sampling {row['cycles_per_sampled_pixel']:,.1f} cycles/pixel vs naive "
                f"{row['naive_cycles_per_sampled_pixel']:,.0f} ({row['naive_over_onchip']:.0f}x), "
                f"MAC utilization {100 * row['mac_utilization']:.1f}%, exact {exact}")
            rows.append(row)
    return rows


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for s in sorted({r["size"] for r in rows}):
        rs = sorted((r for r in rows if r["size"] == s), key=lambda r: r["lanes"])
        P = [r["lanes"] for r in rs]
        a.plot(P, [r["cycles_per_sampled_pixel"] for r in rs], "o-", label=f"{s}x{s} on chip (line buffers)")
        a.plot(P, [r["naive_cycles_per_sampled_pixel"] for r in rs], "s--", label=f"{s}x{s} naive (forward per pixel)")
        b.plot(P, [100 * r["mac_utilization"] for r in rs], "o-", label=f"{s}x{s}")
    a.set_xscale("log", base=2)
    a.set_yscale("log")
    a.set_xlabel("MAC lanes P")
    a.set_ylabel("cycles per sampled pixel")
    a.set_title("digits PixelCNN (7 layers, 32 ch) sampling cost")
    a.legend(fontsize=7)
    b.set_xscale("log", base=2)
    b.set_xlabel("MAC lanes P")
    b.set_ylabel("MAC utilization (%)")
    b.set_ylim(0, 100)
    b.set_title("useful MACs / (P x cycles)")
    b.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("results"), help="output folder (default: results)")
    p.add_argument("--lanes", type=int, nargs="+", default=[8, 16, 32], help="MAC lane counts (default: 8 16 32)")
    p.add_argument("--sizes", type=int, nargs="+", default=[8, 16], help="image sizes (default: 8 16)")
    p.add_argument("--images", type=int, default=2, help="likelihood images per size (default: 2)")
    a = p.parse_args(argv)
    spec = load_export(committed_export_path("digits"))
    t0 = time.time()
    rows = []
    for lanes in a.lanes:
        rows += measure(spec, lanes, a.sizes, a.images, print)
    a.out.mkdir(parents=True, exist_ok=True)
    res = {"model": "digits PixelCNN export (stream_digits_int8.npz)", "backend": "verilator",
           "naive_definition": "a full forward pass of the whole image on the same engine per sampled pixel "
                               "(= likelihood cycles per image)",
           "rows": rows, "wall_s": time.time() - t0}
    (a.out / "bench_conv.json").write_text(json.dumps(res, indent=2) + "\n")
    plot(rows, a.out / "bench_conv.png")
    print(f"wrote {a.out / 'bench_conv.json'} and {a.out / 'bench_conv.png'} in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
