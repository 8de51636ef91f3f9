"""hw.timing: the engine-alone timing top elaborates for every engine and picks the board's build parameters."""
import pytest

from hw import build as B
from hw import timing as T
from hw.design import ENGINES
from hw.pll import ecp5_pll_config


@pytest.mark.parametrize("engine,args", [("sgd", {"bits": 2, "bus_bits": 32, "max_features": 64, "store_beats": 64}),
                                         ("conv", {"lanes": 2, "max_channels": 4, "max_width": 8, "max_layers": 4,
                                                   "weight_depth": 64, "bias_depth": 32, "max_maps": 4})])
def test_engine_alone_top_elaborates(engine, args):
    platform = B.get_board("ulx3s-85f").make_platform()
    top = T.EngineAloneTop(ENGINES[engine](**args), ecp5_pll_config(25.0, 80.0))
    plan = platform.prepare(top, name=B.BITSTREAM_NAME, **B._build_kwargs(B.synth_opts_for("ulx3s-85f", engine)))
    il = plan.files["top.il"]
    assert ("-noabc9" in plan.files["top.ys"]) == (engine == "conv")  # B.DESIGN_SYNTH_OPTS
    assert "EHXPLLL" in il  # clocked from the PLL
    assert "uart_0__rx" in plan.files["top.lpf"] and "uart_0__tx" in plan.files["top.lpf"]


def test_default_engine_args():
    assert T.default_engine_args("conv", "ulx3s-85f") == B.CONV_BOARD_DEFAULTS["ulx3s-85f"][0]
    assert T.default_engine_args("sgd", "ulx3s-85f") == B.DESIGN_DEFAULTS[("sgd", "ecp5")][0]
    assert T.default_engine_args("conv", "ulx3s-12f") == {}  # no conv defaults there: constructor defaults
    assert T.default_engine_args("echo", "ulx3s-85f") == {}


def test_cli_rejects_bad_input():
    with pytest.raises(SystemExit) as e:
        T.main(["--engine", "nope"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        T.main(["--board", "nope"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        T.main(["--param", "bits"])
    assert e.value.code == 2
    with pytest.raises(ValueError, match="not an ECP5 board"):
        T.build_engine_alone("icebreaker", {}, 50.0, "/nonexistent", engine="echo")
