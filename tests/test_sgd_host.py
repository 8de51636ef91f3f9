"""host.sgd_train: argument checks before any device work, training on the Amaranth backend == golden,
store chunking, and the link path giving the same model as the simulator backdoor."""
import numpy as np
import pytest

from host.backends.amaranth_sim import AmaranthTransport
from host.device import Device
from host.sgd_train import TrainError, check_request, design_for, plot_loss, train


class NoDevice:
    """Fails the test on any use: errors must come before device work."""

    def __getattr__(self, name):
        raise AssertionError(f"device touched ({name}) before the arguments were checked")


@pytest.mark.parametrize("kw,match", [
    (dict(dataset="no-such-set", bits=4, epochs=1), "no-such-set"),
    (dict(dataset="diabetes", bits=3, epochs=1), "unsupported precision"),
    (dict(dataset="diabetes", bits=4, epochs=0), "epochs"),
    (dict(dataset="diabetes", bits=4, epochs=1, model="svm"), "unknown model"),
])
def test_bad_requests_fail_before_device_work(kw, match):
    with pytest.raises(TrainError, match=match):
        train(NoDevice(), **kw)


def test_too_many_features_is_a_clear_error():
    with pytest.raises(TrainError, match="at most 8 model words"):
        check_request("synthetic10", 4, 1, max_features=8)


def amaranth_device(bits, **kw):
    return Device(AmaranthTransport(design_for(bits, **kw).make_core()), timeout=30)


def test_train_on_amaranth_matches_golden_with_store_chunks(tmp_path):
    # 442 samples x 4 beats do not fit a 512-beat store: 4 loads per epoch
    dev = amaranth_device(8, bus_bits=64, max_features=64, store_beats=512, encoding="pair")
    r = train(dev, dataset="diabetes", bits=8, epochs=2, progress=False)
    assert r["golden_match"] is True and r["store_chunks_per_epoch"] == 4
    for key in ("dataset", "bits", "epochs", "backend", "loss_per_epoch", "fp_loss_per_epoch", "cycles_per_epoch",
                "features", "samples", "bus_bits", "link_wire_bytes_per_epoch", "link_limited_seconds_per_epoch"):
        assert key in r
    assert r["features"] == 11 and r["samples"] == 442 and r["bus_bits"] == 64
    assert r["loss_per_epoch"][-1] < 0.5 * r["initial_loss"]
    assert r["cycles_per_epoch"][0] >= 442 * r["beats_per_sample"]
    assert plot_loss(r, tmp_path / "loss.png").stat().st_size > 1000


class LinkOnly:
    """The same transport without the backdoor: the store is loaded over the link."""

    def __init__(self, inner):
        self._inner = inner
        self.name = inner.name

    def __getattr__(self, name):
        if name == "write_engine_memory":
            raise AttributeError(name)
        return getattr(self._inner, name)


def test_link_loading_gives_the_same_model_as_the_backdoor():
    kw = dict(bus_bits=32, max_features=16, store_beats=64)
    a = train(amaranth_device(2, **kw), dataset="diabetes", bits=2, epochs=1, progress=False, max_samples=40)
    dev = Device(LinkOnly(AmaranthTransport(design_for(2, **kw).make_core())), timeout=30)
    b = train(dev, dataset="diabetes", bits=2, epochs=1, progress=False, max_samples=40)
    assert a["model_q23"] == b["model_q23"] and a["cycles_per_epoch"] == b["cycles_per_epoch"]
    assert b["link_bytes_moved"] > a["link_bytes_moved"]


def test_end_to_end_gradient_rounding_on_amaranth_matches_golden():
    dev = amaranth_device(4, bus_bits=64, max_features=64, store_beats=512, stochastic_grad=True)
    r = train(dev, dataset="diabetes", bits=4, epochs=2, progress=False, grad_rounding="stochastic")
    assert r["golden_match"] is True and r["grad_rounding"] == "stochastic"
    assert r["loss_per_epoch"][-1] < 0.5 * r["initial_loss"]


def test_stochastic_rounding_needs_an_engine_that_has_it():
    with pytest.raises(TrainError, match="stochastic_grad"):
        train(amaranth_device(4, bus_bits=32, max_features=16, store_beats=64), dataset="diabetes", bits=4,
              epochs=1, progress=False, grad_rounding="stochastic")
    with pytest.raises(TrainError, match="grad_rounding"):
        train(NoDevice(), dataset="diabetes", bits=4, epochs=1, grad_rounding="nearest")


def test_compact_encoding_on_amaranth_matches_golden_and_saves_beats():
    kw = dict(bus_bits=32, max_features=16, store_beats=512)
    a = train(amaranth_device(4, encoding="compact", **kw), dataset="diabetes", bits=4, epochs=2, progress=False,
              max_samples=60)
    b = train(amaranth_device(4, encoding="pair", **kw), dataset="diabetes", bits=4, epochs=1, progress=False,
              max_samples=60)
    assert a["golden_match"] is True and a["encoding"] == "compact" and b["encoding"] == "pair"
    assert a["beats_per_sample"] == 3 and b["beats_per_sample"] == 4  # 6 + 5 five-bit slots, label / 88 + 32 bits
    assert a["cycles_per_epoch"][0] < b["cycles_per_epoch"][0]


def test_binary_classifier_on_amaranth_matches_golden():
    dev = amaranth_device(4, bus_bits=128, max_features=32, store_beats=256)
    r = train(dev, dataset="breast_cancer", bits=4, epochs=2, progress=False, loss="l2svm", test_size=0.5)
    assert r["golden_match"] is True and r["loss"] == "l2svm" and r["models_trained"] == 1
    assert r["test_accuracy"] > 0.85 and 0.85 < r["sklearn_test_accuracy"] <= 1.0
    assert len(r["test_accuracy_per_epoch"]) == 2 and r["test_samples"] == 285


@pytest.mark.parametrize("kw,match", [
    (dict(dataset="diabetes", bits=4, epochs=1, loss="logistic"), "regression target"),
    (dict(dataset="digits", bits=4, epochs=1, loss="hinge"), "unknown loss"),
    (dict(dataset="digits", bits=32, epochs=1, encoding="compact"), "compact encoding needs bits"),
])
def test_classifier_and_encoding_errors_before_device_work(kw, match):
    with pytest.raises(TrainError, match=match):
        check_request(**kw)
    if "encoding" not in kw:
        with pytest.raises(TrainError, match=match):
            train(NoDevice(), **kw)


def test_golden_mismatch_is_detected(monkeypatch):
    """golden_match is a comparison: a golden that differs by one model word makes train() fail."""
    import models.zipml.fixed_point as fp
    real = fp.engine_run

    def off_by_one(*a, **k):
        res = real(*a, **k)
        res.x = res.x.copy()
        res.x[0] += 1
        return res

    monkeypatch.setattr(fp, "engine_run", off_by_one)
    with pytest.raises(RuntimeError, match="differs from the bit-exact golden"):
        train(amaranth_device(8, bus_bits=64, max_features=16, store_beats=64), dataset="diabetes", bits=8,
              epochs=1, progress=False, max_samples=20)


def test_model_width_on_amaranth_matches_golden():
    dev = amaranth_device(4, bus_bits=64, max_features=16, store_beats=512, model_bits=16)
    r = train(dev, dataset="diabetes", bits=4, epochs=2, progress=False)
    assert r["golden_match"] is True and r["model_bits"] == 16 and r["model_frac_bits"] == 12
    assert all(v % (1 << 11) == 0 for v in r["model_q23"])
    assert r["loss_per_epoch"][-1] < 0.5 * r["initial_loss"]


@pytest.mark.slow  # a Verilator build on first use (cached afterwards)
def test_sgd_engine_on_the_verilator_backend_matches_golden():
    """The SGD engine through the Verilator host backend: least squares with compact Q2 samples and one-vs-rest
    logistic regression, engine == golden every epoch; the store is loaded over the (simulated) link."""
    from host.backends import open_device
    design = design_for(2, bus_bits=64, max_features=32, store_beats=1024)
    with open_device("verilator", design=design, timeout=30) as dev:
        r = train(dev, dataset="diabetes", bits=2, epochs=2, progress=False, max_samples=200)
        assert r["golden_match"] is True and r["encoding"] == "compact" and r["backend"] == "verilator"
        assert r["link_bytes_moved"] >= r["link_sample_bytes_per_epoch"] * 2
        c = train(dev, dataset="breast_cancer", bits=2, epochs=1, progress=False, loss="logistic")
        assert c["golden_match"] is True and c["test_accuracy"] > 0.85
