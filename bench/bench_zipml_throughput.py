"""ZipML experiment (e): epochs per second of the vectorised double-sampled SGD vs scikit-learn's SGDRegressor.

Ref: ZipML (arXiv 1611.05402) §2.2 double sampling; sklearn.linear_model.SGDRegressor (plain per-sample SGD in
Cython, squared loss, no penalty, constant step) as the CPU baseline on the same scaled data.  One BLAS thread.
Each configuration runs ``--epochs`` epochs after one warm-up epoch; our time includes drawing the fresh quantized
copies every epoch.  Also: the hardware-twin generator's throughput (random words per second).

    python bench/bench_zipml_throughput.py --out results      # writes results/zipml_throughput.{json,png}
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import time  # noqa: E402
import warnings  # noqa: E402

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.linear_model import SGDRegressor  # noqa: E402

from models.zipml import (Xorshift32Lanes, least_squares_loss, linear_sgd, load_dataset, prepare_linear,  # noqa
                          quantize)
from models.zipml.report import bench_parser, save_figure, write_json  # noqa: E402


def sklearn_epochs_per_s(A, b, epochs, eta):
    reg = SGDRegressor(loss="squared_error", penalty=None, learning_rate="constant", eta0=eta,
                       fit_intercept=False, max_iter=1, tol=None, shuffle=True, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        reg.partial_fit(A, b)  # warm-up
        t0 = time.perf_counter()
        for _ in range(epochs):
            reg.partial_fit(A, b)
        dt = time.perf_counter() - t0
    return epochs / dt, least_squares_loss(A, b, reg.coef_)


def main():
    p = bench_parser(__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=5, help="timed epochs per configuration (default: %(default)s)")
    args = p.parse_args()
    epochs = 2 if args.quick else args.epochs
    names = ("synthetic100",) if args.quick else ("synthetic10", "synthetic100", "synthetic1000")
    results = {}
    for name in names:
        A, b = prepare_linear(load_dataset(name), signed=True)
        row = {"n_samples": A.shape[0], "n_features_with_bias": A.shape[1]}
        eps, loss = sklearn_epochs_per_s(A, b, epochs, eta=0.01 / A.shape[1] ** 0.5)
        row["sklearn_sgdregressor"] = {"epochs_per_s": eps, "samples_per_s": eps * A.shape[0],
                                       "final_loss": loss, "batch_size": 1}
        for mode, bits in (("full", None), ("double", 4), ("double", 2), ("end2end", 8)):
            for bs in (16, 128):
                kw = dict(mode=mode, bits=bits or 8, signed=True, batch_size=bs, schedule="inverse", decay=0.3,
                          rng=args.seed)
                linear_sgd(A, b, epochs=1, **kw)  # warm-up
                r = linear_sgd(A, b, epochs=epochs, **kw)
                key = f"{mode}{'_q' + str(bits) if bits else ''}_batch{bs}"
                row[key] = {"epochs_per_s": epochs / r.seconds, "samples_per_s": epochs * A.shape[0] / r.seconds,
                            "final_loss": r.final_loss, "batch_size": bs}
                if mode != "full":  # share of an epoch spent drawing the two fresh quantized copies
                    g = np.random.default_rng(0)
                    t0 = time.perf_counter()
                    for _ in range(2):
                        quantize(A, bits, signed=True, rng=g, dtype=np.float32)
                    tq = time.perf_counter() - t0
                    row[key]["quantize_s_per_epoch"] = tq
                    row[key]["epochs_per_s_excluding_quantization"] = 1.0 / max(r.seconds / epochs - tq, 1e-9)
        for k, v in row.items():
            if isinstance(v, dict):
                extra = (f"  ({v['epochs_per_s_excluding_quantization']:.1f} without drawing copies)"
                         if "quantize_s_per_epoch" in v else "")
                print(f"{name:14s} {k:28s} {v['epochs_per_s']:9.2f} epochs/s  loss {v['final_loss']:.4g}{extra}")
        ref = row["sklearn_sgdregressor"]["epochs_per_s"]
        row["speedup_double_q4_batch16_vs_sklearn_x"] = row["double_q4_batch16"]["epochs_per_s"] / ref
        row["speedup_double_q4_batch128_vs_sklearn_x"] = row["double_q4_batch128"]["epochs_per_s"] / ref
        results[name] = row
    g = Xorshift32Lanes(1, 64)
    g.words(1 << 16)
    t0 = time.perf_counter()
    g.words(1 << 22)
    twin = {"lanes": 64, "words_per_s": (1 << 22) / (time.perf_counter() - t0)}
    print(f"twin RNG: {twin['words_per_s'] / 1e6:.1f} M words/s (64 lanes)")
    fig, ax = plt.subplots(figsize=(9, 4.5))
    keys = [k for k in results[names[0]] if isinstance(results[names[0]][k], dict)]
    w = 0.8 / len(names)
    for i, name in enumerate(names):
        ax.bar(np.arange(len(keys)) + i * w, [results[name][k]["epochs_per_s"] for k in keys], w,
               label=f"{name} (d={results[name]['n_features_with_bias']})")
    ax.set_xticks(np.arange(len(keys)) + w * (len(names) - 1) / 2, keys, rotation=30, ha="right", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("epochs per second (10,000 samples, 1 thread)")
    ax.set_title("Vectorised ZipML SGD vs scikit-learn SGDRegressor")
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=8)
    write_json(args.out, "throughput", {"timed_epochs": epochs, "datasets": results, "twin_rng": twin})
    print(save_figure(fig, args.out, "throughput"))


if __name__ == "__main__":
    main()
