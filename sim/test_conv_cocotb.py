"""cocotb suite of the convolution engine, run from pytest on Verilator (and Icarus when installed)."""
import json

import pytest

from hw.pixelcnn.engine import ConvEngine

from harness import SIMULATORS, require_simulator, run_cocotb

PARAMS = dict(lanes=8, max_channels=32, max_width=8, max_layers=16, weight_depth=16384, bias_depth=1024,
              in_fifo=64, out_fifo=1024, max_maps=16)


@pytest.mark.parametrize("simulator", SIMULATORS)
def test_conv_engine(simulator):
    require_simulator(simulator)
    run_cocotb(ConvEngine(**PARAMS), name="conv", simulator=simulator, test_module="conv_tb",
               extra_env={"CONV_ENGINE_PARAMS": json.dumps(PARAMS)})
