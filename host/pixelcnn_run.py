"""PixelCNN likelihood and on-chip sampling on the convolution engine (``hw.pixelcnn``).

``python host/run.py --model pixelcnn --dataset digits [--backend verilator|amaranth|serial]
[--samples N] [--json OUT]``: loads the committed integer export (``pixelcnn``: the Gated PixelCNN,
vertical and horizontal stacks without a blind spot; ``masked-pixelcnn``: the plain masked-conv net), checks it fits the engine, streams the
test set through the engine (likelihood mode: the engine returns every pixel's logits; bits/dim is
computed from them exactly as ``models.pixelcnn.integer.bits_per_dim`` does from the NumPy reference
logits), generates N images on chip (sample mode) into a PNG grid, and reports hardware cycle
counters. ``--model gray-pixelcnn`` chains two stages on the engine (see ``host.pixelcnn_aux``).

``ConvDevice`` is the scriptable API (used by the benchmark and the tests). ``check_args`` is the CLI's
check of the export, the data, the engine fit and the output paths before any device work; ``main`` writes
the JSON, then the sample grid, and exits 3 when the engine differs from the integer reference or its twin.
"""
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from hw.design import Design
from hw.pixelcnn import engine as E
from hw.pixelcnn import program as prog
from hw.pixelcnn import sampler as S

# the amaranth backend simulates ~2-3k engine cycles/s: default to a subset there
AMARANTH_DEFAULT_LIMIT = 2
AMARANTH_DEFAULT_SAMPLES = 2
DEFAULT_SAMPLES = 16
DEFAULT_SEED = 0x2545F491


def run_sizes(args, test_images):
    """Test images to score and images to sample: everything asked for; where ``--limit`` / ``--samples`` were
    not given (None), all test images and 16 samples, but on the slow amaranth backend a small subset."""
    amaranth = args.backend == "amaranth"
    limit = getattr(args, "limit", None)
    if limit is None and amaranth:
        limit = AMARANTH_DEFAULT_LIMIT
    n_samples = args.samples
    if n_samples is None:
        n_samples = AMARANTH_DEFAULT_SAMPLES if amaranth else DEFAULT_SAMPLES
    return (test_images[:limit] if limit else test_images), n_samples


def sample_seeds(args):
    """The sampler seeds: ``--seed`` (1..2^32-1) or the default; the auxiliary models' second stage gets
    a different nonzero seed derived from it."""
    seed = getattr(args, "seed", None)
    seed = DEFAULT_SEED if seed is None else seed
    second = (seed ^ 0x9E3779B9 ^ DEFAULT_SEED) or 1  # the default seed gives the committed 0x9E3779B9
    return seed, second


def load_job(args):
    """Everything the run needs that can fail on a bad request, before any device work: the export, the data
    and the engine fit.  Raises ``host.cli_checks.UsageError`` naming the problem."""
    from host.cli_checks import UsageError
    from models.pixelcnn import data
    from models.pixelcnn.export import ExportError, committed_export_path, load_export
    design = default_design()
    params = prog.EngineParams(**design.engine_args)
    kind = "stream" if args.model == "masked-pixelcnn" else "gated"  # pixelcnn: the gated model
    try:
        spec = load_export(committed_export_path(args.dataset, kind) if not str(args.dataset).endswith(".npz")
                           else args.dataset, max_channels=params.max_channels)
        ds = data.load(spec["dataset"] or args.dataset)
    except (ExportError, KeyError, ValueError, OSError) as exc:
        raise UsageError(f"--dataset {args.dataset}: {exc}") from None
    H, W = ds.shape[1], ds.shape[2]
    try:
        prog.check_fits(spec, params, W, H)
    except prog.EngineFitError as exc:
        raise UsageError(f"the export does not fit the engine: {exc}") from None
    return design, params, spec, ds


def grid_paths(args):
    """The sample grid PNG(s) this run writes: ``--plot`` or the default under results/."""
    png = Path(args.plot) if args.plot else Path("results") / f"conv_{args.model}_{Path(str(args.dataset)).stem}_{args.backend}.png"
    if args.model in OWN_MODELS:
        return [png]
    return [png, png.with_name(png.stem + "_aux.png")]


_REPO = Path(__file__).resolve().parent.parent
# the committed exports (file names as models.pixelcnn.export / aux_export write them), found without torch
OWN_MODELS = ("pixelcnn", "masked-pixelcnn")  # run here; the auxiliary-variable models in host.pixelcnn_aux
EXPORT_GLOBS = {"pixelcnn": (_REPO / "models" / "pixelcnn" / "weights", "gated_", "_int8.npz"),
                "masked-pixelcnn": (_REPO / "models" / "pixelcnn" / "weights", "stream_", "_int8.npz"),
                "gray-pixelcnn": (_REPO / "hw" / "pixelcnn" / "weights", "gray4_", "_cond_int8.npz"),
                "pyramid-pixelcnn": (_REPO / "hw" / "pixelcnn" / "weights", "pyramid2_", "_cond_int8.npz")}


def export_datasets(model: str) -> list[str]:
    """Datasets with a committed export for ``model``."""
    folder, head, tail = EXPORT_GLOBS[model]
    return sorted(p.name[len(head):-len(tail)] for p in folder.glob(f"{head}*{tail}"))


def check_args(args) -> None:
    """``python host/run.py``'s checks for the PixelCNN models, before any device work: sampler seed, the
    export/data/engine fit (kept in ``args.job``), the sample grid's path(s).  Raises UsageError."""
    from host import cli_checks as C
    if args.seed is not None and not 0 < args.seed < 2 ** 32:
        raise C.UsageError(f"--seed {args.seed}: the on-chip sampler needs a nonzero 32-bit seed (1..{2**32 - 1})")
    if args.samples == 0 and args.plot is not None:
        raise C.UsageError("--plot names the sample grid, but --samples 0 generates no samples")
    have = export_datasets(args.model)
    if not str(args.dataset).endswith(".npz") and args.dataset not in have:
        raise C.UsageError(f"--dataset {args.dataset}: no committed {args.model} export for it; choose "
                           f"{', '.join(have)} or give an export .npz")
    if args.model in OWN_MODELS:
        args.job = load_job(args)
    else:
        from host import pixelcnn_aux
        args.job = pixelcnn_aux.load_job(args)
    if run_sizes(args, [])[1]:
        outs = {"--plot" + ("" if i == 0 else " (auxiliary view)"): C.check_output(p, "--plot",
                                                                                  suffixes=C.PLOT_SUFFIXES)
                for i, p in enumerate(grid_paths(args))}
        C.check_distinct({"--json": args.json, **outs})


def save_sample_grid(path, samples, test_images, levels, title, *, ncol=8):
    """PNG: the engine's samples (left) next to as many test images (right), each panel titled, nearest-
    neighbour upscaled to at least ~1000 px wide; returns the path."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    n = len(samples)
    ncol = max(1, min(ncol, n))
    from models.pixelcnn.grid import grid
    a, b = grid(samples, levels, ncol), grid(test_images, levels, ncol)
    panel_w = 4.8
    panel_h = max(1.2, panel_w * a.shape[0] / a.shape[1])
    fig, axes = plt.subplots(1, 2, figsize=(2 * panel_w + 0.6, panel_h + 1.0), dpi=110)
    for ax, img, label in ((axes[0], a, f"generated on the engine ({n})"),
                           (axes[1], b, f"test images ({len(test_images)})")):
        ax.imshow(np.clip(img, 0, 1), interpolation="nearest")
        ax.set_title(label, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def default_design(**engine_args) -> Design:
    return Design("conv", engine_args=dict(engine_args), max_frame=512)


class ConvDevice:
    """The convolution engine behind a ``host.device.Device`` (any backend)."""

    def __init__(self, dev, *, timeout=600.0):
        self.dev = dev
        self.timeout = timeout
        info = dev.info()
        if info.engine != "CONV":
            raise prog.EngineFitError(f"the device runs engine {info.engine}, not the convolution engine CONV")
        self.params = prog.EngineParams(**info.params["engine_params"])
        self.spec = None

    def reg(self, index, value=None):
        if value is None:
            return self.dev.read_engine_reg(index)
        self.dev.write_engine_reg(index, value)

    def program(self, spec, width, height, channels=None):
        """Check the fit, load all memories over the link and set the image geometry."""
        images = prog.pack(spec, self.params, width, height)
        if self.reg(E.REG_CTRL) != E.MODE_IDLE:
            self.reg(E.REG_CTRL, E.MODE_IDLE)
        before = self.reg(E.REG_LOAD_WORDS)
        self.dev.send(prog.load_stream(images, self.params), timeout=self.timeout)
        deadline = time.monotonic() + self.timeout
        while not self.reg(E.REG_STATUS) & 1:
            if time.monotonic() > deadline:
                raise TimeoutError("engine did not finish loading")
        words = sum(len(b) // prog.word_bytes(t, self.params) for t, b in images.items())
        got = (self.reg(E.REG_LOAD_WORDS) - before) & 0xFFFFFFFF
        if got != words:
            raise RuntimeError(f"engine loaded {got} words, expected {words}")
        for reg, value in E.run_registers(spec, width, height, channels):
            self.reg(reg, value)
        self.spec, self.width, self.height = spec, width, height

    def counters(self):
        return {"cycles_active": self.reg(E.REG_CYC_ACTIVE), "cycles_wait": self.reg(E.REG_CYC_WAIT),
                "mac_beats": self.reg(E.REG_MAC_BEATS), "pixels": self.reg(E.REG_PIXELS),
                "images": self.reg(E.REG_IMAGES)}

    def likelihood_logits(self, x, progress=None, cond=None):
        """x: int images (N, C, H, W) -> the last layer's outputs (N, Cout, H, W) from the engine,
        and the hardware counters of the run. ``cond``: int8 conditioning map (N, CC, H, W) of an op
        graph with ``cond_channels`` (streamed per row ahead of the row's pixels)."""
        x = np.asarray(x, np.int64)
        n, C, H, W = x.shape
        nout = prog.engine_ops(self.spec)[0][-1]["cout"]
        stream = prog.input_stream(self.spec, x, cond)
        row_in = len(stream) // (n * H)
        cap_out = (self.params.out_fifo - self.params.max_outputs) // nout
        rows = max(1, min(self.params.in_fifo // (2 * row_in), cap_out // (2 * W), H))
        self.reg(E.REG_CTRL, E.MODE_LIKELIHOOD | 0x100)
        out = bytearray()
        starts = list(range(0, n * H, rows))
        sent = 0
        for k, r in enumerate(starts):
            while sent < min(len(starts), k + 2):  # keep one chunk queued ahead
                r2 = starts[sent]
                self.dev.send(stream[r2 * row_in:(r2 + rows) * row_in], timeout=self.timeout)
                sent += 1
            m = min(rows, n * H - r)
            out += self.dev.recv(m * W * nout, timeout=self.timeout)
            if progress:
                progress((r + m) / (n * H))
        cnt = self.counters()
        self.reg(E.REG_CTRL, E.MODE_IDLE)
        logits = np.frombuffer(bytes(out), np.int8).astype(np.int64).reshape(n, H, W, nout).transpose(0, 3, 1, 2)
        # contiguous like the reference's arrays: NumPy's float sums depend on memory layout, and the
        # bits/dim must match the reference's to the last digit
        return np.ascontiguousarray(logits), cnt

    def sample(self, n, seed=DEFAULT_SEED, mult=None, cond=None, progress=None):
        """Generate n images on chip (channel 0 sampled; ``cond`` (n, C-1, H, W) feeds the other input
        channels). Returns int64 (n, 1, H, W) and the counters."""
        spec, H, W = self.spec, self.height, self.width
        graph = "ops" in spec
        C = 1 if graph else spec["layers"][0]["in"]
        mult = mult or S.logit_mult(spec["logit_scale"])
        self.reg(E.REG_SEED, seed)
        self.reg(E.REG_LOGIT_MULT, mult)
        self.reg(E.REG_NIMAGES, n)
        self.reg(E.REG_CTRL, E.MODE_SAMPLE | 0x100)
        out = bytearray()
        for k in range(n):
            if graph and spec.get("cond_channels"):  # the conditioning map, row by row
                self.dev.send(prog.input_stream(spec, np.zeros((1, 1, H, W), np.int64), cond[k:k + 1], sample=True),
                              timeout=self.timeout)
            elif C > 1:
                cb = np.asarray(cond[k], np.int64).transpose(1, 2, 0).reshape(-1)
                self.dev.send(cb.astype(np.uint8).tobytes(), timeout=self.timeout)
            out += self.dev.recv(H * W, timeout=self.timeout)
            if progress:
                progress((k + 1) / n)
        cnt = self.counters()
        cnt["rng_state"] = self.reg(E.REG_SEED)
        return np.frombuffer(bytes(out), np.uint8).astype(np.int64).reshape(n, 1, H, W), cnt


def cycle_report(spec, params, lik_cnt, n_lik_images, smp_cnt, n_smp_images, H, W):
    px_lik = lik_cnt["pixels"]
    cyc_px_lik = lik_cnt["cycles_active"] / max(1, px_lik)
    cycles_per_image = lik_cnt["cycles_active"] / max(1, n_lik_images)
    useful = prog.useful_macs_per_pixel(spec)
    r = {
        "architecture": spec.get("architecture", "masked"),
        "channels": spec.get("channels"),
        "lanes": params.lanes,
        "height": H, "width": W,
        "cycles_per_pixel": cyc_px_lik,
        "mac_lower_bound_cycles_per_pixel": prog.useful_macs_per_pixel(spec) / params.lanes,
        "cycles_per_image": cycles_per_image,
        "cycles_per_pixel_likelihood": cyc_px_lik,
        "mac_beats_per_pixel": lik_cnt["mac_beats"] / max(1, px_lik),
        "useful_macs_per_pixel": useful,
        "dense_macs_per_pixel": prog.dense_macs_per_pixel(spec),
        "mac_utilization": useful / (params.lanes * cyc_px_lik) if px_lik else None,
        "lane_occupancy": useful / (params.lanes * lik_cnt["mac_beats"] / px_lik) if px_lik else None,
        # naive sampling: a full forward pass of the image on the same engine for every new pixel
        "naive_cycles_per_sampled_pixel": cycles_per_image,
    }
    if smp_cnt is not None:
        r["cycles_per_sampled_pixel"] = smp_cnt["cycles_active"] / max(1, smp_cnt["pixels"])
        r["cycles_per_sampled_image"] = smp_cnt["cycles_active"] / max(1, n_smp_images)
        r["naive_over_onchip"] = r["naive_cycles_per_sampled_pixel"] / r["cycles_per_sampled_pixel"]
    return r


BUILD_REPORT_GLOBS = ("build/**/report.json", "docs/reports/*.json")  # hw.build's outputs; committed reports


def latest_build_report(engine_params, engine="conv", root=_REPO, patterns=BUILD_REPORT_GLOBS):
    """``(path, report)`` of the newest ``hw.build`` report (by ``built_at``) of ``engine`` whose engine
    parameters equal ``engine_params`` wherever both name one, among ``build/**/report.json`` and the committed
    ``docs/reports/*.json`` (``patterns``); ``(None, None)`` when there is none."""
    best = (None, None)
    for pattern in patterns:
        for path in Path(root).glob(pattern):
            try:
                rep = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if not isinstance(rep, dict) or rep.get("engine") != engine or rep.get("fmax_mhz") is None:
                continue
            built = (rep.get("design_params") or {}).get("engine_params") or {}
            if any(built[k] != v for k, v in (engine_params or {}).items() if k in built):
                continue
            if best[1] is None or rep.get("built_at", "") > best[1].get("built_at", ""):
                best = (path, rep)
    return best


def speed_fields(r, root=_REPO):
    """The JSON's speed summary for a result ``r`` of any PixelCNN model: ``architecture``, ``channels``,
    ``height``, ``width``, ``cycles_per_pixel``, ``mac_lower_bound_cycles_per_pixel`` (useful MACs / lanes; a
    chained model sums its stages per pixel of the final image), and from the newest build report of the conv
    design with the same engine parameters (``latest_build_report``): ``fmax_mhz`` (nextpnr's achieved Fmax),
    ``clk_mhz`` (the clock that build runs at), ``fmax_report``, ``images_per_s_at_fmax`` (likelihood) and
    ``sampled_images_per_s_at_fmax``; null where there is no report."""
    stages = list((r.get("stages") or {}).values())
    last = stages[-1] if stages else r
    out = {k: r.get(k, last.get(k)) for k in ("architecture", "channels", "height", "width")}
    cpi = r["cycles_per_image"]
    pixels = out["height"] * out["width"] if out["height"] and out["width"] else None
    out["cycles_per_pixel"] = r.get("cycles_per_pixel", cpi / pixels if pixels else None)
    if "mac_lower_bound_cycles_per_pixel" in r:
        out["mac_lower_bound_cycles_per_pixel"] = r["mac_lower_bound_cycles_per_pixel"]
    elif stages and pixels:
        out["mac_lower_bound_cycles_per_pixel"] = sum(
            s["mac_lower_bound_cycles_per_pixel"] * s["height"] * s["width"] for s in stages) / pixels
    path, rep = latest_build_report(r.get("engine_params"), root=root)
    fmax = rep["fmax_mhz"] if rep else None
    smp = r.get("cycles_per_sampled_image")
    out.update(fmax_mhz=fmax, clk_mhz=rep["clk_mhz"] if rep else None,
               fmax_timing_met=rep.get("timing_met") if rep else None,
               fmax_report=str(path.relative_to(root)) if path else None,
               images_per_s_at_fmax=fmax * 1e6 / cpi if fmax and cpi else None,
               sampled_images_per_s_at_fmax=fmax * 1e6 / smp if fmax and smp else None)
    return out


def _progress(enabled, label):
    """A ``progress(fraction)`` callback drawing a tqdm bar; a new bar for each pass that reaches 1."""
    if not enabled:
        return None
    from tqdm import tqdm
    state = {"bar": None}

    def cb(frac):
        if state["bar"] is None:
            state["bar"] = tqdm(total=1000, desc=label, leave=True, dynamic_ncols=True,
                                bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining}")
        bar = state["bar"]
        bar.update(int(1000 * min(frac, 1.0)) - bar.n)
        if frac >= 1:
            bar.close()
            state["bar"] = None
    return cb


def run_pixelcnn(args):
    """Likelihood and sampling of the baseline PixelCNN on the engine; returns ``(result, grids)`` where
    ``grids`` lists the sample grids to write (``save_sample_grid`` arguments)."""
    from host.backends import open_device
    from models.pixelcnn.integer import bits_per_dim, forward_int

    design, params, spec, ds = getattr(args, "job", None) or load_job(args)
    H, W = ds.shape[1], ds.shape[2]
    test, n_samples = run_sizes(args, ds.test)
    seed = sample_seeds(args)[0]
    progress = not getattr(args, "no_progress", False)

    t0 = time.time()
    ref_logits = forward_int(spec, test)
    bpd_ref = bits_per_dim(ref_logits, test, spec["logit_scale"])
    with open_device(args.backend, design=design, port=args.port, baud=args.baud, timeout=args.timeout,
                     quiet=False) as dev:
        cd = ConvDevice(dev)
        cd.program(spec, W, H)
        lg, lik_cnt = cd.likelihood_logits(test, _progress(progress, "likelihood"))
        C, L = spec["channels"], spec["levels"]
        logits = lg.reshape(len(test), C, L, H, W)
        bpd = bits_per_dim(logits, test, spec["logit_scale"])
        exact = bool(np.array_equal(logits, ref_logits))
        smp, smp_cnt = cd.sample(n_samples, seed=seed, progress=_progress(progress, "sampling")) \
            if n_samples else (None, None)
    twin = S.sample_images_twin(spec, n_samples, H, W, seed, S.logit_mult(spec["logit_scale"])) \
        if n_samples else None
    rep = cycle_report(spec, params, lik_cnt, len(test), smp_cnt, n_samples, H, W)
    result = {
        "model": args.model, "dataset": args.dataset, "backend": args.backend, "channels": C,
        "test_images": int(len(test)), "test_images_total": int(len(ds.test)),
        "bpd": bpd, "bpd_integer_reference": bpd_ref, "bpd_float": spec["float_bits_per_dim"],
        "bpd_equal": bpd == bpd_ref, "logits_equal": exact,
        "samples": int(n_samples), "sample_seed": seed,
        "samples_equal_twin": bool(np.array_equal(smp, twin)) if n_samples else None,
        **rep, "counters_likelihood": lik_cnt, "counters_sampling": smp_cnt,
        "engine_params": params.as_dict(), "wall_s": time.time() - t0,
    }
    grids = []
    if n_samples:
        png = grid_paths(args)[0]
        result["png"] = str(png)
        grids.append((png, smp, ds.test[:n_samples], ds.levels,
                      f"{args.model} on {args.dataset}, {args.backend}: {bpd:.4f} bits/dim"))
    return result, grids


def print_result(r):
    print(f"{r['model']} ({r['architecture']}) on {r['dataset']} ({r['backend']}): {r['test_images']} of "
          f"{r['test_images_total']} test images")
    print(f"  bits/dim engine      : {r['bpd']:.12f}")
    print(f"  bits/dim integer ref : {r['bpd_integer_reference']:.12f}  ({'identical' if r['bpd_equal'] else 'DIFFERENT'}"
          f", logits {'identical' if r['logits_equal'] else 'DIFFERENT'})")
    if r.get("bpd_float") is not None and not math.isnan(r["bpd_float"]):
        print(f"  bits/dim float model : {r['bpd_float']:.4f}")
    print(f"  cycles per image (likelihood): {r['cycles_per_image']:,.0f}  "
          f"({r['cycles_per_pixel_likelihood']:,.1f} per pixel, {r['lanes']} MAC lanes; MAC lower bound "
          f"{r['mac_lower_bound_cycles_per_pixel']:,.1f} per pixel)")
    print(f"  MAC utilization      : {100 * r['mac_utilization']:.1f}% of lane-cycles do useful MACs "
          f"(lane occupancy of issued beats {100 * r['lane_occupancy']:.1f}%)")
    if r.get("cycles_per_sampled_pixel"):
        print(f"  sampling             : {r['cycles_per_sampled_pixel']:,.1f} cycles per pixel on chip "
              f"({r['cycles_per_sampled_image']:,.0f} per image); "
              f"{r['samples']} images, identical to the NumPy twin: {r['samples_equal_twin']}")
    if r.get("png"):
        print(f"  samples              : {r['png']}")


def main(args) -> int:
    """Entry point for ``python host/run.py --model pixelcnn|masked-pixelcnn|gray-pixelcnn|pyramid-pixelcnn`` (after
    ``check_args``): 0, or 3 when the engine differs from the integer reference or the sampler's twin."""
    from host.cli_checks import EXIT_MISMATCH, EXIT_OK
    if args.model in OWN_MODELS:
        r, grids = run_pixelcnn(args)
        print_result(r)
    else:
        from host import pixelcnn_aux
        r, grids = pixelcnn_aux.run(args)
        pixelcnn_aux.print_result(r)
    r.update(speed_fields(r))
    if r["fmax_mhz"]:
        print(f"  at the build's Fmax  : {r['fmax_mhz']} MHz ({r['fmax_report']}): "
              f"{r['images_per_s_at_fmax']:,.1f} images/s likelihood"
              + (f", {r['sampled_images_per_s_at_fmax']:,.1f} sampled images/s" if r["sampled_images_per_s_at_fmax"]
                 else ""))
    if args.json:  # the results first: a figure that fails must not lose them
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(r, indent=2, default=float) + "\n")
        print(f"  results              : {args.json}")
    for path, *grid_args in grids:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        save_sample_grid(path, *grid_args)
    ok = r.get("bpd_equal", True) and r.get("samples_equal_twin") in (True, None)
    if not ok:
        print("error: the engine's result differs from the bit-exact reference (exit 3)", file=sys.stderr)
    return EXIT_OK if ok else EXIT_MISMATCH
