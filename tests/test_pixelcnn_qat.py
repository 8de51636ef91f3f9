"""Quantisation-aware fine-tuning (``models.pixelcnn.qat``): the grids are the export's, gradients pass
through them, and the checkpoint keeps the rounded weights in a plain state dict."""
import numpy as np
import pytest
import torch

from models.pixelcnn import data, export as X, train
from models.pixelcnn.qat import QuantAware, _StreamGrid, fake_quant


def _tiny_rgb(n=32, levels=256):
    rng = np.random.RandomState(0)
    return data.Dataset("tiny", rng.randint(0, levels, (n, 3, 4, 4)), rng.randint(0, levels, (8, 3, 4, 4)), levels)


def test_fake_quant_rounds_forward_and_passes_gradients():
    w = torch.tensor([0.26, -0.74, 200.0], requires_grad=True)
    q = fake_quant(w, 0.5)
    assert q.tolist() == [0.5, -0.5, 63.5]  # round to the step, clamp at 127 steps
    q.sum().backward()
    assert w.grad.tolist() == [1.0, 1.0, 1.0]


def test_stream_grid_step_follows_the_stream_and_gate_scales():
    """Hout_l's step: the identity (s_h) sets the accumulator unless the weights need more; before any
    statistics the weights pass unrounded."""
    g = _StreamGrid(torch.ones(2, 2, 1, 1), momentum=1.0)
    w = torch.tensor([[0.3, -0.1], [0.05, 0.2]]).view(2, 2, 1, 1)
    assert torch.equal(g(w), w)
    g.observe("s_h", torch.full((1000,), 127.0 * 4))  # s_h = 4
    g.observe("s_g", torch.full((1000,), 127.0 * 0.5))  # s_g = 0.5
    step = 4 / 127 / 0.5
    q = g(w)
    assert torch.allclose(q / step, torch.round(w / step)) and not torch.equal(q, w)


def test_qat_training_leaves_the_export_grid_in_the_checkpoint(tmp_path):
    """``train(..., qat=True)``: the checkpoint loads into a plain model, its logit layer sits on an int8
    grid, and the export's own centring and rounding leave it there: the rounding error is one shift per
    image channel and input (the same for all levels, so the softmax does not see it) instead of up to half
    a step per weight. The Hout weights moved with the straight-through gradient; the metadata says so."""
    ds = _tiny_rgb()
    out = str(tmp_path / "q.pt")
    kw = dict(epochs=1, batch_size=16, arch=dict(hidden=6, n_layers=2), progress=False, log=lambda s: None)
    torch.manual_seed(0)
    m0 = train.build("pixelcnn", 3, ds.levels, hidden=6, n_layers=2)
    model, res = train.train("pixelcnn", ds, out=out, max_steps=2, qat=True, **kw)
    assert res["qat"] is True and not any(".parametrizations." in k for k in model.state_dict())
    m, ck = train.load_checkpoint(out)
    assert ck["meta"]["qat"] is True
    w = (m.head2.weight * m.head2.mask).detach().double()
    step = float(w.abs().max()) / 127
    assert torch.allclose(w / step, torch.round(w / step), atol=1e-4)
    assert _level_spread_of_export_rounding(m) < 0.1
    assert not torch.equal(m.layers[1].h_out.weight, m0.layers[1].h_out.weight)
    plain, _ = train.train("pixelcnn", ds, max_steps=2, **kw)  # without qat the check above fails
    assert _level_spread_of_export_rounding(plain) > 0.3


def _level_spread_of_export_rounding(m):
    """The export's head2 rounding error (in steps) after its centring, its largest spread over the levels."""
    X.centre_logits(m.double())
    w = (m.head2.weight * m.head2.mask).detach()
    s = float(w.abs().max()) / 127
    r = (w / s - torch.round(w / s)).view(m.channels, m.levels, -1)
    return float((r.amax(1) - r.amin(1)).max())


def test_qat_skips_a_frozen_net_and_needs_a_trainable_one():
    m = train.build("gray", 3, 16, hidden=6, n_layers=2, cond_hidden=4)
    m.prior.requires_grad_(False)
    q = QuantAware(m)
    assert m.colour.head2 in q.mods and m.prior.head2 not in q.mods
    q.detach()
    m.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable gated net"):
        QuantAware(m)
