"""A small CNN on scikit-learn digits with quantized weights (forward and backward) and full-precision updates.

Ref: ZipML (arXiv 1611.05402) deep-learning section ("higher accuracy than XNOR-Net"); ZipML/caffe@23ce677
include/caffe/util/quantize.cuh and src/caffe/layers/{conv_layer,inner_product_layer}.cu: only weights are
quantized; forward and backward use the quantized weights, the optimizer updates the full-precision copy
(straight-through estimator); in the binary mode the gradient is zeroed where |w| > 1.

Weight modes (per layer, every forward pass):

* ``'full'``: no quantization;
* ``'xnor2'``: XNOR-Net binary, sign(w) · mean|w|;
* ``'uniform5'``: 5 uniform levels on [−max|w|, max|w|] ("k-bit as in XNOR-Net" in the caffe README);
* ``'zipml5'``: 5 variance-optimal levels of the layer's weights (candidate-point DP of
  :mod:`models.zipml.optimal_levels`; the caffe code uses the cheaper {−3k, −k, 0, k, 3k}·max|w| stand-in).

``rounding='nearest'`` (as the caffe kernels do) or ``'stochastic'`` (unbiased) for the multi-level modes; test
accuracy is always measured with nearest rounding.  Needs the ``train`` extra (torch).
"""

from __future__ import annotations

import time

import numpy as np

from .optimal_levels import optimal_levels_candidates

__all__ = ["WEIGHT_MODES", "quantize_weights", "DigitsCNN", "load_digits_split", "train_cnn"]

WEIGHT_MODES = ("full", "zipml5", "xnor2", "uniform5")


def _torch():
    import torch

    return torch


def quantize_weights(w, mode: str, *, rounding: str = "nearest", generator=None):
    """The quantized version of weight tensor ``w`` (no gradient tracking)."""
    torch = _torch()
    if mode == "full":
        return w
    if mode == "xnor2":
        return torch.sign(w) * w.abs().mean()
    if mode == "uniform5":
        m = w.abs().max().clamp_min(1e-12)
        levels = torch.linspace(-1.0, 1.0, 5, dtype=w.dtype, device=w.device) * m
    elif mode == "zipml5":
        lv, _ = optimal_levels_candidates(w.detach().cpu().numpy().ravel(), 5, n_candidates=256)
        levels = torch.as_tensor(lv, dtype=w.dtype, device=w.device)
    else:
        raise ValueError(f"mode must be one of {WEIGHT_MODES}, got {mode!r}")
    if levels.numel() < 2:
        return w
    flat = w.reshape(-1).clamp(levels[0], levels[-1])
    idx = (torch.searchsorted(levels, flat, right=True) - 1).clamp(0, levels.numel() - 2)
    lo, hi = levels[idx], levels[idx + 1]
    p_up = (flat - lo) / (hi - lo).clamp_min(1e-12)
    if rounding == "nearest":
        up = p_up >= 0.5
    elif rounding == "stochastic":
        up = torch.rand(flat.shape, generator=generator, dtype=flat.dtype) < p_up
    else:
        raise ValueError(f"rounding must be 'nearest' or 'stochastic', got {rounding!r}")
    return torch.where(up, hi, lo).reshape(w.shape)


def _make_ste():
    torch = _torch()

    class _STE(torch.autograd.Function):
        @staticmethod
        def forward(ctx, w, mode, rounding, generator):
            ctx.save_for_backward(w)
            ctx.mode = mode
            return quantize_weights(w.detach(), mode, rounding=rounding, generator=generator)

        @staticmethod
        def backward(ctx, grad):
            (w,) = ctx.saved_tensors
            if ctx.mode == "xnor2":
                grad = grad * (w.abs() <= 1).to(grad.dtype)
            return grad, None, None, None

    return _STE


class DigitsCNN:
    """Factory for the network (keeps torch an optional import): conv3×3(1→16) → ReLU → conv3×3(16→32) → ReLU →
    maxpool 2 → linear(512→64) → ReLU → linear(64→10); every conv/linear weight quantized per ``mode``."""

    def __new__(cls, mode: str = "full", rounding: str = "nearest", seed: int = 0):
        torch = _torch()
        nn, F = torch.nn, torch.nn.functional
        ste = _make_ste()
        if mode not in WEIGHT_MODES:
            raise ValueError(f"mode must be one of {WEIGHT_MODES}, got {mode!r}")

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                torch.manual_seed(seed)
                self.c1 = nn.Conv2d(1, 16, 3, padding=1)
                self.c2 = nn.Conv2d(16, 32, 3, padding=1)
                self.f1 = nn.Linear(32 * 4 * 4, 64)
                self.f2 = nn.Linear(64, 10)
                self.mode, self.rounding = mode, rounding
                self.gen = torch.Generator().manual_seed(seed + 1)

            def qw(self, layer):
                rounding = self.rounding if self.training else "nearest"
                return ste.apply(layer.weight, self.mode, rounding, self.gen)

            def forward(self, x):
                x = F.relu(F.conv2d(x, self.qw(self.c1), self.c1.bias, padding=1))
                x = F.relu(F.conv2d(x, self.qw(self.c2), self.c2.bias, padding=1))
                x = F.max_pool2d(x, 2).flatten(1)
                x = F.relu(F.linear(x, self.qw(self.f1), self.f1.bias))
                return F.linear(x, self.qw(self.f2), self.f2.bias)

        return Net()


def load_digits_split(test_fraction: float = 0.25, seed: int = 0):
    """scikit-learn digits as float32 images in [0, 1], shape (n, 1, 8, 8), stratified train/test split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    X = (d.images / 16.0).astype(np.float32)[:, None]
    return train_test_split(X, d.target.astype(np.int64), test_size=test_fraction, random_state=seed,
                            stratify=d.target)


def train_cnn(mode: str = "full", *, epochs: int = 20, batch_size: int = 64, lr: float = 2e-3,
              rounding: str = "nearest", seed: int = 0, threads: int = 1, data=None) -> dict:
    """Train :class:`DigitsCNN` with Adam on the full-precision weights; returns a dict with
    ``test_accuracy``, ``train_loss`` (per epoch), ``seconds`` and the settings."""
    torch = _torch()
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        Xtr, Xte, ytr, yte = data if data is not None else load_digits_split(seed=0)
        Xtr, Xte = torch.from_numpy(Xtr), torch.from_numpy(Xte)
        ytr, yte = torch.from_numpy(ytr), torch.from_numpy(yte)
        net = DigitsCNN(mode, rounding, seed)
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        g = torch.Generator().manual_seed(seed)
        losses = []
        t0 = time.perf_counter()
        for _ in range(epochs):
            net.train()
            perm = torch.randperm(Xtr.shape[0], generator=g)
            tot = 0.0
            for s in range(0, Xtr.shape[0], batch_size):
                idx = perm[s:s + batch_size]
                opt.zero_grad()
                loss = torch.nn.functional.cross_entropy(net(Xtr[idx]), ytr[idx])
                loss.backward()
                opt.step()
                tot += loss.item() * len(idx)
            losses.append(tot / Xtr.shape[0])
        net.eval()
        with torch.no_grad():
            acc = float((net(Xte).argmax(1) == yte).float().mean())
        return {"mode": mode, "rounding": rounding, "epochs": epochs, "seed": seed, "test_accuracy": acc,
                "train_loss": losses, "seconds": time.perf_counter() - t0}
    finally:
        torch.set_num_threads(old_threads)
