"""LatentPixelCNN at a scale that can test the paper: gated baseline vs Grayscale vs Pyramid PixelCNN on
RGB photo crops, same backbone, matched in parameters, trained in lockstep on the same batches for the
same number of steps within a wall-time budget, evaluated on crops of a photo never trained on.

    python bench/bench_latent_gpu.py --device cuda --out docs/results                                  # one GPU run (~8 min)
    python bench/bench_latent_gpu.py --device cpu --sizes 8 16 --budget-s 240 480 --hidden 16 --n-layers 4 \
        --batch-size 32 --n-test 500 --n-curve 128 --split-images 48 --sample-batch 32 --out docs/results  # CPU, reduced
    python bench/bench_latent_gpu.py --tiny --out /tmp/x                                               # dry run (a test)

For every image size (an arm; 8x8 is the control with the same code): train crops from the top 80 % of
the rows of five bundled photos at scales 1, 1/2, 1/4 with left-right flips (a fresh batch every step),
test crops from the held-out flower photo, check crops from the bottom 20 % of the training photos.
The baseline's bits are split into its implied gray and colour-given-gray parts
(``models.pixelcnn.bits_split``, importance sampling) so Grayscale is compared part by part. Sampling
cost per image (MACs counted by ``torch.utils.flop_counter``, sequential sampling steps, wall time at
``--sample-batch``) is measured on the trained models, i.e. at their measured bits/dim.

Writes OUT/latent_gpu.json (per size and model: test bits/dim and its parts, parameter count, steps,
wall time, curves) and OUT/latent_gpu_<size>.png (test bits/dim vs step). Ref: Kolesnikov & Lampert,
ICML 2017 (arXiv 1612.08185) §4 (Grayscale and Pyramid PixelCNN vs PixelCNN in bits/dim).
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

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from models.pixelcnn import bits_split, data, sample  # noqa: E402
from models.pixelcnn.models import GatedPixelCNN, GrayscalePixelCNN, PyramidPixelCNN, n_params  # noqa: E402
from models.pixelcnn.train import DEVICES, autocast, evaluate, resolve_device  # noqa: E402

MODELS = ("pixelcnn", "gray", "pyramid")
LEVELS, GRAY_LEVELS = 256, 16


def gray_model(size, hidden, n_layers):
    """Colour network = the backbone; a half-width gray prior; a dilated conditioning net whose
    receptive field covers the image (1 + 2 (2^n - 1) >= 2 size - 1); the luma tilt on G."""
    cond_layers = max(1, math.ceil(math.log2(size)))
    return GrayscalePixelCNN(3, LEVELS, GRAY_LEVELS, hidden=hidden, n_layers=n_layers, gray_hidden=max(4, hidden // 2),
                             cond_hidden=hidden, cond_layers=cond_layers, cond_dilated=1, exact=1, luma_tilt=1)


def pyramid_model(size, hidden, n_layers):
    """Two levels (three from 32x32 up), coarse network = the backbone, shallow fine levels, the exact
    block-sum logit prior."""
    return PyramidPixelCNN(3, LEVELS, n_levels=3 if size >= 32 else 2, hidden=hidden, coarse_layers=n_layers,
                           fine_layers=max(1, n_layers // 2), cond_hidden=hidden, logit_prior=2)


def matched_hidden(make, target):
    """The hidden width whose model's parameter count is closest to ``target`` (counts grow with h)."""
    h, prev = 4, None
    while True:
        p = n_params(make(h))
        if p >= target:
            return h if prev is None or p - target <= target - prev else h - 1
        h, prev = h + 1, p


def build_models(size, hidden, n_layers, seed):
    """The three models; the Grayscale model sets the parameter count, the others' widths are matched."""
    torch.manual_seed(seed)
    gray = gray_model(size, hidden, n_layers)
    target = n_params(gray)
    hb = matched_hidden(lambda h: GatedPixelCNN(3, LEVELS, h, n_layers), target)
    hp = matched_hidden(lambda h: pyramid_model(size, h, n_layers), target)
    torch.manual_seed(seed)
    return {"pixelcnn": GatedPixelCNN(3, LEVELS, hb, n_layers), "gray": gray,
            "pyramid": pyramid_model(size, hp, n_layers)}, {"pixelcnn": hb, "gray": hidden, "pyramid": hp}


def forward_macs(model, x):
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model.loss_parts(x[:1])
    return fc.get_total_flops() / 2


def run_arm(size, budget_s, a, dev, log):
    """Train the three models in lockstep for ``budget_s`` seconds of training at image ``size``."""
    torch.manual_seed(a.seed)
    train_crops, test, same = data.photo_crops(size, a.n_test)
    models, widths = build_models(size, a.hidden, a.n_layers, a.seed)
    for m in models.values():
        m.to(dev)
    opts = {k: torch.optim.Adam(m.parameters(), lr=a.lr) for k, m in models.items()}
    rng = np.random.RandomState(a.seed)
    curve_x = test[:a.n_curve]

    def step(xb):
        losses = {}
        for k, m in models.items():
            m.train()
            with autocast(dev):
                loss = m.bpd(xb).mean()
            opts[k].zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(m.parameters(), 10.0)
            opts[k].step()
            losses[k] = loss
        return losses

    def next_batch():
        return torch.from_numpy(train_crops.batch(a.batch_size, rng)).to(dev)

    # calibrate: steps per second of all three models together, then fix the step count (the lr
    # schedule needs it); a first untimed step warms up kernels / allocator
    step(next_batch())
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    n_cal = 3
    for _ in range(n_cal):
        step(next_batch())
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t_step = (time.perf_counter() - t) / n_cal
    t_eval = _timed_eval(models, curve_x, dev)
    n_evals = a.evals
    steps = max(2, int((budget_s - n_evals * t_eval) / t_step))
    eval_every = max(1, steps // n_evals)
    log(f"{size}x{size}: widths {widths}, params {[n_params(m) for m in models.values()]}, "
        f"{t_step:.3f} s/step (3 models) -> {steps} steps, eval every {eval_every}")
    scheds = {k: torch.optim.lr_scheduler.LambdaLR(o, lambda s: 0.05 ** min(1.0, s / steps)) for k, o in opts.items()}
    curves = {k: [] for k in models}
    train_curves = {k: [] for k in models}
    t0 = time.time()
    bar = tqdm(range(1, steps + 1), desc=f"{size}x{size}", disable=a.no_progress, file=sys.stderr)
    for s in bar:
        losses = step(next_batch())
        for sc in scheds.values():
            sc.step()
        if s % eval_every == 0 or s == steps:
            for k, m in models.items():
                curves[k].append([s, evaluate(m, curve_x, a.eval_batch)[0]])
                train_curves[k].append([s, losses[k].item()])
            bar.set_postfix({k: f"{v[-1][1]:.3f}" for k, v in curves.items()})
    train_s = time.time() - t0
    res = {"size": size, "steps": steps, "batch_size": a.batch_size, "train_s": train_s,
           "s_per_step_all_models": train_s / steps, "n_test": len(test), "models": {}}
    for k, m in models.items():
        bpd, parts = evaluate(m, test, a.eval_batch)
        sb, sparts = evaluate(m, same, a.eval_batch)
        r = {"test_bits_per_dim": bpd, "test_parts_bits_per_dim": parts,
             "same_photos_bits_per_dim": sb, "same_photos_parts_bits_per_dim": sparts,
             "n_params": n_params(m), "hidden": widths[k], "steps": steps,
             "test_curve_step_bits_per_dim": curves[k], "train_curve_step_bits_per_dim": train_curves[k],
             "likelihood_macs_per_image": forward_macs(m, torch.from_numpy(test[:1]).to(dev))}
        log(f"  {k:9s} {bpd:.4f} bits/dim  {parts}")
        res["models"][k] = r
    # the baseline's implied split (importance sampling over its own predictions), on the first test crops
    t = time.time()
    sp = bits_split.split_bits_per_dim(models["pixelcnn"].eval(), test[:a.split_images], GRAY_LEVELS,
                                       k=a.split_draws, batch=max(1, a.split_batch // a.split_draws))
    g_same = evaluate(models["gray"], test[:a.split_images], a.eval_batch)[1]
    res["baseline_split"] = {"images": min(a.split_images, len(test)), "smc_particles": a.split_draws,
                             "bits_per_dim": sp, "gray_model_same_images_parts_bits_per_dim": g_same,
                             "wall_s": time.time() - t}
    log(f"  baseline split on {a.split_images} test crops: {sp}; Grayscale there: {g_same}")
    for k, m in models.items():
        res["models"][k]["sampling"] = sample.sampling_cost(m, (3, size, size), a.sample_batch)
        log(f"  {k:9s} sampling {res['models'][k]['sampling']}")
    return res


def _timed_eval(models, x, dev):
    t = time.perf_counter()
    for m in models.values():
        evaluate(m, x, len(x))
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def plot(res, path, size):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    arm = res["sizes"][str(size)]
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for k, m in arm["models"].items():
        c = np.array(m["test_curve_step_bits_per_dim"])
        ax.plot(c[:, 0], c[:, 1], marker="o", ms=3, label=f"{k} ({m['n_params'] / 1e3:.0f}k)")
    ax.set_xlabel("training step (same batches for all models)")
    ax.set_ylabel(f"held-out photo bits/dim (first {res['n_curve']} crops)")
    ax.set_title(f"{size}x{size} RGB crops, {res['device']}, {arm['train_s']:.0f} s")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--out", default="results", help="folder for latent_gpu.json and the PNG curves")
    ap.add_argument("--device", default="auto", choices=DEVICES, help="cuda trains in bf16 autocast")
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 8], help="image sizes (arms), in order")
    ap.add_argument("--budget-s", type=float, nargs="+", default=[300, 60],
                    help="training seconds per arm (one value: the same for each); evaluation, the baseline "
                         "split and sampling come on top (about a minute on a GPU)")
    ap.add_argument("--hidden", type=int, default=64, help="backbone width (Grayscale colour network)")
    ap.add_argument("--n-layers", type=int, default=6, help="backbone gated layers")
    ap.add_argument("-b", "--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate (decays x0.05 over the run)")
    ap.add_argument("--n-test", type=int, default=1000, help="held-out photo crops (and same-photo crops)")
    ap.add_argument("--n-curve", type=int, default=256, help="test crops evaluated for the curves")
    ap.add_argument("--evals", type=int, default=8, help="curve points per arm")
    ap.add_argument("--eval-batch", type=int, default=256)
    ap.add_argument("--split-images", type=int, default=128, help="test crops of the baseline split")
    ap.add_argument("--split-draws", type=int, default=32, help="SMC particles per crop")
    ap.add_argument("--split-batch", type=int, default=1024, help="sampled images per split batch")
    ap.add_argument("--sample-batch", type=int, default=64, help="images per timed sampling batch")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tiny", action="store_true", help="dry run: 8x8, tiny models, a few seconds")
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    if a.tiny:
        a.sizes, a.budget_s, a.hidden, a.n_layers, a.batch_size = [8], [2.0], 6, 2, 8
        a.n_test, a.n_curve, a.evals, a.split_images, a.split_draws, a.sample_batch = 16, 8, 2, 2, 2, 2
    if len(a.budget_s) not in (1, len(a.sizes)):
        ap.error(f"--budget-s: give one value or one per size ({len(a.sizes)})")
    if any(s < 4 or s % 4 for s in a.sizes):
        ap.error("--sizes: every size must be a multiple of 4 (pyramid levels)")
    budgets = a.budget_s * len(a.sizes) if len(a.budget_s) == 1 else a.budget_s
    torch.set_num_threads(a.threads)
    dev = resolve_device(a.device)
    os.makedirs(a.out, exist_ok=True)
    res = {"device": dev.type, "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
           "precision": "bf16 autocast" if dev.type == "cuda" else "float32", "threads": a.threads,
           "budget_s": dict(zip(map(str, a.sizes), budgets)), "hidden": a.hidden, "n_layers": a.n_layers,
           "n_curve": a.n_curve, "seed": a.seed, "torch": torch.__version__, "sizes": {}}
    t0 = time.time()
    for size, budget in zip(a.sizes, budgets):
        res["sizes"][str(size)] = run_arm(size, budget, a, dev, lambda m: print(m, flush=True))
        plot(res, os.path.join(a.out, f"latent_gpu_{size}.png"), size)
    res["wall_s"] = time.time() - t0
    with open(os.path.join(a.out, "latent_gpu.json"), "w") as fh:
        json.dump(res, fh, indent=1)
    print(f"wrote {os.path.join(a.out, 'latent_gpu.json')} ({res['wall_s']:.0f} s)")
    return res


if __name__ == "__main__":
    main()
