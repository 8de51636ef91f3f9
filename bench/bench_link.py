#!/usr/bin/env python3
"""Link throughput and latency of the simulated backends, the old host path and the new one side by side.

Old path: stop-and-wait (one request in flight), pyserial's ``socket://`` (Nagle's algorithm on) for
Verilator. New path: up to ``--window`` WRITE_BULK frames in flight, a plain socket with TCP_NODELAY.
Both run the same workload against the same gateware in this one run: bytes through the echo engine and back
(WRITE_BULK then READ_BULK, full frames), then single READ_REG round trips for the request latency. Also
times the host CRC (pure-Python ``crc`` package, the old one, against ``binascii.crc_hqx``). Reports link
bytes/s (both directions), simulated cycles per wall-clock second (the design's cycle counter), median and
95th-percentile request latency, in JSON (+ PNG).
"""
import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hw import protocol as P  # noqa: E402
from host.device import Device  # noqa: E402
from host.framing import crc16  # noqa: E402

PREBUILT = {}  # --verilator-exe: echo design -> a model built elsewhere (this machine needs no toolchain)


def verilator_model(fifo: int) -> Path:
    if fifo in PREBUILT:
        return PREBUILT[fifo]
    from host.backends.verilator_sim import build_simulator
    from hw.design import Design
    return build_simulator(Design("echo", engine_args={"depth": fifo}).make_core())


def open_path(backend: str, path: str, window: int, fifo: int) -> Device:
    if backend == "verilator":
        from host.backends.verilator_sim import VerilatorTransport
        transport = VerilatorTransport(verilator_model(fifo), legacy=path == "old")
    else:
        from host.backends.amaranth_sim import AmaranthTransport
        from hw.design import Design
        transport = AmaranthTransport(Design("echo", engine_args={"depth": fifo}).make_core())
    return Device(transport, timeout=30, name=backend, window=1 if path == "old" else window)


def measure(backend: str, path: str, total: int, block: int, window: int, n_latency: int, fifo: int) -> dict:
    data = random.Random(0).randbytes(total)
    with open_path(backend, path, window, fifo) as dev:
        dev.info()
        dev.send(b"warm")
        dev.recv(4)
        t0, c0 = time.perf_counter(), dev.cycles()
        for start in range(0, total, block):
            piece = data[start:start + block]
            dev.send(piece)
            if dev.recv(len(piece)) != piece:
                raise SystemExit(f"{backend} {path}: echoed data differs")
        wall, cycles = time.perf_counter() - t0, dev.cycles() - c0
        lat = []
        for _ in range(n_latency):
            t = time.perf_counter()
            dev.read_reg(P.REG_SCRATCH)
            lat.append(time.perf_counter() - t)
        lat.sort()
        resends = dev.resends
    return {"bytes_each_way": total, "block_bytes": block, "wall_s": wall, "sim_cycles": cycles,
            "link_bytes_per_s": 2 * total / wall, "sim_cycles_per_s": cycles / wall,
            "latency_median_ms": 1e3 * statistics.median(lat), "latency_p95_ms": 1e3 * lat[int(0.95 * len(lat))],
            "latency_requests": n_latency, "window": 1 if path == "old" else window, "resends": resends}


def under_faults(rounds: int, rate: float, reply_rate: float) -> dict:
    """The fault-injection workload of ``tests/test_link_faults.py`` on Verilator (new path), timed."""
    from host.backends.verilator_sim import VerilatorTransport
    from host.faulty_line import FaultyLine, fault_workload
    rng = random.Random("bench-faults")
    dev = Device(VerilatorTransport(verilator_model(512)), timeout=30.0, name="verilator")
    line = FaultyLine(dev.transport, rng, rate=rate, reply_rate=reply_rate)
    dev.transport = line
    t = time.perf_counter()
    with dev:
        r = fault_workload(dev, line, rng, rounds)
    wall = time.perf_counter() - t
    lat = sorted(r.pop("latency_ms"))
    return {**r, "rounds": rounds, "request_fault_rate": rate, "reply_chunk_fault_rate": reply_rate,
            "faults_injected": line.injected, "resends": dev.resends, "wall_s": wall,
            "lost_bytes": max(0, r["sent"] - r["taken"]), "duplicated_bytes": max(0, r["taken"] - r["sent"]) + r["left"],
            "operation_latency_median_ms": statistics.median(lat), "operation_latency_p95_ms": lat[int(0.95 * len(lat))]}


def crc_times(n: int = 4096, reps: int = 20) -> dict:
    from crc import Calculator, Crc16
    data = random.Random(1).randbytes(n)
    golden = Calculator(Crc16.IBM_3740)
    out = {}
    for name, fn in [("crc_package_old", golden.checksum), ("binascii_new", crc16)]:
        t = time.perf_counter()
        for _ in range(reps):
            fn(data)
        out[f"{name}_us_per_{n}_bytes"] = 1e6 * (time.perf_counter() - t) / reps
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("results"), help="output folder (default: results)")
    p.add_argument("--bytes", type=int, default=200_000, help="bytes each way through Verilator (default: 200000)")
    p.add_argument("--amaranth-bytes", type=int, default=6_000,
                   help="bytes each way through the (slower) Amaranth simulator (default: 6000)")
    p.add_argument("--block", type=int, default=4096,
                   help="bytes per send()/recv() call: several frames each (default: 4096)")
    p.add_argument("--fifo", type=int, default=4096,
                   help="echo engine FIFO depth, at least --block (default: 4096)")
    p.add_argument("--window", type=int, default=8, help="WRITE_BULK frames in flight, new path (default: 8)")
    p.add_argument("--latency-requests", type=int, default=300,
                   help="READ_REG round trips timed per path (default: 300)")
    p.add_argument("--fault-rounds", type=int, default=200,
                   help="rounds of the fault-injection workload on Verilator, 6 operations each; 0 skips it "
                        "(default: 200)")
    p.add_argument("--backends", default="verilator,amaranth",
                   help="comma-separated backends to measure (default: verilator,amaranth)")
    p.add_argument("--verilator-exe", nargs=2, action="append", default=[], metavar=("FIFO", "PATH"),
                   help="a prebuilt Verilator model of the echo design with this FIFO depth (the faults run uses "
                        "512, the throughput run --fifo), for a machine without the toolchain (default: build)")
    args = p.parse_args(argv)
    PREBUILT.update({int(depth): Path(path) for depth, path in args.verilator_exe})
    if args.fifo < args.block:
        p.error(f"--fifo {args.fifo} must hold a whole --block {args.block}: the echo engine stops taking input when full")
    args.out.mkdir(parents=True, exist_ok=True)
    results = {}
    totals = {"verilator": args.bytes, "amaranth": args.amaranth_bytes}
    for backend in args.backends.split(","):
        total = totals[backend]
        n_lat = args.latency_requests if backend == "verilator" else max(20, args.latency_requests // 10)
        results[backend] = {path: measure(backend, path, total, args.block, args.window, n_lat, args.fifo)
                            for path in ("old", "new")}
        r = results[backend]
        r["new_over_old_link_bytes_per_s"] = r["new"]["link_bytes_per_s"] / r["old"]["link_bytes_per_s"]
        print(f"{backend}: old {r['old']['link_bytes_per_s'] / 1e3:.1f} kB/s, new {r['new']['link_bytes_per_s'] / 1e3:.1f}"
              f" kB/s ({r['new_over_old_link_bytes_per_s']:.1f}x); median latency old "
              f"{r['old']['latency_median_ms']:.2f} ms, new {r['new']['latency_median_ms']:.2f} ms", flush=True)
    report = {
        "workload": f"echo engine ({args.fifo}-byte FIFO), send()+recv() of {args.block}-byte blocks in 512-byte "
                    "frames, then READ_REG round trips",
        "old_path": "stop-and-wait; Verilator through pyserial socket:// (Nagle on)",
        "new_path": f"{args.window} WRITE_BULK frames in flight; Verilator through a socket with TCP_NODELAY",
        "backends": results,
        "host_crc": crc_times(),
    }
    if args.fault_rounds:
        report["verilator_under_faults"] = f = under_faults(args.fault_rounds, 0.15, 0.04)
        print(f"under faults: {sum(f['faults_injected'].values())} injected in {f['requests']} requests; lost "
              f"bytes {f['lost_bytes']}, duplicated {f['duplicated_bytes']}, wrong replies {f['wrong']}; median "
              f"operation latency {f['operation_latency_median_ms']:.2f} ms", flush=True)
    (args.out / "link_throughput.json").write_text(json.dumps(report, indent=2))

    try:
        import matplotlib
    except ImportError:  # a bare machine: the JSON is the result
        print(json.dumps(report, indent=2))
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
    names = list(results)
    for ax, key, label in [(axes[0], "link_bytes_per_s", "link bytes/s"),
                           (axes[1], "sim_cycles_per_s", "simulated cycles/s"),
                           (axes[2], "latency_median_ms", "median request latency, ms")]:
        for k, path in enumerate(("old", "new")):
            ax.bar([i + 0.4 * k for i in range(len(names))], [results[b][path][key] for b in names], width=0.4,
                   label=path)
        ax.set_xticks([i + 0.2 for i in range(len(names))], names)
        ax.set_yscale("log")
        ax.set_title(label)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(args.out / "link_throughput.png", dpi=120)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
