"""ZipML experiment (c): Chebyshev logistic regression and refetching SVM vs naive rounding, at Q2/Q4/Q8.

Ref: ZipML arXiv v3 (1611.05402v3) non-linear section: unbiased polynomial (Chebyshev) estimate of the logistic
loss derivative from independent quantized copies; refetching heuristic for hinge loss; "8-bit precision is often
sufficient" and the framework "does not always outperform the naive rounding approach".
Datasets: breast_cancer (569 × 30) and digits one-vs-all "3 vs rest" (1797 × 64), per-feature [0, 1] + bias,
labels ±1, stratified 70/30 train/test split, 30 epochs, minibatch 16, γ_e = 0.5/(1 + e/5).
Logistic: degree-15 Chebyshev approximation of ℓ' on [−32, 32] (16 quantized copies per epoch), projected onto
‖x‖ ≤ 32/max‖a‖ (all methods).  SVM: λ = 1e−3; refetch bound Δ‖x‖₁ (worst case, exact indicator) or 3σ.

    python bench/bench_zipml_nonlinear.py --out results      # writes results/zipml_nonlinear.{json,png}
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

from models.zipml import load_dataset, prepare_linear  # noqa: E402
from models.zipml.nonlinear import accuracy, train_logistic, train_svm  # noqa: E402
from models.zipml.report import bench_parser, save_figure, write_json  # noqa: E402

BITS = (2, 4, 8)


def main():
    args = bench_parser(__doc__.splitlines()[0]).parse_args()
    epochs = 8 if args.quick else 30
    sets = {"breast_cancer": dict(), "digits_3_vs_rest": dict(positive_class=3)}
    results = {}
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    for col, (name, kw) in enumerate(sets.items()):
        A, y = prepare_linear(load_dataset(name.split("_3_")[0]), labels="pm1", **kw)
        Atr, Ate, ytr, yte = train_test_split(A, y, test_size=0.3, random_state=args.seed, stratify=y)
        res = {"logistic": {}, "svm": {}}
        common = dict(epochs=epochs, rng=args.seed)
        runs = {"logistic": [("full", None, {})] + [(m, b, {}) for b in BITS for m in ("naive", "chebyshev")],
                "svm": [("full", None, {})] + [(m, b, kwb) for b in BITS for m, kwb in
                                                (("naive", {}), ("refetch", {"bound": "worst"}),
                                                 ("refetch", {"bound": "std"}))]}
        for task, specs in runs.items():
            for method, bits, extra in specs:
                fn = train_logistic if task == "logistic" else train_svm
                r = fn(Atr, ytr, method=method, bits=bits or 8, **common, **extra)
                key = "full" if method == "full" else f"{method}{'_' + extra['bound'] if extra else ''}_q{bits}"
                row = {"final_train_loss": r.final_loss, "train_accuracy": r.accuracy[-1],
                       "test_accuracy": accuracy(Ate, yte, r.x), "seconds": r.seconds}
                if method == "refetch":
                    row["refetch_rate_last_epoch"] = float(r.refetch_rate[-1])
                    row["refetch_rate_mean"] = float(r.refetch_rate.mean())
                res[task][key] = row
                print(f"{name:17s} {task:8s} {key:18s} loss {r.final_loss:.4f} test acc {row['test_accuracy']:.4f}"
                      + (f" refetch {row['refetch_rate_mean']:.3f}" if method == "refetch" else ""))
        for row_i, task in enumerate(("logistic", "svm")):
            ax = axes[row_i, col]
            full = res[task]["full"]["final_train_loss"]
            methods = ["naive", "chebyshev"] if task == "logistic" else ["naive", "refetch_worst", "refetch_std"]
            w = 0.8 / len(methods)
            for i, m in enumerate(methods):
                vals = [res[task][f"{m}_q{b}"]["final_train_loss"] for b in BITS]
                bars = ax.bar(np.arange(len(BITS)) + i * w, vals, w, label=m)
                if m.startswith("refetch"):
                    for bar, b in zip(bars, BITS):
                        ax.annotate(f"{100 * res[task][f'{m}_q{b}']['refetch_rate_mean']:.0f}%",
                                    (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                                    fontsize=7, textcoords="offset points", xytext=(0, 2))
            ax.axhline(full, color="k", ls=":", label="full precision")
            ax.set_xticks(np.arange(len(BITS)) + w * (len(methods) - 1) / 2, [f"Q{b}" for b in BITS])
            lo = min(v["final_train_loss"] for v in res[task].values())
            ax.set_ylim(0.9 * lo, None)
            ax.set_ylabel("final training loss" + (" (hinge + λ/2‖x‖²)" if task == "svm" else " (logistic)"))
            ax.set_title(f"{name}: {task}" + (" (labels: mean refetch rate)" if task == "svm" else ""))
            ax.legend(fontsize=7)
        results[name] = {"n_train": len(ytr), "n_test": len(yte), "n_features_with_bias": A.shape[1], **res}
    fig.suptitle("Non-linear losses on quantized samples vs naive rounding")
    fig.tight_layout()
    write_json(args.out, "nonlinear", {"epochs": epochs, "batch_size": 16, "chebyshev_degree": 15,
                                       "chebyshev_radius": 32.0, "svm_lambda": 1e-3, "datasets": results})
    print(save_figure(fig, args.out, "nonlinear"))


if __name__ == "__main__":
    main()
