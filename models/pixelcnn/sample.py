"""Sampling: naive (a full forward pass per pixel/channel), cached fast sampling (per new pixel only
the positions it affects are computed: the vertical stack once per row, the horizontal stack and head
at the new pixel only; Ramachandran et al. arXiv 1704.06001 style caches), coarse-to-fine Pyramid
sampling and gray-then-colour Grayscale sampling; PNG grids of samples next to test images.

Randomness is an explicit uniform stream u (N, C, H, W) in [0, 1): the value at a sub-pixel is the
inverse-CDF draw  v = #{levels l : cdf(l) < u}  (float64 softmax), so naive and cached sampling with the
same u give identical images. Ref: shared/docs/pixelcnn.md §2.4 (Pyramid coarse-to-fine), §3.3.
"""
import math

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .grid import grid  # noqa: F401  (re-exported: sample.grid)
from .layers import gate
from .models import GatedPixelCNN, GrayscalePixelCNN, PyramidPixelCNN


def draw(logits, u):
    """Inverse-CDF draw. logits (N, L), u (N,) -> int64 (N,)."""
    cdf = torch.softmax(logits.double(), dim=-1).cumsum(-1)
    return (cdf < u.double()[:, None]).sum(-1).clamp(max=logits.shape[-1] - 1)


def uniform_stream(n, shape, seed=0):
    """The random stream: float64 uniforms (n, *shape) from NumPy's PCG64 with ``seed``."""
    return torch.from_numpy(np.random.default_rng(seed).random((n, *shape)))


def _add_log_mass(log_mass, logits, offset_logits):
    """log_mass += log of the mass the unshifted logits give the values the offset keeps."""
    if log_mass is not None:
        log_mass += (torch.logsumexp(offset_logits.double(), -1) - torch.logsumexp(logits.double(), -1)).cpu()


@torch.no_grad()
def sample_naive(model, u, cond=None, offset=None, log_mass=None):
    """Full forward pass for every sub-pixel (raster order, then R, G, B). ``log_mass`` (N,) float64,
    if given, accumulates the log of the mass the model puts on the values the offset leaves possible
    (the importance weight of ``bits_split``)."""
    n, C, H, W = u.shape
    dev = next(model.parameters()).device
    x = torch.zeros(n, C, H, W, dtype=torch.long, device=dev)
    for i in range(H):
        for j in range(W):
            for c in range(C):
                off = offset(x) if callable(offset) else offset
                lg = model(x, cond)[:, c, :, i, j]
                lo = lg if off is None else lg + off[:, c, :, i, j]
                _add_log_mass(log_mass, lg, lo)
                x[:, c, i, j] = draw(lo, u[:, c, i, j].to(dev))
    return x


def _pw(conv, v):
    """A 1x1 conv (masked or not) applied to per-position vectors v (N, Cin)."""
    w = conv.weight[:, :, 0, 0]
    if hasattr(conv, "mask"):
        w = w * conv.mask[:, :, 0, 0]
    return F.linear(v, w, conv.bias)


def resample_groups(log_mass, k, gen):
    """One adaptive sequential-Monte-Carlo resampling step over groups of ``k`` consecutive particles
    with log weights ``log_mass`` (N,): a group whose effective sample size fell below k/2 draws k
    ancestors by weight (multinomial) and its weights restart at 0. Returns (ancestor index (N,), log of
    the mean weight of each resampled group, 0 for the others (N // k,)). Doucet & Johansen §3.5."""
    lw = log_mass.view(-1, k)
    w = torch.softmax(lw, 1)
    redo = 1 / (w * w).sum(1) < k / 2
    lme = torch.where(redo, torch.logsumexp(lw, 1) - math.log(k), torch.zeros_like(lw[:, 0]))
    anc = torch.multinomial(w, k, replacement=True, generator=gen)
    anc = torch.where(redo[:, None], anc, torch.arange(k)[None])
    lw[redo] = 0
    return (anc + torch.arange(0, len(log_mass), k)[:, None]).flatten(), lme


@torch.no_grad()
def sample_cached(model: GatedPixelCNN, u, cond=None, offset=None, log_mass=None, particles=None, seed=0):
    """Cached sampling for a GatedPixelCNN: row i of the vertical stack is computed once when row i
    starts (it only sees rows < i); each new sub-pixel then costs one horizontal-stack position per
    layer plus the head. Same result as sample_naive for the same u (and the same ``log_mass``).

    ``particles`` = k (with ``log_mass``): the rows are groups of k particles of one target, resampled
    after every pixel by ``resample_groups`` (generator seeded with ``seed``); at the end ``log_mass``
    holds, for every row, its group's estimate of log E[prod of masses] (an unbiased estimate of the
    probability in the exponent, with far less variance than k independent draws)."""
    if not isinstance(model, GatedPixelCNN):
        raise TypeError("sample_cached needs a GatedPixelCNN")
    if particles and (log_mass is None or len(log_mass) % particles):
        raise ValueError("particles needs log_mass with a multiple of particles rows")
    n, C, H, W = u.shape
    dt, dev = model.head2.weight.dtype, model.head2.weight.device
    k = model.layers[0].k
    p = k // 2
    buf = lambda ch: torch.zeros(n, ch, H + 2 * p, W + 2 * p, dtype=dt, device=dev)
    L = len(model.layers)
    hid = model.layers[0].ch
    xin = buf(C)                                      # scaled image (input of v0 and h0)
    zero = model.scale(torch.zeros(1, dtype=torch.long, device=dev)).item()
    xin[:, :, p:p + H, p:p + W] = zero                # image of level-0 pixels, as naive's zero image
    vin = [xin] + [buf(hid) for _ in range(L - 1)]    # inputs of the vertical convs
    hin = [xin] + [buf(hid) for _ in range(L)]        # inputs/outputs of the horizontal stack
    vp = [torch.zeros(n, 2 * hid, H, W, dtype=dt, device=dev) for _ in range(L)]
    conds = [lay.cond(cond).chunk(2, dim=1) if lay.cond is not None else (0, 0) for lay in model.layers]
    x = torch.zeros(n, C, H, W, dtype=torch.long, device=dev)
    if particles:
        gen = torch.Generator().manual_seed(seed)
        evidence = torch.zeros(n // particles, dtype=torch.float64)
    for i in range(H):
        for l, lay in enumerate(model.layers):
            row = lay.v.forward_row(vin[l], i)
            if lay.cond is not None:
                row = row + conds[l][0][:, :, i:i + 1]
            vp[l][:, :, i] = row[:, :, 0]
            if l + 1 < L:
                vin[l + 1][:, :, p + i, p:p + W] = gate(row)[:, :, 0]
        for j in range(W):
            for c in range(C):
                for l, lay in enumerate(model.layers):
                    hp = lay.h.forward_at(hin[l], i, j) + _pw(lay.v2h, vp[l][:, :, i, j])
                    if lay.cond is not None:
                        hp = hp + conds[l][1][:, :, i, j]
                    hn = _pw(lay.h_out, gate(hp))
                    if not lay.first:
                        hn = hn + hin[l][:, :, p + i, p + j]
                    hin[l + 1][:, :, p + i, p + j] = hn
                hv = hin[L][:, :, p + i, p + j]
                logits = _pw(model.head2, F.relu(_pw(model.head1, F.relu(hv))))
                lg0 = lg = logits.view(n, C, -1)[:, c]
                if callable(offset):                  # depends on earlier pixels (causal)
                    lg = lg + offset(x, i, j)[:, c]
                elif offset is not None:
                    lg = lg + offset[:, c, :, i, j]
                _add_log_mass(log_mass, lg0, lg)
                v = draw(lg, u[:, c, i, j].to(lg.device))
                x[:, c, i, j] = v
                xin[:, c, p + i, p + j] = model.scale(v)
            if particles:
                idx, lme = resample_groups(log_mass, particles, gen)
                evidence += lme
                idx = idx.to(dev)
                x, xin = x[idx], xin[idx]
                vin = [xin] + [t[idx] for t in vin[1:]]
                hin = [xin] + [t[idx] for t in hin[1:]]
                vp = [t[idx] for t in vp]
                conds = [tuple(t[idx] if torch.is_tensor(t) else t for t in cd) for cd in conds]
    if particles:
        evidence += torch.logsumexp(log_mass.view(-1, particles), 1) - math.log(particles)
        log_mass.copy_(evidence.repeat_interleave(particles))
    return x


def _gray_offset(model, g, cond):
    """Exact-mask and luma-tilt offsets (``GrayscalePixelCNN.offset``) depend on the pixel's earlier channels:
    a callable off(x) (whole map) / off(x, i, j) -> (N, C, L) at pixel (i, j); None with neither."""
    t = model.tilt_target(g, cond)
    if not model.exact and t is None:
        return None

    def off(x, i=None, j=None):
        if i is None:
            return model.offset(x, g, t)
        sl = (slice(None), slice(None), slice(i, i + 1), slice(j, j + 1))
        return model.offset(x[sl], g[sl], None if t is None else t[sl])[:, :, :, 0, 0]
    return off


@torch.no_grad()
def colourise(model: GrayscalePixelCNN, g, u, cached=True):
    """x ~ p(x | g) for given gray images g (N, 1, H, W): the colour stage alone, e.g. on the gray views of
    real images, to tell a weak colour network from a weak gray prior."""
    fn = sample_cached if cached else sample_naive
    cond = model.condition(g)
    return fn(model.colour, u, cond, _gray_offset(model, g, cond))


@torch.no_grad()
def sample_grayscale(model: GrayscalePixelCNN, u_gray, u, cached=True):
    """Sample g ~ p(g), then x ~ p(x | g) (with the exact mask, f(x) = g always). Returns (g, x)."""
    g = (sample_cached if cached else sample_naive)(model.prior, u_gray)
    return g, colourise(model, g, u, cached)


def _block_offset(model, l, coarser):
    """logit_prior=2 offsets depend on the earlier pixels of the 2x2 block: a callable off(x) (whole map)
    / off(x, i, j) -> (N, C, L) at pixel (i, j), computed on that pixel's block only."""
    def off(x, i=None, j=None):
        if i is None:
            return model.offset(l, coarser, x)
        bi, bj = i // 2, j // 2
        o = model.offset(l, coarser[:, :, bi:bi + 1, bj:bj + 1], x[:, :, 2 * bi:2 * bi + 2, 2 * bj:2 * bj + 2])
        return o[:, :, :, i % 2, j % 2]
    return off


@torch.no_grad()
def sample_pyramid(model: PyramidPixelCNN, us, cached=True):
    """Coarse-to-fine: ``us`` = uniform streams per level, finest first. Returns levels, finest first."""
    fn = sample_cached if cached else sample_naive
    xs = [fn(model.coarse, us[-1])]
    for l in range(model.n_levels - 2, -1, -1):
        coarser = xs[0]
        off = _block_offset(model, l, coarser) if model.logit_prior == 2 else model.offset(l, coarser)
        xs.insert(0, fn(model.fine[l], us[l], model.condition(l, coarser), off))
    return xs


def pyramid_streams(model, n, shape, seed=0):
    C, H, W = shape
    return [uniform_stream(n, (C, H >> l, W >> l), seed + l) for l in range(model.n_levels)]


def sample_model(model, n, shape, seed=0, cached=True):
    """Sample n full-resolution images from any model of this package."""
    C, H, W = shape
    if isinstance(model, PyramidPixelCNN):
        return sample_pyramid(model, pyramid_streams(model, n, shape, seed), cached)[0]
    if isinstance(model, GrayscalePixelCNN):
        return sample_grayscale(model, uniform_stream(n, (1, H, W), seed + 100),
                                uniform_stream(n, shape, seed), cached)[1]
    u = uniform_stream(n, shape, seed)
    if cached and isinstance(model, GatedPixelCNN):
        return sample_cached(model, u)
    return sample_naive(model, u)


def sequential_steps(model, shape):
    """Sampling steps that must run one after the other per image (each draws one sub-pixel value for
    the whole batch): C H W for the baseline; H W gray + C H W colour for Grayscale; the sum over
    levels for Pyramid (each level is autoregressive in this implementation, as in the paper's code)."""
    C, H, W = shape
    if isinstance(model, GrayscalePixelCNN):
        return H * W + C * H * W
    if isinstance(model, PyramidPixelCNN):
        return sum(C * (H >> l) * (W >> l) for l in range(model.n_levels))
    return C * H * W


@torch.no_grad()
def sampling_cost(model, shape, batch=64, seed=0):
    """Cost of sampling one image with the cached samplers, on the model's device: MACs per image as
    executed (counted by ``torch.utils.flop_counter`` over 2 sampled images; masked taps count, as the
    dense kernels compute them), sequential steps per image, and wall seconds per image at ``batch``."""
    import time
    from torch.utils.flop_counter import FlopCounterMode
    model.eval()
    dev = next(model.parameters()).device
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    with FlopCounterMode(display=False) as fc:
        sample_model(model, 2, shape, seed=seed)
    sync()
    t = time.perf_counter()
    sample_model(model, batch, shape, seed=seed)
    sync()
    return {"macs_per_image": fc.get_total_flops() / 2 / 2, "sequential_steps_per_image": sequential_steps(model, shape),
            "s_per_image": (time.perf_counter() - t) / batch, "batch": batch, "device": dev.type}


def save_grid(path, samples, test_images, levels, ncol=8, scale=4):
    """PNG: samples (left) next to test images (right), separated by a grey bar; nearest upscaled."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    a, b = grid(samples, levels, ncol), grid(test_images, levels, ncol)
    h = max(a.shape[0], b.shape[0])
    pad = lambda g: np.concatenate([g, np.ones((h - g.shape[0], g.shape[1], 3))]) if g.shape[0] < h else g
    img = np.concatenate([pad(a), np.full((h, 3, 3), 0.5), pad(b)], axis=1)
    img = np.kron(img, np.ones((scale, scale, 1)))
    plt.imsave(path, np.clip(img, 0, 1))
    return path


def main(argv=None):
    import argparse
    from . import data
    from .train import load_checkpoint
    p = argparse.ArgumentParser(description="Sample a PNG grid from a trained checkpoint",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("-n", "--samples", type=int, default=32, help="images drawn (the PNG grid shows the first 64)")
    p.add_argument("-o", "--out", default="samples.png", help="PNG grid of samples beside test images")
    p.add_argument("-s", "--seed", type=int, default=0,
                   help="seed of the first batch's random streams (batch b: seed + 1000 b; the models' extra streams "
                        "sit at seed + 1..100, so batches never share one)")
    p.add_argument("--naive", action="store_true", help="naive (full forward per pixel) instead of cached")
    p.add_argument("--npz", default=None,
                   help="also write the samples here as an .npz (arrays x and levels), usable as a --dataset path")
    p.add_argument("--batch", type=int, default=1000, help="images sampled at once")
    a = p.parse_args(argv)
    if a.samples < 1 or a.batch < 1:
        p.error(f"--samples and --batch must be at least 1 (got {a.samples}, {a.batch})")
    torch.set_num_threads(1)
    model, ck = load_checkpoint(a.checkpoint)
    model.eval()
    ds = data.load(ck["meta"]["dataset"])
    starts = range(0, a.samples, a.batch)
    x = torch.cat([sample_model(model, min(a.batch, a.samples - i), ds.shape, a.seed + 1000 * b, cached=not a.naive)
                   for b, i in enumerate(tqdm(starts, desc="sampling", unit="batch", disable=len(starts) == 1))])
    if a.npz:
        np.savez_compressed(a.npz, x=x.numpy().astype(np.uint8 if ds.levels <= 256 else np.int64), levels=ds.levels)
        print(f"{a.npz}: {len(x)} samples")
    print(save_grid(a.out, x[:64].numpy(), ds.test[:64], ds.levels))


if __name__ == "__main__":
    main()
