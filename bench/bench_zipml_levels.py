"""ZipML experiment (b): variance-optimal vs uniform levels at equal bits: a fair baseline and a continuous metric.

Ref: ZipML (arXiv 1611.05402) "optimal quantization" section and the ICML abstract's "up to another 1.7x" saving in
data movement over uniform quantization with double sampling.  Every feature is min-max scaled to [-1, 1] (plus a
bias column, never quantized), labels to [0, 1].  Per feature, b bits address 2**b levels:

* optimal: the 2**b variance-optimal levels of that feature (candidate DP, a small per-dataset codebook);
* uniform (fair baseline): 2**b evenly spaced levels on [-1, 1];
* FPGA encoding, reported beside it: the public XeonFPGA code's 2**(b-1)+1 levels in b bits.

Metric, continuous in bits: the bits B a uniform quantizer needs to reach the optimal b-bit quantizer's variance,
``uniform_bits_to_match``, and ``saving_ratio`` = B / b.  Two variances: the double-sampling gradient variance
E‖g − a(aᵀx − b)‖² per sample at the least-squares optimum (exact formula,
models.zipml.sgd.double_sampling_variance), which is what slows SGD, and the rounding variance Σ_i Var[Q(a_i)] per
sample.  The uniform variance is computed at B = 1..14 bits and log2(variance) interpolated linearly in B (it falls
by about 2 per bit).  Then double-sampled SGD at equal bits (uniform 2**b vs optimal 2**b levels, 20 epochs,
minibatch 32, γ_e = γ0/(1 + e/0.3), γ0 sized on a quantized copy) gives the training-loss curves; and, to check
the metric where the variance shows in the loss, double-sampled SGD started at the least-squares optimum with one
constant step for all quantizers: its noise floor (mean excess loss over 4 epochs) for full precision, uniform
8 levels, optimal 8 levels (3 bits), and uniform round(2**B) levels with B the bits to match.
Datasets: synthetic100 (Gaussian), lognormal100 (σ = 1) and pareto100 (α = 3) (heavy-tailed,
models/zipml/datasets.py), diabetes, plus every ``--data`` path (LIBSVM or .npz); and, metric only at 3 bits, the
lognormal set with σ swept over 0.5, 1, 1.5, 2 (the saving grows with the skew).

    python bench/bench_zipml_levels.py --out results      # writes results/zipml_levels.{json,png}
    python bench/bench_zipml_levels.py --data path/to/file.libsvm --out results
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from models.zipml import (least_squares_loss, least_squares_optimum, linear_sgd, load_dataset,  # noqa: E402
                          per_feature_optimal_levels, prepare_linear)
from models.zipml.sgd import auto_step  # noqa: E402
from models.zipml.datasets import make_skewed  # noqa: E402
from models.zipml.report import bench_parser, save_figure, write_json  # noqa: E402
from models.zipml.sgd import double_sampling_variance  # noqa: E402

DATASETS = ("synthetic100", "lognormal100", "pareto100", "diabetes")
METRIC_BITS = (2, 3, 4)
TRAIN_BITS = (2, 3)
LOGNORMAL_SIGMAS = (0.5, 1.0, 1.5, 2.0)
STATIONARY_BITS = 3
UNIFORM_BITS = np.arange(1, 15)  # 2 .. 16384 levels


def uniform_levels(bits: int, encoding: str = "fair") -> np.ndarray:
    """Evenly spaced levels on [-1, 1] addressed by ``bits`` bits: 2**bits (fair) or 2**(bits-1)+1 (FPGA)."""
    n = 2**bits if encoding == "fair" else 2 ** (bits - 1) + 1
    return np.linspace(-1.0, 1.0, n)


def element_variance(A, levels) -> np.ndarray:
    """Var of unbiased rounding of each element of ``A`` onto ``levels`` (1-D shared, or (d, s) per feature);
    the bias column (last) is exact and gets 0."""
    A = np.asarray(A, dtype=np.float64)
    lv2 = np.broadcast_to(levels, (A.shape[1], np.shape(levels)[-1]))
    out = np.zeros_like(A)
    for j in range(A.shape[1] - 1):
        lv = lv2[j]
        x = np.clip(A[:, j], lv[0], lv[-1])
        i = np.clip(np.searchsorted(lv, x, side="right") - 1, 0, len(lv) - 2)
        out[:, j] = (lv[i + 1] - x) * (x - lv[i])
    return out


def variances(A, b, x, levels) -> dict:
    var = element_variance(A, levels)
    return {"gradient": float(np.mean(double_sampling_variance(A, b, x, var))),
            "rounding": float(var.sum(axis=1).mean())}


def bits_to_match(curve: np.ndarray, target: float):
    """Real B with curve(B) = target, log2-linear between integer bits; None beyond the table."""
    lc = np.log2(np.maximum(curve, 1e-300))
    lt = np.log2(target)
    if lt >= lc[0]:
        return float(UNIFORM_BITS[0])
    if lt < lc[-1]:
        return None
    return float(np.interp(-lt, -lc, UNIFORM_BITS))  # lc decreases with B


def saving_records(name, A, b, bits_list=METRIC_BITS):
    """One record per b in ``bits_list``: the optimal b-bit codebook's variances and the bits a uniform quantizer
    (fair: 2**B levels; and the FPGA encoding) needs to match them.  Returns ``(records, curves, codebooks, x_ls)``."""
    x_ls = least_squares_optimum(A, b)
    curves = {enc: {k: np.array([variances(A, b, x_ls, uniform_levels(B, enc))[k] for B in UNIFORM_BITS])
                    for k in ("gradient", "rounding")} for enc in ("fair", "fpga")}
    codebooks = {bits: per_feature_optimal_levels(A, 2**bits) for bits in bits_list}
    records = []
    for bits in bits_list:
        v = variances(A, b, x_ls, codebooks[bits])
        rec = {"dataset": name, "bits": bits, "optimal_levels": 2**bits, "uniform_levels": 2**bits,
               "fpga_encoding_levels": 2 ** (bits - 1) + 1,
               "optimal_gradient_variance_per_sample": v["gradient"],
               "optimal_rounding_variance_per_sample": v["rounding"],
               "uniform_gradient_variance_per_sample_same_bits": float(curves["fair"]["gradient"][bits - 1]),
               "uniform_rounding_variance_per_sample_same_bits": float(curves["fair"]["rounding"][bits - 1])}
        for enc, prefix in (("fair", "uniform"), ("fpga", "fpga_encoding")):
            for kind, suffix in (("gradient", ""), ("rounding", "_rounding")):
                B = bits_to_match(curves[enc][kind], v[kind])
                rec[f"{prefix}_bits_to_match{suffix}"] = B
                rec[f"{'saving_ratio' if enc == 'fair' else 'fpga_encoding_saving_ratio'}{suffix}"] = (
                    B / bits if B is not None else None)
        records.append(rec)
        print(f"{name:14s} {bits} bits: uniform needs {rec['uniform_bits_to_match']:.2f} bits for the gradient "
              f"variance (saving {rec['saving_ratio']:.2f}x), {rec['uniform_bits_to_match_rounding']:.2f} for the "
              f"rounding variance ({rec['saving_ratio_rounding']:.2f}x); FPGA encoding "
              f"{rec['fpga_encoding_bits_to_match']:.2f} bits")
    return records, curves, codebooks, x_ls


def stationary_check(name, A, b, x_ls, codebook, rec, args):
    """The metric's prediction checked in training: double-sampled SGD started at the least-squares optimum with
    one constant step (sized on full-precision data, the same for every quantizer) settles at an excess loss
    E[f − f*] ≈ γ·tr(Σ_g)/4, which grows with the gradient variance.  Optimal 2**b levels should match a uniform
    quantizer with round(2**B) levels, B = ``uniform_bits_to_match``, not one with 2**b."""
    gamma = auto_step(A, 32)
    opt = least_squares_loss(A, b, x_ls)
    n_match = int(round(2 ** rec["uniform_bits_to_match"]))
    out = {"step": gamma, "epochs": args.stationary_epochs, "uniform_levels_to_match": n_match}
    for key, levels in (("full", None), (f"uniform_{2 ** rec['bits']}_levels", uniform_levels(rec["bits"])),
                        (f"optimal_{2 ** rec['bits']}_levels", codebook),
                        (f"uniform_{n_match}_levels", np.linspace(-1.0, 1.0, n_match))):
        r = linear_sgd(A, b, mode="full" if levels is None else "double", levels=levels, step=gamma,
                       epochs=args.stationary_epochs, batch_size=32, rng=args.seed, x0=x_ls)
        out[key] = float(np.mean(r.loss[1:]) - opt)
    print(f"{name:14s} stationary excess loss from x*: " + ", ".join(
        f"{k} {v:.3g}" for k, v in out.items() if k not in ("step", "epochs", "uniform_levels_to_match")))
    return out


def analyse(name, A, b, args, ax_curve):
    records, curves, codebooks, x_ls = saving_records(name, A, b, sorted(set(METRIC_BITS) | set(TRAIN_BITS)))
    records = [r for r in records if r["bits"] in METRIC_BITS]
    opt_loss = least_squares_loss(A, b, x_ls)
    kw = dict(mode="double", epochs=args.epochs, schedule="inverse", decay=0.3, batch_size=32, rng=args.seed)
    full = linear_sgd(A, b, **{**kw, "mode": "full"})
    training = {"least_squares_loss": opt_loss, "full": {"loss_per_epoch": full.loss, "final_loss": full.final_loss}}
    ax_curve.semilogy(np.maximum(full.loss - opt_loss, 1e-12), "k:", label="full precision")
    for i, bits in enumerate(TRAIN_BITS):
        for kind, levels, style in (("uniform", uniform_levels(bits), "--"), ("optimal", codebooks[bits], "-")):
            r = linear_sgd(A, b, levels=levels, **kw)
            training[f"{kind}_{bits}bit"] = {
                "levels": 2**bits, "loss_per_epoch": r.loss, "final_loss": r.final_loss,
                "excess_over_full_pct": 100.0 * (r.final_loss / full.final_loss - 1),
                "excess_over_optimum_pct": 100.0 * (r.final_loss / opt_loss - 1)}
            ax_curve.semilogy(np.maximum(r.loss - opt_loss, 1e-12), style, color=f"C{i}",
                              label=f"{kind} {2**bits} levels ({bits} bits)")
            print(f"{name:14s} SGD {kind:7s} {bits} bits: final loss {r.final_loss:.6g} "
                  f"(+{training[f'{kind}_{bits}bit']['excess_over_full_pct']:.3f} % vs full)")
    rec3 = next(r for r in records if r["bits"] == STATIONARY_BITS)
    training["stationary_excess_loss"] = stationary_check(name, A, b, x_ls, codebooks[STATIONARY_BITS], rec3, args)
    ax_curve.set_title(f"{name} (n={A.shape[0]}, d={A.shape[1]})", fontsize=9)
    ax_curve.set_xlabel("epoch")
    ax_curve.set_ylabel("loss − least-squares optimum")
    ax_curve.grid(True, which="both", alpha=0.3)
    ax_curve.legend(fontsize=6)
    return records, training, curves


def main():
    p = bench_parser(__doc__.splitlines()[0])
    p.add_argument("--data", action="append", default=[], metavar="PATH",
                   help="extra dataset (LIBSVM/svmlight or .npz path, or a dataset name); repeatable "
                        "(default: none; the built-in sets always run)")
    args = p.parse_args()
    args.epochs = 5 if args.quick else 20
    args.stationary_epochs = 2 if args.quick else 4
    names = list(DATASETS) + list(args.data)
    fig, axes = plt.subplots(3, len(names), figsize=(4.2 * len(names), 11.5), squeeze=False)
    records, per_dataset = [], {}
    for col, name in enumerate(names):
        ds = load_dataset(name)
        A, b = prepare_linear(ds, signed=True, labels="minmax")
        recs, training, curves = analyse(ds.name, A, b, args, axes[1, col])
        records += recs
        per_dataset[ds.name] = {"n_samples": A.shape[0], "n_features_with_bias": A.shape[1], "training": training,
                                "uniform_variance_by_bits": {"bits": UNIFORM_BITS, **{
                                    f"{enc}_{k}": v for enc, c in curves.items() for k, v in c.items()}}}
        ax = axes[0, col]
        ax.semilogy(UNIFORM_BITS[:8], curves["fair"]["gradient"][:8], "o-", label="uniform, 2^b levels")
        ax.semilogy(UNIFORM_BITS[:8], curves["fpga"]["gradient"][:8], "x:", label="FPGA encoding, 2^(b-1)+1")
        ax.semilogy([r["bits"] for r in recs], [r["optimal_gradient_variance_per_sample"] for r in recs], "s-",
                    label="variance-optimal, 2^b levels")
        for r in recs:
            ax.annotate(f"{r['saving_ratio']:.2f}x", (r["bits"], r["optimal_gradient_variance_per_sample"]),
                        fontsize=7, textcoords="offset points", xytext=(4, -10))
        ax.set_title(f"{ds.name}: gradient variance at x*", fontsize=9)
        ax.set_xlabel("bits per value")
        ax.set_ylabel("E‖g − ∇‖² per sample (double sampling)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6)
    for col, (name, v) in enumerate(per_dataset.items()):
        st = v["training"]["stationary_excess_loss"]
        keys = [k for k in st if k not in ("step", "epochs", "uniform_levels_to_match")]
        ax = axes[2, col]
        ax.bar(range(len(keys)), [st[k] for k in keys], color=["k", "C0", "C2", "C1"])
        ax.set_xticks(range(len(keys)), [k.replace("_levels", "").replace("_", " ") for k in keys], fontsize=7)
        ax.set_ylabel("mean loss − optimum, constant step from x*")
        ax.set_title(f"{name}: SGD noise floor (3-bit optimal vs uniform)", fontsize=9)
    # how the saving grows with skew: lognormal features, σ swept (metric only, no training)
    sweep = []
    for sigma in LOGNORMAL_SIGMAS:
        A, b = prepare_linear(make_skewed("lognormal", shape=sigma, seed=args.seed), signed=True, labels="minmax")
        sweep += [{**r, "lognormal_sigma": sigma} for r in saving_records(f"lognormal100_sigma{sigma:g}", A, b,
                                                                            (3,))[0]]
    fig.suptitle("Variance-optimal vs uniform levels at equal bits (labels: bits saving ratio)")
    fig.tight_layout()
    write_json(args.out, "levels", {"epochs": args.epochs, "batch_size": 32, "metric_bits": METRIC_BITS,
                                    "results": records, "lognormal_sigma_sweep": sweep, "datasets": per_dataset})
    print(save_figure(fig, args.out, "levels"))


if __name__ == "__main__":
    main()
