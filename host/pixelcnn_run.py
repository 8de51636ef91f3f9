"""PixelCNN likelihood and on-chip sampling on the convolution engine (``hw.pixelcnn``): every model.

``python host/run.py --model pixelcnn|masked-pixelcnn|gray-pixelcnn|pyramid-pixelcnn --dataset
digits|PATH [--weights EXPORT.npz] [--backend verilator|amaranth|serial] [--samples N] [--json OUT]``:
loads the bundled integer export for the dataset (or ``--weights``; an image ``.npz``/folder is scored
with the bundled export of its shape), checks it fits the engine, streams the test set through the
engine (likelihood mode: the engine returns every pixel's logits; bits/dim is computed from them exactly
as ``models.pixelcnn.integer`` does from the NumPy reference logits), generates N images on chip (sample
mode) into a PNG grid, and reports hardware cycle counters.

``pixelcnn``: the Gated PixelCNN (vertical and horizontal stacks, no blind spot); ``masked-pixelcnn``: the
plain masked-conv net; ``gray-pixelcnn`` / ``pyramid-pixelcnn`` (``run_chain``): the bundle's stages one
after the other on the same engine, reprogrammed over the link in between: the prior over the auxiliary
image a = f(x), the conditioner passes (non-causal convs over a whole known image, writing the engine's
feature memory; ``models.pixelcnn.cond_export``) and the conditional gated net over x whose conditioning
map the engine fills from that memory. The host only chains the stages: it computes no conditioning.

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


_REPO = Path(__file__).resolve().parent.parent
WEIGHTS = _REPO / "models" / "pixelcnn" / "weights"
# the bundled exports per model (file names as models.pixelcnn.export / cond_export write them), found
# without torch: gated and plain masked nets are one op graph / layer list; gray and pyramid are bundles
# of stages (prior, conditioner passes, conditional gated net)
EXPORT_GLOBS = {"pixelcnn": "gated_{}_int8.npz", "masked-pixelcnn": "stream_{}_int8.npz",
                "gray-pixelcnn": "gray_{}_int8.npz", "pyramid-pixelcnn": "pyramid_{}_int8.npz"}
CHAIN_MODELS = ("gray-pixelcnn", "pyramid-pixelcnn")


def export_datasets(model: str) -> list[str]:
    """Datasets with a bundled export for ``model``."""
    head, tail = EXPORT_GLOBS[model].split("{}")
    return sorted(p.name[len(head):-len(tail)] for p in WEIGHTS.glob(EXPORT_GLOBS[model].format("*")))


def _is_export(path) -> bool:
    try:
        with np.load(path, allow_pickle=False) as z:
            return "format" in z.files
    except Exception:
        return False


def _load_export(model, path, params):
    """The export of ``model`` at ``path``: a spec (pixelcnn, masked-pixelcnn) or a bundle of stages."""
    from models.pixelcnn.cond_export import BUNDLE_FORMAT, MODEL_OF, load_bundle
    from models.pixelcnn.export import ExportError, load_export
    if model not in CHAIN_MODELS and _is_export(path):
        with np.load(path, allow_pickle=False) as z:
            if str(z["format"]) == BUNDLE_FORMAT:
                raise ExportError(f"{path} is a {z['model']}-pixelcnn bundle; run it with --model {z['model']}-pixelcnn")
    if model in CHAIN_MODELS:
        b = load_bundle(path)
        if b["model"] != MODEL_OF[model]:
            raise ExportError(f"{path} is a {b['model']}-pixelcnn export, not {model}")
        return b
    spec = load_export(path, max_channels=params.max_channels)
    if ("ops" in spec) != (model == "pixelcnn"):
        raise ExportError(f"{path} is a {'gated' if 'ops' in spec else 'plain masked'} export; --model "
                          f"{'pixelcnn' if 'ops' in spec else 'masked-pixelcnn'} runs it")
    return spec


def export_geometry(model, exp):
    """(channels, height, width, levels) of the images an export models."""
    return exp["channels"], exp["height"], exp["width"], exp["levels"]


def stage_runs(model, exp):
    """(name, spec, width, height) of every engine pass of one image, in order."""
    C, H, W, L = export_geometry(model, exp)
    if model not in CHAIN_MODELS:
        return [("pixels", exp, W, H)]
    st = exp["stages"]
    if exp["model"] == "gray":
        return [("prior", st["prior"], W, H), ("cond", st["cond"], W, H), ("colour", st["colour"], W, H)]
    return [("coarse", st["coarse"], W // 2, H // 2), ("up_coarse", st["up_coarse"], W // 2, H // 2),
            ("up_fine", st["up_fine"], W, H), ("fine", st["fine"], W, H)]


def load_job(args):
    """Everything the run needs that can fail on a bad request, before any device work: the export
    (``--weights``, or the bundled one for the dataset's name or image shape), the data and the engine
    fit of every stage.  Raises ``host.cli_checks.UsageError`` naming the problem."""
    from host.cli_checks import UsageError
    from models.pixelcnn import data
    from models.pixelcnn.export import ExportError
    design = default_design()
    params = prog.EngineParams(**design.engine_args)
    model, weights, dataset = args.model, getattr(args, "weights", None), str(args.dataset)
    if weights is None and dataset.endswith(".npz") and _is_export(dataset):
        weights, dataset = dataset, None  # an export given as --dataset: scored on its own dataset
    ds = None
    if dataset is not None and dataset not in export_datasets(model) and weights is None:
        try:
            ds = data.load(dataset)
        except (KeyError, ValueError, OSError) as exc:
            raise UsageError(f"--dataset {dataset}: {exc}") from None
        for name in export_datasets(model):
            path = WEIGHTS / EXPORT_GLOBS[model].format(name)
            g = export_geometry(model, _load_export(model, str(path), params))
            if g[:3] == tuple(ds.shape) and ds.levels <= g[3]:
                weights = path
                break
        else:
            raise UsageError(f"--dataset {dataset}: images {'x'.join(map(str, ds.shape))} with {ds.levels} levels; "
                             f"no bundled {model} export models that shape (give one with --weights)")
    if weights is None:
        weights = WEIGHTS / EXPORT_GLOBS[model].format(dataset)
    try:
        exp = _load_export(model, str(weights), params)
    except ExportError as exc:
        raise UsageError(f"--weights {weights}: {exc}") from None
    C, H, W, L = export_geometry(model, exp)
    if ds is None:
        try:
            ds = data.load(dataset or exp["dataset"])
        except (KeyError, ValueError, OSError) as exc:
            raise UsageError(f"--dataset {dataset or exp['dataset']}: {exc}") from None
    if tuple(ds.shape) != (C, H, W) or ds.levels > L:
        raise UsageError(f"--dataset {dataset or exp['dataset']} has images {'x'.join(map(str, ds.shape))} with "
                         f"{ds.levels} levels, but the export {weights} models {C}x{H}x{W} images with {L} levels")
    for name, spec, w, h in stage_runs(model, exp):
        try:
            prog.check_fits(spec, params, w, h)
        except prog.EngineFitError as exc:
            stage = "" if name == "pixels" else f"stage {name} of "
            raise UsageError(f"{stage}the export does not fit the engine: {exc}") from None
    if model in CHAIN_MODELS and H > params.feat_rows // 2:
        raise UsageError(f"the {H}-row conditioning maps exceed the engine's feature memory ({params.feat_rows} rows)")
    w = Path(weights).resolve()
    args.export_path = str(w.relative_to(_REPO)) if w.is_relative_to(_REPO) else str(w)  # the JSON's "weights"
    return design, params, exp, ds


def grid_paths(args):
    """The sample grid PNG(s) this run writes: ``--plot`` or the default under results/."""
    png = Path(args.plot) if args.plot else Path("results") / f"conv_{args.model}_{Path(str(args.dataset)).stem}_{args.backend}.png"
    if args.model not in CHAIN_MODELS:
        return [png]
    return [png, png.with_name(png.stem + "_aux.png")]


def check_args(args) -> None:
    """``python host/run.py``'s checks for the PixelCNN models, before any device work: sampler seed, the
    export/data/engine fit (kept in ``args.job``), the sample grid's path(s).  Raises UsageError."""
    from host import cli_checks as C
    if args.seed is not None and not 0 < args.seed < 2 ** 32:
        raise C.UsageError(f"--seed {args.seed}: the on-chip sampler needs a nonzero 32-bit seed (1..{2**32 - 1})")
    if args.samples == 0 and args.plot is not None:
        raise C.UsageError("--plot names the sample grid, but --samples 0 generates no samples")
    weights = getattr(args, "weights", None)
    if weights is not None:
        C.check_input(weights, "--weights")
    have = export_datasets(args.model)
    ds = str(args.dataset)
    if weights is None and ds not in have and not (ds.endswith(".npz") or Path(ds).exists()):
        raise C.UsageError(f"--dataset {args.dataset}: no bundled {args.model} export for it; choose "
                           f"{', '.join(have)}, an image .npz / folder, or give an export with --weights")
    args.job = load_job(args)
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


# the simulated engine's parameters besides ConvEngine's defaults: 768 outputs per op and 2048 biases hold the
# RGB patches models (3 x 256 logits per pixel); board builds take theirs from hw.build
SIM_ENGINE_ARGS = {"max_outputs": 768, "bias_depth": 2048}


def default_design(**engine_args) -> Design:
    """The simulated conv design: ``SIM_ENGINE_ARGS``, or exactly the engine arguments given."""
    return Design("conv", engine_args=dict(engine_args or SIM_ENGINE_ARGS), max_frame=512)


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

    def program(self, spec, width, height, channels=None, feat=0):
        """Check the fit, load all memories over the link and set the image geometry; ``feat``: the
        feature-memory register (``engine.FEAT_*``: COND map from the feature memory, upsampled, bases)."""
        self.load([("", spec, width, height)])
        self.select("", channels, feat)

    def load(self, runs):
        """Load several specs at once (``runs``: (name, spec, width, height); ``program.pack_many``) over
        the link; ``select`` then chooses the one to run. Sets ``loaded_bytes``."""
        images, bases = prog.pack_many([(s, w, h) for _, s, w, h in runs], self.params)
        if self.reg(E.REG_CTRL) != E.MODE_IDLE:
            self.reg(E.REG_CTRL, E.MODE_IDLE)
        if prog.T_TILT in images and not self._has_tilt():
            raise prog.EngineFitError("the engine on the device has no luma-tilt sampler (register REG_TILT reads "
                                      "back 0: a build from before the tilt), and this export has a tilt; rebuild "
                                      "the bitstream (make bitstream BOARD=... DESIGN=conv)")
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
        self.loaded = {name: (spec, w, h, base) for (name, spec, w, h), base in zip(runs, bases)}
        self.loaded_bytes = sum(len(v) for v in images.values())

    def _has_tilt(self):
        """Whether the engine has the luma-tilt sampler: its REG_TILT keeps a written 1 (older builds read 0)."""
        self.reg(E.REG_TILT, 1)
        on = self.reg(E.REG_TILT) & 1
        self.reg(E.REG_TILT, 0)
        return bool(on)

    def select(self, name, channels=None, feat=0, excl=False):
        """Set the registers of the loaded spec ``name`` (its ops, image geometry, feature memory use; ``excl``:
        the sampler's gray exclusion, the luma bounds streamed per pixel)."""
        spec, width, height, base = self.loaded[name]
        for reg, value in E.run_registers(spec, width, height, channels, feat, base, excl):
            self.reg(reg, value)
        self.spec, self.width, self.height, self.feat = spec, width, height, bool(feat & E.FEAT_IN)

    def conditioner(self, a=None):
        """Run the programmed conditioner pass over one image: ``a`` (1, 1, H, W) levels streamed in
        (likelihood mode), or none (its input map comes from the feature memory: one image in sample
        mode, which returns to idle by itself). Its last op fills the feature memory; returns the
        counters."""
        if a is not None:
            self.reg(E.REG_CTRL, E.MODE_LIKELIHOOD | 0x100)
            self.dev.send(prog.input_stream(self.spec, a), timeout=self.timeout)
        else:
            self.reg(E.REG_NIMAGES, 1)
            self.reg(E.REG_CTRL, E.MODE_SAMPLE | 0x100)
        deadline = time.monotonic() + self.timeout
        while self.reg(E.REG_IMAGES) < 1:
            if time.monotonic() > deadline:
                raise TimeoutError("the conditioner pass did not finish")
        cnt = self.counters()
        self.reg(E.REG_CTRL, E.MODE_IDLE)
        return cnt

    def counters(self):
        return {"cycles_active": self.reg(E.REG_CYC_ACTIVE), "cycles_wait": self.reg(E.REG_CYC_WAIT),
                "mac_beats": self.reg(E.REG_MAC_BEATS), "pixels": self.reg(E.REG_PIXELS),
                "images": self.reg(E.REG_IMAGES)}

    def likelihood_logits(self, x, progress=None, cond=None):
        """x: int images (N, C, H, W) -> the last layer's outputs (N, Cout, H, W) from the engine (with a
        luma tilt, d before them: ``cond_export.engine_outputs``), and the hardware counters of the run.
        ``cond``: int8 conditioning map (N, CC, H, W) of an op graph with ``cond_channels`` (streamed per row
        ahead of the row's pixels)."""
        x = np.asarray(x, np.int64)
        n, C, H, W = x.shape
        nout = prog.engine_ops(self.spec)[0][-1]["cout"] + (prog.tilt_map(self.spec) is not None)
        stream = prog.input_stream(self.spec, x, cond, feat=self.feat)
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

    def sample(self, n, seed=DEFAULT_SEED, mult=None, cond=None, progress=None, bounds=None):
        """Generate n images on chip (op graphs: every channel, R then G then B per pixel; plain nets:
        channel 0, ``cond`` (n, C-1, H, W) feeding the other input channels) unless the conditioning map
        comes from the feature memory. ``bounds`` (n, 2, H, W): the known gray pixels' luma bounds for the
        sampler's exclusion (selected with ``excl``; a spec with a luma tilt then tilts G, ``REG_TILT``).
        ``seed`` None: the sampler continues from its current state. Returns int64 (n, C, H, W) (C = 1 for
        plain nets) and the counters."""
        spec, H, W = self.spec, self.height, self.width
        graph = "ops" in spec
        C = 1 if graph else spec["layers"][0]["in"]
        nsub = spec["channels"] if graph else 1
        mult = mult or S.logit_mult(spec["logit_scale"])
        if seed is not None:
            self.reg(E.REG_SEED, seed)
        self.reg(E.REG_LOGIT_MULT, mult)
        self.reg(E.REG_NIMAGES, n)
        self.reg(E.REG_CTRL, E.MODE_SAMPLE | 0x100)
        out = bytearray()
        for k in range(n):
            if graph and spec.get("cond_channels") and not self.feat:  # the conditioning map, row by row
                self.dev.send(prog.input_stream(spec, np.zeros((1, 1, H, W), np.int64), cond[k:k + 1], sample=True),
                              timeout=self.timeout)
            elif C > 1:
                cb = np.asarray(cond[k], np.int64).transpose(1, 2, 0).reshape(-1)
                self.dev.send(cb.astype(np.uint8).tobytes(), timeout=self.timeout)
            if bounds is not None:
                self.dev.send(prog.bounds_stream(bounds[k:k + 1]), timeout=self.timeout)
            out += self.dev.recv(H * W * nsub, timeout=self.timeout)
            if progress:
                progress((k + 1) / n)
        cnt = self.counters()
        cnt["rng_state"] = self.reg(E.REG_SEED)
        img = np.frombuffer(bytes(out), np.uint8).astype(np.int64).reshape(n, H, W, nsub).transpose(0, 3, 1, 2)
        return np.ascontiguousarray(img), cnt


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
    cpi = r.get("cycles_per_image")
    pixels = out["height"] * out["width"] if out["height"] and out["width"] else None
    out["cycles_per_pixel"] = r.get("cycles_per_pixel", cpi / pixels if pixels and cpi else None)
    if "mac_lower_bound_cycles_per_pixel" in r:
        out["mac_lower_bound_cycles_per_pixel"] = r["mac_lower_bound_cycles_per_pixel"]
    elif stages and pixels:
        out["mac_lower_bound_cycles_per_pixel"] = sum(
            s["mac_lower_bound_cycles_per_pixel"] * s["height"] * s["width"] for s in stages) / pixels
    path, rep = latest_build_report(r["engine_params"], root=root) if r.get("engine_params") else (None, None)
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
        "model": args.model, "dataset": args.dataset, "weights": args.export_path, "backend": args.backend,
        "channels": C,
        "test_images": int(len(test)), "test_images_total": int(len(ds.test)),
        "bpd": bpd, "bpd_integer_reference": bpd_ref, "bpd_float": spec["float_bits_per_dim"],
        "float_dataset": spec.get("dataset", ""),
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
        result["sample_stats"] = sample_stats(smp, ds)
    return result, grids


COUNTER_KEYS = ("cycles_active", "cycles_wait", "mac_beats", "pixels", "images")


def _add(total, cnt):
    for k in COUNTER_KEYS:
        total[k] = total.get(k, 0) + cnt[k]
    return total


def load_groups(runs, params):
    """How the stages are loaded: all at once if the engine's memories hold them together, else the
    prior alone and the rest together, else one at a time (reloaded for every pass)."""
    for groups in ([runs], [runs[:1], runs[1:]]):
        try:
            for g in groups:
                prog.pack_many([(s, w, h) for _, s, w, h in g], params)
            return groups
        except prog.EngineFitError:
            pass
    return [[r] for r in runs]


def use_stage(cd, groups, name, feat=0):
    """Select stage ``name``, loading its group first when it is not loaded; returns the bytes loaded."""
    loaded = 0
    if name not in getattr(cd, "loaded", {}):
        cd.load(next(g for g in groups if any(r[0] == name for r in g)))
        loaded = cd.loaded_bytes
    cd.select(name, feat=feat)
    return loaded


def _conditioner_passes(cd, groups, runs, a, feat_base):
    """The conditioner passes of one auxiliary image ``a`` (1, 1, H', W'): their last op fills the feature
    memory (gray: rows 0..; pyramid: the coarse pass at ``feat_base``, the fine pass reads it upsampled
    and writes rows 0..). Returns the summed counters and the bytes loaded."""
    total, loaded = {}, 0
    for name, spec, w, h in runs:
        if spec.get("cond_channels"):  # input map from the feature memory, nearest-upsampled
            loaded += use_stage(cd, groups, name, E.FEAT_IN | E.FEAT_UP | (feat_base << 8))
            _add(total, cd.conditioner())
        else:
            loaded += use_stage(cd, groups, name, (feat_base << 16) if len(runs) > 1 else 0)
            _add(total, cd.conditioner(a))
    return total, loaded


def _bounds(bundle, a):
    """Luma bounds (N, 2, H, W) of gray images a (N, 1, H, W): the sampler's exclusion input."""
    from models.pixelcnn.integer import luma_bounds
    return np.stack(luma_bounds(np.asarray(a)[:, 0], bundle["levels"], bundle["aux_levels"]), 1)


def run_chain(args):
    """Grayscale / Pyramid PixelCNN on the engine, every stage and conditioner there: the prior over the
    auxiliary image a = f(x) (all test images in one pass), then per image the conditioner passes over a
    (feature memory) and the conditional gated net over x reading that memory (the engine is reprogrammed
    between passes); sampling: a on chip, then per image the conditioners and x on chip. Returns
    ``(result, grids)`` like ``run_pixelcnn``."""
    from host.backends import open_device
    from models.pixelcnn import cond_export as CE
    from models.pixelcnn.integer import graph_forward, tilt_table

    design, params, b, ds = getattr(args, "job", None) or load_job(args)
    C, H, W, L = export_geometry(args.model, b)
    runs = stage_runs(args.model, b)
    (pname, prior, Wa, Ha), cond_runs, (cname, cspec, _, _) = runs[0], runs[1:-1], runs[-1]
    groups = load_groups(runs, params)
    base = params.feat_rows // 2 if len(cond_runs) > 1 else 0
    test, n_samples = run_sizes(args, ds.test)
    seed_prior, seed_cond = sample_seeds(args)
    progress = not getattr(args, "no_progress", False)
    t0 = time.time()
    a = CE.aux_image(b, test)
    ref_a, ref_x = CE.reference_bits(b, test)
    excl = CE.allowed(b, test[:1], a[:1]) is not None  # gray RGB: colours inconsistent with a excluded
    bpd_ref = float((ref_a.sum() + ref_x.sum()) / test.size)
    cnt_c, cnt_x, smp_c, smp_x = {}, {}, {}, {}
    with open_device(args.backend, design=design, port=args.port, baud=args.baud, timeout=args.timeout,
                     quiet=False) as dev:
        cd = ConvDevice(dev)
        loaded = use_stage(cd, groups, pname)
        lg_a, cnt_a = cd.likelihood_logits(a, _progress(progress, "likelihood (auxiliary image)"))
        gs, scnt_a = cd.sample(n_samples, seed=seed_prior) if n_samples else (None, None)
        lg_x, bar = [], _progress(progress, "likelihood (conditioners + x | a, per image)")
        for k in range(len(test)):
            c, nb = _conditioner_passes(cd, groups, cond_runs, a[k:k + 1], base)
            _add(cnt_c, c)
            loaded += nb + use_stage(cd, groups, cname, E.FEAT_IN)
            lg, cnt = cd.likelihood_logits(test[k:k + 1])
            lg_x.append(lg)
            _add(cnt_x, cnt)
            if bar:
                bar((k + 1) / len(test))
        xs = []
        for k in range(n_samples):
            _add(smp_c, _conditioner_passes(cd, groups, cond_runs, gs[k:k + 1], base)[0])
            use_stage(cd, groups, cname, E.FEAT_IN)
            if excl:
                cd.select(cname, feat=E.FEAT_IN, excl=True)
            x1, cnt = cd.sample(1, seed=seed_cond if k == 0 else None, bounds=_bounds(b, gs[k:k + 1]) if excl else None)
            xs.append(x1)
            _add(smp_x, cnt)
    lg_x = np.concatenate(lg_x)
    bits_a = CE.stage_bits(prior, lg_a, a)
    bits_x = CE.stage_bits(cspec, lg_x, test, CE.allowed(b, test, a), a, b["aux_levels"])
    bpd = float((bits_a.sum() + bits_x.sum()) / test.size)
    feats = CE.feature_maps(b, a)
    exact = bool(np.array_equal(lg_a, graph_forward(prior, a)) and np.array_equal(lg_x, CE.engine_outputs(cspec, test, feats)))
    twin_ok, xs = None, (np.concatenate(xs) if n_samples else None)
    if n_samples:
        g_tw = S.sample_images_twin(prior, n_samples, Ha, Wa, seed_prior, S.logit_mult(prior["logit_scale"]))
        tilt = tilt_table(cspec["tilt_sigma"], L) if excl and cspec.get("tilt_sigma") else None
        x_tw = S.sample_images_twin(cspec, n_samples, H, W, seed_cond, S.logit_mult(cspec["logit_scale"]),
                                    cond=CE.feature_maps(b, g_tw), bounds=_bounds(b, g_tw) if excl else None, tilt=tilt)
        twin_ok = bool(np.array_equal(gs, g_tw) and np.array_equal(xs, x_tw))
    n = len(test)
    rep_a = cycle_report(prior, params, cnt_a, n, scnt_a, n_samples, Ha, Wa)
    rep_x = cycle_report(cspec, params, cnt_x, n, smp_x or None, n_samples, H, W)
    cyc_img = rep_a["cycles_per_image"] + cnt_c["cycles_active"] / n + rep_x["cycles_per_image"]
    useful = sum(prog.useful_macs_per_pixel(s) * w * h for _, s, w, h in runs)  # per image
    cond_img = {"cycles_per_image": cnt_c["cycles_active"] / n, "mac_beats_per_image": cnt_c["mac_beats"] / n,
                "useful_macs_per_image": sum(prog.useful_macs_per_pixel(s) * w * h for _, s, w, h in cond_runs),
                "passes": [name for name, *_ in cond_runs]}
    result = {
        "model": args.model, "dataset": args.dataset, "weights": args.export_path, "backend": args.backend,
        "architecture": "gated", "channels": C, "height": H, "width": W, "lanes": params.lanes,
        "test_images": int(n), "test_images_total": int(len(ds.test)),
        "bpd": bpd, "bpd_integer_reference": bpd_ref, "bpd_float": b["float_bits_per_dim"],
        "bpd_parts": {"aux_prior": float(bits_a.sum() / test.size), "x_given_aux": float(bits_x.sum() / test.size)},
        "bpd_float_parts": b["float_parts"], "float_dataset": b["dataset"], "bpd_equal": bpd == bpd_ref,
        "logits_equal": exact, "gray_exclusion": excl, "luma_tilt": bool(cspec.get("tilt_sigma")),
        "cycles_per_image": cyc_img, "cycles_per_pixel": cyc_img / (H * W),
        "cycles_per_pixel_likelihood": cyc_img / (H * W),
        "mac_lower_bound_cycles_per_pixel": useful / (H * W) / params.lanes,
        "mac_utilization": useful / (params.lanes * cyc_img),
        "load_groups": [[r[0] for r in g] for g in groups],
        "load_bytes": loaded,  # engine memories loaded over the link for the likelihood run
        "samples": int(n_samples), "samples_equal_twin": twin_ok,
        "stages": {"prior": rep_a, "conditioners": cond_img, "conditional": rep_x},
        "engine_params": params.as_dict(),
    }
    grids = []
    if n_samples:
        cyc_smp = scnt_a["cycles_active"] + smp_c["cycles_active"] + smp_x["cycles_active"]
        result.update(cycles_per_sampled_image=cyc_smp / n_samples, cycles_per_sampled_pixel=cyc_smp / (n_samples * H * W))
        png, gpng = grid_paths(args)
        title = f"{args.model} on {args.dataset}, {args.backend}: {bpd:.4f} bits/dim"
        grids = [(png, xs, ds.test[:n_samples], ds.levels, title),
                 (gpng, gs, CE.aux_image(b, ds.test[:n_samples]), b["aux_levels"], title + " (auxiliary image a)")]
        result.update(png=str(png), png_aux=str(gpng), sample_seeds=[seed_prior, seed_cond],
                      sample_stats=sample_stats(xs, ds))
    result["wall_s"] = time.time() - t0
    return result, grids


def sample_stats(samples, ds):
    """``image_stats`` of the samples next to the data's (``data_stats``), so a reader sees whether the samples
    are as smooth as the images the model was trained on."""
    from models.pixelcnn.image_stats import data_stats, image_stats
    return {"samples": image_stats(samples), **data_stats(ds)}


def print_sample_stats(r):
    st = r.get("sample_stats")
    if not st:
        return
    keys = [k for k in ("neighbour_abs_diff_levels", "chroma_std_levels") if k in st["samples"]]
    for k in keys:
        data = ", ".join(f"{w.split('_')[0]} {st[w][k]:.2f}" for w in ("test_images", "train_images") if w in st)
        print(f"  {k.replace('_levels', '').replace('_', ' '):21}: samples {st['samples'][k]:.2f} levels ({data})")


def print_chain(r):
    print(f"{r['model']} on {r['dataset']} ({r['backend']}): {r['test_images']} of {r['test_images_total']} test "
          f"images; prior over a = f(x), conditioner passes ({', '.join(r['stages']['conditioners']['passes'])}), "
          f"x | a: every stage on the engine")
    if r.get("gray_exclusion"):
        print(f"  sampler              : gray exclusion{' and luma tilt of G' if r.get('luma_tilt') else ''} on chip")
    print(f"  bits/dim engine      : {r['bpd']:.12f}  (a {r['bpd_parts']['aux_prior']:.4f} + "
          f"x|a {r['bpd_parts']['x_given_aux']:.4f})")
    print(f"  bits/dim integer ref : {r['bpd_integer_reference']:.12f}  "
          f"({'identical' if r['bpd_equal'] else 'DIFFERENT'}, logits {'identical' if r['logits_equal'] else 'DIFFERENT'})")
    print(f"  bits/dim float model : {r['bpd_float']:.4f} (on the {r['float_dataset']} test set)")
    print(f"  cycles per image (likelihood, all stages): {r['cycles_per_image']:,.0f} "
          f"({r['cycles_per_pixel']:,.1f} per pixel; MAC lower bound {r['mac_lower_bound_cycles_per_pixel']:,.1f}); "
          f"conditioners {r['stages']['conditioners']['cycles_per_image']:,.0f}; MAC utilization "
          f"{100 * r['mac_utilization']:.1f}%")
    if r.get("cycles_per_sampled_pixel"):
        print(f"  sampling             : {r['cycles_per_sampled_pixel']:,.1f} cycles per x pixel (all stages); "
              f"identical to the twin: {r['samples_equal_twin']}")
        print(f"  samples              : {r['png']} (auxiliary image: {r['png_aux']})")
        print_sample_stats(r)


def print_result(r):
    print(f"{r['model']} ({r['architecture']}) on {r['dataset']} ({r['backend']}): {r['test_images']} of "
          f"{r['test_images_total']} test images")
    print(f"  bits/dim engine      : {r['bpd']:.12f}")
    print(f"  bits/dim integer ref : {r['bpd_integer_reference']:.12f}  ({'identical' if r['bpd_equal'] else 'DIFFERENT'}"
          f", logits {'identical' if r['logits_equal'] else 'DIFFERENT'})")
    if r.get("bpd_float") is not None and not math.isnan(r["bpd_float"]):
        print(f"  bits/dim float model : {r['bpd_float']:.4f} (on the {r['float_dataset']} test set)")
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
        print_sample_stats(r)


def main(args) -> int:
    """Entry point for ``python host/run.py --model pixelcnn|masked-pixelcnn|gray-pixelcnn|pyramid-pixelcnn`` (after
    ``check_args``): 0, or 3 when the engine differs from the integer reference or the sampler's twin."""
    from host.cli_checks import EXIT_MISMATCH, EXIT_OK
    if args.model in CHAIN_MODELS:
        r, grids = run_chain(args)
        print_chain(r)
    else:
        r, grids = run_pixelcnn(args)
        print_result(r)
    r.update(speed_fields(r))
    if r["fmax_mhz"] and r["images_per_s_at_fmax"]:
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
