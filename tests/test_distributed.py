"""host.distributed: the exchange codec, the flag checks, and real runs on loopback (gloo over 127.0.0.1,
torchrun --standalone, one Verilator simulator per rank, diabetes: 442 samples x 11 words).

The runs check: one rank == host.sgd_train.train on one device; two ranks == the NumPy replay bit for bit (32 and
8-bit exchange, with non-sync epochs); a killed simulator stops the run naming its rank, and the run resumes
from the checkpoint to the same model."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from host import distributed as D

ROOT = Path(__file__).resolve().parent.parent
RUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
ARGS = ["--dataset", "diabetes", "--bits", "4", "--no-progress", "--timeout", "5"]


# ------------------------------------------------------------------------------------------------- the codec

@pytest.mark.parametrize("bits", [32, 16, 8, 4])
def test_payload_size_matches_encoding(bits):
    x = np.arange(-50, 51, dtype=np.int64) * 12345
    p = D.encode(x, np.zeros(101, np.int64), bits, np.random.default_rng(0))
    assert p.dtype == np.uint8 and p.size == D.payload_bytes(101, bits)


def test_8bit_exchange_is_at_least_3_5x_smaller():
    assert D.payload_bytes(101, 32) / D.payload_bytes(101, 8) >= 3.5   # synthetic100: 100 features + bias
    assert D.payload_bytes(101, 32) / D.payload_bytes(101, 4) >= 6.5


def test_32bit_exchange_is_exact_and_averages_to_nearest():
    a = np.array([3, -3, 2**31 - 1, -2**31, 7])
    b = np.array([4, -4, 2**31 - 1, -2**31, -8])
    pa, pb = (D.encode(v, None, 32, None) for v in (a, b))
    assert np.array_equal(D.decode(pa, 5, 32), a)
    assert np.array_equal(D.average(None, [pa, pb], 5, 32), [4, -3, 2**31 - 1, -2**31, 0])


@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_update_is_unbiased_on_the_sample_quantizer_levels(bits):
    rng = np.random.default_rng(1)
    base = rng.integers(-2**20, 2**20, 64)
    x = base + rng.integers(-5000, 5000, 64)
    delta = x - base
    draws = np.array([D.decode(D.encode(x, base, bits, rng), 64, bits) for _ in range(4000)])
    scale = np.max(np.abs(delta))
    step = scale / 2 ** (bits - 2)                       # signed b-bit levels: q / 2**(b-2), q in -2**(b-2)..
    assert np.allclose(draws / step, np.round(draws / step))  # every value sits on a level
    assert np.all(np.abs(draws - delta) < step + 1e-6)         # one of the two neighbours
    sem = step / 2 / np.sqrt(len(draws))
    assert np.all(np.abs(draws.mean(axis=0) - delta) < 5 * sem)  # E[Q(v)] = v


def test_quantized_average_adds_the_mean_update_to_the_synced_model():
    base = np.array([100, -100, 0, 5])
    same = base + np.array([64, -64, 0, 32])           # on the 4-bit grid of scale 64: rounding is exact
    ps = [D.encode(same, base, 4, np.random.default_rng(r)) for r in range(3)]
    assert np.array_equal(D.average(base, ps, 4, 4), same)


def test_sync_epochs():
    assert D.sync_epochs(5, 1) == [0, 1, 2, 3, 4]
    assert D.sync_epochs(5, 2) == [1, 3, 4]


@pytest.mark.parametrize("argv,match", [
    (["--sync-bits", "3"], "--sync-bits must be one of 32, 16, 8, 4"),
    (["--sync-every", "0"], "--sync-every must be >= 1"),
    (["--workers", "0"], "--workers must be >= 1"),
    (["--workers", "2", "--model", "pixelcnn"], "--workers does not apply to the PixelCNN models"),
    (["--workers", "2", "--backend", "serial", "--port", "/dev/ttyUSB0"], "one port per rank"),
    (["--workers", "2", "--save-model", "m.npz"], "--save-model does not apply to data-parallel runs"),
])
def test_bad_flags_are_named(argv, match, capsys):
    from host.run import main
    assert main(argv) == 2
    assert match in capsys.readouterr().err


def test_bad_flags_fail_before_anything_starts(capsys):
    from host.run import main
    assert main(["--workers", "2", "--sync-bits", "5"]) == 2
    assert "--sync-bits must be one of" in capsys.readouterr().err


def test_a_checkpoint_from_another_run_is_refused_by_name(tmp_path):
    path = tmp_path / "ckpt.json"
    path.write_text(json.dumps({"version": D.CHECKPOINT_VERSION, "config": {"sync_bits": 8, "workers": 2}}))
    with pytest.raises(D.RankFailed, match=r"different run: sync_bits 8 there, 4 here"):
        D._load_checkpoint(path, {"sync_bits": 4, "workers": 2})
    path.write_text("{not json")
    with pytest.raises(D.RankFailed, match="cannot be read"):
        D._load_checkpoint(path, {})


# --------------------------------------------------------------------------------------- runs on loopback

@pytest.fixture(scope="module")
def built_model():
    """Build (or find cached) the Verilator model the ranks open, in this process and without a time limit:
    a cold build takes 80 s on a quiet 2-core machine and more under the test suite's load, which must not
    count against a run's timeout."""
    from host.backends import open_device
    from host.sgd_train import design_for
    with open_device("verilator", design=design_for(4)):
        pass


def torchrun(n, extra, tmp_path, name, *, workers_flag=False, **kw):
    """Run ``host/run.py`` on ``n`` ranks: under torchrun, or with ``--workers n`` (it starts torchrun itself)."""
    out = tmp_path / f"{name}.json"
    launcher = [sys.executable] if workers_flag else RUN + [f"--nproc-per-node={n}"]
    cmd = launcher + [str(ROOT / "host" / "run.py"), *ARGS, *extra, "--json", str(out),
                      "--plot", str(tmp_path / f"{name}.png")] + (["--workers", str(n)] if workers_flag else [])
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, **kw)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return json.loads(out.read_text())


def test_one_rank_equals_the_single_device_run(tmp_path, built_model):
    from host.backends import open_device
    from host.sgd_train import design_for, train
    got = torchrun(1, ["--epochs", "3"], tmp_path, "one")
    with open_device("verilator", design=design_for(4)) as dev:
        ref = train(dev, dataset="diabetes", bits=4, epochs=3, progress=False)
    for key in ("loss_per_epoch", "fp_loss_per_epoch", "cycles_per_epoch", "model_q23", "step_shift"):
        assert got[key] == ref[key], key
    assert got["workers"] == 1 and got["bytes_per_sync_per_rank"] == 0


@pytest.mark.parametrize("sync_bits,sync_every,other", [(32, 1, False), (8, 2, True)])
def test_two_ranks_equal_the_numpy_replay(tmp_path, built_model, sync_bits, sync_every, other):
    # other: launched by --workers 2 (host/run.py starts torchrun), with the doubled engine step
    r = torchrun(2, ["--epochs", "3", "--sync-bits", str(sync_bits), "--sync-every", str(sync_every)]
                 + ["--scale-step"] * other, tmp_path, "two", workers_flag=other)
    assert r["engine_step_shift"] == r["step_shift"] - other
    assert r["golden_match"] is True and r["workers"] == 2 and r["samples_per_rank"] == [221, 221]
    assert r["sync_epochs"] == [e + 1 for e in D.sync_epochs(3, sync_every)]
    want = D.replay("diabetes", 4, 3, 2, sync_every=sync_every, sync_bits=sync_bits, scale_step=other,
                    chunk=r["chunk_samples"], delay=r["staleness_samples"])
    assert r["model_sha_per_epoch"] == [D.model_sha(x) for x in want]
    assert r["model_sha_per_epoch"][-1] == D.model_sha(r["model_q23"])
    assert r["bytes_per_sync_per_rank"] == (2 - 1) * D.payload_bytes(11, sync_bits)
    assert len(r["cycles_per_epoch_per_rank"]) == 2 and all(len(c) == 3 for c in r["cycles_per_epoch_per_rank"])
    assert r["loss_per_epoch"][-1] < 0.5 * r["initial_loss"]
    for key in ("loss_per_epoch", "fp_loss_per_epoch", "cycles_per_epoch", "sync_bits"):
        assert key in r


def _rank_simulators(launcher_pid):
    """pid -> RANK of the Verilator processes below ``launcher_pid`` (their parent is a torchrun worker)."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            cmd = (proc / "cmdline").read_bytes().split(b"\0")[0].decode()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            env = (Path("/proc") / str(ppid) / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if Path(cmd).name.startswith("V") and b"TORCHELASTIC_RUN_ID" in b"\0".join(env):
            ranks = [e.split(b"=", 1)[1] for e in env if e.startswith(b"RANK=")]
            found[int(proc.name)] = int(ranks[0])
    return found


@pytest.mark.slow  # two runs: about 25 s on two idle cores
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc to find rank 1's simulator")
def test_killed_simulator_names_its_rank_then_the_run_resumes(tmp_path, built_model):
    ckpt = tmp_path / "ckpt.json"
    epochs = 6
    cmd = RUN + ["--nproc-per-node=2", str(ROOT / "host" / "run.py"), *ARGS, "--epochs", str(epochs),
                 "--checkpoint", str(ckpt), "--plot", str(tmp_path / "k.png")]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while not ckpt.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert ckpt.exists(), "no checkpoint after the first sync"
        sims = {rank: pid for pid, rank in _rank_simulators(proc.pid).items()}
        assert set(sims) == {0, 1}
        os.kill(sims[1], signal.SIGKILL)
        t0 = time.monotonic()
        out, err = proc.communicate(timeout=60)
        stopped_s = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert "error: rank 1 (verilator) failed in epoch" in err, err[-3000:]
    assert stopped_s < 5 + 10  # the link timeout, plus the other rank finishing its epoch and torchrun's exit
    done = json.loads(ckpt.read_text())["epochs_done"]
    assert 1 <= done < epochs
    r = torchrun(2, ["--epochs", str(epochs), "--checkpoint", str(ckpt)], tmp_path, "resumed")
    assert r["resumed_from_epoch"] == done and len(r["loss_per_epoch"]) == epochs
    want = D.replay("diabetes", 4, epochs, 2, chunk=r["chunk_samples"], delay=r["staleness_samples"])
    assert r["model_sha_per_epoch"] == [D.model_sha(x) for x in want]
