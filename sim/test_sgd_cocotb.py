"""cocotb suite of the SGD engine, run from pytest on Verilator (and Icarus when installed).

One Verilog build per (precision, bus width, encoding); every precision, three bus widths, both encodings.
"""
import pytest

from hw.sgd.engine import SgdEngine

from harness import SIMULATORS, require_simulator, run_cocotb

CONFIGS = [(1, 64, "pair"), (2, 128, "compact"), (4, 64, "pair"), (4, 64, "compact"), (8, 256, "compact"),
           (32, 64, "pair")]


@pytest.mark.parametrize("simulator", SIMULATORS)
@pytest.mark.parametrize("bits,bus,enc", CONFIGS, ids=[f"q{b}-w{w}-{e}" for b, w, e in CONFIGS])
def test_sgd_engine(simulator, bits, bus, enc):
    require_simulator(simulator)
    maxf, store = 128, 512
    run_cocotb(SgdEngine(bits=bits, bus_bits=bus, max_features=maxf, store_beats=store, encoding=enc),
               name=f"sgd-q{bits}-w{bus}-{enc}", simulator=simulator, test_module="sgd_cocotb_tb",
               extra_env={"SGD_BITS": str(bits), "SGD_BUS": str(bus), "SGD_MAXF": str(maxf),
                          "SGD_STORE": str(store), "SGD_ENC": enc})
