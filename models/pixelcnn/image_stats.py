"""Two numbers that say whether sampled images look like the data, in NumPy only (the host computes them
without importing torch): how far apart neighbouring pixels are, and how much the colour varies inside
an image. Photo patches are smooth and nearly one hue; an under-trained 256-level model's samples are
pixel noise in both.
"""
import numpy as np


def image_stats(images):
    """(N, C, H, W) integer images -> ``neighbour_abs_diff_levels``: mean |x[i, j] - x[i, j + 1]| and
    |x[i, j] - x[i + 1, j]| over channels and neighbour pairs, in levels; for RGB also
    ``chroma_std_levels``: the mean over images of the standard deviation over pixels of R - G and of
    B - G (a patch of one hue: 0); ``images``: N."""
    x = np.asarray(images, np.float64)
    if x.ndim != 4 or len(x) == 0:
        raise ValueError(f"image_stats expects a non-empty (N, C, H, W) array, got shape {x.shape}")
    dh = np.abs(np.diff(x, axis=3)).mean(axis=(1, 2, 3))
    dv = np.abs(np.diff(x, axis=2)).mean(axis=(1, 2, 3))
    out = {"images": int(len(x)), "neighbour_abs_diff_levels": float(((dh + dv) / 2).mean())}
    if x.shape[1] == 3:
        rg, bg = x[:, 0] - x[:, 1], x[:, 2] - x[:, 1]
        out["chroma_std_levels"] = float(((rg.std(axis=(1, 2)) + bg.std(axis=(1, 2))) / 2).mean())
    return out
