"""``make program`` / ``python -m hw.build --program``: a finished build of the same design and sources is
programmed as it is; anything else (other arguments, a changed source, a missing or altered bitstream,
--rebuild) builds.  The stage bar and --verbose log follow the tools' outputs.  No toolchain runs here."""
import json
import time

import pytest

from hw import build as B


def fake_build(build_dir, spec, key, *, timing_met=True):
    build_dir.mkdir(parents=True, exist_ok=True)
    bit = B._bitstream_path(build_dir, spec)
    bit.write_bytes(b"\x01" * 100)
    report = {"board": "icebreaker", "build_key": key, "timing_met": timing_met, "bitstream": str(bit),
              "bitstream_bytes": 100}
    (build_dir / "report.json").write_text(json.dumps(report))
    return report


def test_build_key_covers_arguments():
    kw = dict(engine="echo", baud=115200, max_frame=512, engine_args=None)
    k = B.build_key("icebreaker", **kw)
    assert k == B.build_key("icebreaker", **kw)
    assert k != B.build_key("ulx3s-85f", **kw)
    assert k != B.build_key("icebreaker", **{**kw, "baud": 57600})
    assert k != B.build_key("icebreaker", **{**kw, "engine": "sgd", "engine_args": {"bits": 2}})
    assert k != B.build_key("icebreaker", **kw, synth_opts="-noabc9")


def test_synth_opts_are_the_boards_then_the_designs_or_the_override():
    assert B.synth_opts_for("ulx3s-85f", "conv") == "-noabc9"  # ABC9 stops on the conv engine (DESIGN_SYNTH_OPTS)
    assert B.synth_opts_for("ulx3s-85f", "sgd") == "-noflatten"  # the engine mapped apart from the link
    assert B.synth_opts_for("ulx3s-85f", "echo") == ""
    assert B.synth_opts_for("icebreaker", "sgd") == "-dsp"
    assert B.synth_opts_for("ulx3s-85f", "conv", "") == ""     # an empty override drops the design's
    assert B.synth_opts_for("icebreaker", "sgd", "-abc2") == "-dsp -abc2"  # after the board's own
    plan, _ = B.prepare("ulx3s-85f", engine="conv", engine_args={"lanes": 2, "max_channels": 4, "max_width": 8,
                                                                "max_layers": 4, "weight_depth": 64,
                                                                "bias_depth": 32, "max_maps": 4})
    assert "synth_ecp5 -noabc9" in plan.files["top.ys"]


def test_reusable_report_only_for_an_intact_matching_build(tmp_path):
    spec = B.get_board("icebreaker")
    d = tmp_path / "icebreaker"
    assert B.reusable_report(d, spec, "k1") is None  # nothing built
    fake_build(d, spec, "k1")
    assert B.reusable_report(d, spec, "k1")["build_key"] == "k1"
    assert B.reusable_report(d, spec, "k2") is None  # other design or sources
    (d / "top.bin").write_bytes(b"\x01" * 99)
    assert B.reusable_report(d, spec, "k1") is None  # bitstream altered
    fake_build(d, spec, "k1", timing_met=False)
    assert B.reusable_report(d, spec, "k1") is None  # a build that failed timing is not reused


def test_program_reuses_the_existing_bitstream(tmp_path, monkeypatch):
    monkeypatch.setenv("ICEPROG", "true")  # any programmer on PATH: it is not called here
    programmed = []
    monkeypatch.setattr(B, "_program", lambda platform, products, board, log: programmed.append(products))

    def no_toolchain(*a, **k):
        raise AssertionError("the toolchain ran although the bitstream was up to date")
    monkeypatch.setattr(B, "_run_with_progress", no_toolchain)
    spec = B.get_board("icebreaker")
    key = B.build_key("icebreaker", engine="echo", baud=115200, max_frame=512, engine_args=None,
                      synth_opts=B.synth_opts_for("icebreaker", "echo"))
    fake_build(tmp_path / "icebreaker", spec, key)
    logs = []
    report = B.build("icebreaker", program=True, build_root=tmp_path, log=logs.append)
    assert report["build_key"] == key and len(programmed) == 1
    with programmed[0].extract("top.bin") as path:  # the products hold the existing bitstream
        assert open(path, "rb").read() == b"\x01" * 100
    assert any("reusing" in line for line in logs)
    with pytest.raises(AssertionError, match="toolchain ran"):  # --rebuild builds
        B.build("icebreaker", program=True, rebuild=True, build_root=tmp_path, log=logs.append)
    with pytest.raises(AssertionError, match="toolchain ran"):  # other arguments build
        B.build("icebreaker", program=True, baud=57600, build_root=tmp_path, log=logs.append)


def test_stage_progress_and_verbose_log(tmp_path, capsys):
    def toolchain():
        for name, text in [("top.rpt", "yosys says hi\n"), ("top.json", "{}"), ("top.tim", "nextpnr: placed\n"),
                           ("top.asc", ""), ("top.bin", "")]:
            with open(tmp_path / name, "a") as f:
                f.write(text)
            time.sleep(0.3)
        return "products"
    lines = []
    assert B._run_with_progress(toolchain, tmp_path, "ice40", progress=True, verbose=True,
                                log=lines.append) == "products"
    err = capsys.readouterr()
    assert "[top.rpt] yosys says hi" in err.out + err.err and "[top.tim] nextpnr: placed" in err.out + err.err
    assert "3/3 stages" in err.err

    def broken():
        raise RuntimeError("yosys exploded")
    with pytest.raises(RuntimeError, match="exploded"):
        B._run_with_progress(broken, tmp_path, "ice40", progress=False, verbose=False)
