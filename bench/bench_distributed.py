#!/usr/bin/env python3
"""Data-parallel ZipML side by side: 1, 2 and 4 ranks (one Verilator engine each) x model exchange at 32, 8 and
4 bits, against the single-device full-precision reference.

Every configuration is a real ``torchrun --standalone`` run of ``host/run.py`` (gloo over 127.0.0.1) on the same
dataset; all ranks' engines are checked against their bit-exact goldens every epoch.  Several ranks run with
``--scale-step`` (each engine's step times the largest power of two <= ranks); their 32-bit runs are repeated at
the single-device step for comparison.  Reports per configuration: the averaged model's loss per epoch, the bytes
each rank sends per sync and per epoch, the engine cycles per epoch per rank (the device-time speed-up of
sharding), and the wall time here.  The wall time is bound by this machine's CPU cores, not by the engines: every
rank runs a simulator, the host link's framing (its CRC is computed in Python) and a Python golden.

    python bench/bench_distributed.py --out results [--dataset synthetic100] [--samples 1000] [--epochs 5]

``--samples N`` trains on the first N rows of the set (written to a ``.npz`` the runs load like any dataset
file; scaled on their own), because the host link's per-byte cost bounds each epoch here; 0 = all rows.

Writes ``distributed.json`` (units in the key names) and ``distributed.png``.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.zipml.report import environment  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def subset(name, samples, tmp) -> str:
    """The first ``samples`` rows of a dataset as an .npz file (``name`` itself when 0)."""
    import numpy as np
    from models.zipml.datasets import load_dataset
    if not samples:
        return name
    ds = load_dataset(name)
    if samples > ds.n_samples:
        raise SystemExit(f"--samples {samples}: {name} has only {ds.n_samples} rows")
    path = Path(tmp) / f"{ds.name}_first{samples}.npz"
    np.savez(path, X=ds.X[:samples], y=ds.y[:samples])
    return str(path)


def run_config(workers, sync_bits, scale, dataset, args, tmp):
    out = Path(tmp) / f"w{workers}_s{sync_bits}_{scale}.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={workers}",
           str(ROOT / "host" / "run.py"), "--dataset", dataset, "--bits", str(args.bits),
           "--epochs", str(args.epochs), "--sync-bits", str(sync_bits), "--sync-every", str(args.sync_every),
           "--no-progress", "--json", str(out), "--plot", str(out.with_suffix(".png"))] + ["--scale-step"] * scale
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    res = json.loads(out.read_text())
    res["process_wall_seconds"] = wall
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("results"), help="output folder (default: results)")
    p.add_argument("--dataset", default="synthetic100", help="dataset (default: synthetic100)")
    p.add_argument("--samples", type=int, default=1000,
                   help="train on the first N rows (default: 1000; 0 = all)")
    p.add_argument("--bits", type=int, default=4, help="sample precision on the engines (default: 4)")
    p.add_argument("--epochs", type=int, default=5, help="epochs (default: 5)")
    p.add_argument("--sync-every", type=int, default=1, help="epochs between averagings (default: 1)")
    p.add_argument("--workers", nargs="+", type=int, default=[1, 2, 4], help="rank counts (default: 1 2 4)")
    p.add_argument("--sync-bits", nargs="+", type=int, default=[32, 8, 4],
                   help="exchange precisions (default: 32 8 4; one rank runs 32 only: it exchanges nothing)")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        dataset = subset(args.dataset, args.samples, tmp)
        grid = [(w, sb, w > 1) for w in args.workers for sb in (args.sync_bits if w > 1 else [32])]
        grid += [(w, 32, False) for w in args.workers if w > 1]  # the same runs at the single-device step
        for w, sb, scale in grid:
            r = run_config(w, sb, scale, dataset, args, tmp)
            r["scale_step"] = scale
            rows.append(r)
            print(f"workers {w} sync {sb:>2} bits{' scaled step' if scale else ''}: final loss {r['loss_per_epoch'][-1]:.6f} "
                  f"(fp {r['fp_loss_per_epoch'][-1]:.6f}), {r['bytes_per_sync_per_rank']:,} B/sync/rank, "
                  f"{max(r['cycles_per_epoch']):,} cycles/epoch/rank, {r['process_wall_seconds']:.1f} s", flush=True)
    cycles_1 = next((r["cycles_per_epoch"][-1] for r in rows if r["workers"] == 1), None)
    loss_32 = {(r["workers"], r["scale_step"]): r["loss_per_epoch"][-1] for r in rows if r["sync_bits"] == 32}
    bytes_32 = {r["workers"]: r["bytes_per_sync_per_rank"] for r in rows if r["sync_bits"] == 32}
    configs = []
    for r in rows:
        w, sb, sc = r["workers"], r["sync_bits"], r["scale_step"]
        configs.append({
            "workers": w, "sync_bits": sb, "scale_step": sc, "engine_step_shift": r["engine_step_shift"],
            "loss_per_epoch": r["loss_per_epoch"],
            "final_loss": r["loss_per_epoch"][-1],
            "final_loss_vs_fp_reference": r["final_loss_ratio"],
            "final_loss_vs_32bit_exchange": (r["loss_per_epoch"][-1] / loss_32[w, sc]
                                             if (w, sc) in loss_32 else None),
            "payload_bytes_per_rank": r["payload_bytes_per_rank"],
            "bytes_per_sync_per_rank": r["bytes_per_sync_per_rank"],
            "bytes_per_epoch_per_rank": r["bytes_per_sync_per_rank"] * len(r["sync_epochs"]) / r["epochs"],
            "bytes_32bit_over_this": (bytes_32[w] / r["bytes_per_sync_per_rank"]
                                      if w in bytes_32 and r["bytes_per_sync_per_rank"] else None),
            "cycles_per_epoch_per_rank": r["cycles_per_epoch_per_rank"],
            "max_cycles_per_epoch": r["cycles_per_epoch"][-1],
            "device_time_speedup_vs_1_rank": cycles_1 / r["cycles_per_epoch"][-1] if cycles_1 else None,
            "samples_per_rank": r["samples_per_rank"], "golden_match": r["golden_match"],
            "train_wall_seconds": r["wall_seconds"], "process_wall_seconds": r["process_wall_seconds"],
        })
    first = rows[0]
    data = {"benchmark": "distributed", "dataset": args.dataset, "first_samples": args.samples, "bits": args.bits, "epochs": args.epochs,
            "sync_every": args.sync_every, "features": first["features"], "samples": first["samples"],
            "backend": "verilator", "step_shift": first["step_shift"],
            "fp_loss_per_epoch": first["fp_loss_per_epoch"], "configs": configs,
            "note": "wall times are bound by this machine's CPU cores: every rank runs a Verilator simulator and "
                    "the Python bit-exact golden; cycles_per_epoch_per_rank is the engines' own device time",
            "environment": environment()}
    path = args.out / "distributed.json"
    path.write_text(json.dumps(data, indent=1) + "\n")
    print(f"results: {path}")
    plot(data, args.out / "distributed.png")
    print(f"plot: {args.out / 'distributed.png'}")


def plot(data, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    cf = data["configs"]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    ax = axes[0]
    ep = np.arange(1, data["epochs"] + 1)
    ax.plot(ep, data["fp_loss_per_epoch"], "k--", lw=2, label="1 device, full precision (float64)")
    styles = {32: "-", 8: "--", 4: ":"}
    colors = {1: "C0", 2: "C1", 4: "C2"}
    for c in cf:
        scaled = ", scaled step" if c["scale_step"] else (", 1-device step" if c["workers"] > 1 else "")
        ax.plot(ep, c["loss_per_epoch"], styles.get(c["sync_bits"], "-."), color=colors.get(c["workers"], "C3"),
                marker="x" if c["workers"] > 1 and not c["scale_step"] else "o", ms=4,
                alpha=0.5 if c["workers"] > 1 and not c["scale_step"] else 1.0,
                label=f"{c['workers']} rank(s), {c['sync_bits']}-bit exchange{scaled}")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss of the averaged model")
    ax.set_title(f"{data['dataset']}, Q{data['bits']} engines")
    ax.legend(fontsize=7)
    labels = [f"{c['workers']}r/{c['sync_bits']}b" + ("" if c["scale_step"] or c["workers"] == 1 else "/1-dev step")
              for c in cf]
    ax = axes[1]
    ax.bar(labels, [c["bytes_per_epoch_per_rank"] for c in cf], color=[colors.get(c["workers"]) for c in cf])
    ax.set_ylabel("bytes sent per rank per epoch")
    ax.set_title("model exchange (all-gather)")
    ax.tick_params(axis="x", rotation=45)
    ax = axes[2]
    ax.bar(labels, [c["max_cycles_per_epoch"] for c in cf], color=[colors.get(c["workers"]) for c in cf])
    ax.set_ylabel("engine cycles per epoch (slowest rank)")
    ax.set_title("device time per epoch")
    ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
