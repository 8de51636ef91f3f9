"""CPU dry run of bench/bench_latent_gpu.py (tiny models, 8x8): the three models are matched in
parameters, trained the same number of steps, and every reported split adds up."""
import importlib.util
import json
import os

import numpy as np
import pytest

from models.pixelcnn import data

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def _bench():
    spec = importlib.util.spec_from_file_location("bench_latent_gpu", os.path.join(ROOT, "bench", "bench_latent_gpu.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_photo_crops_disjoint_and_flipped():
    tr, te, same = data.photo_crops(8, n_test=20)
    b = tr.batch(64, np.random.RandomState(0))
    assert b.shape == (64, 3, 8, 8) and b.min() >= 0 and b.max() <= 255
    assert te.shape == same.shape == (20, 3, 8, 8)
    assert len(tr.images) == 15                                    # 5 photos x 3 scales
    assert np.array_equal(data.downscale(np.full((4, 4, 3), 7), 2), np.full((2, 2, 3), 7))
    with pytest.raises(ValueError, match="at least"):
        data.PhotoCrops(("flower",), 512)


@pytest.mark.slow
def test_tiny_dry_run(tmp_path):
    res = _bench().main(["--tiny", "--device", "cpu", "--out", str(tmp_path), "--no-progress"])
    arm = res["sizes"]["8"]
    ms = arm["models"]
    p = [m["n_params"] for m in ms.values()]
    assert max(p) / min(p) < 1.1
    assert len({m["steps"] for m in ms.values()}) == 1 and arm["steps"] >= 2
    for m in ms.values():
        assert abs(sum(m["test_parts_bits_per_dim"].values()) - m["test_bits_per_dim"]) < 1e-9
        assert 0 < m["test_bits_per_dim"] < 9
        assert m["sampling"]["macs_per_image"] > 0
    assert ms["gray"]["sampling"]["sequential_steps_per_image"] == 64 + 192
    sp = arm["baseline_split"]["bits_per_dim"]
    assert abs(sp["gray"] + sp["colour_given_gray"] - sp["total"]) < 1e-9
    assert res["device"] == "cpu"
    on_disk = json.load(open(tmp_path / "latent_gpu.json"))
    assert on_disk["sizes"]["8"]["steps"] == arm["steps"]
    assert (tmp_path / "latent_gpu_8.png").exists()
