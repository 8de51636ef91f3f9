"""cocotb suite of the SGD engine, run from pytest on Verilator (and Icarus when installed).

One Verilog build per (precision, bus width, encoding); every precision, three bus widths, both encodings on
Verilator.  Icarus (the 4-state run, for X) takes three of them, one per bus width, both encodings: the others add
no gateware that these do not have, and each Icarus run costs 15-30 s of the suite's 20-minute budget.
"""
import pytest

from hw.sgd.engine import SgdEngine

from harness import SIMULATORS, require_simulator, run_cocotb

CONFIGS = [(1, 64, "pair"), (2, 128, "compact"), (4, 64, "pair"), (4, 64, "compact"), (8, 256, "compact"),
           (32, 64, "pair")]


ICARUS_CONFIGS = [(1, 64, "pair"), (2, 128, "compact"), (8, 256, "compact")]


RUNS = [(sim, *cfg) for sim in SIMULATORS for cfg in CONFIGS if sim == "verilator" or cfg in ICARUS_CONFIGS]


@pytest.mark.parametrize("simulator,bits,bus,enc", RUNS, ids=[f"q{b}-w{w}-{e}-{s}" for s, b, w, e in RUNS])
def test_sgd_engine(simulator, bits, bus, enc):
    require_simulator(simulator)
    maxf, store = 128, 512
    run_cocotb(SgdEngine(bits=bits, bus_bits=bus, max_features=maxf, store_beats=store, encoding=enc),
               name=f"sgd-q{bits}-w{bus}-{enc}", simulator=simulator, test_module="sgd_cocotb_tb",
               extra_env={"SGD_BITS": str(bits), "SGD_BUS": str(bus), "SGD_MAXF": str(maxf),
                          "SGD_STORE": str(store), "SGD_ENC": enc}, quick_compile=True)
