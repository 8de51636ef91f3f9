"""Grayscale and Pyramid PixelCNNs (auxiliary variable a = f(x): the 4-level gray view, or the 2x2
average-pooled image) on the convolution engine.

Two integer stages from ``models.pixelcnn.aux_export`` run one after the other on the same engine
(reprogrammed over the link in between): the prior p(g) and the conditional p(x | g), whose extra
input channels carry g around each pixel. Likelihood: bits(g) + bits(x | g) from the engine's logits,
per x dimension; sampling: g generated on chip, then x on chip with g's channels streamed in.
Both models share the code; only ``models.pixelcnn.aux_export.aux_*`` differ.
"""
import sys
import time

import numpy as np

from host import pixelcnn_run as R
from hw.pixelcnn import program as prog
from hw.pixelcnn import sampler as S

GRAY_LEVELS = 4


def _bits(spec, logits, target):
    from models.pixelcnn.integer import bits_per_image
    n, _, H, W = target.shape
    return bits_per_image(logits.reshape(n, 1, spec["levels"], H, W), target, spec["logit_scale"])


def load_job(args):
    """The two stages' exports, the data and the engine fit, before any device work; raises
    ``host.cli_checks.UsageError`` naming the problem."""
    from host.cli_checks import UsageError
    from models.pixelcnn import aux_export as A
    from models.pixelcnn import data
    from models.pixelcnn.export import ExportError

    kind = {"gray-pixelcnn": "gray", "pyramid-pixelcnn": "pyramid"}.get(args.model)
    if kind is None:
        raise UsageError(f"{args.model} is not an auxiliary-variable model")
    try:
        prior_path, cond_path = A.aux_paths(kind, args.dataset)
        prior, cond = A.load_aux(prior_path), A.load_aux(cond_path)
        ds = data.load(args.dataset)
    except (ExportError, KeyError, ValueError, OSError) as exc:
        raise UsageError(f"--dataset {args.dataset}: {exc}") from None
    L, H, W = ds.levels, ds.shape[1], ds.shape[2]
    design = R.default_design()
    params = prog.EngineParams(**design.engine_args)
    Ha, Wa = A.aux_view(kind, ds.test[:1], L).shape[2:]
    for name, spec, w, h in (("prior", prior, Wa, Ha), ("conditional", cond, W, H)):
        try:
            prog.check_fits(spec, params, w, h)
        except prog.EngineFitError as exc:
            raise UsageError(f"the {name} stage does not fit the engine: {exc}") from None
    return kind, prior, cond, ds, design, params


def run(args):
    """Both stages on the engine; returns ``(result, grids)`` like ``host.pixelcnn_run.run_pixelcnn``."""
    from host.backends import open_device
    from models.pixelcnn import aux_export as A

    kind, prior, cond, ds, design, params = getattr(args, "job", None) or load_job(args)
    L, H, W = ds.levels, ds.shape[1], ds.shape[2]
    AL = A.aux_levels(kind, L)
    Ha, Wa = A.aux_view(kind, ds.test[:1], L).shape[2:]
    seed_prior, seed_cond = R.sample_seeds(args)
    test, n_samples = R.run_sizes(args, ds.test)
    g = A.aux_view(kind, test, L)
    cin = A.aux_cond_input(kind, test, L)
    t0 = time.time()
    ref_bits = _bits(prior, prog.logits_any(prior, g), g) + _bits(cond, prog.logits_any(cond, cin), test)
    bpd_ref = float(ref_bits.sum() / test.size)
    prog_cb = R._progress(not getattr(args, "no_progress", False), "likelihood")
    with open_device(args.backend, design=design, port=args.port, baud=args.baud, timeout=args.timeout,
                     quiet=False) as dev:
        cd = R.ConvDevice(dev)
        cd.program(prior, Wa, Ha)
        lg_p, cnt_p = cd.likelihood_logits(g, prog_cb)
        gs, scnt_p = cd.sample(n_samples, seed=seed_prior) if n_samples else (None, None)
        cd.program(cond, W, H, channels=cond["layers"][0]["in"])
        lg_c, cnt_c = cd.likelihood_logits(cin, prog_cb)
        if n_samples:
            cc = A.aux_cond_channels(kind, gs, L, H, W)
            xs, scnt_c = cd.sample(n_samples, seed=seed_cond, cond=cc)
    bits = _bits(prior, lg_p, g) + _bits(cond, lg_c, test)
    bpd = float(bits.sum() / test.size)
    exact = bool(np.array_equal(lg_p, prog.logits_any(prior, g)) and np.array_equal(lg_c, prog.logits_any(cond, cin)))
    twin_ok = None
    if n_samples:
        g_tw = S.sample_images_twin(prior, n_samples, Ha, Wa, seed_prior, S.logit_mult(prior["logit_scale"]))
        x_tw = S.sample_images_twin(cond, n_samples, H, W, seed_cond, S.logit_mult(cond["logit_scale"]),
                                    cond=A.aux_cond_channels(kind, g_tw, L, H, W))
        twin_ok = bool(np.array_equal(gs, g_tw) and np.array_equal(xs, x_tw))
    rep_p = R.cycle_report(prior, params, cnt_p, len(test), scnt_p, n_samples, Ha, Wa)
    rep_c = R.cycle_report(cond, params, cnt_c, len(test), scnt_c if n_samples else None, n_samples, H, W)
    useful_img = prog.useful_macs_per_pixel(prior) * Ha * Wa + prog.useful_macs_per_pixel(cond) * H * W
    cyc_img = rep_p["cycles_per_image"] + rep_c["cycles_per_image"]
    result = {
        "model": args.model, "dataset": args.dataset, "backend": args.backend,
        "test_images": int(len(test)), "test_images_total": int(len(ds.test)),
        "bpd": bpd, "bpd_integer_reference": bpd_ref,
        "bpd_float": prior["float_bits_per_dim"] + cond["float_bits_per_dim"],
        "bpd_parts": {"aux_prior": float(_bits(prior, lg_p, g).sum() / test.size),
                      "x_given_aux": float(_bits(cond, lg_c, test).sum() / test.size)},
        "bpd_equal": bpd == bpd_ref, "logits_equal": exact,
        "cycles_per_image": cyc_img,
        "cycles_per_pixel_likelihood": cyc_img / (H * W),
        "mac_utilization": useful_img / (params.lanes * cyc_img),
        # naive: a full forward pass of the stage's image per sampled pixel, for every pixel of both stages
        "naive_cycles_per_sampled_image": rep_p["cycles_per_image"] * Ha * Wa + rep_c["cycles_per_image"] * H * W,
        "samples": int(n_samples), "samples_equal_twin": twin_ok,
        "stages": {"prior": rep_p, "conditional": rep_c},
        "engine_params": params.as_dict(),
    }
    if n_samples:
        cyc_smp = rep_p["cycles_per_sampled_image"] + rep_c["cycles_per_sampled_image"]
        result.update(cycles_per_sampled_image=cyc_smp, cycles_per_sampled_pixel=cyc_smp / (H * W),
                      naive_cycles_per_sampled_pixel=result["naive_cycles_per_sampled_image"] / (H * W),
                      naive_over_onchip=result["naive_cycles_per_sampled_image"] / cyc_smp)
        png, gpng = R.grid_paths(args)
        title = f"{args.model} on {args.dataset}, {args.backend}: {bpd:.4f} bits/dim"
        grids = [(png, xs, ds.test[:n_samples], L, title),
                 (gpng, gs, A.aux_view(kind, ds.test[:n_samples], L), AL, title + " (auxiliary view a)")]
        result.update(png=str(png), png_gray=str(gpng), sample_seeds=[seed_prior, seed_cond])
    result["wall_s"] = time.time() - t0
    return result, (grids if n_samples else [])


def print_result(r):
    print(f"{r['model']} on {r['dataset']} ({r['backend']}): {r['test_images']} of {r['test_images_total']} "
          f"test images, two stages (prior over the auxiliary view a, x | a) on the engine")
    print(f"  bits/dim engine      : {r['bpd']:.12f}  (a {r['bpd_parts']['aux_prior']:.4f} + "
          f"x|a {r['bpd_parts']['x_given_aux']:.4f})")
    print(f"  bits/dim integer ref : {r['bpd_integer_reference']:.12f}  "
          f"({'identical' if r['bpd_equal'] else 'DIFFERENT'}, logits {'identical' if r['logits_equal'] else 'DIFFERENT'})")
    print(f"  bits/dim float model : {r['bpd_float']:.4f}")
    print(f"  cycles per image (likelihood, both stages): {r['cycles_per_image']:,.0f}; "
          f"MAC utilization {100 * r['mac_utilization']:.1f}%")
    if r.get("cycles_per_sampled_pixel"):
        print(f"  sampling             : {r['cycles_per_sampled_pixel']:,.1f} cycles per x pixel (both stages) vs "
              f"{r['naive_cycles_per_sampled_pixel']:,.0f} naive ({r['naive_over_onchip']:.1f}x); identical to twin: "
              f"{r['samples_equal_twin']}")
        print(f"  samples              : {r['png']} (auxiliary view: {r['png_gray']})")


if __name__ == "__main__":
    sys.exit("use: python host/run.py --model gray-pixelcnn --dataset digits")
