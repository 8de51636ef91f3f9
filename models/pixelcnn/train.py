"""Train and evaluate a PixelCNN-family model; resumable checkpoints, seed control, test bits/dim.

    python -m models.pixelcnn.train --model pixelcnn --dataset digits --epochs 20 --out runs/pixelcnn_digits.pt

``--device auto`` trains on CUDA when present (bf16 autocast there; CPU runs stay float32 and
reproduce the CPU numbers exactly); checkpoints are always stored on the CPU and load on either device.

Ref: training recipe in the spirit of openai/pixel-cnn train.py (Adam, decaying learning rate,
test-set bits/dim); shared/docs/pixelcnn.md §1.4, style.md §7 (small flat CLI with defaults in --help).
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
from tqdm import tqdm

from . import data as data_mod
from .qat import QuantAware, plain_state_dict
from .models import MODEL_NAMES, build, gated_nets, n_params


def parse_arch(items):
    """``key=value`` strings -> kwargs (ints/floats parsed)."""
    kw = {}
    for it in items or []:
        if "=" not in it:
            raise ValueError(f"--arch expects key=value, got {it!r}")
        k, v = it.split("=", 1)
        try:
            v = int(v)
        except ValueError:
            try:
                v = float(v)
            except ValueError:
                pass
        kw[k] = v
    return kw


DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device="cpu"):
    """'auto' -> CUDA when available else CPU; 'cuda' without a GPU is an error, not a silent CPU run."""
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; expected one of {DEVICES}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: no CUDA device is available (use --device auto or cpu)")
    return torch.device(device)


def autocast(device):
    """bf16 autocast on CUDA (losses are computed in float32 by autocast's cross-entropy policy); a
    no-op on the CPU, so CPU results do not change."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=torch.device(device).type == "cuda")


@torch.no_grad()
def evaluate(model, x, batch_size=256, device=None):
    """Mean test bits/dim and its split {part: bits/dim}, over the full-resolution image. ``device``
    defaults to the model's own; sums are accumulated in float64 on the host."""
    model.eval()
    device = device or next(model.parameters()).device
    sums = {}
    for i in range(0, len(x), batch_size):
        xb = torch.from_numpy(x[i:i + batch_size]).to(device)
        with autocast(device):
            parts = model.loss_parts(xb)
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + float(v.double().sum())
    dims = len(x) * int(np.prod(x.shape[1:]))
    parts = {k: v / dims for k, v in sums.items()}
    return sum(parts.values()), parts


def save_checkpoint(path, model, opt, epoch, meta):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    torch.save({"model": {k: v.cpu() for k, v in plain_state_dict(model).items()}, "opt": opt.state_dict() if opt else None, "epoch": epoch,
                "meta": meta, "torch_rng": torch.get_rng_state(),
                "np_rng": np.random.get_state()}, tmp)
    os.replace(tmp, path)


# architecture keys that older checkpoints (no ``meta["version"]``) did not store: their values then
LEGACY_ARCH = {"gray": dict(exact=0, cond_layers=3, cond_dilated=0)}
CHECKPOINT_VERSION = 2


def load_checkpoint(path, device="cpu"):
    """-> (model on ``device``, checkpoint dict). The model is rebuilt from the stored metadata."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path!r} not found")
    ck = torch.load(path, map_location="cpu", weights_only=False)
    m = ck["meta"]
    arch = dict(m["arch"])
    if m.get("version", 1) < 2:
        arch = dict(LEGACY_ARCH.get(m["model"], {}), **arch)
    model = build(m["model"], m["channels"], m["levels"], **arch)
    # masks are rebuilt from the architecture (older checkpoints stored them)
    model.load_state_dict({k: v for k, v in ck["model"].items() if not k.endswith(".mask")})
    return model.to(resolve_device(device)), ck


class LogitPenalty:
    """The logit range of every gated net's head in the last training forward pass, in nats²: the mean square
    of the centred logits (each sub-pixel's logits minus their mean over the levels; softmax-invariant), or
    with ``margin`` the mean square of how far each logit lies more than ``margin`` nats below its sub-pixel's
    largest (the largest taken as a constant).

    A confidence penalty for int8: a long-trained 256-way softmax behind a narrow head pushes unlikely levels
    30-190 nats down, and the engine's int8 maps, one scale per op, then carry 4-5 % relative error on every
    logit (docs/conv-engine.md, "Longer training, int8, and the logit-range penalty"). Penalising the range
    brings the integer graph within 0.05 bits/dim of the float model, at a cost in sample sharpness."""

    def __init__(self, model, margin=None):
        self.margin = margin
        self.terms = []
        self.hooks = [net.head2.register_forward_hook(self._hook(net)) for net in gated_nets(model)]
        if not self.hooks:
            raise ValueError(f"logit_penalty: {type(model).__name__} has no gated logit head")

    def _hook(self, net):
        def hook(module, inputs, out):
            if module.training:
                z = out.view(out.shape[0], net.channels, net.levels, *out.shape[2:]).float()
                if self.margin is None:
                    self.terms.append((z - z.mean(2, keepdim=True)).pow(2).mean())
                else:
                    r = (z.amax(2, keepdim=True).detach() - z - self.margin).clamp(min=0)
                    self.terms.append(r.pow(2).mean())
        return hook

    def pop(self):
        v = sum(self.terms) / len(self.terms)
        self.terms = []
        return v


_ORDERS = np.array([(0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)])


def permute_channels(x, rng):
    """x (N, 3, H, W) with each image's channels in one of the six orders drawn uniformly by ``rng``."""
    order = _ORDERS[rng.randint(len(_ORDERS), size=len(x))]
    return x[np.arange(len(x))[:, None], order]


def train(model_name, dataset, epochs=10, batch_size=64, lr=2e-3, seed=0, arch=None, out=None,
          resume=False, progress=True, max_steps=None, log=print, device="cpu", warm_start=None,
          warm_lr_scale=0.0, prior_from=None, val_photo=None, eval_every=None, hflip=False,
          logit_penalty=0.0, init_from=None, logit_margin=None, colour_perm=0.0, qat=False):
    """Train; returns (model, result dict with test bits/dim). ``dataset`` is a name/path or a Dataset.
    The model is built on the CPU from the seed (same initial weights on every device), then moved.
    ``warm_start`` (model ``gray`` only): a gated baseline (checkpoint path or model) copied into the
    colour network (``GrayscalePixelCNN.warm_start_colour``) before training; the copied weights then train
    at ``warm_lr_scale`` times the learning rate (0: frozen), the new parts (gray prior, conditioning net
    and inputs) at the full rate. ``prior_from`` (model ``gray`` only): a Grayscale checkpoint whose trained
    gray prior is copied and frozen (only the colour model then trains). ``val_photo``: the training images
    of that photo (``data.hold_out_photo``) are not trained on but evaluated every ``eval_every`` steps
    (default: every epoch; also before the first step), and the model with the best validation bits/dim is
    the one returned and saved (early stopping). ``hflip``: each training image is mirrored left-right with
    probability 1/2 at every step (data augmentation for photos; off by default, so earlier runs reproduce).
    ``colour_perm`` (probability p, 0 = off): at every step each RGB training image, with probability p, has its
    channels put in one of the six orders, uniformly at random (``permute_channels``; a photo's hues are six
    photos' for the model, whose colour must then come from the image's own context rather than from the
    training photos' palette).
    ``logit_penalty``: weight (bits/dim per nat²) of ``LogitPenalty`` added to the training loss (0: off).
    ``init_from``: start from this checkpoint's weights (same model and architecture; fine-tuning with a fresh
    optimiser and learning-rate schedule). ``qat``: train the logit layers and stream outputs on the conv
    engine export's int8 weight grids (``qat.QuantAware``; the checkpoint keeps the rounded weights)."""
    ds = data_mod.load(dataset) if isinstance(dataset, str) else dataset
    dev = resolve_device(device)
    torch.manual_seed(seed)
    np.random.seed(seed)
    arch = dict(arch or {})
    meta = {"model": model_name, "dataset": ds.name, "channels": int(ds.shape[0]), "levels": int(ds.levels),
            "arch": arch, "seed": seed, "epochs": epochs, "batch_size": batch_size, "lr": lr,
            "version": CHECKPOINT_VERSION}
    if hflip:
        meta["hflip"] = True
    if qat:
        meta["qat"] = True
    if colour_perm:
        if ds.shape[0] != 3:
            raise ValueError(f"colour_perm permutes RGB channels; {ds.name} has {ds.shape[0]} channel(s)")
        if not 0 < colour_perm <= 1:
            raise ValueError(f"colour_perm is a probability in (0, 1], got {colour_perm}")
        meta["colour_perm"] = float(colour_perm)
    if logit_penalty < 0 or (logit_margin is not None and (not logit_penalty or logit_margin < 0)):
        raise ValueError(f"logit penalty {logit_penalty} / margin {logit_margin}: the penalty must be >= 0, and a "
                         f"margin (>= 0 nats) applies only with a penalty > 0")
    if logit_penalty:
        meta["logit_penalty"] = logit_penalty
        meta["logit_margin"] = logit_margin
    model = build(model_name, meta["channels"], ds.levels, **arch)
    if init_from is not None:
        src, ick = load_checkpoint(init_from)
        im = ick["meta"]
        if (im["model"], im["channels"], im["levels"]) != (model_name, meta["channels"], ds.levels) or \
                dict(im["arch"]) != arch:
            raise ValueError(f"--init-from {init_from}: holds {im['model']!r} {im['channels']}ch/{im['levels']} levels "
                             f"arch {im['arch']}, not {model_name!r} {meta['channels']}ch/{ds.levels} levels arch {arch}")
        model.load_state_dict(src.state_dict())
        meta["init_from"] = {"checkpoint": os.path.basename(init_from), "epochs": im.get("epochs")}
    train_x, val_x = (ds.train, None) if val_photo is None else data_mod.hold_out_photo(ds, val_photo)
    if val_photo is not None:
        meta["val"] = {"photo": val_photo, "images": len(val_x), "curve": []}
    if prior_from is not None:
        if model_name != "gray":
            raise ValueError(f"--prior-from applies to the gray model only, not {model_name!r}")
        src, pck = load_checkpoint(prior_from)
        if not hasattr(src, "prior"):
            raise ValueError(f"--prior-from {prior_from}: holds a {pck['meta']['model']!r} model, not 'gray'")
        try:
            model.prior.load_state_dict(src.prior.state_dict())
        except RuntimeError as e:
            raise ValueError(f"--prior-from {prior_from}: its gray prior does not match gray_hidden/gray_layers "
                             f"of this model ({e})") from None
        model.prior.requires_grad_(False)
        meta["prior_from"] = os.path.basename(prior_from)
    if warm_start is not None:
        if model_name != "gray":
            raise ValueError(f"--warm-start applies to the gray model only, not {model_name!r}")
        if isinstance(warm_start, str):
            base, bck = load_checkpoint(warm_start)
            meta["warm_start"] = {"checkpoint": os.path.basename(warm_start), "meta": bck["meta"]}
        else:
            base = warm_start
            meta["warm_start"] = {"checkpoint": None}
        model.warm_start_colour(base.cpu())
        meta["warm_start"]["lr_scale"] = warm_lr_scale
    model = model.to(dev)
    penalty = LogitPenalty(model, logit_margin) if logit_penalty else None
    trainable = [p for p in model.parameters() if p.requires_grad]
    if warm_start is not None:
        copied = [p for n, p in model.colour.named_parameters() if ".cond." not in n]
        ids = {id(p) for p in copied}
        groups = [{"params": [p for p in trainable if id(p) not in ids]},
                  {"params": copied, "lr": lr * warm_lr_scale}]
    else:
        groups = trainable
    opt = torch.optim.Adam(groups, lr=lr)
    steps_per_epoch = math.ceil(len(train_x) / batch_size)
    total = max_steps or epochs * steps_per_epoch
    lr_fn = lambda s: 0.05 ** min(1.0, s / max(1, total))
    start = 0
    if resume and out and os.path.exists(out):
        ck = torch.load(out, map_location=dev, weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        start = ck["epoch"]
        torch.set_rng_state(ck["torch_rng"])
        np.random.set_state(ck["np_rng"])
        log(f"resumed {out} at epoch {start}")
    grids = QuantAware(model) if qat else None
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_fn, last_epoch=start * steps_per_epoch - 1 if start else -1)
    dims = int(np.prod(ds.shape))
    step = start * steps_per_epoch
    t0 = time.time()
    eval_every = eval_every or steps_per_epoch
    best = None

    def validate():
        nonlocal best
        vb, _ = evaluate(model, val_x)
        meta["val"]["curve"].append([step, vb])
        if best is None or vb < best[0]:
            best = (vb, step, {k: v.detach().clone() for k, v in model.state_dict().items()})
        log(f"step {step}: validation ({val_photo}) bpd {vb:.4f}  (best {best[0]:.4f} at step {best[1]})")
        model.train()

    if val_x is not None and step == 0:
        validate()
    for ep in range(start, epochs):
        model.train()
        perm = np.random.permutation(len(train_x))
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {ep + 1}/{epochs}", disable=not progress,
                   file=sys.stderr, leave=False)
        run = 0.0
        for b in bar:
            xb = train_x[perm[b * batch_size:(b + 1) * batch_size]]
            if hflip:
                xb = np.where(np.random.rand(len(xb), 1, 1, 1) < 0.5, xb[..., ::-1], xb)
            if colour_perm == 1:
                xb = permute_channels(xb, np.random)
            elif colour_perm:
                xb = np.where(np.random.rand(len(xb), 1, 1, 1) < colour_perm, permute_channels(xb, np.random), xb)
            xb = torch.from_numpy(np.ascontiguousarray(xb)).to(dev)
            with autocast(dev):
                loss = model.bpd(xb).mean()
                if penalty:
                    loss = loss + logit_penalty * penalty.pop()
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            opt.step()
            sched.step()
            step += 1
            run = 0.9 * run + 0.1 * loss.item() if b else loss.item()
            bar.set_postfix(bpd=f"{run:.3f}")
            if val_x is not None and step % eval_every == 0:
                validate()
            if max_steps and step >= max_steps:
                break
        if out:
            save_checkpoint(out, model, opt, ep + 1, meta)
        te, _ = evaluate(model, ds.test)
        log(f"epoch {ep + 1}/{epochs}: train bpd {run:.4f}  test bpd {te:.4f}  ({time.time() - t0:.0f} s)")
        if max_steps and step >= max_steps:
            break
    if best is not None:
        model.load_state_dict(best[2])
        meta["val"].update(best_step=best[1], best_bits_per_dim=best[0], steps=step)
        if out:
            save_checkpoint(out, model, opt, epochs, meta)
        log(f"early stopping: kept step {best[1]} (validation bpd {best[0]:.4f})")
    if grids:
        grids.detach()
    bpd, parts = evaluate(model, ds.test)
    res = dict(meta, test_bits_per_dim=bpd, test_parts_bits_per_dim=parts, n_params=n_params(model),
               train_s=time.time() - t0, dims=dims, device=dev.type)
    return model, res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("-m", "--model", default="pixelcnn", choices=MODEL_NAMES,
                   help="pixelcnn (gated baseline), gray, pyramid, or stream (integer-exportable)")
    p.add_argument("-d", "--dataset", default="digits", help="digits, faces, patches, or a folder / .npz path")
    p.add_argument("-e", "--epochs", type=int, default=10, help="training epochs")
    p.add_argument("-b", "--batch-size", type=int, default=64, help="images per step")
    p.add_argument("-l", "--lr", type=float, default=2e-3, help="Adam learning rate (decays x0.05 over the run)")
    p.add_argument("-s", "--seed", type=int, default=0, help="torch and NumPy seed")
    p.add_argument("-a", "--arch", nargs="*", default=[],
                   help="model kwargs key=value, e.g. hidden=32 n_layers=5 k=3 (pyramid: n_levels, "
                        "coarse_layers, fine_layers; gray: gray_levels, gray_hidden; stream: n_res, k_first)")
    p.add_argument("-o", "--out", default=None, help="checkpoint path (default runs/<model>_<dataset>.pt)")
    p.add_argument("-r", "--resume", action="store_true", help="continue from --out if it exists")
    p.add_argument("-t", "--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--device", default="auto", choices=DEVICES,
                   help="cpu, cuda (bf16 autocast), or auto (cuda when available)")
    p.add_argument("--warm-start", default=None,
                   help="gray only: a gated baseline checkpoint (same hidden/n_layers) copied into the colour "
                        "network, its conditioning inputs zeroed, before training (without it: random init)")
    p.add_argument("--warm-lr-scale", type=float, default=0.0,
                   help="with --warm-start: learning-rate factor of the copied baseline weights (0 freezes them; 0.05 made the held-out patches worse)")
    p.add_argument("--prior-from", default=None,
                   help="gray only: a Grayscale checkpoint (same gray_hidden/gray_layers) whose trained gray prior is "
                        "copied and frozen; only the colour model trains")
    p.add_argument("--val-photo", default=None,
                   help="patches only: hold out this training photo's patches as a validation split (never the "
                        "test photo) and keep the model with the best validation bits/dim (early stopping)")
    p.add_argument("--eval-every", type=int, default=None,
                   help="with --val-photo: validation every this many steps (default: every epoch)")
    p.add_argument("--hflip", action="store_true",
                   help="mirror each training image left-right with probability 1/2 at every step (photos)")
    p.add_argument("--colour-perm", type=float, nargs="?", const=1.0, default=0.0, metavar="P",
                   help="with probability P (alone: 1) put each RGB training image's channels in a random one of the "
                        "six orders at every step (photos: hue-independent colour coherence instead of the training "
                        "photos' palette; 0: off)")
    p.add_argument("--logit-penalty", type=float, default=0.0,
                   help="weight of the mean squared centred logit (nats^2) added to the loss, keeping logits in a "
                        "range int8 can carry (e.g. 1e-3; 0: off)")
    p.add_argument("--logit-margin", type=float, default=None,
                   help="with --logit-penalty: penalise only logits more than this many nats below their "
                        "sub-pixel's largest (default: all, centred)")
    p.add_argument("--qat", action="store_true",
                   help="quantisation-aware: train each trainable gated net's logit layer and stream outputs on the "
                        "conv engine's int8 weight grids (for cond_export --stream per_layer --centre); the "
                        "checkpoint keeps the rounded weights")
    p.add_argument("--init-from", default=None,
                   help="start from this checkpoint's weights (same model and --arch): fine-tune with a fresh optimiser")
    p.add_argument("--json", default=None, help="write the result (test bits/dim and split) here")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    name = os.path.basename(a.dataset.rstrip("/")).split(".")[0]
    out = a.out or os.path.join("runs", f"{a.model}_{name}.pt")
    _, res = train(a.model, a.dataset, a.epochs, a.batch_size, a.lr, a.seed, parse_arch(a.arch), out,
                   a.resume, not a.no_progress, device=a.device, warm_start=a.warm_start,
                   warm_lr_scale=a.warm_lr_scale, prior_from=a.prior_from, val_photo=a.val_photo,
                   eval_every=a.eval_every, hflip=a.hflip, colour_perm=a.colour_perm, qat=a.qat,
                   logit_penalty=a.logit_penalty, init_from=a.init_from,
                   logit_margin=a.logit_margin)
    print(json.dumps(res, indent=1))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    return res


if __name__ == "__main__":
    main()
