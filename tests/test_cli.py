"""``python host/run.py``: every bad input gets one message naming the problem and exit 2 before any work
starts (no device opened, no simulator, nothing written); the exit codes and dataset names are in --help;
the argument types; the model file; the sample grid and loss plot.  No test here starts a simulator."""
import argparse
import json

import numpy as np
import pytest

from host import cli_checks as C
from host import model_file
from host import run

LIBSVM_2G = b"1 2000000000:1\n0 1:1 2:0.5\n"  # 27 bytes; dense: 2 x 2e9 float64 = 29.8 GiB


@pytest.fixture
def no_device(monkeypatch):
    """Any device or simulator start fails the test: usage errors must come first."""
    def refuse(*a, **k):
        raise AssertionError("a device was opened before the arguments were checked")
    import host.backends
    monkeypatch.setattr(host.backends, "open_device", refuse)
    monkeypatch.setattr(run, "open_device", refuse)


def cli(argv, capsys):
    """(exit status, stderr) of ``host/run.py argv`` in this process."""
    try:
        rc = run.main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's own errors
        rc = exc.code
    err = capsys.readouterr().err
    return rc, err


def assert_usage_error(argv, capsys, *needles):
    rc, err = cli(argv, capsys)
    assert rc == C.EXIT_USAGE, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error" in line]
    assert len(lines) == 1, err  # one message
    for needle in needles:
        assert needle in lines[0], err
    return lines[0]


@pytest.mark.parametrize("argv,needles", [
    (["--model", "pixelcnn", "--samples", "-1"], ["--samples", "at least 0"]),
    (["--model", "pixelcnn", "--limit", "0"], ["--limit", "at least 1"]),
    (["--model", "pixelcnn", "--limit", "-1"], ["--limit", "at least 1"]),
    (["--timeout", "-1"], ["--timeout", "positive"]),
    (["--timeout", "0"], ["--timeout", "positive"]),
    (["--timeout", "nan"], ["--timeout", "positive"]),
    (["--baud", "0"], ["--baud"]),
    (["echo", "--bytes", "0"], ["--bytes"]),
    (["--epochs", "-3"], ["--epochs"]),
    (["--epochs", "0"], ["--epochs", "--load-model"]),
    (["--bits", "3"], ["--bits 3", "1, 2, 4, 8, 32"]),
    (["--seed", "-1"], ["--seed"]),
    (["--step", "0.01"], ["--step", "power of two", "0.0078125"]),
    (["--step", "2^-70"], ["--step"]),
    (["--step", "2"], ["--step"]),
    (["--step", "--2^-3"], ["--step"]),
    (["--batch", "3"], ["--batch", "power of two"]),
    (["--batch", "0"], ["--batch"]),
    (["--decay", "-1"], ["--decay"]),
    (["--step", "2^-60", "--decay", "1", "--epochs", "10"], ["2^-69", "2^-63"]),
    # PixelCNN models do not train: --bits/--epochs (and the other linreg flags) are errors, not ignored
    (["--model", "pixelcnn", "--bits", "4"], ["--bits", "does not apply", "PixelCNN"]),
    (["--model", "gray-pixelcnn", "--epochs", "3"], ["--epochs", "does not apply"]),
    (["--model", "pixelcnn", "--step", "2^-7"], ["--step", "does not apply"]),
    (["--model", "pixelcnn", "--save-model", "m.npz"], ["--save-model", "does not apply"]),
    (["--samples", "4"], ["--samples", "does not apply", "linreg"]),
    (["--limit", "4"], ["--limit", "does not apply"]),
    (["info", "--dataset", "diabetes"], ["--dataset", "does not apply to info"]),
    (["info", "--json", "out.json"], ["--json", "does not apply to info"]),
    (["echo", "--epochs", "2"], ["--epochs", "does not apply to echo"]),
    (["info", "--bytes", "10"], ["--bytes", "does not apply to info"]),
    (["info", "--backend", "serial"], ["needs --port"]),
    (["info", "--port", "/dev/ttyUSB1"], ["--port", "serial only"]),
    (["--dataset", "no-such-set"], ["no-such-set", "synthetic100"]),
])
def test_bad_arguments_exit_2_before_any_work(argv, needles, capsys, no_device):
    assert_usage_error(argv, capsys, *needles)


def test_output_paths_are_checked_before_any_work(tmp_path, capsys, no_device):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    cases = [
        (["--json", tmp_path], ["--json", "is a directory"]),
        (["--json", a_file / "out.json"], ["--json", "is a file, not a directory"]),
        (["--plot", tmp_path], ["--plot"]),
        (["--plot", tmp_path / "loss.txt"], ["--plot", ".png"]),
        (["--plot", a_file / "sub" / "loss.png"], ["--plot", "not a directory"]),
        (["--save-model", tmp_path / "model.pkl"], ["--save-model", ".npz"]),
        (["--save-model", tmp_path / "e.npz", "--json", tmp_path / "e.npz"], ["both write"]),
        (["--json", tmp_path / "same.png", "--plot", tmp_path / "same.png"], ["both write"]),
        (["--model", "pixelcnn", "--json", tmp_path], ["--json", "is a directory"]),
        (["--model", "pixelcnn", "--plot", tmp_path / "grid.txt"], ["--plot", ".png"]),
    ]
    for argv, needles in cases:
        assert_usage_error(argv, capsys, *needles)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]  # nothing written


@pytest.mark.skipif(not hasattr(__import__("os"), "geteuid") or __import__("os").geteuid() == 0,
                    reason="root may write anywhere")
def test_unwritable_directory_is_a_usage_error(tmp_path, capsys, no_device):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    assert_usage_error(["--json", locked / "out.json"], capsys, "--json", "permission denied")


def test_pixelcnn_plot_without_samples_is_an_error(capsys, no_device):
    assert_usage_error(["--model", "pixelcnn", "--samples", "0", "--plot", "grid.png"], capsys,
                       "--plot", "--samples 0")
    assert_usage_error(["--model", "pixelcnn", "--seed", "0"], capsys, "--seed 0", "nonzero")


def test_pixelcnn_unknown_dataset_is_a_usage_error(capsys, no_device):
    assert_usage_error(["--model", "pixelcnn", "--dataset", "nope"], capsys, "--dataset nope", "choose digits")
    assert_usage_error(["--model", "masked-pixelcnn", "--dataset", "nope"], capsys, "--dataset nope", "digits, faces")
    assert_usage_error(["--model", "gray-pixelcnn", "--dataset", "faces"], capsys, "--dataset faces", "digits")


def test_huge_sparse_libsvm_file_is_refused_before_it_is_made_dense(tmp_path, capsys, no_device, monkeypatch):
    path = tmp_path / "wide.svm"
    path.write_bytes(LIBSVM_2G)
    assert path.stat().st_size == 27
    assert_usage_error(["--dataset", path], capsys, "2,000,000,000 features", "8,191")
    # without an engine limit (the API), the memory check still refuses it before densifying
    from models.zipml import datasets as D
    monkeypatch.setattr(D, "_memory_bytes", lambda: 8 << 30)
    with pytest.raises(D.DatasetError, match=r"29\.8 GiB as a dense array"):
        D.load_dataset(path)
    with pytest.raises(D.DatasetError, match="more than the 100"):
        D.load_dataset(path, max_features=100)


def test_load_model_errors(tmp_path, capsys, no_device):
    assert_usage_error(["--load-model", tmp_path / "none.npz"], capsys, "--load-model", "no such file")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(LIBSVM_2G)
    assert_usage_error(["--load-model", junk], capsys, "--load-model", "not an .npz")
    other = tmp_path / "other.npz"
    np.savez(other, X=np.zeros((2, 2)), y=np.zeros(2))
    assert_usage_error(["--load-model", other], capsys, "not a zippix model file")
    meta = {"dataset": "diabetes", "features": 3, "bits": 4, "epochs": 2, "seed": 0, "step_shift": 7,
            "decay_every": 2, "batch": 1, "rng_state": {}, "scaling": {}}
    m = tmp_path / "m.npz"
    model_file.save(m, [1, 2, 3], {k: v for k, v in meta.items() if k != "rng_state"})
    assert_usage_error(["--load-model", m], capsys, "metadata lacks rng_state")
    model_file.save(m, [1, 2, 3], meta)
    assert_usage_error(["--dataset", "diabetes", "--load-model", m], capsys, "3 words", "10 features")
    m11 = tmp_path / "m11.npz"
    model_file.save(m11, np.zeros(11), {**meta, "features": 11})
    assert_usage_error(["--dataset", "diabetes", "--load-model", m11, "--epochs", "0", "--plot", "x.png"],
                       capsys, "--plot", "evaluates")


def test_help_lists_exit_codes_datasets_and_defaults(capsys):
    with pytest.raises(SystemExit) as exc:
        run.main(["--help"])
    assert exc.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for text in ["exit status", "2 usage error", "3 the engine's result differs", "130 interrupted",
                 "synthetic100", "breast_cancer", "cadata", "YearPredictionMSD", "faces",
                 "--seed", "--step", "--decay", "--batch", "--save-model", "--load-model",
                 "(default: 4)", "(default: 10)", "(default: 2)", "(default: 1)", "(default: 5.0)"]:
        assert text in out, text


def test_defaults_are_filled_only_for_the_job_that_reads_them():
    p = run.build_parser()
    a = C.validate(p.parse_args([]))
    assert (a.dataset, a.bits, a.epochs, a.seed, a.batch, a.decay, a.step) == ("synthetic100", 4, 10, 0, 1, 2, None)
    assert a.given == set() and a.samples is None
    b = C.validate(p.parse_args(["--model", "pixelcnn", "--samples", "0"]))
    assert (b.dataset, b.bits, b.epochs, b.samples) == ("digits", None, None, 0)
    assert b.given == {"samples"}
    e = C.validate(p.parse_args(["echo"]))
    assert e.bytes == 4096 and e.dataset is None


@pytest.mark.parametrize("text,shift", [("1", 0), ("0.5", 1), ("0.0078125", 7), ("2^-7", 7), ("2**-7", 7),
                                        ("2^-63", 63), ("2^0", 0)])
def test_step_size_parses_powers_of_two(text, shift):
    assert C.step_size(text) == shift


@pytest.mark.parametrize("text", ["0", "-0.5", "0.3", "1.5", "2^-64", "2^3", "inf", "nan", "x"])
def test_step_size_rejects_other_values(text):
    with pytest.raises(argparse.ArgumentTypeError):
        C.step_size(text)


def test_interrupt_is_one_line_and_exit_130(capsys, monkeypatch):
    from host import sgd_train

    def interrupted(args):
        raise KeyboardInterrupt
    monkeypatch.setattr(sgd_train, "main", interrupted)
    rc, err = cli(["--dataset", "diabetes", "--epochs", "1"], capsys)
    assert rc == C.EXIT_INTERRUPTED == 130
    assert err.strip() == "python host/run.py: interrupted"


def test_link_failure_is_exit_1_without_traceback(capsys, monkeypatch):
    from host.device import LinkTimeout

    def fail(*a, **k):
        raise LinkTimeout("verilator: no valid reply to READ_REG within 5.0 s")
    monkeypatch.setattr(run, "open_device", fail)
    rc, err = cli(["info"], capsys)
    assert rc == C.EXIT_FAILED and "no valid reply" in err and "Traceback" not in err


def test_model_file_round_trip_and_scaling(tmp_path):
    path = tmp_path / "m.npz"
    q = np.array([1 << 23, -(1 << 22), 5], np.int64)
    X = np.array([[0.0, 10.0], [2.0, 30.0], [4.0, 20.0]])
    y = np.array([1.0, 3.0, 2.0])
    scaling = model_file.scaling_of(X, y, signed=False, task="regression")
    model_file.save(path, q, {"dataset": "t", "features": 3, "bits": 4, "epochs": 1, "seed": 0, "step_shift": 7,
                              "decay_every": 2, "batch": 1, "scaling": scaling, "rng_state": {"state": 2**100}})
    q2, meta = model_file.load(path)
    assert np.array_equal(q2, q) and meta["version"] == model_file.VERSION and meta["rng_state"]["state"] == 2**100
    with np.load(path) as z:  # usable without this code: the float model next to the words
        assert np.allclose(z["model"], [1.0, -0.5, 5 / 2**23])
    from models.zipml.datasets import Dataset, prepare_linear
    A, b = model_file.scale(scaling, X, y)
    A_ref, b_ref = prepare_linear(Dataset(X, y, "t", "regression"))
    assert np.allclose(A, A_ref) and np.allclose(b, b_ref)


def test_loss_figure_has_whole_epochs_from_zero():
    from host.sgd_train import loss_figure
    r = {"loss_per_epoch": [0.5, 0.25, 0.2], "fp_loss_per_epoch": [0.4, 0.2, 0.19], "initial_loss": 1.0,
         "bits": 4, "backend": "amaranth", "dataset": "d", "features": 3, "samples": 9, "bus_bits": 32}
    fig = loss_figure(r)
    ax = fig.axes[0]
    for line in ax.get_lines():
        assert list(line.get_xdata()) == [0, 1, 2, 3]
        assert line.get_ydata()[0] == 1.0
    ticks = [t for t in ax.get_xticks() if 0 <= t <= 3]
    assert ticks and all(float(t).is_integer() for t in ticks)
    resumed = loss_figure({**r, "first_epoch": 4})
    assert list(resumed.axes[0].get_lines()[0].get_xdata()) == [4, 5, 6, 7]


def test_sample_grid_is_large_and_titled(tmp_path):
    import matplotlib.image as mpimg
    from host.pixelcnn_run import save_sample_grid
    rng = np.random.default_rng(0)
    for n in (2, 16):
        path = save_sample_grid(tmp_path / f"g{n}.png", rng.integers(0, 17, (n, 1, 8, 8)),
                                rng.integers(0, 17, (n, 1, 8, 8)), 17, "pixelcnn on digits")
        h, w = mpimg.imread(path).shape[:2]
        assert w >= 1000 and h >= 200, (w, h)  # was 596 x 40 at 16 samples


def test_pixelcnn_mismatch_exits_3_and_json_comes_before_the_grid(tmp_path, capsys, monkeypatch):
    from host import pixelcnn_run as R
    result = {"model": "pixelcnn", "bpd_equal": False, "samples_equal_twin": True}
    monkeypatch.setattr(R, "run_pixelcnn", lambda args: (result, [(tmp_path / "g.png", None)]))
    monkeypatch.setattr(R, "print_result", lambda r: None)

    def grid_fails(*a):
        raise OSError("disk full")
    monkeypatch.setattr(R, "save_sample_grid", grid_fails)
    args = argparse.Namespace(model="pixelcnn", json=tmp_path / "r.json")
    with pytest.raises(OSError):
        R.main(args)
    assert json.loads((tmp_path / "r.json").read_text())["bpd_equal"] is False  # written first
    monkeypatch.setattr(R, "run_pixelcnn", lambda args: (result, []))
    assert R.main(args) == C.EXIT_MISMATCH
    assert "differs" in capsys.readouterr().err
    result["bpd_equal"] = True
    assert R.main(args) == C.EXIT_OK
