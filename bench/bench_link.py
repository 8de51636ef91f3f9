#!/usr/bin/env python3
"""Link throughput of the simulated backends, side by side on the same workload.

Sends bytes through the loopback engine and reads them back (WRITE_BULK / READ_BULK frames of the
full size), on Verilator and on the Amaranth simulator in one run. Reports bytes/s over the link,
simulated clock cycles per wall-clock second (from the design's cycle counter), and their ratios.
"""
import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from host.backends import open_device  # noqa: E402
from hw.design import Design  # noqa: E402


def measure(backend: str, total: int, chunk: int) -> dict:
    rng = random.Random(0)
    data = rng.randbytes(total)
    with open_device(backend, design=Design("echo"), timeout=30) as dev:
        dev.info()
        t0, c0 = time.perf_counter(), dev.cycles()
        for start in range(0, total, chunk):
            piece = data[start:start + chunk]
            dev.send(piece)
            if dev.recv(len(piece)) != piece:
                raise SystemExit(f"{backend}: echoed data differs")
        wall, cycles = time.perf_counter() - t0, dev.cycles() - c0
    return {"bytes_each_way": total, "wall_s": wall, "sim_cycles": cycles,
            "link_bytes_per_s": 2 * total / wall, "sim_cycles_per_s": cycles / wall}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("results"), help="output folder (default: results)")
    p.add_argument("--bytes", type=int, default=100_000, help="bytes through Verilator (default: 100000)")
    p.add_argument("--amaranth-bytes", type=int, default=5_000,
                   help="bytes through the (slower) Amaranth simulator (default: 5000)")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    chunk = 508  # a full 512-byte frame of payload
    results = {"verilator": measure("verilator", args.bytes, chunk),
               "amaranth": measure("amaranth", args.amaranth_bytes, chunk)}
    v, a = results["verilator"], results["amaranth"]
    report = {
        "workload": f"echo engine, {chunk}-byte WRITE_BULK then READ_BULK, stop-and-wait",
        "backends": results,
        "verilator_over_amaranth_link_bytes_per_s": v["link_bytes_per_s"] / a["link_bytes_per_s"],
        "verilator_over_amaranth_sim_cycles_per_s": v["sim_cycles_per_s"] / a["sim_cycles_per_s"],
    }
    (args.out / "link_throughput.json").write_text(json.dumps(report, indent=2))

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    for ax, key, label in [(axes[0], "link_bytes_per_s", "link bytes/s"),
                           (axes[1], "sim_cycles_per_s", "simulated cycles/s")]:
        ax.bar(list(results), [results[b][key] for b in results], color=["tab:blue", "tab:orange"])
        ax.set_yscale("log")
        ax.set_title(label)
    fig.suptitle(f"Verilator is {report['verilator_over_amaranth_sim_cycles_per_s']:.0f}x faster "
                 "than the Amaranth simulator")
    fig.tight_layout()
    fig.savefig(args.out / "link_throughput.png", dpi=120)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
