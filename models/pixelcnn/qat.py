"""Quantisation-aware fine-tuning for the conv engine's int8 export of gated PixelCNNs.

The export (``export.quantize_gated``, ``--stream per_layer --centre``) rounds every op's weights onto one
int8 grid per op. Measured on the Grayscale patches model (docs/conv-engine.md, "Colour permutations"), two
ops lose most of the bits: the logit layer ``head2``, whose 768 output rows share one grid, and each layer's
stream output ``Hout_l`` (l > 0), whose 1x1 weights share an accumulator with the identity that carries
h_{l-1}, so its grid step is set by the stream's scale: the weights get 10-25 levels. ``QuantAware`` puts the
forward pass of those convs on the same grids, with straight-through gradients (Bengio et al. 2013,
arXiv 1308.3432; Jacob et al. 2018 §3), so training learns weights that survive the rounding:

- ``head2``: the masked weights centred over each image channel's levels (``export.centre_logits``), then
  step = max |w| / 127, as ``export._quant_op`` picks it;
- ``Hout_l``: step = max(s_h / 127, max |w| s_g / 127) / s_g, s_h = the 99.9th percentile of |h_{l-1}| / 127
  and s_g = the 99.99th of |g_l| / 127 (``export.calibrate_gated``'s percentiles), running averages over the
  training batches.

``QuantAware.detach`` leaves the rounded weights in the model, so the float checkpoint is the model the export rounds
(again, onto nearly the same grids).
"""
import torch
import torch.nn as nn
import torch.nn.utils.parametrize as P

from .export import ACT_PERCENTILE, STREAM_PERCENTILE, centred_logit_weight
from .models import gated_nets


def fake_quant(w, step):
    """w rounded to multiples of ``step`` (clamped to +-127 steps); the gradient passes straight through."""
    return w + (torch.clamp(torch.round(w / step), -127, 127) * step - w).detach()


def _percentile_scale(t, p):
    t = t.detach().abs().flatten().float()
    if t.numel() > 1 << 18:  # torch.quantile's input limit is far above; a sample keeps it cheap
        t = t[torch.randint(t.numel(), (1 << 18,), device=t.device)]
    return max(float(torch.quantile(t, p / 100)), 1e-8) / 127


class _LogitGrid(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.c, self.l = net.channels, net.levels
        self.register_buffer("mask", net.head2.mask.clone())

    def forward(self, w):
        wc = centred_logit_weight(w * self.mask, self.c, self.l)
        return fake_quant(wc, wc.abs().max().detach() / 127)


class _StreamGrid(nn.Module):
    """Hout_l's grid; the scales are running averages kept by the two hooks ``QuantAware`` adds."""

    def __init__(self, mask, momentum=0.1):
        super().__init__()
        self.register_buffer("mask", mask.clone())
        self.momentum, self.s_h, self.s_g = momentum, None, None

    def observe(self, name, t):
        v = _percentile_scale(t, STREAM_PERCENTILE if name == "s_h" else ACT_PERCENTILE)
        old = getattr(self, name)
        setattr(self, name, v if old is None else (1 - self.momentum) * old + self.momentum * v)

    def forward(self, w):
        wm = w * self.mask
        if self.s_h is None or self.s_g is None:
            return wm
        step = max(self.s_h / 127, float(wm.detach().abs().max()) * self.s_g / 127) / self.s_g
        return fake_quant(wm, step)


def plain_state_dict(model):
    """``model.state_dict()`` with every fake-quantised weight under its own name, rounded: the state a
    checkpoint stores (it loads into a model without grids). Without grids: the state dict itself."""
    sd = {}
    for k, v in model.state_dict().items():
        if ".parametrizations." not in k:
            sd[k] = v
        elif k.endswith(".weight.original"):
            name = k.split(".parametrizations.")[0]
            sd[f"{name}.weight"] = model.get_submodule(name).weight.detach().clone()
    return sd


class QuantAware:
    """Straight-through int8 weight grids on the logit layer and the stream outputs of every gated net of
    ``model`` that has trainable weights (a frozen, copied prior keeps its float weights)."""

    def __init__(self, model):
        self.mods, self.hooks = [], []
        for net in gated_nets(model):
            if not any(p.requires_grad for p in net.parameters()):
                continue
            P.register_parametrization(net.head2, "weight", _LogitGrid(net))
            self.mods.append(net.head2)
            for layer in net.layers[1:]:
                grid = _StreamGrid(layer.h_out.mask)
                P.register_parametrization(layer.h_out, "weight", grid)
                self.mods.append(layer.h_out)
                self.hooks += [
                    layer.register_forward_pre_hook(
                        lambda mod, args, g=grid: g.observe("s_h", args[1]) if mod.training else None),
                    layer.h_out.register_forward_pre_hook(
                        lambda mod, args, g=grid: g.observe("s_g", args[0]) if mod.training else None)]
        if not self.mods:
            raise ValueError(f"qat: {type(model).__name__} has no trainable gated net")

    def detach(self):
        """Remove the grids and hooks, leaving the rounded weights in place."""
        for h in self.hooks:
            h.remove()
        for mod in self.mods:
            P.remove_parametrizations(mod, "weight", leave_parametrized=True)
        self.mods, self.hooks = [], []
