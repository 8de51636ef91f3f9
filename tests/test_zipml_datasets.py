"""Dataset loading by name or path, and its error messages (models.zipml.datasets)."""

import urllib.error

import numpy as np
import pytest

from models.zipml import datasets as zd
from models.zipml.datasets import DATASET_NAMES, DatasetError, load_dataset, prepare_linear


def test_names_and_bundled_sets():
    for name in ("diabetes", "breast_cancer", "digits", "synthetic10", "synthetic100", "synthetic1000", "cadata",
                 "YearPredictionMSD", "cod-rna", "gisette", "epsilon"):
        assert name in DATASET_NAMES
    d = load_dataset("diabetes")
    assert d.X.shape == (442, 10) and d.task == "regression"
    assert load_dataset("breast_cancer").task == "binary"
    assert load_dataset("digits").X.shape == (1797, 64)


def test_synthetic_is_seeded_noisy_linear_model():
    a, b = load_dataset("synthetic10"), load_dataset("synthetic10")
    assert a.X.shape == (10_000, 10) and np.array_equal(a.X, b.X) and np.array_equal(a.y, b.y)
    assert not np.array_equal(a.y, load_dataset("synthetic10", seed=1).y)
    x, *_ = np.linalg.lstsq(a.X, a.y, rcond=None)
    noise_var = np.var(a.y - a.X @ x)
    assert 0.95 < noise_var < 1.05  # sigma = 1
    assert np.count_nonzero(np.abs(x) > 0.1) == 1  # 10 % of 10 features carry signal
    assert load_dataset("synthetic1000").X.shape == (10_000, 1000)


def test_unknown_name_lists_valid_names():
    with pytest.raises(DatasetError) as e:
        load_dataset("mnist8m")
    assert "mnist8m" in str(e.value) and "synthetic100" in str(e.value) and "diabetes" in str(e.value)


@pytest.mark.parametrize("content,problem", [
    ("", "empty"),
    ("1 1:0.5 2:abc\n", "not a valid LIBSVM"),
    ("this is not libsvm\n", "not a valid LIBSVM"),
    ("\n\n# only comments\n", "no samples"),
])
def test_bad_libsvm_files_fail_clearly(tmp_path, content, problem):
    f = tmp_path / "bad.libsvm"
    f.write_text(content)
    with pytest.raises(DatasetError) as e:
        load_dataset(str(f))
    assert str(f) in str(e.value) and problem in str(e.value)


def test_missing_and_mismatched_files(tmp_path):
    with pytest.raises(DatasetError, match="no such file"):
        load_dataset(str(tmp_path / "nope.svm"))
    f = tmp_path / "wide.svm"
    f.write_text("1 1:0.5 9:1\n0 2:1\n")
    assert load_dataset(str(f)).X.shape == (2, 9)
    with pytest.raises(DatasetError) as e:
        load_dataset(str(f), n_features=4)
    assert "wide.svm" in str(e.value) and "expected 4" in str(e.value)
    npz = tmp_path / "m.npz"
    np.savez(npz, X=np.zeros((5, 3)), y=np.zeros(4))
    with pytest.raises(DatasetError, match="5 rows but y has 4"):
        load_dataset(str(npz))
    np.savez(npz, A=np.zeros((5, 3)))
    with pytest.raises(DatasetError, match="'X' and 'y'"):
        load_dataset(str(npz))
    (tmp_path / "junk.npz").write_bytes(b"not a zip file")
    with pytest.raises(DatasetError, match="junk.npz"):
        load_dataset(str(tmp_path / "junk.npz"))


def test_paper_sets_offline_fail_clearly_and_load_from_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ZIPPIX_DATA", str(tmp_path))

    def no_network(*a, **k):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(zd.urllib.request, "urlopen", no_network)
    with pytest.raises(DatasetError) as e:
        load_dataset("cadata")
    msg = str(e.value)
    assert "cadata" in msg and "download" in msg and str(tmp_path / "cadata") in msg
    assert not list(tmp_path.iterdir())  # no partial file left behind
    with pytest.raises(DatasetError, match="download=False"):
        load_dataset("cod-rna", download=False)
    (tmp_path / "cadata").write_text("1.5 1:2 2:3\n2.5 1:1 3:4\n")  # a cached copy is used without network
    ds = load_dataset("cadata")
    assert ds.name == "cadata" and ds.task == "regression" and ds.X.shape == (2, 3)


def test_prepare_linear():
    A, b = prepare_linear(load_dataset("diabetes"))
    assert A.shape == (442, 11) and np.all(A[:, -1] == 1) and A.min() == 0 and A.max() == 1
    assert b.min() == 0 and b.max() == 1
    A, b = prepare_linear(load_dataset("digits"), signed=True, labels="pm1", positive_class=3)
    assert set(np.unique(b)) == {-1.0, 1.0} and A[:, :-1].min() >= -1 and np.all(A[:, -1] == 1)
    assert np.sum(b == 1) == np.sum(load_dataset("digits").y == 3)


def test_skewed_synthetic_sets_are_heavy_tailed_and_seeded():
    for name in ("lognormal100", "pareto100"):
        assert name in DATASET_NAMES
        a, b = load_dataset(name), load_dataset(name)
        assert a.X.shape == (10_000, 100) and a.task == "regression" and a.name == name
        assert np.array_equal(a.X, b.X) and not np.array_equal(a.X, load_dataset(name, seed=1).X)
        assert a.X.min() > 0
        col = a.X[:, 0]
        assert np.mean(col) > 1.15 * np.median(col) and col.max() > 10 * np.median(col)  # right-skewed, long tail
    with pytest.raises(ValueError, match="kind"):
        zd.make_skewed("cauchy")
