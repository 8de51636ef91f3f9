"""PixelCNN models: baseline Gated PixelCNN, Grayscale PixelCNN, Pyramid PixelCNN, and the plain
masked-conv streaming PixelCNN used for the integer hardware export.

Ref: Kolesnikov & Lampert, ICML 2017 (arXiv 1612.08185) §3 (auxiliary variables: quantised grayscale
view, multi-resolution pyramid; loss -log p(f(x)) - log p(x | f(x)), an upper bound on -log p(x));
released Pyramid code kolesman/FaceGeneration utils.py (avg-pool of the full-resolution image then
re-quantise; coarsest level unconditional; shallow conditional PixelCNN per finer level with a
non-causal conditioning net). Gated PixelCNN: arXiv 1606.05328. Softmax outputs as in arXiv 1601.06759.

Every model exposes ``loss_parts(x) -> {name: bits per image (N,)}`` and ``bpd(x)`` in bits per
dimension of the full-resolution image (the same denominator C*H*W for every part).
"""
import functools
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import GatedLayer, MaskedConv2d

LN2 = math.log(2.0)
TILT_SIGMA0 = 3.55  # initial width of GrayscalePixelCNN's luma tilt, luma units (a quarter of a 16-unit gray bin)


def nll_bits(logits, x):
    """Bits per image of integer image ``x`` (N,C,H,W) under softmax ``logits`` (N,C,L,H,W)."""
    ce = F.cross_entropy(logits.transpose(1, 2), x.long(), reduction="none")
    return ce.flatten(1).sum(1) / LN2


class GatedPixelCNN(nn.Module):
    """Gated PixelCNN (vertical+horizontal stacks, no blind spot), softmax over ``levels`` per channel;
    RGB handled by channel-group masks (R, then G given R, then B given R, G). Optional conditioning
    map (``cond_ch`` channels, same H x W) enters every layer through 1x1 convs."""

    def __init__(self, channels=1, levels=17, hidden=32, n_layers=5, k=3, cond_ch=0):
        super().__init__()
        self.channels, self.levels, self.cond_ch = channels, levels, cond_ch
        g = channels
        self.layers = nn.ModuleList(
            GatedLayer(channels if i == 0 else hidden, hidden, k, g, first=i == 0, cond_ch=cond_ch)
            for i in range(n_layers))
        self.head1 = MaskedConv2d(hidden, hidden, 1, "B", g)
        self.head2 = MaskedConv2d(hidden, channels * levels, 1, "B", g)

    def scale(self, x):
        return x.to(self.head2.weight.dtype) * (2.0 / (self.levels - 1)) - 1.0

    def head(self, h):
        return self.head2(F.relu(self.head1(F.relu(h))))

    def forward(self, x, cond=None, offset=None):
        """Logits (N, C, L, H, W); ``offset`` (same shape, from conditioning only) is added to them."""
        v = h = self.scale(x)
        for layer in self.layers:
            v, h = layer(v, h, cond)
        out = self.head(h)
        n, _, hh, ww = out.shape
        out = out.view(n, self.channels, self.levels, hh, ww)
        return out if offset is None else out + offset

    def nll(self, x, cond=None, offset=None):
        return nll_bits(self(x, cond, offset), x)

    def loss_parts(self, x):
        return {"pixels": self.nll(x)}

    def bpd(self, x):
        return sum(self.loss_parts(x).values()) / x[0].numel()


class CondNet(nn.Module):
    """Non-causal conditioning network (3x3 convs + ReLU) over a whole auxiliary image. ``dilated``:
    layer i has dilation 2^i, so n layers see 1 + 2 (2^n - 1) pixels across (n = 5: 63, the whole of a
    32x32 image from any pixel); else dilation 1 (receptive field 2n + 1)."""

    def __init__(self, cin, hidden=32, n=3, dilated=False):
        super().__init__()
        mods = []
        for i in range(n):
            d = 2 ** i if dilated else 1
            mods += [nn.Conv2d(cin if i == 0 else hidden, hidden, 3, padding=d, dilation=d)]
            if i < n - 1:
                mods += [nn.ReLU()]
        self.net = nn.Sequential(*mods)
        self.receptive_field = 1 + 2 * sum(m.dilation[0] for m in mods if isinstance(m, nn.Conv2d))

    def forward(self, x):
        return self.net(x)


class UpCondNet(nn.Module):
    """Non-causal conditioner from a coarser pyramid level to the next finer resolution: 3x3 conv at the
    coarse resolution, a stride-2 2x2 transposed conv to 2x the size (knows each pixel's position in its
    2x2 block, unlike a nearest upsample), then a 3x3 conv (the authors' conditioner also ends with a
    stride-2 deconv to the finer level, kolesman/FaceGeneration utils.py)."""

    def __init__(self, cin, hidden=32):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(cin, hidden, 3, padding=1), nn.ReLU(),
                                 nn.ConvTranspose2d(hidden, hidden, 2, stride=2), nn.ReLU(),
                                 nn.Conv2d(hidden, hidden, 3, padding=1))

    def forward(self, x):
        return self.net(x)


def to_gray(x, levels, gray_levels):
    """Deterministic f(x): quantised grayscale. RGB: ITU-R 601 luma (299R + 587G + 114B)/1000, then
    floor(Y * G / L); 1 channel: floor(x * G / L). Exact integer arithmetic. Returns (N,1,H,W) in 0..G-1."""
    x = x.long()
    if x.shape[1] == 3:
        y = 299 * x[:, 0:1] + 587 * x[:, 1:2] + 114 * x[:, 2:3]
        return (y * gray_levels) // (1000 * levels)
    return (x * gray_levels) // levels


def luma_bin(g, levels, gray_levels):
    """Luma range [lo, hi] (units of 299R + 587G + 114B) of gray value g: g = floor(y G / (1000 L))."""
    lo = -((-g * 1000 * levels) // gray_levels)
    hi = -((-(g + 1) * 1000 * levels) // gray_levels) - 1
    return lo, hi


@functools.lru_cache(maxsize=8)
def rgb_reachable(levels, gray_levels):
    """Bool tables (L, L, G): [r, g', k] = some blue value b gives to_gray(r, g', b) = k (exact integers),
    and (L, G): [r, k] = some g', b do."""
    lv = np.arange(levels)
    t = np.zeros((levels, levels, gray_levels), bool)
    for r in range(levels):
        y = 299 * r + 587 * lv[:, None] + 114 * lv[None, :]                  # (g', b)
        k = (y * gray_levels) // (1000 * levels)
        t[r, np.repeat(lv, levels), k.ravel()] = True
    return torch.from_numpy(t), torch.from_numpy(t.any(1))


def gray_consistent(x, g, levels, gray_levels):
    """Bool (N, C, L, H, W): which value of each sub-pixel is still possible given the gray image g and
    the sub-pixels before it (R, then G given R, then B given R, G; 1 channel: the values whose gray
    view is g). Uses only x's earlier sub-pixels (causal), so the channel a value is drawn for may hold
    anything. Exact: a value is excluded only if no completion of the pixel has gray view g."""
    n, C, H, W = x.shape
    v = torch.arange(levels, device=x.device).view(1, levels, 1, 1)
    g = g.long()
    if C == 1:
        gv = to_gray(v.view(1, 1, levels, 1), levels, gray_levels).view(1, 1, levels, 1, 1)
        return gv == g[:, :, None]
    if C != 3:
        raise ValueError(f"gray_consistent: expected 1 or 3 channels, got {C}")
    x = x.long()
    r, gg = x[:, 0], x[:, 1]
    reach, reach_r = (t.to(x.device) for t in rgb_reachable(levels, gray_levels))  # (L, L, G), (L, G)
    k = g[:, 0]                                                              # (N, H, W)
    ok_r = reach_r[:, k].permute(1, 0, 2, 3)                                 # (N, L, H, W) over r
    ok_g = reach[r, :, k].permute(0, 3, 1, 2)                                # (N, L, H, W) over g'
    lo, hi = luma_bin(k, levels, gray_levels)
    y = (299 * r + 587 * gg)[:, None] + 114 * v                              # (N, L, H, W) over b
    ok_b = (y >= lo[:, None]) & (y <= hi[:, None])
    return torch.stack([ok_r, ok_g, ok_b], 1)


class GrayscalePixelCNN(nn.Module):
    """p(x) <= p(g) p(x | g), g = f(x) a ``gray_levels``-level grayscale view: a Gated PixelCNN prior on g,
    and a Gated PixelCNN on x conditioned on a non-causal CondNet over all of g.

    ``exact``: values inconsistent with the known g (and the pixel's earlier channels) get logit -inf
    (``gray_consistent``): they are impossible events, so this is exact and only lowers the bound.
    ``cond_layers``/``cond_dilated``: the CondNet's depth and dilations 1, 2, 4, ... (the defaults see
    63 pixels across). The colour network defaults to the baseline's size (hidden 32, 5 layers).
    ``luma_tilt`` (RGB only): a Gaussian logit offset on G that places the pixel's luma inside its gray bin
    (see ``tilt_target``)."""

    def __init__(self, channels=1, levels=17, gray_levels=16, hidden=32, n_layers=5, k=3,
                 gray_hidden=None, gray_layers=None, cond_hidden=32, cond_layers=5, cond_dilated=1, exact=1,
                 luma_tilt=0):
        super().__init__()
        self.channels, self.levels, self.gray_levels = channels, levels, gray_levels
        self.exact = bool(exact)
        self.luma_tilt = bool(luma_tilt)
        if self.luma_tilt and channels != 3:
            raise ValueError(f"luma_tilt needs RGB images (3 channels), got {channels}")
        self.prior = GatedPixelCNN(1, gray_levels, gray_hidden or hidden, gray_layers or n_layers, k)
        self.cond_net = CondNet(1, cond_hidden, cond_layers, bool(cond_dilated))
        self.colour = GatedPixelCNN(channels, levels, hidden, n_layers, k, cond_ch=cond_hidden)
        if self.luma_tilt:
            self.tilt = nn.Conv2d(cond_hidden, 1, 1)
            nn.init.zeros_(self.tilt.weight)
            nn.init.zeros_(self.tilt.bias)
            self.tilt_log_sigma = nn.Parameter(torch.tensor(math.log(TILT_SIGMA0)))

    def aux(self, x):
        return to_gray(x, self.levels, self.gray_levels)

    @property
    def _luma_unit(self):
        """Luma units (0..255) per unit of 299R + 587G + 114B."""
        return 255.0 / (self.levels - 1) / 1000

    @torch.no_grad()
    def warm_start_colour(self, baseline: GatedPixelCNN):
        """Copy a trained gated baseline (same channels, levels, hidden, layers, kernel) into the colour
        network and zero the conditioning inputs (every layer's 1x1 ``cond`` conv): the colour network then
        computes exactly the baseline's logits, and with ``exact`` it starts as the baseline restricted to
        the colours consistent with g and renormalised, which gives every sub-pixel at least the baseline's
        probability. Fine-tuning then learns to use g through the conditioning net."""
        src, dst = baseline.state_dict(), self.colour.state_dict()
        own = {k for k in dst if ".cond." not in k and not k.endswith(".mask")}
        mismatch = [k for k in own if k not in src or src[k].shape != dst[k].shape]
        if mismatch or baseline.channels != self.channels or baseline.levels != self.levels:
            raise ValueError(f"warm start: the baseline does not match the colour network "
                             f"(channels {baseline.channels}/{self.channels}, levels {baseline.levels}/{self.levels}, "
                             f"mismatched tensors {sorted(mismatch)[:4]})")
        self.colour.load_state_dict({k: src[k] for k in own}, strict=False)
        for layer in self.colour.layers:
            nn.init.zeros_(layer.cond.weight)
            nn.init.zeros_(layer.cond.bias)

    def condition(self, g):
        return self.cond_net(self.prior.scale(g))

    def tilt_target(self, g, cond):
        """Luma tilt target t (N, 1, H, W), in luma units (0..255), or None without ``luma_tilt``.

        The gray value fixes a pixel's luma y = (299R + 587G + 114B) / 1000 to a bin 16 units wide, and
        the gray values of the pixels around it (later ones included) say where in the bin it lies. The
        restricted baseline cannot use that: it knows the bin, not the position. The tilt adds
        -(y_RG(v) - t)^2 / (2 sigma^2) to the logit of G = v, y_RG(v) = (299R + 587v) / 1000 with R the
        pixel's own (already known) red; t = 0.886 * bin centre + a 1x1 conv of ReLU(cond) stands for the
        luma less blue's share (0.114 B, about 0.114 of the luma), sigma is one learnt scalar. Only G gets it:
        given R and the bin, G's window is ~27 levels wide and the position in the bin nearly fixes it,
        while a tilt on R (needs G and B's share) or B (already sharp given R and G) measured no gain.
        The conv engine's sampler applies it from a penalty table (``integer.tilt_*``; docs/conv-engine.md)."""
        if not self.luma_tilt:
            return None
        lo, hi = luma_bin(g.long(), self.levels, self.gray_levels)
        centre = (lo + hi).to(cond.dtype) * (self._luma_unit / 2)
        return 0.886 * centre + self.tilt(F.relu(cond))

    def offset(self, x, g, target=None):
        """Logit offset (N, C, L, H, W): -inf where a value is inconsistent with g (``exact``), plus the
        luma tilt on G where ``target`` (``tilt_target``) is given; None when neither applies. Uses only
        the pixel's earlier channels (causal)."""
        if not self.exact and target is None:
            return None
        n, C, H, W = x.shape
        off = torch.zeros((n, C, self.levels, H, W), device=x.device,
                          dtype=torch.get_default_dtype() if target is None else target.dtype)
        if target is not None:
            v = torch.arange(self.levels, device=x.device, dtype=target.dtype).view(1, -1, 1, 1)
            y = (299 * x[:, 0:1].to(target.dtype) + 587 * v) * self._luma_unit          # (N, L, H, W)
            off[:, 1] = -0.5 * torch.exp(-2 * self.tilt_log_sigma) * (y - target) ** 2
        if self.exact:
            ok = gray_consistent(x, g, self.levels, self.gray_levels)
            off = off.masked_fill(~ok, float("-inf"))
        return off

    def loss_parts(self, x):
        g = self.aux(x)
        cond = self.condition(g)
        return {"gray": self.prior.nll(g),
                "colour": self.colour.nll(x, cond, self.offset(x, g, self.tilt_target(g, cond)))}

    def bpd(self, x):
        return sum(self.loss_parts(x).values()) / x[0].numel()


def pool_levels(x, factor):
    """Average-pool integer image over factor x factor blocks of the full-resolution image and
    re-quantise with round-half-up: floor(mean + 1/2) = (2*sum + n) // (2n). Exact integers."""
    if factor == 1:
        return x.long()
    n = factor * factor
    s = F.avg_pool2d(x.double(), factor) * n
    return ((2 * s.round().long() + n) // (2 * n))


class PyramidPixelCNN(nn.Module):
    """Pyramid PixelCNN: levels x_0 (full res), x_l = pool(x, 2^l); the coarsest level by an
    unconditional Gated PixelCNN; every finer level by a shallow Gated PixelCNN conditioned on a
    UpCondNet over the coarser level. Loss parts ``level<l>`` (0 = finest)."""

    def __init__(self, channels=1, levels=17, n_levels=2, hidden=32, coarse_layers=5, fine_layers=2,
                 k=3, cond_hidden=32, logit_prior=0):
        super().__init__()
        self.channels, self.levels, self.n_levels = channels, levels, n_levels
        self.logit_prior = int(logit_prior)
        self.coarse = GatedPixelCNN(channels, levels, hidden, coarse_layers, k)
        self.fine = nn.ModuleList(GatedPixelCNN(channels, levels, hidden, fine_layers, k, cond_ch=cond_hidden)
                                  for _ in range(n_levels - 1))
        self.cond_nets = nn.ModuleList(UpCondNet(channels, cond_hidden) for _ in range(n_levels - 1))
        if self.logit_prior == 1:
            # learnable weight of a Gaussian-shaped logit prior centred on the coarser pixel's value;
            # w = exp(10 a) starts at 1 (negligible) and grows as fast as the data asks
            self.prior_a = nn.Parameter(torch.zeros(max(1, n_levels - 1)))
        elif self.logit_prior == 2:
            # block-sum prior (see offset): one learnt width per level and per position in the 2x2 block
            self.prior_a = nn.Parameter(torch.full((max(1, n_levels - 1), 4), 0.4))
        elif self.logit_prior:
            raise ValueError(f"logit_prior must be 0, 1 or 2, got {logit_prior!r}")

    def pyramid(self, x):
        h, w = x.shape[-2:]
        f = 2 ** (self.n_levels - 1)
        if h % f or w % f:
            raise ValueError(f"image size {h}x{w} not divisible by 2^(n_levels-1) = {f}")
        return [pool_levels(x, 2 ** l) for l in range(self.n_levels)]

    def condition(self, l, coarser):
        return self.cond_nets[l](self.coarse.scale(coarser))

    def offset(self, l, coarser, x=None):
        """``logit_prior=1``: logit offset -w_l/2 * ((v - c) / (L - 1))^2 for every level v, c = the
        coarser pixel covering this pixel, w_l = exp(10 a_l) learnt: makes 'close to the block mean' easy
        for a softmax output (the paper's logistic-mixture outputs get it from their mean).
        ``logit_prior=2`` (block sum; needs the level-l image ``x``, causal: uses only earlier pixels of the
        same 2x2 block): the 4 pixels of a block sum to 4c - lo .. 4c + hi (lo, hi = 2, 1 at level 0, where
        the pixels are exact; 3, 3 above, the pixels being rounded means themselves), so with s = the sum
        of the block's earlier pixels and k = 0..3 the position in the block, the offset is
        -w_lk/2 * ((v - (4c - s) / (4 - k)) / (L - 1))^2 and -1e4 where v is infeasible (outside
        4c - lo - s - (3 - k)(L - 1) .. 4c + hi - s; the last pixel of a block has 4 or 7 candidates).
        A softmax cannot learn this exact arithmetic from 80 images. Else None."""
        if not self.logit_prior:
            return None
        dt = self.prior_a.dtype
        c = F.interpolate(coarser.to(dt), scale_factor=2, mode="nearest")
        v = torch.arange(self.levels, dtype=dt, device=c.device).view(1, 1, -1, 1, 1)
        if self.logit_prior == 1:
            d = (v - c[:, :, None]) / (self.levels - 1)
            return -0.5 * torch.exp(10 * self.prior_a[l]) * d * d
        if x is None:
            raise ValueError("logit_prior=2 needs the level's own image x (offset(l, coarser, x))")
        n, C, H, W = x.shape
        xb = x.to(dt).view(n, C, H // 2, 2, W // 2, 2)
        prev = torch.zeros_like(xb)
        prev[:, :, :, 0, :, 1] = xb[:, :, :, 0, :, 0]
        prev[:, :, :, 1, :, 0] = xb[:, :, :, 0, :, 0] + xb[:, :, :, 0, :, 1]
        prev[:, :, :, 1, :, 1] = prev[:, :, :, 1, :, 0] + xb[:, :, :, 1, :, 0]
        prev = prev.view(n, C, H, W)
        k = torch.tensor([[0.0, 1.0], [2.0, 3.0]], dtype=dt, device=c.device).repeat(H // 2, W // 2)  # (H, W)
        w = torch.exp(10 * self.prior_a[l]).view(2, 2).repeat(H // 2, W // 2)
        lo, hi = (2, 1) if l == 0 else (3, 3)
        rem = 4 * c - prev                                                         # (N, C, H, W)
        mu = rem / (4 - k)
        d = (v - mu[:, :, None]) / (self.levels - 1)
        vmin = (rem - lo - (3 - k) * (self.levels - 1))[:, :, None]
        vmax = (rem + hi)[:, :, None]
        bad = (v < vmin) | (v > vmax)
        return -0.5 * w * d * d - 1e4 * bad.to(dt)

    def loss_parts(self, x):
        xs = self.pyramid(x)
        parts = {f"level{self.n_levels - 1}": self.coarse.nll(xs[-1])}
        for l in range(self.n_levels - 2, -1, -1):
            parts[f"level{l}"] = self.fine[l].nll(xs[l], self.condition(l, xs[l + 1]),
                                                  self.offset(l, xs[l + 1], xs[l]))
        return parts

    def bpd(self, x):
        return sum(self.loss_parts(x).values()) / x[0].numel()


def input_lut(levels):
    """int8 input code of each pixel level: round_half_up((2*level/(L-1) - 1) * 127), in -127..127."""
    lv = torch.arange(levels, dtype=torch.float64)
    return torch.floor((2 * lv / (levels - 1) - 1) * 127 + 0.5).long()


class StreamPixelCNN(nn.Module):
    """Plain masked-conv PixelCNN for the integer/streaming export (every layer a masked KxK or 1x1
    conv over the same H x W, zero padding): mask-A KxK conv + ReLU; ``n_res`` residual blocks
    h = h + ReLU(maskB conv(h)); 1x1 + ReLU; 1x1 to ``levels`` logits. Input = input_lut[x] / 127.
    Has the classic blind spot (kept on purpose: streaming-friendly)."""

    def __init__(self, channels=1, levels=17, hidden=32, n_res=4, k_first=5, k=3, head=32):
        super().__init__()
        self.channels, self.levels = channels, levels
        g = channels
        self.first = MaskedConv2d(channels, hidden, k_first, "A", g)
        self.res = nn.ModuleList(MaskedConv2d(hidden, hidden, k, "B", g) for _ in range(n_res))
        self.head1 = MaskedConv2d(hidden, head, 1, "B", g)
        self.head2 = MaskedConv2d(head, channels * levels, 1, "B", g)
        self.register_buffer("in_lut", input_lut(levels))

    def scale(self, x):
        return self.in_lut[x.long()].to(self.head2.weight.dtype) / 127.0

    def forward(self, x, cond=None):
        h = F.relu(self.first(self.scale(x)))
        for conv in self.res:
            h = h + F.relu(conv(h))
        out = self.head2(F.relu(self.head1(h)))
        n, _, hh, ww = out.shape
        return out.view(n, self.channels, self.levels, hh, ww)

    def nll(self, x, cond=None):
        return nll_bits(self(x), x)

    def loss_parts(self, x):
        return {"pixels": self.nll(x)}

    def bpd(self, x):
        return sum(self.loss_parts(x).values()) / x[0].numel()


def gated_nets(model):
    """The GatedPixelCNNs inside a baseline, Grayscale or Pyramid model (each has its own logit head)."""
    return [m for m in model.modules() if isinstance(m, GatedPixelCNN)]


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def build(name, channels, levels, **kw):
    """Model factory used by train.py / bench: name in pixelcnn, gray, pyramid, stream."""
    if name == "pixelcnn":
        return GatedPixelCNN(channels, levels, **kw)
    if name == "gray":
        kw.setdefault("gray_levels", 16 if levels > 32 else 4)
        return GrayscalePixelCNN(channels, levels, **kw)
    if name == "pyramid":
        return PyramidPixelCNN(channels, levels, **kw)
    if name == "stream":
        return StreamPixelCNN(channels, levels, **kw)
    raise ValueError(f"unknown model {name!r}; expected pixelcnn, gray, pyramid or stream")


MODEL_NAMES = ("pixelcnn", "gray", "pyramid", "stream")
