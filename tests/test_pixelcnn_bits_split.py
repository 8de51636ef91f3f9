"""The bits-split tool against a known answer: on images small enough to enumerate, the implied gray
part p(g) = sum of p(x) over the images with gray view g is computed exactly and matches the importance
estimate; cached and naive sampling give identical weights; the parts add up to the model's bits."""
import itertools

import pytest
import torch

from models.pixelcnn import bits_split, sample
from models.pixelcnn.models import GatedPixelCNN, to_gray


def _model(channels, levels):
    torch.manual_seed(0)
    m = GatedPixelCNN(channels, levels, hidden=6, n_layers=2).double().eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.5 * torch.randn_like(p))
    return m


@pytest.mark.parametrize("smc", [False, True])
@pytest.mark.parametrize("channels,levels,gray_levels,width", [(3, 4, 2, 2), (1, 17, 4, 3)])
def test_gray_part_matches_enumeration(channels, levels, gray_levels, width, smc):
    m = _model(channels, levels)
    allx = torch.tensor(list(itertools.product(range(levels), repeat=channels * width)))
    allx = allx.view(-1, width, channels).permute(0, 2, 1).reshape(-1, channels, 1, width)
    with torch.no_grad():
        p = 2.0 ** -m.nll(allx)
    assert abs(float(p.sum()) - 1) < 1e-9                       # the enumeration is complete
    gs = to_gray(allx, levels, gray_levels).flatten(1)
    x = allx[torch.randperm(len(allx), generator=torch.Generator().manual_seed(1))[:3]]
    parts = bits_split.split_bits(m, x, gray_levels, k=3000, smc=smc)
    for t in range(len(x)):
        g = to_gray(x[t:t + 1], levels, gray_levels).flatten(1)
        exact = -torch.log2(p[(gs == g).all(1)].sum())
        assert abs(float(parts["gray"][t] - exact)) < 0.03, (float(parts["gray"][t]), float(exact))
    assert torch.allclose(parts["gray"] + parts["colour_given_gray"], parts["total"])
    assert torch.allclose(parts["total"], m.nll(x))


def test_log_weights_cached_equals_naive():
    m = _model(3, 6)
    g = torch.randint(0, 3, (2, 1, 2, 3))
    a = bits_split.gray_log_weights(m, g, 6, 3, k=4, seed=5, sampler=sample.sample_cached, smc=False)
    b = bits_split.gray_log_weights(m, g, 6, 3, k=4, seed=5, sampler=sample.sample_naive, smc=False)
    assert torch.allclose(a, b, atol=1e-12) and (a < 0).all()
    with pytest.raises(TypeError, match="GatedPixelCNN"):
        bits_split.split_bits(torch.nn.Linear(1, 1), torch.zeros(1, 3, 2, 2, dtype=torch.long), 2)


def test_restricted_baseline_is_a_normalised_colour_model():
    """The baseline restricted to the known gray sums to 1 over the images with that gray view, and is what
    a Grayscale colour network warm-started from the baseline computes before any conditioning training."""
    from models.pixelcnn.models import GrayscalePixelCNN
    m = _model(3, 4)
    allx = torch.tensor(list(itertools.product(range(4), repeat=6))).view(-1, 2, 3).permute(0, 2, 1)
    allx = allx.reshape(-1, 3, 1, 2)
    r = bits_split.restricted_bits(m, allx, 2, batch=100)
    gs = to_gray(allx, 4, 2).flatten(1)
    for g in gs.unique(dim=0):
        same = (gs == g).all(1)
        assert abs(float((2.0 ** -r[same]).sum()) - 1) < 1e-9
    assert (r <= m.nll(allx) + 1e-9).all()
    gm = GrayscalePixelCNN(3, 4, gray_levels=2, hidden=6, n_layers=2, cond_hidden=4, cond_layers=1).double()
    gm.warm_start_colour(m)
    assert torch.allclose(gm.loss_parts(allx)["colour"], r)


def test_cli_exact_parts_on_an_extra_set(tmp_path):
    """bits_split's CLI on the committed patches baseline: exact parts only (bare -k) on 2 in-distribution
    patches (--extra same_photos), the parts add up to the total; an unknown set is named in the error."""
    import json
    import os
    ck = os.path.join(os.path.dirname(__file__), "..", "models", "pixelcnn", "weights", "bench_pixelcnn_patches.pt")
    out = tmp_path / "s.json"
    bits_split.main([ck, "-n", "2", "-k", "--extra", "same_photos", "--device", "cpu", "--json", str(out)])
    r = json.loads(out.read_text())
    assert r["images_from"] == "same_photos" and r["images"] == 2 and r["bits_per_dim"] == {}
    rb = r["restricted_baseline"]
    assert abs(rb["colour_given_gray"] + rb["autoregressive_gray"] - rb["total"]) < 1e-9
    assert 0 < rb["autoregressive_gray"] and 0 < rb["colour_given_gray"] < 8
    with pytest.raises(SystemExit, match="no extra test set 'nope'"):
        bits_split.main([ck, "-n", "2", "-k", "--extra", "nope", "--device", "cpu"])
