"""Causal (masked) convolutions and the gated two-stack layer.

Ref: PixelRNN paper (arXiv 1601.06759) §3.4 masks A/B and RGB channel groups; Gated PixelCNN
(arXiv 1606.05328) §2.1-2.3 vertical/horizontal stacks (no blind spot), gated unit, conditioning.
Masks are applied as ``F.conv2d(x, weight * mask)``; weights are never mutated.

Mask kinds for a k x k kernel with centre c = k // 2:

====== ===================================================================
``A``  rows < c; row c cols < c; centre only from strictly earlier groups
``B``  like A, centre also from the same group (i <= o)
``none`` all taps (non-causal; conditioning networks)
``V0`` rows < c, all columns (first vertical-stack layer, sees x)
``V``  rows <= c, all columns (later vertical layers; their input only sees rows above)
``HA`` row c only, cols < c, centre as in A (first horizontal layer)
``HB`` row c only, cols < c, centre as in B
====== ===================================================================
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

MASK_KINDS = ("A", "B", "none", "V0", "V", "HA", "HB")


def channel_group(ch: int, n: int, groups: int) -> int:
    """Colour group of channel ``ch`` out of ``n`` split in ``groups`` contiguous blocks ([R|G|B])."""
    return ch * groups // n


def make_mask(cout, cin, k, kind, groups=1, out_repeat=1):
    """Float mask (cout, cin, k, k). ``out_repeat`` > 1: output channels are ``out_repeat``
    stacked copies of a ``cout // out_repeat`` channel layout (e.g. gate tanh|sigmoid halves)."""
    if kind not in MASK_KINDS:
        raise ValueError(f"unknown mask kind {kind!r}; expected one of {MASK_KINDS}")
    c = k // 2
    m = torch.zeros(cout, cin, k, k)
    if kind == "none":
        return m + 1
    if kind in ("V0", "V"):
        m[:, :, : c + (kind == "V"), :] = 1
        return m
    if kind in ("A", "B"):
        m[:, :, :c, :] = 1
    m[:, :, c, :c] = 1
    strict = kind in ("A", "HA")
    per = cout // out_repeat
    for o in range(cout):
        go = channel_group(o % per, per, groups)
        for i in range(cin):
            gi = channel_group(i, cin, groups)
            if gi < go or (gi == go and not strict):
                m[o, i, c, c] = 1
    return m


class MaskedConv2d(nn.Conv2d):
    """k x k convolution with a fixed causal mask (zero padding k//2, same H x W)."""

    def __init__(self, cin, cout, k, kind="B", groups=1, out_repeat=1, bias=True):
        super().__init__(cin, cout, k, padding=k // 2, bias=bias)
        self.kind, self.groups_rgb = kind, groups
        self.register_buffer("mask", make_mask(cout, cin, k, kind, groups, out_repeat), persistent=False)

    def forward(self, x):
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)

    def masked_weight(self):
        return self.weight * self.mask

    def forward_at(self, xpad, i, j):
        """Output at (i, j) only, from a zero-padded input ``xpad`` (pad k//2): the cached path."""
        k = self.kernel_size[0]
        patch = xpad[:, :, i:i + k, j:j + k]
        out = torch.einsum("nchw,ochw->no", patch, self.masked_weight())
        return out + self.bias if self.bias is not None else out

    def forward_row(self, xpad, i):
        """Output row i only (all columns), from the padded input."""
        k = self.kernel_size[0]
        return F.conv2d(xpad[:, :, i:i + k, :], self.masked_weight(), self.bias)


def gate(z):
    """Gated activation tanh(f) * sigmoid(g) over the two channel halves (Gated PixelCNN eq. 2)."""
    f, g = z.chunk(2, dim=1)
    return torch.tanh(f) * torch.sigmoid(g)


class GatedLayer(nn.Module):
    """One Gated PixelCNN layer: vertical stack (rows above) feeding a horizontal stack (left part of
    the current row) via a 1x1 conv; gated units; residual on the horizontal stack (not the first layer);
    optional spatial conditioning ``cond`` (same H x W) added through 1x1 convs."""

    def __init__(self, cin, ch, k, groups=1, first=False, cond_ch=0):
        super().__init__()
        self.first, self.ch, self.k = first, ch, k
        self.v = MaskedConv2d(cin, 2 * ch, k, "V0" if first else "V")
        self.h = MaskedConv2d(cin, 2 * ch, k, "HA" if first else "HB", groups, out_repeat=2)
        self.v2h = nn.Conv2d(2 * ch, 2 * ch, 1)
        self.h_out = MaskedConv2d(ch, ch, 1, "B", groups)
        self.cond = nn.Conv2d(cond_ch, 4 * ch, 1) if cond_ch else None

    def forward(self, v, h, cond=None):
        vp, hp = self.v(v), self.h(h)
        if self.cond is not None:
            cv, ch = self.cond(cond).chunk(2, dim=1)
            vp, hp = vp + cv, hp + ch
        hp = hp + self.v2h(vp)
        h_new = self.h_out(gate(hp))
        if not self.first:
            h_new = h_new + h
        return gate(vp), h_new
