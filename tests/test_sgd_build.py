"""SGD bitstream plumbing without the toolchain: the ECP5 PLL settings, engine arguments from the command line,
and the board top clocked from the PLL (elaborated and prepared, not built)."""
import json

import pytest

from hw.build import DESIGN_DEFAULTS, main, parse_engine_args, prepare
from hw.pll import PFD_MHZ, VCO_MHZ, ecp5_pll_config


@pytest.mark.parametrize("f_out", [50.0, 62.5, 80.0, 100.0, 110.0, 125.0])
def test_pll_settings_are_exact_and_in_range(f_out):
    c = ecp5_pll_config(25.0, f_out)
    assert abs(c.f_out_mhz - f_out) < 1e-9
    assert VCO_MHZ[0] <= c.vco_mhz <= VCO_MHZ[1] and PFD_MHZ[0] <= 25.0 / c.clki_div <= PFD_MHZ[1]
    assert ecp5_pll_config(25.0, 100.0).clkfb_div == 4  # ecppll's 25 -> 100 MHz: CLKI_DIV 1, CLKFB_DIV 4


@pytest.mark.parametrize("f_out,link", [(100.0, 50.0), (60.0, 50.0), (75.0, 50.0), (120.0, 48.0)])
def test_pll_second_output_is_the_fastest_not_above_the_link_target(f_out, link):
    c = ecp5_pll_config(25.0, f_out).with_second_output(link)
    assert c.f_os_mhz <= link + 1e-9 and c.vco_mhz / (c.clkos_div - 1) > link
    assert c.f_out_mhz == ecp5_pll_config(25.0, f_out).f_out_mhz  # CLKOP unchanged


def test_pll_refuses_what_it_cannot_make():
    with pytest.raises(ValueError, match="no ECP5 PLL setting"):
        ecp5_pll_config(25.0, 2000.0)


def test_engine_args_from_the_command_line():
    assert parse_engine_args(["bits=2", "bus_bits=0x40", "encoding=compact", "stochastic_grad=true"]) == {
        "bits": 2, "bus_bits": 64, "encoding": "compact", "stochastic_grad": True}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_engine_args(["bits"])


def test_sgd_board_top_runs_from_the_pll():
    args = dict(DESIGN_DEFAULTS[("sgd", "ecp5")][0], max_features=64, store_beats=64)
    plan, top = prepare("ulx3s-85f", engine="sgd", engine_args=args, clk_mhz=100.0)
    # the engine at 100 MHz from CLKOP; the link and UART at 50 MHz from CLKOS (VCO 600 MHz / 12)
    assert top.engine_clk_hz == 100e6 and top.clk_hz == 50e6 and top.divisor == round(50e6 / 115200)
    assert top.core.crossing == "external"
    assert json.loads(top.core.info_blob)["engine_clk_hz"] == 100_000_000
    il = plan.files["top.il"]
    assert "EHXPLLL" in il and "CLKFB_DIV" in il and "CLKOS_DIV" in il
    with pytest.raises(ValueError, match="needs an ECP5 board"):
        prepare("icebreaker", engine="sgd", engine_args={"bits": 8, "bus_bits": 32, "max_features": 16,
                                                         "store_beats": 16}, clk_mhz=50.0)


def test_list_names_boards_and_designs(capsys):
    assert main(["--list"]) == 0
    out = capsys.readouterr().out
    assert "ulx3s-85f" in out and "sgd" in out


def test_clock_alone_keeps_the_default_sgd_configuration(monkeypatch):
    """make bitstream BOARD=ulx3s-85f DESIGN=sgd CLK_MHZ=X builds the default configuration at X MHz; no
    CLK_MHZ: at the default clock; PARAMS: those parameters (no toolchain run: build is replaced)."""
    import hw.build as B
    calls = []
    monkeypatch.setattr(B, "build", lambda board, **kw: calls.append((kw["engine_args"], kw["clk_mhz"])))
    default_args, default_clk = DESIGN_DEFAULTS[("sgd", "ecp5")]
    assert B.main(["--board", "ulx3s-85f", "--engine", "sgd", "--clk-mhz", "80"]) == 0
    assert B.main(["--board", "ulx3s-85f", "--engine", "sgd"]) == 0
    assert B.main(["--board", "ulx3s-85f", "--engine", "sgd", "--param", "bits=4"]) == 0
    assert calls == [(default_args, 80.0), (default_args, default_clk), ({"bits": 4}, None)]
