#!/usr/bin/env python3
"""Speed of the convolution engine, side by side in one run (Verilator backend, hardware cycle counters).

1. Cycles per pixel against the MAC lower bound (useful MACs / lanes) for the gated digits PixelCNN (the model
   ``--model pixelcnn`` runs) and the plain masked net, likelihood and on-chip sampling, logits checked equal to
   the NumPy integer reference.
2. Projected images/s: sampled images per second at the Fmax of the newest ulx3s-85f build report of the same
   engine (``host.pixelcnn_run.latest_build_report``; null without one) against the PyTorch cached sampler
   (``models.pixelcnn.sample.sample_model``: vertical stack once per row, horizontal stack and head at the new
   pixel only) of the same float model (``bench_pixelcnn_digits.pt``, the checkpoint the gated export quantises)
   on this machine's CPU at batch 1 and batch 64.
3. Pyramid (and Grayscale) against the baseline: likelihood and sampling cycles per image through
   ``host/run.py`` (every stage on the engine).

Writes ``bench_conv.json`` (keys named with their units) and ``bench_conv.png`` to ``--out``.

    python bench/bench_conv.py --out results                # ~3-5 min (Verilator build cached)
"""
import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from host import pixelcnn_run as R  # noqa: E402
from host.backends import open_device  # noqa: E402
from hw.build import CONV_BOARD_DEFAULTS  # noqa: E402
from hw.pixelcnn import program as prog  # noqa: E402
from models.pixelcnn import data  # noqa: E402
from models.pixelcnn.export import committed_export_path, load_export  # noqa: E402
from models.pixelcnn.integer import forward_int  # noqa: E402

FLOAT_CHECKPOINT = Path("models/pixelcnn/weights/bench_pixelcnn_digits.pt")


def engine_rows(images, samples, log, board="ulx3s-85f"):
    """Gated and masked digits models on ``board``'s conv engine (``hw.build.CONV_BOARD_DEFAULTS``, the
    parameters its bitstream is built with, so the build report's Fmax applies): cycles vs the MAC lower
    bound, exactness."""
    design = R.default_design(**CONV_BOARD_DEFAULTS[board][0])
    test = data.load("digits").test[:images]
    rows = []
    with open_device("verilator", design=design, timeout=900.0) as dev:
        cd = R.ConvDevice(dev, timeout=900.0)
        for name, kind in (("pixelcnn (gated)", "gated"), ("masked-pixelcnn", "stream")):
            spec = load_export(committed_export_path("digits", kind), max_channels=cd.params.max_channels)
            H, W = test.shape[2], test.shape[3]
            cd.program(spec, W, H)
            lg, lc = cd.likelihood_logits(test)
            exact = bool(np.array_equal(lg.reshape(len(test), 1, spec["levels"], H, W), forward_int(spec, test)))
            _, sc = cd.sample(samples)
            rep = R.cycle_report(spec, cd.params, lc, len(test), sc, samples, H, W)
            row = {"model": name, "architecture": rep["architecture"], "height": H, "width": W,
                   "lanes": cd.params.lanes, "logits_equal_reference": exact,
                   "likelihood_cycles_per_pixel": rep["cycles_per_pixel"],
                   "mac_lower_bound_cycles_per_pixel": rep["mac_lower_bound_cycles_per_pixel"],
                   "cycles_over_lower_bound": rep["cycles_per_pixel"] / rep["mac_lower_bound_cycles_per_pixel"],
                   "mac_beats_per_pixel": rep["mac_beats_per_pixel"],
                   "model_mac_beats_per_pixel": prog.mac_beats_per_pixel(spec, cd.params.lanes),
                   "likelihood_cycles_per_image": rep["cycles_per_image"],
                   "cycles_per_sampled_pixel": rep["cycles_per_sampled_pixel"],
                   "cycles_per_sampled_image": rep["cycles_per_sampled_image"],
                   "mac_utilization": rep["mac_utilization"],
                   "useful_macs_per_pixel": rep["useful_macs_per_pixel"]}
            log(f"{name}: {row['likelihood_cycles_per_pixel']:,.1f} cycles/pixel vs MAC lower bound "
                f"{row['mac_lower_bound_cycles_per_pixel']:,.1f} ({row['cycles_over_lower_bound']:.3f}x), sampling "
                f"{row['cycles_per_sampled_image']:,.0f} cycles/image, logits exact {exact}")
            rows.append(row)
        params = cd.params.as_dict()
    return rows, params


def torch_cached_sampler(batches, log):
    """Images/s of the PyTorch cached sampler of the gated float model on this CPU, per batch size."""
    import torch

    from models.pixelcnn.sample import sample_model
    from models.pixelcnn.train import load_checkpoint
    model, ck = load_checkpoint(FLOAT_CHECKPOINT)
    model.eval()
    shape = (1, 8, 8)
    sample_model(model, 2, shape, seed=1)  # warm-up
    out = {"checkpoint": str(FLOAT_CHECKPOINT), "torch_threads": torch.get_num_threads(),
           "torch_version": torch.__version__}
    for b in batches:
        t = time.perf_counter()
        with torch.no_grad():
            sample_model(model, b, shape, seed=2)
        s = time.perf_counter() - t
        out[f"images_per_s_batch{b}"] = b / s
        out[f"s_per_batch{b}"] = s
        log(f"PyTorch cached sampler, batch {b}: {b / s:,.1f} images/s ({s:.2f} s, {out['torch_threads']} threads)")
    return out


def chained_rows(images, samples, log):
    """Pyramid and Grayscale vs the baseline through the CLI (every stage on the engine)."""
    from host import run
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in ("pixelcnn", "pyramid-pixelcnn", "gray-pixelcnn"):
            out = Path(tmp) / f"{model}.json"
            rc = run.main(["--model", model, "--dataset", "digits", "--limit", str(images), "--samples",
                           str(samples), "--json", str(out), "--plot", str(Path(tmp) / f"{model}.png"),
                           "--no-progress"])
            r = json.loads(out.read_text())
            rows.append({"model": model, "architecture": r.get("architecture"), "exit_status": rc,
                         "bpd_equal_reference": r["bpd_equal"],
                         "likelihood_cycles_per_image": r["cycles_per_image"],
                         "cycles_per_sampled_image": r.get("cycles_per_sampled_image")})
            log(f"{model}: {r['cycles_per_image']:,.0f} likelihood cycles/image, "
                f"{r.get('cycles_per_sampled_image') or 0:,.0f} sampling cycles/image")
    base = rows[0]
    for row in rows:
        row["likelihood_cycles_vs_baseline"] = row["likelihood_cycles_per_image"] / base["likelihood_cycles_per_image"]
        if row["cycles_per_sampled_image"] and base["cycles_per_sampled_image"]:
            row["sampling_cycles_vs_baseline"] = row["cycles_per_sampled_image"] / base["cycles_per_sampled_image"]
    return rows


def plot(res, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(15, 4.2))
    rows = res["engine"]
    x = np.arange(len(rows))
    a.bar(x - 0.2, [r["likelihood_cycles_per_pixel"] for r in rows], 0.4, label="measured (likelihood)")
    a.bar(x + 0.2, [r["mac_lower_bound_cycles_per_pixel"] for r in rows], 0.4, label="MAC lower bound")
    a.set_xticks(x, [r["model"] for r in rows])
    a.set_ylabel("cycles per pixel")
    a.set_title(f"cycles per pixel, P = {rows[0]['lanes']} lanes")
    a.legend(fontsize=8)
    sp = res["images_per_s"]
    labels, vals, colors = [], [], []
    if sp["engine_sampled_images_per_s_at_fmax"]:
        labels.append(f"engine @ {res['fmax_mhz']:.1f} MHz\n(projected)")
        vals.append(sp["engine_sampled_images_per_s_at_fmax"])
        colors.append("C2")
    for k in sorted((k for k in sp if k.startswith("torch_cached_images_per_s_batch")),
                    key=lambda k: int(k.rsplit("batch", 1)[1])):
        labels.append(f"PyTorch cached, CPU\nbatch {k.rsplit('batch', 1)[1]}")
        vals.append(sp[k])
        colors.append("C1")
    b.bar(range(len(vals)), vals, color=colors)
    b.set_xticks(range(len(vals)), labels, fontsize=8)
    b.set_yscale("log")
    b.set_ylabel("sampled images / s (8x8 digits, gated)")
    b.set_title("sampling throughput")
    ch = res["chained"]
    x = np.arange(len(ch))
    c.bar(x - 0.2, [r["likelihood_cycles_per_image"] for r in ch], 0.4, label="likelihood")
    c.bar(x + 0.2, [r["cycles_per_sampled_image"] or 0 for r in ch], 0.4, label="sampling")
    c.set_xticks(x, [r["model"] for r in ch], fontsize=8)
    c.set_ylabel("cycles per image (all stages)")
    c.set_title("Pyramid / Grayscale vs baseline")
    c.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("results"), help="output folder")
    p.add_argument("--images", type=int, default=2, help="test images scored per model on the engine")
    p.add_argument("--samples", type=int, default=1, help="images sampled on chip per model")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 64], help="PyTorch sampler batch sizes")
    p.add_argument("--no-chained", action="store_true", help="skip the Pyramid/Grayscale runs")
    p.add_argument("--board", default="ulx3s-85f", choices=sorted(CONV_BOARD_DEFAULTS),
                   help="simulate this board's conv engine parameters; images/s use its newest build report")
    a = p.parse_args(argv)
    t0 = time.time()
    rows, params = engine_rows(a.images, a.samples, print, a.board)
    report_path, report = R.latest_build_report(params)
    fmax = report["fmax_mhz"] if report else None
    gated = rows[0]
    torch_side = torch_cached_sampler(a.batches, print)
    sp = {"engine_sampled_images_per_s_at_fmax": fmax * 1e6 / gated["cycles_per_sampled_image"] if fmax else None,
          "engine_likelihood_images_per_s_at_fmax": fmax * 1e6 / gated["likelihood_cycles_per_image"] if fmax else None,
          **{f"torch_cached_images_per_s_batch{b}": torch_side[f"images_per_s_batch{b}"] for b in a.batches}}
    if fmax:
        print(f"engine at {fmax} MHz ({report_path}): {sp['engine_sampled_images_per_s_at_fmax']:,.1f} sampled "
              f"images/s, {sp['engine_likelihood_images_per_s_at_fmax']:,.1f} scored images/s")
    else:
        print("no build report of this engine: no images/s projection (python -m hw.build --board ulx3s-85f "
              "--engine conv)")
    res = {"backend": "verilator", "engine_params": params,
           "fmax_mhz": fmax, "fmax_report": str(report_path) if report_path else None,
           "fmax_clk_mhz": report["clk_mhz"] if report else None,
           "fmax_timing_met": report["timing_met"] if report else None,
           "engine": rows, "images_per_s": sp, "torch": torch_side,
           "chained": [] if a.no_chained else chained_rows(a.images, a.samples, print)}
    res["wall_s"] = time.time() - t0
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "bench_conv.json").write_text(json.dumps(res, indent=2) + "\n")
    plot(res, a.out / "bench_conv.png")
    print(f"wrote {a.out / 'bench_conv.json'} and {a.out / 'bench_conv.png'} in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
