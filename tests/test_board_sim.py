"""The board top in simulation, driven end to end by the serial backend: ``hw.board.BoardSim`` (UART PHY at
the board's clock and a real bit rate, FIFO, link, engine) built with Verilator, its pins played bit by
bit by the bridge and served on a TCP port; ``host/run.py --backend serial --port socket://...`` runs info,
the echo self-test and a short training run on it, as it would on a board."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from host.backends.board_sim import BoardSimulator
from host.sgd_train import design_for
from hw.design import Design

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*argv, timeout=600):
    return subprocess.run([sys.executable, str(ROOT / "host" / "run.py"), *argv], capture_output=True, text=True,
                          timeout=timeout)


def test_info_and_echo_over_the_board_top_at_115200_baud():
    with BoardSimulator(Design("echo"), board="icebreaker", baud=115200) as sim:
        assert sim.divisor == 104  # 12 MHz / 115200: the icebreaker bitstream's UART
        info = run_cli("info", "--backend", "serial", "--port", sim.url)
        assert info.returncode == 0, info.stderr
        assert '"board": "icebreaker"' in info.stdout and '"baud": 115200' in info.stdout
        assert "engine         : ECHO" in info.stdout
        # a second program on the same port: the design kept running, as a board does
        echo = run_cli("echo", "--backend", "serial", "--port", sim.url, "--bytes", "700")
        assert echo.returncode == 0, echo.stderr
        assert "700 bytes each way" in echo.stdout and " 0 mismatched bytes" in echo.stdout


@pytest.mark.slow
def test_training_over_the_board_top(tmp_path):
    design = design_for(4, bus_bits=64, max_features=16, store_beats=512, max_frame=512)
    with BoardSimulator(design, board="icebreaker", baud=1_000_000) as sim:  # 12 cycles a bit
        out = tmp_path / "train.json"
        r = run_cli("train", "--backend", "serial", "--port", sim.url, "--baud", "1000000", "--dataset",
                    "diabetes", "--bits", "4", "--epochs", "1", "--no-progress", "--json", str(out),
                    "--plot", str(tmp_path / "loss.png"))
    assert r.returncode == 0, r.stderr
    result = json.loads(out.read_text())
    assert result["golden_match"] is True and result["samples"] == 442
    assert result["loss_per_epoch"][0] < result["initial_loss"]
