"""Gradient-based autoregressive-property tests for every PixelCNN layer type and whole model:
no output depends on its own or later pixels, nor (at its own pixel) on its own or later colour
channels beyond what the mask allows (shared/docs/pixelcnn.md §1.5)."""
import pytest
import torch

from models.pixelcnn.layers import GatedLayer, MaskedConv2d, channel_group, make_mask
from models.pixelcnn.models import GatedPixelCNN, GrayscalePixelCNN, PyramidPixelCNN, StreamPixelCNN

H = W = 4


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same random weights whatever ran before it in the process."""
    torch.manual_seed(0)


def grad_map(fn, x, sel):
    x = x.clone().requires_grad_(True)
    out = fn(x)
    out[sel].sum().backward()
    return x.grad[0].abs()  # (Cin, H, W)


def check(fn, cin, n_groups_out, out_group_channels, same_pixel_ok, require_left=True):
    """fn: (1,cin,H,W) float64 -> output; out_group_channels(g) -> index tuple builder (i, j) -> sel.
    same_pixel_ok(g_in_channel, g_out) says which input channels at the same pixel may be seen."""
    x = torch.randn(1, cin, H, W, dtype=torch.float64)
    seen_earlier = False
    for i in range(H):
        for j in range(W):
            for go in range(n_groups_out):
                g = grad_map(fn, x, out_group_channels(go, i, j))
                flat = g.reshape(cin, -1)
                r = i * W + j
                assert torch.all(flat[:, r + 1:] == 0), f"output ({i},{j}) group {go} sees the future"
                for ci in range(cin):
                    if not same_pixel_ok(ci, go):
                        assert flat[ci, r] == 0, f"output ({i},{j}) group {go} sees input channel {ci} at its pixel"
                seen_earlier |= bool(flat.sum() > 0)
    assert seen_earlier or not require_left, "trivially causal (no dependency at all): test is vacuous"


def feature_sel(cout, groups):
    def sel(go, i, j):
        chans = [o for o in range(cout) if channel_group(o, cout, groups) == go]
        return (0, chans, i, j)
    return sel


@pytest.mark.parametrize("kind,groups", [("A", 1), ("B", 1), ("A", 3), ("B", 3), ("HA", 3), ("HB", 3), ("V0", 1)])
@pytest.mark.parametrize("k", [1, 3])
def test_masked_conv(kind, groups, k):
    if k == 1 and kind in ("A", "HA", "V0") and groups == 1:
        pytest.skip("1x1 strict mask with one group is all zero")
    cin, cout = 3 * groups, 6
    conv = MaskedConv2d(cin, cout, k, kind, groups).double()
    strict = kind in ("A", "HA", "V0")
    ok = lambda ci, go: channel_group(ci, cin, groups) < go or (not strict and channel_group(ci, cin, groups) == go)
    if kind == "V0":
        ok = lambda ci, go: False
    check(conv, cin, groups, feature_sel(cout, groups), ok, require_left=k > 1 or groups > 1)


def test_mask_counts_and_no_mutation():
    assert int(make_mask(1, 1, 3, "B")[0, 0].sum()) == 5
    assert int(make_mask(1, 1, 5, "B")[0, 0].sum()) == 13
    assert int(make_mask(1, 1, 7, "A")[0, 0].sum()) == 24
    conv = MaskedConv2d(2, 2, 3, "A")
    w0 = conv.weight.detach().clone()
    conv(torch.randn(1, 2, 4, 4))
    assert torch.equal(conv.weight.detach(), w0), "forward must not mutate weights"
    with pytest.raises(ValueError, match="unknown mask kind"):
        make_mask(1, 1, 3, "C")


def test_vertical_mask_sees_only_rows_above():
    conv = MaskedConv2d(2, 4, 3, "V0").double()
    x = torch.randn(1, 2, H, W, dtype=torch.float64)
    for i in range(H):
        g = grad_map(conv, x, (0, slice(None), i, 2))
        assert torch.all(g[:, i:] == 0)


@pytest.mark.parametrize("groups", [1, 3])
def test_gated_layer(groups):
    cin, ch = 3, 6
    first = GatedLayer(cin, ch, 3, groups, first=True, cond_ch=2).double()
    second = GatedLayer(ch, ch, 3, groups, first=False, cond_ch=2).double()
    cond = torch.randn(1, 2, H, W, dtype=torch.float64)

    def net(x):
        v, h = first(x, x, cond)
        v, h = second(v, h, cond)
        return torch.cat([h, v], 1)  # h channels first (grouped), v after

    sel_h = feature_sel(ch, groups)
    check(lambda x: net(x)[:, :ch], cin, groups, sel_h,
          lambda ci, go: channel_group(ci, cin, groups) < go)
    # the vertical stack only ever sees rows strictly above
    x = torch.randn(1, cin, H, W, dtype=torch.float64)
    for i in range(H):
        g = grad_map(lambda t: net(t)[:, ch:], x, (0, slice(None), i, 2))
        assert torch.all(g[:, i:] == 0)


def logits_check(model, cin):
    """Whole model: logits of channel c at (i,j) depend only on earlier pixels and channels < c."""
    model = model.double().eval()
    model.scale = lambda x: x  # differentiate w.r.t. the scaled input
    check(lambda x: model(x), cin, cin, lambda c, i, j: (0, c, slice(None), i, j), lambda ci, c: ci < c)


@pytest.mark.parametrize("channels", [1, 3])
def test_gated_pixelcnn_causal_and_no_blind_spot(channels):
    m = GatedPixelCNN(channels, 4, hidden=6, n_layers=3, k=3)
    logits_check(m, channels)
    # no blind spot: pixel (2, 1) sees (1, 3) and (0, 3) (above-right, outside a plain masked stack's cone)
    x = torch.randn(8, channels, H, W, dtype=torch.float64, requires_grad=True)
    m(x)[:, 0, :, 2, 1].sum().backward()  # a batch: ReLUs in the head cannot zero every path
    g = x.grad.abs().sum(0)
    assert g[:, 1, 3].sum() > 0 and g[:, 0, 3].sum() > 0


def test_gated_pixelcnn_conditional_causal():
    m = GatedPixelCNN(3, 4, hidden=6, n_layers=2, k=3, cond_ch=2).double()
    cond = torch.randn(1, 2, H, W, dtype=torch.float64)
    m.scale = lambda x: x
    check(lambda x: m(x, cond), 3, 3, lambda c, i, j: (0, c, slice(None), i, j), lambda ci, c: ci < c)


def test_stream_pixelcnn_causal():
    logits_check(StreamPixelCNN(1, 4, hidden=4, n_res=2, k_first=5, k=3, head=4), 1)


def test_grayscale_pixelcnn_causal():
    m = GrayscalePixelCNN(3, 4, gray_levels=2, hidden=6, n_layers=2, cond_hidden=4).double()
    g = torch.randint(0, 2, (1, 1, H, W))
    cond = m.condition(g).detach()
    logits_check(m.prior, 1)
    col = m.colour.double()
    col.scale = lambda x: x
    check(lambda x: col(x, cond), 3, 3, lambda c, i, j: (0, c, slice(None), i, j), lambda ci, c: ci < c)


def test_pyramid_pixelcnn_causal():
    m = PyramidPixelCNN(1, 4, n_levels=2, hidden=6, coarse_layers=2, fine_layers=1, cond_hidden=4).double()
    coarser = torch.randint(0, 4, (1, 1, 3, 3))
    cond = m.condition(0, coarser)[:, :, :H, :W].detach()
    logits_check(m.coarse, 1)
    fine = m.fine[0]
    fine.scale = lambda x: x
    check(lambda x: fine(x, cond), 1, 1, lambda c, i, j: (0, c, slice(None), i, j), lambda ci, c: ci < c)
    # the fine level's conditioning depends on the coarser level only (pyramid built from x)
    x = torch.randint(0, 4, (2, 1, 8, 8))
    xs = m.pyramid(x)
    assert xs[1].shape[-1] == 4 and xs[1].max() < 4


@pytest.mark.parametrize("level", [0, 1])
def test_pyramid_block_sum_offset_causal(level):
    """logit_prior=2: the offset at a pixel depends only on earlier pixels (of its 2x2 block)."""
    L = 9
    m = PyramidPixelCNN(1, L, n_levels=3, hidden=6, coarse_layers=1, fine_layers=1, cond_hidden=4,
                        logit_prior=2).double()
    coarser = torch.randint(0, L, (1, 1, H // 2, W // 2))
    x = torch.randint(0, L, (1, 1, H, W))
    base = m.offset(level, coarser, x)
    for i in range(H):
        for j in range(W):
            y = x.clone()
            y[0, 0, i, j] = (y[0, 0, i, j] + 3) % L
            diff = (m.offset(level, coarser, y) - base).abs().sum(2)[0, 0].flatten()
            assert torch.all(diff[:i * W + j + 1] == 0), f"offset sees pixel ({i},{j}) at or before it"
    # the true value is always feasible: finite loss on pyramids built from real images
    xx = torch.randint(0, L, (4, 1, 8, 8))
    assert torch.isfinite(m.bpd(xx)).all() and (m.bpd(xx) < 100).all()
