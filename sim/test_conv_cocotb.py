"""cocotb suite of the convolution engine, run from pytest on Verilator (and Icarus when installed)."""
import json

import pytest

from hw.pixelcnn.engine import ConvEngine

from harness import SIMULATORS, require_simulator, run_cocotb

PARAMS = dict(lanes=8, max_channels=32, max_width=8, max_layers=16, weight_depth=16384, bias_depth=1024,
              in_fifo=64, out_fifo=1024, max_maps=16)


# Icarus (the 4-state run, for X) takes the two random-network tests (about 40 s); the trained-export and
# sampling tests take 14 more minutes there and run on Verilator only.
ICARUS_TESTS = ["random_network_layer_by_layer", "saturating_network"]


@pytest.mark.parametrize("simulator", SIMULATORS)
def test_conv_engine(simulator):
    require_simulator(simulator)
    run_cocotb(ConvEngine(**PARAMS), name="conv", simulator=simulator, test_module="conv_tb",
               extra_env={"CONV_ENGINE_PARAMS": json.dumps(PARAMS)},
               testcase=ICARUS_TESTS if simulator == "icarus" else None)
