"""Naive and cached sampling give identical samples for the same random stream; coarse-to-fine
Pyramid sampling and Grayscale sampling; PNG grids."""
import pytest
import torch

from models.pixelcnn import sample
from models.pixelcnn.models import GatedPixelCNN, GrayscalePixelCNN, PyramidPixelCNN


def _perturb(m, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return m.double().eval()


@pytest.mark.parametrize("channels,levels,cond_ch", [(1, 17, 0), (3, 6, 3)])
def test_naive_equals_cached(channels, levels, cond_ch):
    torch.manual_seed(1)
    m = _perturb(GatedPixelCNN(channels, levels, hidden=6, n_layers=3, k=3, cond_ch=cond_ch))
    u = sample.uniform_stream(2, (channels, 5, 4), seed=3)
    cond = torch.randn(2, cond_ch, 5, 4, dtype=torch.float64) if cond_ch else None
    a = sample.sample_naive(m, u, cond)
    b = sample.sample_cached(m, u, cond)
    assert torch.equal(a, b)
    assert len(torch.unique(a)) > 2  # not a degenerate all-equal sample
    # a different stream gives a different image
    assert not torch.equal(a, sample.sample_cached(m, sample.uniform_stream(2, (channels, 5, 4), seed=4), cond))


def test_draw_inverse_cdf():
    logits = torch.log(torch.tensor([[0.25, 0.25, 0.5]]))
    for u, v in [(0.1, 0), (0.3, 1), (0.6, 2), (0.9999, 2)]:
        assert sample.draw(logits, torch.tensor([u])).item() == v


def test_pyramid_and_grayscale_sampling(tmp_path):
    torch.manual_seed(0)
    pm = _perturb(PyramidPixelCNN(1, 5, n_levels=2, hidden=6, coarse_layers=2, fine_layers=1, cond_hidden=4,
                                  logit_prior=1))
    us = sample.pyramid_streams(pm, 2, (1, 4, 4), seed=0)
    fast = sample.sample_pyramid(pm, us, cached=True)
    slow = sample.sample_pyramid(pm, us, cached=False)
    assert [t.shape[-1] for t in fast] == [4, 2]
    assert all(torch.equal(a, b) for a, b in zip(fast, slow))
    gm = _perturb(GrayscalePixelCNN(3, 4, gray_levels=2, hidden=6, n_layers=2, cond_hidden=4))
    ug, u = sample.uniform_stream(2, (1, 3, 3), 5), sample.uniform_stream(2, (3, 3, 3), 6)
    g1, x1 = sample.sample_grayscale(gm, ug, u, cached=True)
    g2, x2 = sample.sample_grayscale(gm, ug, u, cached=False)
    assert torch.equal(g1, g2) and torch.equal(x1, x2)
    x = sample.sample_model(gm, 2, (3, 3, 3))
    assert x.shape == (2, 3, 3, 3) and x.max() < 4
    png = sample.save_grid(str(tmp_path / "g.png"), x.numpy(), x.numpy(), 4)
    import matplotlib.image
    assert matplotlib.image.imread(png).shape[-1] in (3, 4)


def test_pyramid_block_sum_prior_sampling():
    """logit_prior=2 (offset depends on the block's earlier pixels): cached == naive, and every sampled
    finer level pools back exactly to the coarser level it was conditioned on (infeasible values masked)."""
    from models.pixelcnn.models import pool_levels
    torch.manual_seed(0)
    pm = _perturb(PyramidPixelCNN(1, 5, n_levels=2, hidden=6, coarse_layers=2, fine_layers=1, cond_hidden=4,
                                  logit_prior=2))
    us = sample.pyramid_streams(pm, 3, (1, 4, 4), seed=0)
    fast = sample.sample_pyramid(pm, us, cached=True)
    slow = sample.sample_pyramid(pm, us, cached=False)
    assert all(torch.equal(a, b) for a, b in zip(fast, slow))
    assert torch.equal(pool_levels(fast[0], 2), fast[1])
    assert torch.isfinite(pm.bpd(fast[0])).all()


def test_sampling_cost():
    """MACs are counted (more for a wider model), steps follow the sampling order of each model."""
    from models.pixelcnn.models import GatedPixelCNN
    small = sample.sampling_cost(GatedPixelCNN(1, 5, hidden=4, n_layers=2), (1, 4, 4), batch=2)
    big = sample.sampling_cost(GatedPixelCNN(1, 5, hidden=8, n_layers=2), (1, 4, 4), batch=2)
    assert 0 < small["macs_per_image"] < big["macs_per_image"] and small["sequential_steps_per_image"] == 16
    gm = GrayscalePixelCNN(3, 4, gray_levels=2, hidden=4, n_layers=1, cond_hidden=4, cond_layers=2)
    pm = PyramidPixelCNN(3, 4, n_levels=2, hidden=4, coarse_layers=1, fine_layers=1, cond_hidden=4)
    assert sample.sequential_steps(gm, (3, 4, 4)) == 16 + 48
    assert sample.sequential_steps(pm, (3, 4, 4)) == 48 + 12


@pytest.mark.slow  # 15 s of CPU; about a minute on a loaded machine
def test_sampling_bench_dry_run(tmp_path):
    """The sampling benchmark on the committed digits checkpoints, tiny batches: every model has its cost,
    its checkpoint and bits/dim, and its ratios to the baseline measured in the same run."""
    import json
    import runpy
    import sys
    argv = sys.argv
    sys.argv = ["bench", "--out", str(tmp_path), "--datasets", "digits", "-n", "2", "--cost-batch", "2", "--no-grids"]
    try:
        runpy.run_path("bench/bench_pixelcnn_sampling.py", run_name="__main__")
    finally:
        sys.argv = argv
    row = json.load(open(tmp_path / "pixelcnn_sampling.json"))["datasets"]["digits"]
    assert row["pixelcnn_naive_equals_cached"]
    assert row["pixelcnn_sequential_steps_per_image"] == 64 and row["gray_sequential_steps_per_image"] == 128
    for m in ("gray", "pyramid"):
        r = row[f"{m}_vs_baseline"]
        assert r["macs_ratio"] == row[f"{m}_macs_per_image"] / row["pixelcnn_macs_per_image"] > 0
        assert abs(r["bits_per_dim_difference"] - (row[f"{m}_bits_per_dim"] - row["pixelcnn_bits_per_dim"])) < 1e-12
        assert row[f"{m}_checkpoint"] == f"models/pixelcnn/weights/bench_{m}_digits.pt"
    assert not list(tmp_path.glob("*.png"))


def test_image_stats_known_answers():
    """``image_stats`` on images with hand-computed answers: a flat patch (0, 0), a checkerboard of 0/10
    (neighbours always 10 apart), a patch whose R - G alternates by 8 (chroma std 4 for R - G, 0 for B - G);
    a wrong shape is a clear error."""
    import numpy as np

    from models.pixelcnn.image_stats import image_stats
    flat = np.full((1, 3, 4, 4), 77)
    assert image_stats(flat) == {"images": 1, "neighbour_abs_diff_levels": 0.0, "chroma_std_levels": 0.0}
    board = (np.indices((4, 4)).sum(0) % 2 * 10)[None, None].repeat(3, 1)
    assert image_stats(board)["neighbour_abs_diff_levels"] == 10.0
    assert image_stats(board)["chroma_std_levels"] == 0.0
    hue = np.full((1, 3, 4, 4), 100)
    hue[0, 0, :, ::2] += 8  # R - G is 8 on half the pixels, 0 on the rest: std 4; B - G is 0
    st = image_stats(np.concatenate([hue, flat]))
    assert st["images"] == 2 and st["chroma_std_levels"] == (4 / 2 + 0) / 2
    assert "chroma_std_levels" not in image_stats(np.zeros((2, 1, 3, 3)))
    with pytest.raises(ValueError, match="non-empty"):
        image_stats(np.zeros((3, 3)))


def test_sample_cli_writes_a_dataset(tmp_path):
    """``python -m models.pixelcnn.sample CKPT -n N --npz F``: N samples in batches (batch b drawn from seed
    s + 1000 b, so the first batch is ``sample_model``'s draw), an .npz that loads as a --dataset, and
    impossible counts refused before any work."""
    import numpy as np
    from models.pixelcnn import data
    from models.pixelcnn.train import load_checkpoint
    ck = "models/pixelcnn/weights/bench_pixelcnn_digits.pt"
    npz = str(tmp_path / "s.npz")
    sample.main([ck, "-n", "5", "--batch", "2", "-s", "7", "--npz", npz, "-o", str(tmp_path / "s.png")])
    x = np.load(npz)["x"]
    assert x.shape == (5, 1, 8, 8) and int(np.load(npz)["levels"]) == 17
    m, _ = load_checkpoint(ck)
    with torch.no_grad():
        first = sample.sample_model(m.eval(), 2, (1, 8, 8), seed=7).numpy()
        third = sample.sample_model(m.eval(), 1, (1, 8, 8), seed=2007).numpy()
    assert np.array_equal(x[:2], first) and np.array_equal(x[4:], third)
    assert not np.array_equal(x[0], x[1])
    ds = data.load(npz)
    assert ds.levels == 17 and len(ds.train) + len(ds.test) == 5
    with pytest.raises(SystemExit):
        sample.main([ck, "-n", "0", "--npz", npz])


def test_colourise_given_gray_and_image_stats_cli(tmp_path):
    """``sample.colourise`` is the Grayscale model's colour stage alone: every image it draws has the given
    gray view, and on the prior's own gray images it is ``sample_grayscale``'s second half. ``image_stats
    --colourise`` reports it for the gray views of real test images, beside those images' statistics."""
    import json

    from models.pixelcnn import image_stats
    torch.manual_seed(3)
    m = _perturb(GrayscalePixelCNN(3, 6, gray_levels=3, hidden=6, n_layers=2, cond_hidden=4, cond_layers=1,
                                   cond_dilated=0))
    ug, u = sample.uniform_stream(3, (1, 4, 4), 1), sample.uniform_stream(3, (3, 4, 4), 2)
    g, x = sample.sample_grayscale(m, ug, u)
    assert torch.equal(sample.colourise(m, g, u), x)
    g2 = torch.randint(0, 3, (3, 1, 4, 4))
    c = sample.colourise(m, g2, u)
    assert torch.equal(m.aux(c), g2) and torch.equal(sample.colourise(m, g2, u, cached=False), c)
    out = image_stats.main(["models/pixelcnn/weights/bench_gray_digits.pt", "-n", "3", "--colourise",
                            "--json", str(tmp_path / "s.json")])
    assert out["models/pixelcnn/weights/bench_gray_digits.pt:colourised_test"]["images"] == 3
    assert out["digits:test_images[:3]"]["images"] == 3
    assert json.load(open(tmp_path / "s.json")).keys() == out.keys()
