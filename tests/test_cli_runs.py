"""``python host/run.py`` runs on the Amaranth backend with a small SGD engine: --save-model / --load-model
continue training bit-exactly (1 + 1 epochs == 2 epochs) and --epochs 0 evaluates; a golden mismatch exits 3;
the JSON is written before the plot; a real Ctrl-C ends with one line and exit 130."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from host import cli_checks as C
from host import run, sgd_train

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def small_engine(monkeypatch, tmp_path):
    """The CLI's design shrunk (32-bit bus, 16 features, 64-beat store) and a 40-sample, 3-feature dataset."""
    full = sgd_train.design_for
    monkeypatch.setattr(sgd_train, "design_for",
                        lambda bits, **kw: full(bits, bus_bits=32, max_features=16, store_beats=64))
    rng = np.random.default_rng(3)
    X = rng.standard_normal((40, 3))
    y = X @ [1.0, -2.0, 0.5] + 0.1 * rng.standard_normal(40)
    path = tmp_path / "tiny.npz"
    np.savez(path, X=X, y=y)
    return path


def cli(*argv):
    return run.main(["--backend", "amaranth", "--no-progress"] + [str(a) for a in argv])


@pytest.mark.slow  # three Amaranth runs: ~15 s idle, 32 s on a loaded machine
def test_save_load_continues_training_bit_exactly_and_evaluates(small_engine, tmp_path, capsys):
    d = tmp_path
    assert cli("--dataset", small_engine, "--epochs", 1, "--seed", 5, "--step", "2^-5", "--decay", 1,
               "--save-model", d / "m1.npz", "--json", d / "a.json", "--plot", d / "a.png") == 0
    assert cli("--dataset", small_engine, "--epochs", 1, "--load-model", d / "m1.npz",
               "--save-model", d / "m2.npz", "--json", d / "b.json", "--plot", d / "b.png") == 0
    assert cli("--dataset", small_engine, "--epochs", 2, "--seed", 5, "--step", "2^-5", "--decay", 1,
               "--json", d / "c.json", "--plot", d / "c.png") == 0
    a, b, c = (json.loads((d / f"{k}.json").read_text()) for k in "abc")
    assert b["first_epoch"] == 1 and b["step_shift"] == 5 and b["decay_every"] == 1 and b["seed"] == 5
    assert b["model_q23"] == c["model_q23"] != a["model_q23"]  # the step schedule and random stream went on
    assert [a["loss_per_epoch"][0], b["loss_per_epoch"][0]] == c["loss_per_epoch"]
    assert b["initial_loss"] == a["loss_per_epoch"][-1]
    from host import model_file
    q, meta = model_file.load(d / "m2.npz")
    assert q.tolist() == c["model_q23"] and meta["epochs"] == 2 and meta["features"] == 4
    assert meta["bits"] == 4 and meta["engine_params"]["bus_bits"] == 32 and meta["dataset"] == "tiny.npz"
    capsys.readouterr()
    # --epochs 0: evaluate the saved model on the data, no device
    assert cli("--dataset", small_engine, "--epochs", 0, "--load-model", d / "m2.npz", "--json", d / "e.json") == 0
    e = json.loads((d / "e.json").read_text())
    assert e["loss"] == pytest.approx(c["loss_per_epoch"][-1], rel=1e-12) and e["model_epochs"] == 2
    assert "loss 0.0" in capsys.readouterr().out


def test_golden_mismatch_exits_3(small_engine, tmp_path, capsys, monkeypatch):
    from models.zipml import fixed_point
    real = fixed_point.engine_run

    def off_by_one(x, *a, **k):
        r = real(x, *a, **k)
        r.x[0] += 1
        return r
    monkeypatch.setattr(fixed_point, "engine_run", off_by_one)
    rc = cli("--dataset", small_engine, "--epochs", 1, "--json", tmp_path / "r.json", "--plot", tmp_path / "p.png")
    err = capsys.readouterr().err
    assert rc == C.EXIT_MISMATCH == 3
    assert "differs from the bit-exact golden in 1 of 4 words" in err and "Traceback" not in err


def test_json_is_written_before_the_plot(small_engine, tmp_path, capsys, monkeypatch):
    def plot_fails(result, path):
        raise OSError(f"{path}: disk full")
    monkeypatch.setattr(sgd_train, "plot_loss", plot_fails)
    rc = cli("--dataset", small_engine, "--epochs", 1, "--json", tmp_path / "r.json", "--plot", tmp_path / "p.png")
    assert rc == C.EXIT_FAILED
    assert "disk full" in capsys.readouterr().err
    assert json.loads((tmp_path / "r.json").read_text())["golden_match"] is True


def test_ctrl_c_ends_with_one_line_and_exit_130():
    # the child gets SIGINT's default action, as a command started from a terminal does: the test suite itself may
    # run with SIGINT ignored (started with & from a non-interactive shell), which a child would inherit
    proc = subprocess.Popen([sys.executable, str(ROOT / "host" / "run.py"), "echo", "--backend", "amaranth",
                             "--bytes", "1000000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    os.set_blocking(proc.stderr.fileno(), False)
    seen, deadline = b"", time.monotonic() + 120
    while b"echo (amaranth)" not in seen:  # the transfer's progress bar: the job is running
        assert proc.poll() is None and time.monotonic() < deadline, seen
        seen += proc.stderr.read() or b""
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    err = (seen + err).decode(errors="replace")
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert err.rstrip().splitlines()[-1] == "python host/run.py: interrupted"
