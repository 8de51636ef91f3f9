"""ZipML experiment (d): small CNN on scikit-learn digits with quantized weights — full precision vs ZipML 5-level
(variance-optimal levels) vs XNOR-style binary vs uniform 5-level; test accuracy over seeds.

Ref: ZipML (arXiv 1611.05402) deep-learning section; ZipML/caffe@23ce677 (weights quantized in forward and
backward, full-precision update; modes NLEVELS=2 XNOR binary, NLEVELS=5 uniform, NLEVELS=5 OPTIMAL=1 "ZipML").
Network of models.zipml.deep.DigitsCNN (2 conv + 2 linear, all four weight tensors quantized), Adam lr 2e-3,
minibatch 64, 25 epochs, nearest rounding in the forward pass (as the caffe kernels), 1 torch thread.
Stratified 75/25 split of the 1,797 digits (8×8).

    python bench/bench_zipml_cnn.py --out results      # writes results/zipml_cnn.{json,png}
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from models.zipml.deep import WEIGHT_MODES, load_digits_split, train_cnn  # noqa: E402
from models.zipml.report import bench_parser, save_figure, write_json  # noqa: E402


def main():
    p = bench_parser(__doc__.splitlines()[0])
    p.add_argument("--rounding", choices=("nearest", "stochastic"), default="nearest",
                   help="weight rounding during training (default: %(default)s)")
    args = p.parse_args()
    epochs, seeds = (4, [args.seed]) if args.quick else (25, [args.seed + i for i in range(3)])
    data = load_digits_split(seed=0)
    results = {}
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, mode in enumerate(WEIGHT_MODES):
        runs = [train_cnn(mode, epochs=epochs, rounding=args.rounding, seed=s, data=data) for s in seeds]
        accs = np.array([r["test_accuracy"] for r in runs])
        results[mode] = {"test_accuracy_mean": accs.mean(), "test_accuracy_std": accs.std(ddof=1) if len(accs) > 1
                         else 0.0, "test_accuracy_per_seed": accs, "final_train_loss_mean":
                         float(np.mean([r["train_loss"][-1] for r in runs])),
                         "seconds_per_run": float(np.mean([r["seconds"] for r in runs]))}
        print(f"{mode:9s} test accuracy {accs.mean():.4f} ± {results[mode]['test_accuracy_std']:.4f} "
              f"({results[mode]['seconds_per_run']:.1f} s/run)")
        ax.bar(i, accs.mean(), yerr=results[mode]["test_accuracy_std"], color=f"C{i}", capsize=4)
        ax.annotate(f"{100 * accs.mean():.1f}%", (i, accs.mean()), ha="center", textcoords="offset points",
                    xytext=(0, 8))
        ax2.semilogy(np.arange(1, epochs + 1), np.mean([r["train_loss"] for r in runs], axis=0), color=f"C{i}",
                     label=mode)
    ax.set_xticks(range(len(WEIGHT_MODES)), WEIGHT_MODES)
    lo = min(v["test_accuracy_mean"] for v in results.values())
    ax.set_ylim(max(0.0, lo - 0.08), 1.0)
    ax.set_ylabel(f"test accuracy (mean ± sd over {len(seeds)} seeds)")
    ax.set_title("digits CNN, quantized weights")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("training cross-entropy")
    ax2.grid(True, which="both", alpha=0.3)
    ax2.legend()
    write_json(args.out, "cnn", {"epochs": epochs, "seeds": seeds, "rounding": args.rounding,
                                 "n_train": len(data[2]), "n_test": len(data[3]), "modes": results})
    print(save_figure(fig, args.out, "cnn"))


if __name__ == "__main__":
    main()
