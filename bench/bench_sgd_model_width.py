#!/usr/bin/env python3
"""SGD engine, end-to-end low precision: training loss per stored model width against full precision.

ZipML §3 (model stochastically rounded).  For each width w the run is the engine's bit-exact twin
``models.zipml.fixed_point.engine_run`` with ``model_bits=w`` and the xorshift32 model lanes
(``Xorshift32Lanes``), exactly what ``SgdEngine(model_bits=w)`` computes (``tests/test_sgd_engine.py`` and
``tests/test_sgd_host.py`` check engine == twin); the twin is used here because it needs no simulator build per
width.  Same samples as ``python host/run.py``: Q4 compact double samples drawn afresh every epoch, step
2**-(s0 + e // 2), staleness of the 512-bit engine (R = 1 or 2 beats).  Reports the final training loss, its
ratio to the float64 reference (``linear_sgd(mode="full")`` with the same steps) and to the 32-bit model.

Two scales per narrow width w: ``data`` (the fractional bits ``model_frac_bits_for`` picks from the
least-squares solution of the scaled data, the finest grid that holds its largest weight) and ``fixed``
(f = w - 4, a +-8 range whatever the data).  ``rounding_floor_loss`` is the loss of the least-squares solution
rounded to nearest on the same grid: what a model of that width can represent at best.

    python bench/bench_sgd_model_width.py --out docs/results [--datasets synthetic100 diabetes] [--epochs 10]

Writes ``sgd_model_width.json`` and ``sgd_model_width.png``.
"""
import argparse
import json
import math
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from hw.sgd.engine import PIPE_LATENCY_BASE  # noqa: E402
from hw.sgd.layout import beats_per_sample, lanes, staleness  # noqa: E402
from hw.sgd.tree import tree_levels  # noqa: E402
from models.zipml.datasets import load_dataset, prepare_linear  # noqa: E402
from models.zipml.fixed_point import engine_run, model_frac_bits_for, round_model_to_width, to_fixed  # noqa: E402
from models.zipml.quantize import quantize_codes  # noqa: E402
from models.zipml.rng import Xorshift32Lanes  # noqa: E402
from models.zipml.sgd import auto_step, least_squares_loss, linear_sgd  # noqa: E402

WIDTHS = (32, 16, 12, 8)


def run(name, bits, widths, epochs, bus_bits, samples, seed=0):
    A, y = prepare_linear(load_dataset(name), signed=True)
    A, y = A[:samples], y[:samples]
    n, d = A.shape
    L = lanes(bits, bus_bits, "compact")
    R = beats_per_sample(d, bits, bus_bits, "compact")
    delay = staleness(PIPE_LATENCY_BASE + tree_levels(L), R)  # the engine's pipe_latency register
    s0 = max(0, math.ceil(math.log2(1.0 / auto_step(A, 1))) + 3)
    labels = to_fixed(y)
    x_ls = np.linalg.lstsq(A, y, rcond=None)[0]
    fp = linear_sgd(A, y, mode="full", epochs=epochs, step=2.0**-s0, batch_size=1, rng=seed,
                    schedule=lambda ep: 2.0**-(s0 + ep // 2))
    rows = []
    runs = [(w, "full", 23) if w == 32 else (w, scale, model_frac_bits_for(x_ls, w) if scale == "data" else w - 4)
            for w in widths for scale in (("data", "fixed") if w < 32 else ("full",))]
    for w, scale, frac in runs:
        t0 = time.perf_counter()
        rng = np.random.default_rng(seed)
        twin = Xorshift32Lanes(seed=seed + 1, n_lanes=L)
        kw = {} if w == 32 else {"model_bits": w, "model_frac_bits": frac, "model_rng": twin}
        saturated = False
        x = np.zeros(d, dtype=np.int64)
        losses = []
        for e in range(epochs):
            q1 = quantize_codes(A, bits, signed=True, rng=rng)
            q2 = quantize_codes(A, bits, signed=True, rng=rng)
            r = engine_run(x, q1, q2, labels, bits, signed=True, step_shift=s0 + e // 2, delay=delay, **kw)
            x, saturated = r.x, saturated or r.x_saturated
            losses.append(least_squares_loss(A, y, x / 2.0**23))
        floor = least_squares_loss(A, y, x_ls if w == 32 else round_model_to_width(x_ls, w, frac))
        rows.append({"dataset": name, "bits": bits, "encoding": "compact", "model_bits": w, "scale": scale,
                     "model_frac_bits": frac, "model_range": 2.0**(w - 1 - frac), "features": d, "samples": n,
                     "max_abs_lstsq_weight": float(np.abs(x_ls).max()), "model_saturated": bool(saturated),
                     "loss_per_epoch": losses, "fp_loss_per_epoch": [float(v) for v in fp.loss[1:]],
                     "final_loss": losses[-1], "final_loss_ratio_vs_float": losses[-1] / fp.loss[-1],
                     "lstsq_loss": least_squares_loss(A, y, x_ls), "rounding_floor_loss": floor,
                     "wall_seconds": time.perf_counter() - t0})
        print(f"{name:>14} Q{bits} model {w:>2} bits, {scale:>5} scale (f = {frac:>2}): final loss {losses[-1]:.6f} "
              f"({100 * (rows[-1]['final_loss_ratio_vs_float'] - 1):+.2f} % vs float64; "
              f"rounding floor {floor:.6f})", flush=True)
    base = next(r for r in rows if r["model_bits"] == 32)
    for r in rows:
        r["final_loss_ratio_vs_32bit_model"] = r["final_loss"] / base["final_loss"]
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("results"), help="output folder (default: results)")
    p.add_argument("--datasets", nargs="+", default=["synthetic100", "diabetes"],
                   help="(default: synthetic100 diabetes)")
    p.add_argument("--widths", nargs="+", type=int, default=list(WIDTHS), help="(default: 32 16 12 8)")
    p.add_argument("--bits", type=int, default=4, help="sample precision, compact encoding (default: 4)")
    p.add_argument("--epochs", type=int, default=10, help="(default: 10)")
    p.add_argument("--samples", type=int, default=2000, help="first rows of each set (default: 2000)")
    p.add_argument("--bus-bits", type=int, default=512, help="engine bus width for the staleness (default: 512)")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.datasets:
        rows += run(name, args.bits, args.widths, args.epochs, args.bus_bits, args.samples)
    report = {"epochs": args.epochs, "bits": args.bits, "bus_bits": args.bus_bits, "rows": rows}
    (args.out / "sgd_model_width.json").write_text(json.dumps(report, indent=1))
    plot(report, args.out / "sgd_model_width.png")
    print(f"wrote {args.out / 'sgd_model_width.json'} and {args.out / 'sgd_model_width.png'}")


def plot(report, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(dict.fromkeys(r["dataset"] for r in report["rows"]))
    fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 4), squeeze=False)
    for ax, name in zip(axes[0], names):
        rows = [r for r in report["rows"] if r["dataset"] == name]
        ep = np.arange(1, report["epochs"] + 1)
        ax.plot(ep, rows[0]["fp_loss_per_epoch"], "k--", label="float64 reference")
        for r in rows:
            ax.plot(ep, r["loss_per_epoch"], "o-" if r["scale"] != "fixed" else "x:", ms=3,
                    label=f"model {r['model_bits']} bits, {r['scale']} scale (f = {r['model_frac_bits']})")
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel("training loss")
        ax.set_title(f"{name}: Q{report['bits']} compact samples, stored model width")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
