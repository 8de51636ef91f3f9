"""Grayscale PixelCNN's exact consistency mask: it removes exactly the values no completion of the pixel
can reach (checked against brute-force enumeration), it is causal, the masked p(x | g) is a normalised
distribution over the images whose gray view is g, and it never lowers a consistent value's logit; the
luma tilt on G keeps all of that and is the Gaussian its docstring states."""
import itertools

import numpy as np
import pytest
import torch

from models.pixelcnn import sample
from models.pixelcnn.models import GrayscalePixelCNN, gray_consistent, luma_bin, rgb_reachable, to_gray


@pytest.mark.parametrize("levels,gray_levels", [(6, 3), (256, 16)])
def test_consistency_mask_matches_brute_force(levels, gray_levels):
    rng = np.random.RandomState(0)
    n = 40
    x = torch.from_numpy(rng.randint(0, levels, (n, 3, 1, 1)))
    g = to_gray(x, levels, gray_levels)
    ok = gray_consistent(x, g, levels, gray_levels)[..., 0, 0]                # (n, 3, L)
    lv = np.arange(levels)
    gray = lambda r, gg, b: (299 * r + 587 * gg + 114 * b) * gray_levels // (1000 * levels)
    for t in range(n):
        k, r, gg = int(g[t, 0, 0, 0]), int(x[t, 0, 0, 0]), int(x[t, 1, 0, 0])
        want_b = gray(r, gg, lv) == k
        want_g = np.array([np.any(gray(r, v, lv) == k) for v in lv])
        want_r = np.array([np.any(gray(v, lv[:, None], lv[None]) == k) for v in lv])
        assert np.array_equal(ok[t, 2].numpy(), want_b)
        assert np.array_equal(ok[t, 1].numpy(), want_g)
        assert np.array_equal(ok[t, 0].numpy(), want_r)
        assert ok[t, 0, r] and ok[t, 1, gg] and ok[t, 2, int(x[t, 2, 0, 0])]   # the truth is never excluded
    assert rgb_reachable(levels, gray_levels)[0].shape == (levels, levels, gray_levels)


def test_consistency_mask_causal():
    """Changing a sub-pixel changes the mask only of later sub-pixels of the same pixel."""
    L, G = 256, 16
    x = torch.randint(0, L, (1, 3, 2, 2))
    g = to_gray(x, L, G)
    base = gray_consistent(x, g, L, G)
    for c in range(3):
        y = x.clone()
        y[0, c] = (y[0, c] + 97) % L
        diff = (gray_consistent(y, g, L, G) != base).any(2)[0]              # (3, H, W)
        assert not diff[:c + 1].any()


def _random_gray_model(levels, gray_levels, **kw):
    torch.manual_seed(0)
    m = GrayscalePixelCNN(3, levels, gray_levels, hidden=6, n_layers=2, cond_hidden=4, cond_layers=2, **kw).double()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.5 * torch.randn_like(p))
    return m.eval()


@pytest.mark.parametrize("luma_tilt", [0, 1])
def test_masked_conditional_is_normalised(luma_tilt):
    """Sum over every 1x2 RGB image with gray view g of the masked p(x | g) is 1 (exact masking only
    removes impossible events; the tilt is a logit offset, so it keeps that); without the mask the model
    wastes mass on inconsistent images."""
    L, G = 4, 2
    m = _random_gray_model(L, G, luma_tilt=luma_tilt)
    allx = torch.tensor(list(itertools.product(range(L), repeat=6))).view(-1, 2, 3).transpose(1, 2)
    allx = allx.reshape(-1, 3, 1, 2)                                          # all 4^6 images
    gs = to_gray(allx, L, G)
    for g in torch.unique(gs.flatten(1), dim=0)[:3]:
        sel = allx[(gs.flatten(1) == g).all(1)]
        gg = g.view(1, 1, 1, 2).expand(len(sel), 1, 1, 2)
        with torch.no_grad():
            cond = m.condition(gg)
            masked = m.colour.nll(sel, cond, m.offset(sel, gg, m.tilt_target(gg, cond)))
            plain = m.colour.nll(sel, cond)
        assert abs(float((2 ** -masked).sum()) - 1) < 1e-9
        assert float((2 ** -plain).sum()) < 1 - 1e-3
        if not luma_tilt:
            assert torch.all(masked <= plain + 1e-12)


@pytest.mark.parametrize("luma_tilt", [0, 1])
def test_masked_sampling_consistent(luma_tilt):
    """Cached == naive sampling with the mask (and the tilt), and every sampled image has exactly the
    sampled gray view."""
    m = _random_gray_model(16, 4, luma_tilt=luma_tilt)
    ug, u = sample.uniform_stream(3, (1, 3, 4), 1), sample.uniform_stream(3, (3, 3, 4), 2)
    g1, x1 = sample.sample_grayscale(m, ug, u, cached=True)
    g2, x2 = sample.sample_grayscale(m, ug, u, cached=False)
    assert torch.equal(g1, g2) and torch.equal(x1, x2)
    assert torch.equal(to_gray(x1, 16, 4), g1)


def test_warm_start_colour_is_the_baseline_restricted_to_g():
    """A colour network warm-started from a baseline computes the baseline's logits exactly (its
    conditioning inputs are zero), so with the mask every image costs at most the baseline's bits; a
    baseline of another size is refused with a message."""
    from models.pixelcnn.models import GatedPixelCNN
    torch.manual_seed(0)
    base = GatedPixelCNN(3, 16, hidden=6, n_layers=2).double().eval()
    with torch.no_grad():
        for p in base.parameters():
            p.add_(0.5 * torch.randn_like(p))
    m = GrayscalePixelCNN(3, 16, 4, hidden=6, n_layers=2, cond_hidden=4, cond_layers=2).double().eval()
    m.warm_start_colour(base)
    x = torch.randint(0, 16, (5, 3, 3, 4))
    g = m.aux(x)
    with torch.no_grad():
        assert torch.equal(m.colour(x, m.condition(g)), base(x))
        masked = m.colour.nll(x, m.condition(g), m.offset(x, g))
        assert torch.all(masked <= base.nll(x) + 1e-12) and torch.all(masked < base.nll(x))
    with pytest.raises(ValueError, match="does not match the colour network"):
        m.warm_start_colour(GatedPixelCNN(3, 16, hidden=8, n_layers=2))


def test_luma_tilt_is_the_stated_gaussian_on_green_and_causal():
    """The tilt adds -((299 R + 587 v) / 1000 - t)^2 / (2 sigma^2) to the logit of G = v (256 levels: luma
    units), nothing to R and B; it reads the pixel's R only (changing its G or B, or any later pixel, leaves
    every offset of the pixel unchanged); t starts at 0.886 x the bin centre; 1-channel models are refused."""
    L, G = 256, 16
    m = _random_gray_model(L, G, luma_tilt=1)
    x = torch.randint(0, L, (2, 3, 3, 4))
    g = m.aux(x)
    with torch.no_grad():
        t = m.tilt_target(g, m.condition(g))
        off = m.offset(x, g, t)
        sigma = float(torch.exp(m.tilt_log_sigma))
    ok = gray_consistent(x, g, L, G)
    assert torch.equal(torch.isinf(off), ~ok)
    v = np.arange(L)
    for n, i, j in [(0, 0, 0), (1, 2, 3), (0, 1, 2)]:
        r, tt = int(x[n, 0, i, j]), float(t[n, 0, i, j])
        want = -((299 * r + 587 * v) / 1000 - tt) ** 2 / (2 * sigma ** 2)
        keep = ok[n, 1, :, i, j].numpy()
        np.testing.assert_allclose(off[n, 1, keep, i, j].numpy(), want[keep], rtol=1e-9)
        assert torch.all(off[n, 0, ok[n, 0, :, i, j], i, j] == 0) and torch.all(off[n, 2, ok[n, 2, :, i, j], i, j] == 0)
    y = x.clone()
    y[:, 1:, 1, 1] = (y[:, 1:, 1, 1] + 77) % L                                # G and B of pixel (1, 1)
    y[:, :, 2, :] = (y[:, :, 2, :] + 31) % L                                  # every sub-pixel of a later row
    with torch.no_grad():
        off_y = m.offset(y, g, t)
    assert torch.equal(off_y[:, 1, :, 1, 1], off[:, 1, :, 1, 1])
    assert not torch.equal(m.offset(y, g, t + 1)[:, 1, :, 1, 1], off[:, 1, :, 1, 1])
    fresh = GrayscalePixelCNN(3, L, G, hidden=6, n_layers=2, cond_hidden=4, cond_layers=2, luma_tilt=1)
    with torch.no_grad():
        t0 = fresh.tilt_target(g, fresh.condition(g))
    lo, hi = luma_bin(g, L, G)
    torch.testing.assert_close(t0, 0.886 * (lo + hi).float() / 2000)
    with pytest.raises(ValueError, match="luma_tilt needs RGB"):
        GrayscalePixelCNN(1, 17, 4, luma_tilt=1)
