"""ZipML experiment (b): training loss vs bits moved, uniform levels vs variance-optimal levels.

Ref: ZipML (arXiv 1611.05402) "optimal quantization" section and the ICML abstract's "up to another 1.7x" saving in
data movement over uniform quantization with double sampling.  Double-sampled SGD (two b-bit copies per feature per
sample and epoch); uniform: the FPGA encoding's 2**(b-1)+1 levels on [-1, 1]; optimal: 2**b per-feature
variance-optimal levels (candidate DP, computed once per dataset: a small codebook), stored in b bits.
Left panel: final training loss on synthetic100 (per-feature [-1, 1] + bias, 20 epochs, minibatch 32,
γ_e = γ0/(1 + e/0.3)).  Right panel: the quantity that drives the double-sampling gradient variance, the total
rounding variance per sample Σ_i Var[Q(a_i)], on synthetic100, breast_cancer, digits and diabetes.

    python bench/bench_zipml_levels.py --out results      # writes results/zipml_levels.{json,png}
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from models.zipml import (least_squares_loss, least_squares_optimum, linear_sgd, load_dataset,  # noqa: E402
                          per_feature_optimal_levels, prepare_linear, rounding_variance)
from models.zipml.quantize import levels_variance  # noqa: E402
from models.zipml.report import bench_parser, save_figure, write_json  # noqa: E402

UNIFORM_BITS = (2, 3, 4, 5, 6)
OPTIMAL_BITS = (1, 2, 3, 4, 5)


def variances(A):
    n, d = A.shape
    uni = {b: float(rounding_variance(A, b, signed=True).sum() / n) for b in UNIFORM_BITS}
    opt, levels = {}, {}
    for b in OPTIMAL_BITS:
        L = per_feature_optimal_levels(A, 2**b)
        levels[b] = L
        opt[b] = float(sum(levels_variance(A[:, j], L[j]) for j in range(d)) / n)
    return uni, opt, levels


def main():
    args = bench_parser(__doc__.splitlines()[0]).parse_args()
    epochs = 5 if args.quick else 20
    kw = dict(mode="double", epochs=epochs, schedule="inverse", decay=0.3, batch_size=32, rng=args.seed)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    results = {}
    # --- loss vs data moved on synthetic100
    A, b = prepare_linear(load_dataset("synthetic100"), signed=True)
    n, d = A.shape
    opt = least_squares_loss(A, b, least_squares_optimum(A, b))
    full = linear_sgd(A, b, **{**kw, "mode": "full"}).final_loss
    uni_var, opt_var, levels = variances(A)
    rows = {"uniform": [], "optimal": []}
    for bits in UNIFORM_BITS:
        r = linear_sgd(A, b, bits=bits, signed=True, **kw)
        rows["uniform"].append({"bits_per_value": bits, "levels": 2 ** (bits - 1) + 1, "final_loss": r.final_loss,
                                "quantization_variance_per_sample": uni_var[bits]})
    for bits in OPTIMAL_BITS[1:]:  # 1 bit = 2 levels {min, max} per feature: SGD diverges at the auto step
        r = linear_sgd(A, b, levels=levels[bits], **kw)
        rows["optimal"].append({"bits_per_value": bits, "levels": 2**bits, "final_loss": r.final_loss,
                                "quantization_variance_per_sample": opt_var[bits]})
    for kind, rs in rows.items():
        for row in rs:
            row["megabytes_moved_per_epoch"] = 2 * n * d * row["bits_per_value"] / 8e6
            row["excess_over_full_pct"] = 100.0 * (row["final_loss"] / full - 1.0)
            print(f"synthetic100 {kind:8s} {row['bits_per_value']} bits: loss {row['final_loss']:.6g} "
                  f"(+{row['excess_over_full_pct']:.3f} % vs full)")
        ys = [max(r["final_loss"] - opt, 1e-12) for r in rs]
        ax.loglog([r["megabytes_moved_per_epoch"] for r in rs], ys, "o-", label=f"{kind} levels")
        for r, y in zip(rs, ys):
            ax.annotate(f"{r['bits_per_value']}b", (r["megabytes_moved_per_epoch"], y), fontsize=7,
                        textcoords="offset points", xytext=(3, 3))

    def min_bits(kind, pct):
        ok = [r["bits_per_value"] for r in rows[kind] if r["excess_over_full_pct"] <= pct]
        return min(ok) if ok else None

    saving = {}
    for pct in (1.0, 0.1):
        u, o = min_bits("uniform", pct), min_bits("optimal", pct)
        saving[f"within_{pct}_pct_of_full"] = {"uniform_bits": u, "optimal_bits": o,
                                               "data_movement_saving_x": (u / o) if u and o else None}
    ax.axhline(max(full - opt, 1e-12), color="k", ls=":", label="full precision")
    ax.set_title(f"synthetic100 (n={n}, d={d}): double sampling, {epochs} epochs")
    ax.set_xlabel("MB moved per epoch (2 copies × n × d × bits)")
    ax.set_ylabel("final loss − least-squares optimum")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    results["synthetic100_training"] = {"least_squares_loss": opt, "full_precision_final_loss": full,
                                        "uniform": rows["uniform"], "optimal": rows["optimal"], "saving": saving}
    # --- rounding variance per sample on several datasets
    var_table = {}
    for i, name in enumerate(("synthetic100", "breast_cancer", "digits", "diabetes")):
        if name == "synthetic100":
            uv, ov = uni_var, opt_var
        else:
            uv, ov, _ = variances(prepare_linear(load_dataset(name), signed=True)[0])
        # bits an optimal codebook needs to match each uniform precision's variance
        match = {}
        for bu, vu in uv.items():
            ok = [bo for bo, vo in ov.items() if vo <= vu]
            match[f"uniform_{bu}_bits"] = {"optimal_bits_for_same_variance": min(ok) if ok else None,
                                           "saving_x": bu / min(ok) if ok else None}
        var_table[name] = {"uniform_variance_per_sample": uv, "optimal_variance_per_sample": ov,
                           "equal_variance_bits": match}
        ax2.semilogy(list(uv), list(uv.values()), "o-", color=f"C{i}", label=f"{name} uniform")
        ax2.semilogy(list(ov), list(ov.values()), "s--", color=f"C{i}", label=f"{name} optimal")
        print(name, "equal-variance bits:", {k: v["optimal_bits_for_same_variance"] for k, v in match.items()})
    ax2.set_xlabel("bits per value")
    ax2.set_ylabel("Σ_i Var[Q(a_i)] per sample")
    ax2.set_title("rounding variance: uniform (solid) vs optimal (dashed)")
    ax2.grid(True, which="both", alpha=0.3)
    ax2.legend(fontsize=7, ncol=2)
    results["rounding_variance"] = var_table
    fig.suptitle("Variance-optimal vs uniform levels")
    write_json(args.out, "levels", {"epochs": epochs, "batch_size": 32, **results})
    print(save_figure(fig, args.out, "levels"))


if __name__ == "__main__":
    main()
