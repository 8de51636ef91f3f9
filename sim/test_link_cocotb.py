"""cocotb suites of the link core, run from pytest on Verilator (and Icarus when installed)."""
import pytest

from hw.design import Design

from harness import SIMULATORS, require_simulator, run_cocotb


@pytest.mark.parametrize("simulator", SIMULATORS)
@pytest.mark.parametrize("max_frame", [512, 64])
def test_link_core(simulator, max_frame):
    require_simulator(simulator)
    run_cocotb(Design(max_frame=max_frame).make_core(), name=f"link{max_frame}", simulator=simulator,
               test_module="link_tb", extra_env={"LINK_MAX_FRAME": str(max_frame)}, quick_compile=True)
