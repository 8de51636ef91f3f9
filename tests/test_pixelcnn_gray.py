"""Grayscale PixelCNN's exact consistency mask: it removes exactly the values no completion of the pixel
can reach (checked against brute-force enumeration), it is causal, the masked p(x | g) is a normalised
distribution over the images whose gray view is g, and it never lowers a consistent value's logit."""
import itertools

import numpy as np
import pytest
import torch

from models.pixelcnn import sample
from models.pixelcnn.models import GrayscalePixelCNN, gray_consistent, rgb_reachable, to_gray


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


def test_masked_conditional_is_normalised():
    """Sum over every 1x2 RGB image with gray view g of the masked p(x | g) is 1 (exact masking only
    removes impossible events); without the mask the model wastes mass on inconsistent images."""
    L, G = 4, 2
    torch.manual_seed(0)
    m = GrayscalePixelCNN(3, L, G, hidden=6, n_layers=2, cond_hidden=4, cond_layers=2).double().eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.5 * torch.randn_like(p))
    allx = torch.tensor(list(itertools.product(range(L), repeat=6))).view(-1, 2, 3).transpose(1, 2)
    allx = allx.reshape(-1, 3, 1, 2)                                          # all 4^6 images
    gs = to_gray(allx, L, G)
    for g in torch.unique(gs.flatten(1), dim=0)[:3]:
        sel = allx[(gs.flatten(1) == g).all(1)]
        gg = g.view(1, 1, 1, 2).expand(len(sel), 1, 1, 2)
        with torch.no_grad():
            cond = m.condition(gg)
            masked = m.colour.nll(sel, cond, m.offset(sel, gg))
            plain = m.colour.nll(sel, cond)
        assert abs(float((2 ** -masked).sum()) - 1) < 1e-9
        assert float((2 ** -plain).sum()) < 1 - 1e-3
        assert torch.all(masked <= plain + 1e-12)


def test_masked_sampling_consistent():
    """Cached == naive sampling with the mask, and every sampled image has exactly the sampled gray view."""
    torch.manual_seed(0)
    m = GrayscalePixelCNN(3, 16, 4, hidden=6, n_layers=2, cond_hidden=4, cond_layers=2).double().eval()
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
