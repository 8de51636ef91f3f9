#!/usr/bin/env python3
"""SGD engine throughput and time to solution: cycles per epoch for each precision and encoding on
synthetic10/100/1000 at one bus width, projected to seconds at a clock, with and without the link, beside the CPU.

For each (dataset, bits, encoding) one epoch runs on a simulated device (``host.sgd_train.train``, the same code
as ``python host/run.py``): samples from the on-chip store at one beat per clock, cycles from the engine's
counters.  Reports the speed-up of each precision over the 32-bit fixed-point baseline next to the bound the bus
allows (beats per sample of the baseline / beats per sample at b bits; the ideal bit ratio 32 / slot bits beside
it), and the share of cycles lost to stalls (no beat available) and to pipeline drains (one per store load).

Time to solution (same run): ``seconds_per_epoch_on_board`` = counted cycles / ``--fmax-mhz`` (data already in
the on-chip store); ``seconds_per_epoch_with_uart`` adds moving the epoch's packed samples over the UART at
``--baud`` (COBS and frame overhead included; fresh double samples every epoch have to cross the link);
``seconds_per_epoch_with_sim_link`` adds the measured wall time of the simulated link's store load instead;
``cpu_*`` are scikit-learn ``SGDRegressor`` (one ``partial_fit`` epoch) and a NumPy float64 per-sample SGD
epoch on this CPU on the same rows.

    python bench/bench_sgd.py --out results [--backend verilator|amaranth] [--bus-bits 512] [--samples 2000]
           [--encodings compact pair] [--fmax-mhz 43.1] [--baud 115200]

Writes ``sgd_throughput.json`` (units in the key names) and ``sgd_throughput.png``.
"""
import argparse
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from host.backends import open_device  # noqa: E402
from host.sgd_train import design_for, train  # noqa: E402
from hw.sgd.layout import COMPACT_BITS, beats_per_sample, slot_bits  # noqa: E402

DATASETS = ("synthetic10", "synthetic100", "synthetic1000")
BITS = (1, 2, 4, 8, 32)
# the ulx3s-85f SGD build's Fmax from its nextpnr report (docs/sgd-engine.md, Bitstreams); override with --fmax-mhz
DEFAULT_FMAX_MHZ = 43.1


def cpu_seconds_per_epoch(name, samples, epochs=3):
    """scikit-learn SGDRegressor (one partial_fit pass) and a NumPy per-sample float64 SGD epoch, same rows."""
    import warnings

    import numpy as np
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import SGDRegressor

    from models.zipml.datasets import load_dataset, prepare_linear
    A, y = prepare_linear(load_dataset(name), signed=True)
    A, y = A[:samples], y[:samples]
    reg = SGDRegressor(loss="squared_error", penalty=None, learning_rate="constant", eta0=1e-3,
                       fit_intercept=False, max_iter=1, tol=None, shuffle=False, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        reg.partial_fit(A, y)
        t0 = time.perf_counter()
        for _ in range(epochs):
            reg.partial_fit(A, y)
        sk = (time.perf_counter() - t0) / epochs
    x = np.zeros(A.shape[1])
    t0 = time.perf_counter()
    for i in range(A.shape[0]):
        x -= 1e-3 * (A[i] @ x - y[i]) * A[i]
    return sk, time.perf_counter() - t0


def dev_store_beats(dev):
    from hw.sgd import engine as E
    return dev.read_engine_reg(E.REG_P_STORE_BEATS)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("results"), help="output folder (default: results)")
    p.add_argument("--backend", choices=("verilator", "amaranth"), default="verilator",
                   help="simulated device (default: verilator)")
    p.add_argument("--bus-bits", type=int, default=512, help="engine bus width (default: 512)")
    p.add_argument("--samples", type=int, default=2000,
                   help="samples per epoch, the first rows of each set (default: 2000; cycle counts for all "
                        "10,000 are derived exactly from the measured runs; 0 = all)")
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), help="(default: synthetic10/100/1000)")
    p.add_argument("--bits", nargs="+", type=int, default=list(BITS), help="(default: 1 2 4 8 32)")
    p.add_argument("--encodings", nargs="+", choices=("compact", "pair"), default=["compact", "pair"],
                   help="double-sample encodings for bits 2, 4, 8 (1 and 32 have only pair) (default: both)")
    p.add_argument("--fmax-mhz", type=float, default=DEFAULT_FMAX_MHZ,
                   help=f"clock for the projected seconds (default: {DEFAULT_FMAX_MHZ}, the ulx3s-85f build)")
    p.add_argument("--baud", type=int, default=115200, help="UART rate for the link projection (default: 115200)")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    cpu = {}
    configs = [(b, e) for b in args.bits for e in (args.encodings if b in COMPACT_BITS else ["pair"])]
    configs = list(dict.fromkeys(configs))
    for bits, enc in configs:
        design = design_for(bits, bus_bits=args.bus_bits, encoding=enc)
        with open_device(args.backend, design=design, timeout=60.0, quiet=False) as dev:
            for name in args.datasets:
                t0 = time.perf_counter()
                r = train(dev, dataset=name, bits=bits, epochs=1, progress=False, verify=False,
                          backend=args.backend, max_samples=args.samples or None, baud=args.baud)
                cyc, st, bt = r["cycles_per_epoch"][0], r["stall_cycles_per_epoch"][0], r["beats_per_epoch"][0]
                runs = r["store_chunks_per_epoch"]
                full_n = 10000
                chunk = min(full_n, dev_store_beats(dev) // r["beats_per_sample"])
                if name not in cpu:
                    cpu[name] = cpu_seconds_per_epoch(name, r["samples"])
                on_board = cyc / (args.fmax_mhz * 1e6)
                rows.append({"dataset": name, "bits": bits, "encoding": enc, "slot_bits": slot_bits(bits, enc),
                             "features": r["features"], "samples": r["samples"],
                             "fmax_mhz": args.fmax_mhz, "seconds_per_epoch_on_board": on_board,
                             "link_wire_bytes_per_epoch": r["link_wire_bytes_per_epoch"], "baud": args.baud,
                             "seconds_per_epoch_with_uart": on_board + r["link_limited_seconds_per_epoch"],
                             "seconds_per_epoch_with_sim_link": on_board + r["wall_seconds_per_epoch"][0],
                             "cpu_sklearn_sgdregressor_seconds_per_epoch": cpu[name][0],
                             "cpu_numpy_sgd_seconds_per_epoch": cpu[name][1],
                             # cycles are exactly n*R + runs*(run overhead): scale to the full 10,000 samples
                             "cycles_per_epoch_10000_samples_derived": full_n * r["beats_per_sample"]
                             + -(-full_n // chunk) * (cyc - bt) // runs,
                             "beats_per_sample": r["beats_per_sample"], "cycles_per_epoch": cyc,
                             "beats_per_epoch": bt, "stall_cycles_per_epoch": st,
                             "drain_cycles_per_epoch": cyc - bt - st, "store_loads_per_epoch":
                                 r["store_chunks_per_epoch"], "stall_share": st / cyc,
                             "beat_share": bt / cyc, "loss_after_epoch": r["loss_per_epoch"][0],
                             "wall_seconds": time.perf_counter() - t0})
                print(f"{name:>14} Q{bits:<2} {enc:>7} d={r['features']:>5} R={r['beats_per_sample']:>3} "
                      f"cycles/epoch={cyc:>9,} stalls={st} drains={cyc - bt - st} "
                      f"({time.perf_counter() - t0:.1f} s)", flush=True)
    by = {(r["dataset"], r["bits"], r["encoding"]): r for r in rows}
    for r in rows:
        base = by.get((r["dataset"], 32, "pair"))
        if base:
            r["speedup_vs_32bit"] = base["cycles_per_epoch"] / r["cycles_per_epoch"]
            r["bus_bound_speedup"] = beats_per_sample(r["features"], 32, args.bus_bits) / r["beats_per_sample"]
            r["ideal_bit_ratio"] = 32 / r["slot_bits"]
            r["speedup_over_bound"] = r["speedup_vs_32bit"] / r["bus_bound_speedup"]
            r["speedup_vs_32bit_10000_samples_derived"] = (base["cycles_per_epoch_10000_samples_derived"]
                                                           / r["cycles_per_epoch_10000_samples_derived"])
    report = {"bus_bits": args.bus_bits, "backend": args.backend, "samples_per_epoch": args.samples or 10000,
              "rows": rows}
    for enc in ("pair", "compact"):
        q2 = by.get(("synthetic1000", 2, enc))
        if q2 and "speedup_vs_32bit" in q2:
            report[f"q2_{enc}_d1000_speedup_vs_32bit"] = q2["speedup_vs_32bit"]
            report[f"q2_{enc}_d1000_bus_bound_speedup"] = q2["bus_bound_speedup"]
            report[f"q2_{enc}_d1000_within_10pct_of_bound"] = abs(q2["speedup_over_bound"] - 1) <= 0.10
    (args.out / "sgd_throughput.json").write_text(json.dumps(report, indent=1))
    plot(report, args.out / "sgd_throughput.png")
    print(f"wrote {args.out / 'sgd_throughput.json'} and {args.out / 'sgd_throughput.png'}")


def plot(report, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    rows = report["rows"]
    datasets = [d for d in DATASETS if any(r["dataset"] == d for r in rows)]
    bits = sorted({(r["bits"], r["encoding"]) for r in rows})
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / max(1, len(bits))
    for k, (b, enc) in enumerate(bits):
        xs, cyc, sp, bound = [], [], [], []
        for i, d in enumerate(datasets):
            r = next((r for r in rows if r["dataset"] == d and r["bits"] == b and r["encoding"] == enc), None)
            if r:
                xs.append(i + k * width)
                cyc.append(r["cycles_per_epoch"])
                sp.append(r.get("speedup_vs_32bit", np.nan))
                bound.append(r.get("bus_bound_speedup", np.nan))
        label = "32-bit" if b == 32 else f"Q{b} {enc}"
        a1.bar(xs, cyc, width, label=label)
        a2.bar(xs, sp, width, label=f"{label} measured")
        a2.scatter(xs, bound, marker="_", s=200, color="k", zorder=3,
                   label="bus bound" if k == len(bits) - 1 else None)
    for a in (a1, a2):
        a.set_xticks(np.arange(len(datasets)) + width * (len(bits) - 1) / 2)
        a.set_xticklabels(datasets)
    a1.set_yscale("log")
    a1.set_ylabel("cycles per epoch")
    a1.set_title(f"{report['bus_bits']}-bit bus, {report['samples_per_epoch']} samples/epoch")
    a2.set_ylabel("speed-up over 32-bit baseline")
    a2.set_title("measured (bars) vs bus bound (black)")
    a1.legend(fontsize=8)
    a2.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
