"""cocotb suite of the SGD engine, run from pytest on Verilator (and Icarus when installed).

One Verilog build per (precision, bus width); every precision, three bus widths.
"""
import pytest

from hw.sgd.engine import SgdEngine

from harness import SIMULATORS, require_simulator, run_cocotb

CONFIGS = [(1, 64), (2, 128), (4, 64), (8, 256), (32, 64)]


@pytest.mark.parametrize("simulator", SIMULATORS)
@pytest.mark.parametrize("bits,bus", CONFIGS, ids=[f"q{b}-w{w}" for b, w in CONFIGS])
def test_sgd_engine(simulator, bits, bus):
    require_simulator(simulator)
    maxf, store = 128, 512
    run_cocotb(SgdEngine(bits=bits, bus_bits=bus, max_features=maxf, store_beats=store), name=f"sgd-q{bits}-w{bus}",
               simulator=simulator, test_module="sgd_cocotb_tb",
               extra_env={"SGD_BITS": str(bits), "SGD_BUS": str(bus), "SGD_MAXF": str(maxf),
                          "SGD_STORE": str(store)})
