"""Smoke test of the quantized-weight CNN (models.zipml.deep); the full comparison is bench/bench_zipml_cnn.py."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from models.zipml.deep import WEIGHT_MODES, load_digits_split, quantize_weights, train_cnn  # noqa: E402


def test_weight_quantizers():
    torch.manual_seed(0)
    w = torch.randn(2000)
    assert torch.equal(quantize_weights(w, "full"), w)
    b = quantize_weights(w, "xnor2")
    assert torch.unique(b).numel() == 2 and torch.allclose(b.abs(), w.abs().mean().expand_as(b))
    u = quantize_weights(w, "uniform5")
    lv = torch.unique(u)
    assert lv.numel() == 5 and torch.allclose(lv, torch.linspace(-1, 1, 5) * w.abs().max())
    z = quantize_weights(w, "zipml5")
    assert torch.unique(z).numel() <= 5
    # variance-optimal levels give lower stochastic-rounding variance than uniform ones on Gaussian weights
    from models.zipml.optimal_levels import variance_cost
    x = w.numpy()
    assert variance_cost(x, torch.unique(z).numpy()) < 0.7 * variance_cost(x, lv.numpy())
    s = torch.stack([quantize_weights(w[:50], "uniform5", rounding="stochastic") for _ in range(3000)])
    assert torch.max(torch.abs(s.mean(0) - w[:50])) < 0.1  # unbiased (levels 0.5*max|w| apart)


def test_straight_through_gradient_and_binary_clipping():
    from models.zipml.deep import _make_ste
    ste = _make_ste()
    w = torch.tensor([0.5, -2.0, 0.1], requires_grad=True)
    ste.apply(w, "xnor2", "nearest", None).sum().backward()
    assert w.grad.tolist() == [1.0, 0.0, 1.0]  # zeroed where |w| > 1


def test_train_cnn_smoke():
    Xtr, Xte, ytr, yte = load_digits_split()
    data = (Xtr[:400], Xte[:200], ytr[:400], yte[:200])
    for mode in WEIGHT_MODES:
        out = train_cnn(mode, epochs=5, batch_size=32, data=data)
        assert len(out["train_loss"]) == 5 and np.isfinite(out["train_loss"]).all()
        assert out["train_loss"][-1] < 0.7 * out["train_loss"][0]
        assert out["test_accuracy"] > 0.5, (mode, out["test_accuracy"])  # chance is 0.1
