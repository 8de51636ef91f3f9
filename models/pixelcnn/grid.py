"""Image grids of samples, in NumPy only (the host draws them without importing torch)."""
import numpy as np


def grid(images, levels, ncol=8):
    """(N, C, H, W) ints -> (rows*H+, ncol*W+, 3) float image in [0, 1] with 1-pixel white borders."""
    x = np.asarray(images, np.float64) / (levels - 1)
    n, C, H, W = x.shape
    if C == 1:
        x = np.repeat(x, 3, axis=1)
    rows = -(-n // ncol)
    out = np.ones((rows * (H + 1) + 1, ncol * (W + 1) + 1, 3))
    for t in range(n):
        r, c = divmod(t, ncol)
        out[1 + r * (H + 1):1 + r * (H + 1) + H, 1 + c * (W + 1):1 + c * (W + 1) + W] = x[t].transpose(1, 2, 0)
    return out
