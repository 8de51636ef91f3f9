"""Place and route one engine alone (no link, no UART) to find its own Fmax on an ECP5 board.

The whole board design's critical path can sit in the link (``docs/sgd-engine.md``, ``docs/conv-engine.md``,
Bitstreams), which hides the engine's.  This top clocks the engine from the PLL (``hw.pll``) and drives every
input of the engine contract (``hw.engine.ENGINE_MEMBERS``) from a shift register fed by the UART receive pin;
every output is registered, then XOR-reduced into a register on the UART transmit pin, so Yosys keeps all of the
engine and every engine path starts and ends at a flip-flop or a RAM, as in the board design, with no harness
logic on it (an output straight from a RAM, like the conv engine's ``o`` payload from its output FIFO, ends at a
flip-flop: what the link does with it is the link's path).  The report is ``hw.build``'s JSON
(resources, Fmax, critical path).

    python -m hw.timing --engine sgd --board ulx3s-85f --clk-mhz 100 --param bits=2 --param bus_bits=64 \\
        --param encoding=compact --out docs/reports/ulx3s-85f-sgd-engine-alone.json
    python -m hw.timing --engine conv --board ulx3s-85f --clk-mhz 80     # CONV_BOARD_DEFAULTS parameters
"""
import argparse
import json
import time
from pathlib import Path

from amaranth.hdl import Cat, Elaboratable, Module, Signal
from amaranth.lib import io

from .build import (BITSTREAM_NAME, _build_kwargs, design_defaults, get_board, parse_engine_args, read_results,
                    source_commit, synth_opts_for, tool_env)
from .design import ENGINES
from .engine import Engine
from .pll import add_pll_sync_domain, ecp5_pll_config


class EngineAloneTop(Elaboratable):
    def __init__(self, engine: Engine, pll):
        self.engine = engine
        self.pll = pll

    def elaborate(self, platform):
        m = Module()
        m.submodules.engine = eng = self.engine
        add_pll_sync_domain(m, platform, self.pll)
        uart = platform.request("uart", 0, dir="-")
        m.submodules.rx_pin = rx_pin = io.Buffer("i", uart.rx)
        m.submodules.tx_pin = tx_pin = io.Buffer("o", uart.tx)
        ins = [eng.reg_addr, eng.reg_wdata, eng.reg_we, eng.reg_re, eng.i.payload, eng.i.valid, eng.o.ready]
        width = sum(len(s) for s in ins)
        sr = Signal(width)
        m.d.sync += sr.eq(Cat(rx_pin.i, sr[:-1]))
        pos = 0
        for s in ins:
            m.d.comb += s.eq(sr[pos:pos + len(s)])
            pos += len(s)
        outs = Cat(eng.reg_rdata, eng.o.payload, eng.o.valid, eng.i.ready, eng.busy)
        outs_q = Signal(len(outs))  # each output registered first: the XOR tree adds no logic to engine paths
        out = Signal()
        m.d.sync += [outs_q.eq(outs), out.eq(outs_q.xor())]
        m.d.comb += tx_pin.o.eq(out)
        return m


def default_engine_args(engine: str, board: str) -> dict:
    """The engine arguments ``make bitstream BOARD=board DESIGN=engine`` builds (``hw.build.design_defaults``),
    or {} (the constructor's defaults) where the design has none for that board."""
    try:
        defaults = design_defaults(engine, board)
    except ValueError:  # conv on a board without conv defaults: the constructor's defaults
        return {}
    return dict(defaults[0]) if defaults else {}


def build_engine_alone(board: str, engine_args: dict, clk_mhz: float, build_dir: Path, log=print,
                       engine: str = "sgd") -> dict:
    spec = get_board(board)
    if spec.family != "ecp5":
        raise ValueError(f"{board} is not an ECP5 board (the harness uses the ECP5 PLL)")
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; known engines: {', '.join(sorted(ENGINES))}")
    platform = spec.make_platform()
    cfg = ecp5_pll_config(platform.default_clk_frequency / 1e6, clk_mhz)
    eng = ENGINES[engine](**engine_args)
    env = tool_env(programming=False)
    Path(env["YOWASP_CACHE_DIR"]).mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    commit = source_commit()
    synth_opts = synth_opts_for(board, engine)
    plan = platform.prepare(EngineAloneTop(eng, cfg), name=BITSTREAM_NAME, **_build_kwargs(synth_opts))
    plan.execute_local(str(build_dir), env=env)
    report = {"board": board, "device": platform.device, "engine_alone": engine,  # not "engine": no board build
              "design": f"{engine} engine alone (hw.timing)",
              "engine_args": engine_args, "engine_params": eng.params, "clk_mhz": cfg.f_out_mhz,
              **read_results(build_dir, spec, cfg.f_out_mhz * 1e6),
              "synth_opts": synth_opts, "build_seconds": round(time.monotonic() - t0, 1), "source_commit": commit}
    log(f"{board} {engine} engine alone {engine_args}: Fmax {report['fmax_mhz']} MHz vs {cfg.f_out_mhz:g} MHz; "
        f"critical path {report['critical_path']}")
    return report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engine", default="sgd", choices=sorted(ENGINES), help="engine to place and route (default: sgd)")
    p.add_argument("--board", default="ulx3s-85f", help="ECP5 board (default: ulx3s-85f)")
    p.add_argument("--clk-mhz", type=float, default=100.0, help="PLL clock target in MHz (default: 100)")
    p.add_argument("--param", metavar="K=V", action="append", default=[],
                   help="an engine parameter (repeat the flag), e.g. --param bits=2 --param bus_bits=64; "
                        "default (no --param): the board's `make bitstream` parameters for that engine "
                        "(hw.build.design_defaults), else the engine's constructor defaults")
    p.add_argument("--build-dir", type=Path, default=None,
                   help="tool outputs (default: build/ENGINE-engine-alone)")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON report here (default: none)")
    args = p.parse_args(argv)
    try:
        get_board(args.board)
        engine_args = parse_engine_args(args.param) if args.param else default_engine_args(args.engine, args.board)
    except ValueError as exc:
        p.error(str(exc))
    build_dir = args.build_dir or Path(f"build/{args.engine}-engine-alone")
    report = build_engine_alone(args.board, engine_args, args.clk_mhz, build_dir, engine=args.engine)
    text = json.dumps(report, indent=2) + "\n"
    (build_dir / "report.json").write_text(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
