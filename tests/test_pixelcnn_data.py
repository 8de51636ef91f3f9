"""Offline datasets, deterministic splits, user folder / .npz loader and its errors."""
import numpy as np
import pytest

from models.pixelcnn import data


def test_digits_deterministic():
    a, b = data.load("digits"), data.load("digits")
    assert a.train.shape == (1500, 1, 8, 8) and a.test.shape == (297, 1, 8, 8) and a.levels == 17
    assert np.array_equal(a.test, b.test) and a.train.max() <= 16


def test_faces_and_patches():
    f = data.load("faces")
    assert f.shape == (1, 24, 24) and f.levels == 256 and f.train.max() <= 255
    assert not set(data.PATCH_TRAIN) & set(data.PATCH_TEST)
    p = data.patches(n_train=20, n_test=10)
    assert p.train.shape == (20, 3, 8, 8) and p.test.shape == (10, 3, 8, 8)
    assert np.array_equal(p.test, data.patches(n_train=20, n_test=10).test)
    tr, val = data.hold_out_photo(p, "china")      # patch t comes from photo t mod 5
    assert len(val) == 4 and np.array_equal(val, p.train[4::5]) and len(tr) == 16


def test_folder_and_npz(tmp_path):
    from skimage.io import imsave
    d = tmp_path / "imgs"
    d.mkdir()
    rng = np.random.RandomState(0)
    for i in range(10):
        imsave(str(d / f"{i}.png"), rng.randint(0, 256, (6, 6, 3)).astype(np.uint8), check_contrast=False)
    ds = data.load(str(d))
    assert ds.train.shape == (9, 3, 6, 6) and ds.test.shape == (1, 3, 6, 6)
    npz = tmp_path / "a.npz"
    np.savez(npz, train=rng.randint(0, 4, (5, 8, 8)), test=rng.randint(0, 4, (2, 8, 8)), levels=4)
    ds = data.load(str(npz))
    assert ds.levels == 4 and ds.train.shape == (5, 1, 8, 8)


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.load(str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="unknown dataset"):
        data.load("mnist")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        data.load(str(tmp_path / "empty"))
    bad = tmp_path / "bad.npz"
    np.savez(bad, train=np.zeros((3, 2, 2, 2, 2), int), test=np.zeros((3, 4, 4), int))
    with pytest.raises(ValueError, match="expected images shaped"):
        data.load(str(bad))
    mism = tmp_path / "mism.npz"
    np.savez(mism, train=np.zeros((3, 4, 4), int), test=np.zeros((3, 5, 5), int))
    with pytest.raises(ValueError, match="train shape"):
        data.load(str(mism))
    nokeys = tmp_path / "k.npz"
    np.savez(nokeys, foo=np.zeros(3))
    with pytest.raises(ValueError, match="needs arrays"):
        data.load(str(nokeys))
    rng = tmp_path / "r.npz"
    np.savez(rng, train=np.full((3, 4, 4), 9), test=np.zeros((3, 4, 4), int), levels=4)
    with pytest.raises(ValueError, match="must lie in 0..3"):
        data.load(str(rng))
