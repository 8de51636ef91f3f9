"""Conv-engine bitstream plumbing without the toolchain: the per-board defaults hold every bundled model, a
board without conv defaults gets a clear refusal, and the host's speed fields come from the newest matching
build report."""
import json
from pathlib import Path

import pytest

from host.pixelcnn_run import latest_build_report, speed_fields
from hw.build import CONV_BOARD_DEFAULTS, design_defaults, main
from hw.pixelcnn import program as prog
from models.pixelcnn.export import committed_export_path, load_export

REPO = Path(__file__).resolve().parents[1]


def test_ulx3s_85f_defaults_hold_the_gated_digits_model():
    args, clk = design_defaults("conv", "ulx3s-85f")
    params = prog.EngineParams(**args)
    spec = load_export(committed_export_path("digits", "gated"), max_channels=params.max_channels)
    prog.check_fits(spec, params, 8, 8)  # raises EngineFitError otherwise
    # the default PLL clock is one the committed build of these parameters meets
    _, rep = latest_build_report(params.as_dict(), root=REPO, patterns=("docs/reports/*.json",))
    assert rep is not None and rep["board"] == "ulx3s-85f" and clk <= rep["fmax_mhz"]


@pytest.mark.parametrize("model", ["pixelcnn", "gray-pixelcnn", "pyramid-pixelcnn"])
@pytest.mark.parametrize("dataset", ["digits", "patches"])
def test_ulx3s_85f_defaults_hold_every_bundled_export(model, dataset):
    """One board bitstream runs all three models on digits and on RGB patches (every stage fits)."""
    from host import pixelcnn_run as R
    params = prog.EngineParams(**design_defaults("conv", "ulx3s-85f")[0])
    exp = R._load_export(model, str(R.WEIGHTS / R.EXPORT_GLOBS[model].format(dataset)), params)
    for _, spec, w, h in R.stage_runs(model, exp):
        prog.check_fits(spec, params, w, h)  # raises EngineFitError otherwise


def test_conv_refused_on_a_board_it_does_not_fit(capsys):
    with pytest.raises(ValueError, match="no parameters for icebreaker"):
        design_defaults("conv", "icebreaker")
    assert main(["--board", "icebreaker", "--engine", "conv"]) == 2
    assert "no parameters for icebreaker" in capsys.readouterr().err
    assert set(CONV_BOARD_DEFAULTS) == {"ulx3s-85f"}


def _report(path, built_at, fmax, lanes, engine="conv"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"engine": engine, "fmax_mhz": fmax, "clk_mhz": 75.0, "timing_met": fmax >= 75,
                                "built_at": built_at,
                                "design_params": {"engine_params": {"lanes": lanes, "max_channels": 32}}}))


def test_speed_fields_from_the_newest_matching_report(tmp_path):
    _report(tmp_path / "docs/reports/old.json", "2026-01-01 00:00:00", 70.0, 16)
    _report(tmp_path / "build/ulx3s-85f/report.json", "2026-02-01 00:00:00", 80.0, 16)
    _report(tmp_path / "build/x/ulx3s-85f/report.json", "2026-03-01 00:00:00", 90.0, 8)  # other lanes
    _report(tmp_path / "docs/reports/sgd.json", "2026-04-01 00:00:00", 99.0, 16, engine="sgd")
    path, rep = latest_build_report({"lanes": 16, "max_channels": 32}, root=tmp_path)
    assert path == tmp_path / "build/ulx3s-85f/report.json" and rep["fmax_mhz"] == 80.0
    r = {"architecture": "gated", "channels": 1, "height": 8, "width": 8, "cycles_per_image": 400_000.0,
         "cycles_per_pixel": 6250.0, "mac_lower_bound_cycles_per_pixel": 6000.0, "cycles_per_sampled_image": 5e5,
         "engine_params": {"lanes": 16, "max_channels": 32, "weight_depth": 8192}}
    f = speed_fields(r, root=tmp_path)
    assert f["fmax_mhz"] == 80.0 and f["images_per_s_at_fmax"] == pytest.approx(200.0)
    assert f["sampled_images_per_s_at_fmax"] == pytest.approx(160.0)
    assert f["fmax_report"] == "build/ulx3s-85f/report.json"
    # a chained model: the stages' lower bounds summed per pixel of the final image; no report -> null
    chained = {"cycles_per_image": 1000.0, "engine_params": {"lanes": 4},
               "stages": {"prior": {"architecture": "masked", "channels": 1, "height": 4, "width": 4,
                                    "mac_lower_bound_cycles_per_pixel": 10.0},
                          "conditional": {"architecture": "masked", "channels": 1, "height": 8, "width": 8,
                                          "mac_lower_bound_cycles_per_pixel": 12.0}}}
    f = speed_fields(chained, root=tmp_path)
    assert f["mac_lower_bound_cycles_per_pixel"] == pytest.approx((10 * 16 + 12 * 64) / 64)
    assert f["cycles_per_pixel"] == pytest.approx(1000 / 64) and f["fmax_mhz"] is None
    assert f["images_per_s_at_fmax"] is None
