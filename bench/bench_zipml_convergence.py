"""ZipML experiment (a): training loss vs epochs for full precision, naive Q2/Q4/Q8 and double-sampled Q2/Q4/Q8.

Ref: ZipML (arXiv 1611.05402) §2, Figure "training loss vs epochs" (CPU simulation of 32-bit vs naive vs double
sampling).  Datasets: synthetic100 (paper) and diabetes (real regression set bundled with scikit-learn; the paper's
cadata/YearPrediction need a download).  Features min-max scaled per feature to [-1, 1] plus a bias column, labels
to [0, 1]; minibatch 32; step 1/(λ_max + E‖a‖²/32) with γ_e = γ0 / (1 + e/0.3); loss on full-precision data.
Also the symmetrized double-sampling estimator ½[Q1(Q2ᵀx − b) + Q2(Q1ᵀx − b)] (``double_sym``, JSON only) and its
per-sample gradient variance at the least-squares optimum against the plain one, measured over 40 copy pairs of
2,000 samples and beside the exact formula (models.zipml.sgd.double_sampling_variance).

    python bench/bench_zipml_convergence.py --out results      # writes results/zipml_convergence.{json,png}
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from models.zipml import least_squares_loss, least_squares_optimum, linear_sgd, load_dataset, prepare_linear  # noqa
from models.zipml.quantize import quantize, rounding_variance  # noqa: E402
from models.zipml.sgd import double_sampling_variance  # noqa: E402
from models.zipml.report import bench_parser, save_figure, write_json  # noqa: E402

METHODS = [("full", None)] + [(m, b) for m in ("naive", "double", "double_sym") for b in (2, 4, 8)]
VARIANCE_DRAWS = 40  # independent copy pairs per sample for the measured gradient variance


def measured_variance(A, b, x, bits, rng, rows=2000):
    """Monte Carlo E‖g − a(aᵀx − b)‖² per sample (plain and symmetrized double sampling) over ``VARIANCE_DRAWS``
    copy pairs of ``rows`` random samples, beside the exact formula."""
    idx = rng.choice(A.shape[0], size=min(rows, A.shape[0]), replace=False)
    As, bs = A[idx], b[idx]
    exact = As * (As @ x - bs)[:, None]
    out = {"plain": 0.0, "symmetric": 0.0}
    for _ in range(VARIANCE_DRAWS):
        Q1, Q2 = (quantize(As, bits, signed=True, rng=rng) for _ in range(2))
        g = Q1 * (Q2 @ x - bs)[:, None]
        gs = 0.5 * (g + Q2 * (Q1 @ x - bs)[:, None])
        out["plain"] += float(np.sum((g - exact) ** 2)) / (len(idx) * VARIANCE_DRAWS)
        out["symmetric"] += float(np.sum((gs - exact) ** 2)) / (len(idx) * VARIANCE_DRAWS)
    var = rounding_variance(As, bits, signed=True)
    return {"measured_plain": out["plain"], "measured_symmetric": out["symmetric"],
            "formula_plain": float(double_sampling_variance(As, bs, x, var).mean()),
            "formula_symmetric": float(double_sampling_variance(As, bs, x, var, symmetric=True).mean()),
            "measured_reduction_x": out["plain"] / out["symmetric"]}


def main():
    args = bench_parser(__doc__.splitlines()[0]).parse_args()
    base_epochs = 6 if args.quick else 20
    results = {}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, (name, mult) in zip(axes, (("synthetic100", 1), ("diabetes", 5))):
        epochs = base_epochs * mult  # diabetes has 442 samples: more epochs for the same number of steps
        A, b = prepare_linear(load_dataset(name), signed=True)
        opt = least_squares_loss(A, b, least_squares_optimum(A, b))
        runs = {}
        for mode, bits in METHODS:
            r = linear_sgd(A, b, mode=mode.replace("_sym", ""), symmetric=mode.endswith("_sym"), bits=bits or 8,
                           signed=True, epochs=epochs, schedule="inverse", decay=0.3, batch_size=32, rng=args.seed)
            key = "full" if mode == "full" else f"{mode}_q{bits}"
            runs[key] = {"final_loss": r.final_loss, "loss_per_epoch": r.loss, "seconds": r.seconds,
                         "epochs_per_s": epochs / r.seconds}
            print(f"{name:14s} {key:13s} final loss {r.final_loss:.6g}  ({r.seconds:.2f} s)")
            if mode == "double_sym":  # loss curves nearly coincide with plain double sampling: JSON only
                continue
            style = "-" if mode == "double" else ("--" if mode == "naive" else "-k")
            ax.semilogy(np.arange(epochs + 1), np.maximum(r.loss - opt, 1e-12), style, label=key,
                        **({} if mode == "full" else {"color": {2: "C3", 4: "C1", 8: "C2"}[bits]}))
        full = runs["full"]["final_loss"]
        for k, v in runs.items():
            v["excess_over_full_pct"] = 100.0 * (v["final_loss"] / full - 1.0)
            v["excess_over_optimum_pct"] = 100.0 * (v["final_loss"] / opt - 1.0)
        x_ls = least_squares_optimum(A, b)
        vrng = np.random.default_rng(args.seed)
        variance = {f"q{bits}": measured_variance(A, b, x_ls, bits, vrng) for bits in (2, 4, 8)}
        for k, v in variance.items():
            print(f"{name:14s} gradient variance at x_LS, {k}: plain {v['measured_plain']:.4g} "
                  f"(formula {v['formula_plain']:.4g}), symmetrized {v['measured_symmetric']:.4g} "
                  f"(formula {v['formula_symmetric']:.4g}): {v['measured_reduction_x']:.2f}x lower")
        results[name] = {"n_samples": A.shape[0], "n_features_with_bias": A.shape[1],
                         "least_squares_loss": opt, "runs": runs,
                         "gradient_variance_per_sample_at_least_squares_optimum": variance}
        ax.set_title(f"{name} (n={A.shape[0]}, d={A.shape[1]})")
        ax.set_xlabel("epoch")
        ax.set_ylabel("training loss − least-squares optimum")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, ncol=2)
    fig.suptitle("ZipML: naive rounding (dashed) is biased, double sampling (solid) converges")
    write_json(args.out, "convergence", {"epochs": {"synthetic100": base_epochs, "diabetes": 5 * base_epochs}, "batch_size": 32, "schedule": "gamma0/(1+e/0.3)",
                                         "scaling": "per-feature [-1,1] + bias; labels [0,1]",
                                         "datasets": results})
    print(save_figure(fig, args.out, "convergence"))


if __name__ == "__main__":
    main()
