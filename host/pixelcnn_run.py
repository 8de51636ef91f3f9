"""PixelCNN likelihood and on-chip sampling on the convolution engine (``hw.pixelcnn``).

``python host/run.py --model pixelcnn --dataset digits [--backend verilator|amaranth|serial]
[--samples N] [--json OUT]``: loads the committed integer export (``pixelcnn``: the Gated PixelCNN,
vertical and horizontal stacks without a blind spot; ``masked-pixelcnn``: the plain masked-conv net), checks it fits the engine, streams the
test set through the engine (likelihood mode: the engine returns every pixel's logits; bits/dim is
computed from them exactly as ``models.pixelcnn.integer.bits_per_dim`` does from the NumPy reference
logits), generates N images on chip (sample mode) into a PNG grid, and reports hardware cycle
counters. ``--model gray-pixelcnn`` chains two stages on the engine (see ``host.pixelcnn_aux``).

``ConvDevice`` is the scriptable API (used by the benchmark and the tests).
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
DEFAULT_SEED = 0x2545F491


def run_sizes(args, test_images):
    """Test images to score and images to sample: everything asked for, but on the slow amaranth backend
    a small subset unless ``--limit`` says otherwise."""
    limit = getattr(args, "limit", None)
    if limit is None and args.backend == "amaranth":
        limit = AMARANTH_DEFAULT_LIMIT
    n_samples = args.samples
    if args.backend == "amaranth" and n_samples > AMARANTH_DEFAULT_SAMPLES and getattr(args, "limit", None) is None:
        print(f"note: amaranth backend simulates ~2k cycles/s; generating {AMARANTH_DEFAULT_SAMPLES} "
              f"images instead of {n_samples}", file=sys.stderr)
        n_samples = AMARANTH_DEFAULT_SAMPLES
    return (test_images[:limit] if limit else test_images), n_samples


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


def _progress(enabled, label):
    if not enabled:
        return None
    state = {"t": 0.0}

    def cb(frac):
        now = time.monotonic()
        if now - state["t"] > 1.0 or frac >= 1:
            state["t"] = now
            print(f"\r{label}: {100 * frac:5.1f}%", end="\n" if frac >= 1 else "", file=sys.stderr, flush=True)
    return cb


def run_pixelcnn(args):
    from host.backends import open_device
    from models.pixelcnn import data
    from models.pixelcnn.export import ExportError, committed_export_path, load_export
    from models.pixelcnn.integer import bits_per_dim, forward_int

    design = default_design()
    params = prog.EngineParams(**design.engine_args)
    kind = "stream" if args.model == "masked-pixelcnn" else "gated"  # pixelcnn: the gated model
    try:
        spec = load_export(committed_export_path(args.dataset, kind) if not str(args.dataset).endswith(".npz")
                           else args.dataset, max_channels=params.max_channels)
    except ExportError as exc:
        raise SystemExit(f"error: {exc}")
    ds = data.load(spec["dataset"] or args.dataset)
    H, W = ds.shape[1], ds.shape[2]
    try:
        prog.check_fits(spec, params, W, H)
    except prog.EngineFitError as exc:
        raise SystemExit(f"error: the export does not fit the engine: {exc}")

    test, n_samples = run_sizes(args, ds.test)
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
        smp, smp_cnt = cd.sample(n_samples, progress=_progress(progress, "sampling")) if n_samples else (None, None)
    twin = S.sample_images_twin(spec, n_samples, H, W, DEFAULT_SEED, S.logit_mult(spec["logit_scale"])) \
        if n_samples else None
    rep = cycle_report(spec, params, lik_cnt, len(test), smp_cnt, n_samples, H, W)
    result = {
        "model": args.model, "dataset": args.dataset, "backend": args.backend, "channels": C,
        "test_images": int(len(test)), "test_images_total": int(len(ds.test)),
        "bpd": bpd, "bpd_integer_reference": bpd_ref, "bpd_float": spec["float_bits_per_dim"],
        "bpd_equal": bpd == bpd_ref, "logits_equal": exact,
        "samples": int(n_samples), "samples_equal_twin": bool(np.array_equal(smp, twin)) if n_samples else None,
        **rep, "counters_likelihood": lik_cnt, "counters_sampling": smp_cnt,
        "engine_params": params.as_dict(), "wall_s": time.time() - t0,
    }
    if n_samples:
        png = args.plot or Path("results") / f"conv_{args.model}_{args.dataset}_{args.backend}.png"
        Path(png).parent.mkdir(parents=True, exist_ok=True)
        from models.pixelcnn.sample import save_grid
        save_grid(png, smp, ds.test[:n_samples], ds.levels)
        result["png"] = str(png)
    return result


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
        print(f"  sampling             : {r['cycles_per_sampled_pixel']:,.1f} cycles per pixel on chip vs "
              f"{r['naive_cycles_per_sampled_pixel']:,.0f} naive ({r['naive_over_onchip']:.1f}x); "
              f"{r['samples']} images, identical to the NumPy twin: {r['samples_equal_twin']}")
    if r.get("png"):
        print(f"  samples              : {r['png']}")


def main(args) -> int:
    own = args.model in ("pixelcnn", "masked-pixelcnn")
    if own:
        r = run_pixelcnn(args)
    else:
        from host import pixelcnn_aux
        r = pixelcnn_aux.run(args)
    (print_result if own else pixelcnn_aux_print)(r)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(r, indent=2, default=float) + "\n")
    ok = r.get("bpd_equal", True) and r.get("samples_equal_twin") in (True, None)
    return 0 if ok else 1


def pixelcnn_aux_print(r):
    from host import pixelcnn_aux
    pixelcnn_aux.print_result(r)
