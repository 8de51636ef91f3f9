"""Bits/dim table on the same test splits: baseline Gated PixelCNN vs Grayscale vs Pyramid PixelCNN at
comparable parameter counts, next to trivial baselines (uniform; per-position independent categorical
with Laplace smoothing), plus the integer (int8) streaming model vs its float original.

    python bench/bench_pixelcnn_bpd.py --out results            # committed checkpoints (about 1 min)
    python bench/bench_pixelcnn_bpd.py --out results --quick    # retrain each model briefly (< 10 min)

Writes OUT/pixelcnn_bpd.json and OUT/pixelcnn_bpd.png. Ref: Kolesnikov & Lampert ICML 2017 (Table of
bits/dim, auxiliary-variable models vs PixelCNN); shared/docs/pixelcnn.md §5 (trivial baselines).
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from models.pixelcnn import data, export, integer  # noqa: E402
from models.pixelcnn.models import n_params  # noqa: E402
from models.pixelcnn.train import evaluate, load_checkpoint, train  # noqa: E402

WEIGHTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "models", "pixelcnn", "weights")
DATASETS = ("digits", "faces", "patches")
MODELS = ("pixelcnn", "gray", "pyramid")
# the architectures of the committed checkpoints (see docs/pixelcnn-models.md for the training commands)
ARCH = {"pixelcnn": dict(hidden=32, n_layers=5),
        "gray": dict(hidden=28, n_layers=5, gray_hidden=12, gray_layers=4, cond_hidden=16, exact=0, cond_layers=3,
                     cond_dilated=0),
        "pyramid": dict(hidden=24, coarse_layers=5, fine_layers=3, cond_hidden=16, logit_prior=1)}
# patches: the Grayscale colour network is the baseline's backbone, warm-started from the trained baseline
# (train --warm-start; see docs/pixelcnn-models.md), with the exact mask and the luma tilt on G
GRAY_PATCHES_ARCH = dict(hidden=32, n_layers=5, gray_hidden=12, gray_layers=4, cond_hidden=32, cond_layers=3,
                         cond_dilated=0, exact=1, luma_tilt=1)
QUICK_EPOCHS = {"digits": 8, "faces": 8, "patches": 1}


def trivial(ds, test=None):
    """Uniform and per-position independent categorical (Laplace +1 counts on train) test bits/dim."""
    L = ds.levels
    test = ds.test if test is None else test
    counts = np.ones((L,) + ds.shape)
    np.add.at(counts, (ds.train,) + tuple(np.indices(ds.train.shape)[1:]), 1)
    p = counts / counts.sum(0)
    idx = np.indices(test.shape)[1:]
    lp = np.log2(p[(test,) + tuple(idx)])
    return {"uniform": math.log2(L), "independent": float(-lp.mean())}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--out", default="results")
    ap.add_argument("--quick", action="store_true", help="retrain every model briefly instead of loading")
    ap.add_argument("--datasets", nargs="*", default=list(DATASETS))
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    os.makedirs(a.out, exist_ok=True)
    res = {"source": "quick retrain" if a.quick else "committed checkpoints", "datasets": {}}
    for name in a.datasets:
        ds = data.load(name)
        row = {"levels": ds.levels, "shape": list(ds.shape), "n_test": len(ds.test), "trivial_bits_per_dim": trivial(ds),
               "models": {}}
        for ename, ex in ds.extra.items():
            row[f"{ename}_trivial_bits_per_dim"] = trivial(ds, ex)
        trained = {}
        for m in MODELS:
            t0 = time.time()
            # faces: a third level and the block-sum logit prior (logit_prior=2, see PyramidPixelCNN.offset)
            faces_pyr = m == "pyramid" and name == "faces"
            arch = dict(ARCH[m], **({"n_levels": 3, "logit_prior": 2} if faces_pyr else {}))
            warm = m == "gray" and name == "patches"
            if a.quick:
                model, _ = train(m, ds, QUICK_EPOCHS[name], 8 if name == "faces" else 64,
                                 arch=GRAY_PATCHES_ARCH if warm else arch, progress=False, log=lambda s: None,
                                 warm_start=trained["pixelcnn"] if warm else None)
                trained[m] = model
            else:
                model, _ = load_checkpoint(os.path.join(WEIGHTS, f"bench_{m}_{name}.pt"))
            bpd, parts = evaluate(model, ds.test)
            row["models"][m] = {"bits_per_dim": bpd, "parts_bits_per_dim": parts, "n_params": n_params(model),
                                "eval_s": time.time() - t0}
            for ename, ex in ds.extra.items():
                eb, ep = evaluate(model, ex)
                row["models"][m][f"{ename}_bits_per_dim"] = eb
                row["models"][m][f"{ename}_parts_bits_per_dim"] = ep
            print(f"{name:8s} {m:9s} {bpd:.4f} bits/dim  {parts}", flush=True)
            if m == "gray" and not model.exact:
                # the same trained weights with values inconsistent with the gray pixel excluded from the
                # softmax (GrayscalePixelCNN.exact): exact, so only the colour part can drop
                model.exact = True
                xb, xp = evaluate(model, ds.test)
                row["models"]["gray"]["exact_mask_bits_per_dim"] = xb
                row["models"]["gray"]["exact_mask_parts_bits_per_dim"] = xp
                for ename, ex in ds.extra.items():
                    eb, ep = evaluate(model, ex)
                    row["models"]["gray"][f"{ename}_exact_mask_bits_per_dim"] = eb
                    row["models"]["gray"][f"{ename}_exact_mask_parts_bits_per_dim"] = ep
                print(f"{name:8s} gray+mask {xb:.4f} bits/dim  {xp}", flush=True)
        res["datasets"][name] = row
        f = os.path.join(WEIGHTS, f"stream_{name}_int8.npz")
        if os.path.exists(f) and not a.quick:
            spec = export.load_export(f)
            fm, _ = load_checkpoint(os.path.join(WEIGHTS, f"stream_{name}_float.pt"))
            fb, _ = evaluate(fm.double(), ds.test)
            ib = integer.evaluate_int(spec, ds.test)
            row["integer_stream_model"] = {"float_bits_per_dim": fb, "int8_bits_per_dim": ib,
                                           "int8_minus_float_bits_per_dim": ib - fb, "n_params": n_params(fm)}
            print(f"{name:8s} stream    float {fb:.4f}  int8 {ib:.4f}", flush=True)
    with open(os.path.join(a.out, "pixelcnn_bpd.json"), "w") as fh:
        json.dump(res, fh, indent=1)
    plot(res, os.path.join(a.out, "pixelcnn_bpd.png"))
    return res


def plot(res, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(res["datasets"])
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.2), squeeze=False)
    for ax, n in zip(axes[0], names):
        r = res["datasets"][n]
        labels = ["uniform", "indep."] + list(r["models"])
        vals = [r["trivial_bits_per_dim"]["uniform"], r["trivial_bits_per_dim"]["independent"]] + \
               [v["bits_per_dim"] for v in r["models"].values()]
        if "integer_stream_model" in r:
            labels += ["stream f32", "stream int8"]
            vals += [r["integer_stream_model"]["float_bits_per_dim"], r["integer_stream_model"]["int8_bits_per_dim"]]
        ax.bar(range(len(vals)), vals, color=["#bbb", "#999"] + ["C0", "C1", "C2", "C3", "C4"][:len(vals) - 2])
        ax.set_xticks(range(len(vals)), labels, rotation=45, ha="right", fontsize=8)
        for i, v in enumerate(vals):
            ax.text(i, v, f"{v:.2f}", ha="center", va="bottom", fontsize=7)
        ax.set_title(f"{n} ({r['levels']} levels)")
        ax.set_ylabel("test bits/dim")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
