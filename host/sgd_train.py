"""Train linear models on the zippix SGD engine (``hw.sgd``) through any backend: board, Verilator, Amaranth.

Public API::

    design_for(bits, *, bus_bits=512, max_features=8192, store_beats=4096, max_frame=4096,
               stochastic_grad=False) -> hw.design.Design
    check_request(dataset, bits, epochs, model="linreg", *, max_features=None) -> (Dataset, signed)
    train(device, *, dataset, bits, epochs, model="linreg", progress=True, seed=0, step_shift=None,
          decay_every=2, batch_mask=0, baud=115200, verify=True, backend=None, max_samples=None,
          grad_rounding="truncate") -> dict
    plot_loss(result, path) -> Path
    main(args) -> int            # what ``python host/run.py --dataset ...`` calls

Per epoch the host draws two fresh stochastic quantizations of the whole dataset (the reference's
``quantize_codes``; the 32-bit baseline rounds to nearest once), packs them into bus beats
(``hw.sgd.layout.pack_samples``), loads them into the engine's on-chip sample store (in chunks when the store is
smaller than the dataset), runs the store through the pipeline at one beat per clock, reads the model back and
evaluates the full-precision training loss.  ``cycles_per_epoch`` comes from the engine's counters; the time the
same samples would take over the serial link is reported separately (bytes and seconds at ``baud``).

Loading the store uses the transport's optional ``write_engine_memory(name, first_row, values)`` when it has one
(the Amaranth simulator: a backdoor with the same end state); otherwise the bytes go over the link.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from hw.sgd import engine as E
from hw.sgd.layout import (SUPPORTED_BITS, beats_per_sample, check_bits, check_bus_bits, encode_32bit,
                           pack_samples, staleness)

MODELS = ("linreg",)
DEFAULT_BUS_BITS = 512
DEFAULT_MAX_FEATURES = 8192
DEFAULT_STORE_BEATS = 4096


class TrainError(ValueError):
    """A request that cannot run (bad dataset, precision, model, or a dataset the engine cannot hold)."""


def engine_args(bits: int, *, bus_bits: int = DEFAULT_BUS_BITS, max_features: int = DEFAULT_MAX_FEATURES,
                store_beats: int = DEFAULT_STORE_BEATS, stochastic_grad: bool = False) -> dict:
    check_bits(bits)
    check_bus_bits(bus_bits)
    args = {"bits": bits, "bus_bits": bus_bits, "max_features": max_features, "store_beats": store_beats}
    if stochastic_grad:  # only then, so the default design (and its digest) stays as it was
        args["stochastic_grad"] = True
    return args


def design_for(bits: int, *, max_frame: int = 4096, **kw):
    """The simulated design (link + SGD engine) for a precision; the same gateware on every backend.
    4 KiB frames: an eighth of the link round trips of the default when the store is loaded over the link."""
    from hw.design import Design
    return Design(engine="sgd", engine_args=engine_args(bits, **kw), max_frame=max_frame)


def check_request(dataset, bits, epochs, model="linreg", *, max_features=None):
    """Validate everything that needs no device; returns ``(Dataset, signed)``.  Raises :class:`TrainError`."""
    from models.zipml.datasets import DatasetError, load_dataset
    if model not in MODELS:
        raise TrainError(f"unknown model {model!r}; the SGD engine trains: {', '.join(MODELS)}")
    if bits not in SUPPORTED_BITS:
        raise TrainError(f"unsupported precision --bits {bits}; choose one of "
                         f"{', '.join(map(str, SUPPORTED_BITS))} (32 = full-precision fixed-point datapath)")
    if not isinstance(epochs, int) or epochs < 1:
        raise TrainError(f"epochs must be a positive integer, got {epochs!r}")
    try:
        ds = load_dataset(dataset)
    except DatasetError as exc:
        raise TrainError(str(exc)) from None
    d = ds.n_features + 1  # bias column
    if max_features is not None and d > max_features:
        raise TrainError(f"dataset {ds.name} has {ds.n_features} features (+1 bias = {d}) but the engine holds "
                         f"at most {max_features} model words")
    return ds, bits != 1  # 1-bit codes exist only for [0, 1] data


class SgdDriver:
    """Register-level driver of the engine over a ``host.device.Device`` (any backend)."""

    def __init__(self, device):
        self.dev = device
        self.link_bytes = 0  # bytes this driver pushed through WRITE_BULK / pulled with READ_BULK
        info = device.info()
        engine = info.engine
        self.stochastic_grad = bool(info.params.get("engine_params", {}).get("stochastic_grad"))
        if engine != E.SgdEngine.engine_id:
            raise TrainError(f"the device runs engine {engine!r}, not the SGD engine {E.SgdEngine.engine_id!r}; "
                             f"build or open it with host.sgd_train.design_for(bits)")
        r = device.read_engine_reg
        self.params = {"bits": r(E.REG_P_BITS), "bus_bits": r(E.REG_P_BUS_BITS), "lanes": r(E.REG_P_LANES),
                       "max_features": r(E.REG_P_MAX_FEATURES), "store_beats": r(E.REG_P_STORE_BEATS),
                       "pipe_latency": r(E.REG_P_PIPE_LATENCY)}

    def w(self, reg, value):
        self.dev.write_engine_reg(reg, value)

    def clear_model(self):
        self.w(E.REG_CMD, E.CMD_CLEAR_MODEL)
        while self.dev.read_engine_reg(E.REG_STATUS) & E.STATUS_CLEARING:
            pass

    def load_model(self, x):
        self.w(E.REG_IN_MODE, E.IN_MODEL)
        self.w(E.REG_MODEL_WADDR, 0)
        data = (np.asarray(x, dtype=np.int64) & 0xFFFFFFFF).astype("<u4").tobytes()
        self.dev.send(data)
        self.link_bytes += len(data)

    def read_model(self, d):
        self.w(E.REG_FEATURES, d)
        self.w(E.REG_CMD, E.CMD_READ_MODEL)
        raw = self.dev.recv(4 * d)
        self.link_bytes += len(raw)
        return np.frombuffer(raw, dtype="<i4").astype(np.int64)

    def load_store(self, packed, first=0):
        """Beats (``pack_samples`` output) into the store from beat ``first``."""
        bus = self.params["bus_bits"]
        raw = np.ascontiguousarray(packed).tobytes()
        n_beats = len(raw) * 8 // bus
        poke = getattr(self.dev.transport, "write_engine_memory", None)
        if poke is not None:
            step = bus // 8
            poke("store", first, [int.from_bytes(raw[i:i + step], "little") for i in range(0, len(raw), step)])
            self.w(E.REG_STORE_WADDR, (first + n_beats) % self.params["store_beats"])
        else:
            self.w(E.REG_IN_MODE, E.IN_STORE)
            self.w(E.REG_STORE_WADDR, first)
            self.dev.send(raw, timeout=max(self.dev.timeout, 60.0))
            self.link_bytes += len(raw)

    def configure(self, d, beats, *, signed, step_shift, batch_mask):
        for reg, v in [(E.REG_FEATURES, d), (E.REG_BEATS, beats), (E.REG_STEP_SHIFT, step_shift),
                       (E.REG_BATCH_MASK, batch_mask), (E.REG_FLAGS, E.FLAG_SIGNED if signed else 0),
                       (E.REG_STORE_WRAP, 0)]:
            self.w(reg, v)

    def run(self, n_samples, store_base=0):
        """One RUN from the store; returns the engine's counters for it."""
        self.w(E.REG_RUN_SAMPLES, n_samples)
        self.w(E.REG_STORE_BASE, store_base)
        self.w(E.REG_CMD, E.CMD_RUN)
        while True:
            status = self.dev.read_engine_reg(E.REG_STATUS)
            if not status & E.STATUS_RUNNING:
                break
        r = self.dev.read_engine_reg
        return {"cycles": r(E.REG_CYCLES), "beats": r(E.REG_BEATS_IN), "stalls": r(E.REG_STALLS),
                "samples": r(E.REG_SAMPLES_DONE), "t_saturated": bool(status & E.STATUS_T_SATURATED),
                "x_saturated": bool(status & E.STATUS_X_SATURATED)}


def _wire_bytes(payload: int, max_frame: int = 512) -> int:
    """Bytes on the wire for ``payload`` bytes of WRITE_BULK: COBS (+1 per 254), 4 header/CRC bytes and 2
    delimiters per frame, plus a ~9-byte reply per frame."""
    per = max_frame - 4
    frames = -(-payload // per)
    return payload + -(-payload // 254) + frames * (6 + 9)


def train(device, *, dataset, bits, epochs, model="linreg", progress=True, seed=0, step_shift=None,
          decay_every=2, batch_mask=0, baud=115200, verify=True, backend=None, max_samples=None,
          grad_rounding="truncate") -> dict:
    """Train least squares on the device; returns a JSON-able dict (see ``docs/sgd-engine.md``).

    Step: ``2**-(step_shift + e // decay_every)`` in epoch ``e`` (the RTL's shift decay); ``step_shift=None``
    picks ``ceil(log2(1 / auto_step)) + 3`` from the data.  ``verify`` replays every run on the bit-exact golden
    (``models.zipml.fixed_point.engine_run``) and raises if the device's model differs.  ``max_samples`` trains
    on the first rows only (benchmarks).
    """
    from models.zipml.fixed_point import engine_run, to_fixed
    from models.zipml.quantize import quantize_codes
    from models.zipml.sgd import auto_step, least_squares_loss, linear_sgd
    from models.zipml.datasets import prepare_linear

    ds, signed = check_request(dataset, bits, epochs, model)        # no device work before this passes
    if decay_every < 1:
        raise TrainError("decay_every must be >= 1")
    if grad_rounding not in ("truncate", "stochastic"):
        raise TrainError(f"grad_rounding must be 'truncate' or 'stochastic', got {grad_rounding!r}")
    A, y = prepare_linear(ds, signed=signed)
    if max_samples is not None:  # benchmarks: the first rows only (normalisation still over the whole set)
        A, y = A[:max_samples], y[:max_samples]
    n, d = A.shape
    labels = to_fixed(y)
    if step_shift is None:
        step_shift = max(0, math.ceil(math.log2(1.0 / auto_step(A, 1))) + 3)

    drv = SgdDriver(device)
    p = drv.params
    if p["bits"] != bits:
        raise TrainError(f"the device's engine is built for {p['bits']}-bit samples, not {bits}; open it with "
                         f"design_for({bits})")
    if d > p["max_features"]:
        raise TrainError(f"dataset {ds.name} has {d - 1} features (+1 bias = {d}) but the engine holds at most "
                         f"{p['max_features']} model words")
    bus = p["bus_bits"]
    R = beats_per_sample(d, bits, bus)
    chunk = min(n, p["store_beats"] // R)
    if chunk < 1:
        raise TrainError(f"one sample needs {R} beats but the sample store holds {p['store_beats']}")
    delay = staleness(p["pipe_latency"], R)

    twin = None
    if grad_rounding == "stochastic":
        if not drv.stochastic_grad:
            raise TrainError("grad_rounding='stochastic' needs an engine built with stochastic_grad=True "
                             "(design_for(bits, stochastic_grad=True); b in 2, 4, 8)")
        from models.zipml.rng import Xorshift32Lanes, lane_seeds
        drv.w(E.REG_IN_MODE, E.IN_RNG)
        seeds = lane_seeds(seed, p["lanes"]).astype("<u4").tobytes()
        device.send(seeds)
        drv.link_bytes += len(seeds)
        twin = Xorshift32Lanes(seed=seed, n_lanes=p["lanes"])
    drv.clear_model()
    drv.configure(d, R, signed=signed, step_shift=step_shift, batch_mask=batch_mask)
    rng = np.random.default_rng(seed)
    x_gold = np.zeros(d, dtype=np.int64)
    loss, cycles, stalls, beats_e, secs, match = [], [], [], [], [], True
    saturated = False
    t_start = time.perf_counter()
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=epochs, unit="epoch", desc=f"{ds.name} Q{bits}", leave=True)
    for e in range(epochs):
        te = time.perf_counter()
        shift = step_shift + e // decay_every
        drv.w(E.REG_STEP_SHIFT, shift)
        if bits == 32:
            q1 = q2 = encode_32bit(A, signed)
        else:
            q1 = quantize_codes(A, bits, signed=signed, rng=rng)
            q2 = quantize_codes(A, bits, signed=signed, rng=rng)
        c = s = bt = 0
        for lo in range(0, n, chunk):
            hi = min(n, lo + chunk)
            drv.load_store(pack_samples(q1[lo:hi], q2[lo:hi], labels[lo:hi], bits, bus))
            cnt = drv.run(hi - lo)
            c, s, bt = c + cnt["cycles"], s + cnt["stalls"], bt + cnt["beats"]
            saturated |= cnt["t_saturated"] or cnt["x_saturated"]
            if verify:
                x_gold = engine_run(x_gold, q1[lo:hi], q2[lo:hi], labels[lo:hi], bits, signed=signed,
                                    step_shift=shift, batch_mask=batch_mask, delay=delay, grad_rng=twin).x
        x = drv.read_model(d)
        if verify and not np.array_equal(x, x_gold):
            match = False
            raise RuntimeError(f"epoch {e}: the device's model differs from the bit-exact golden in "
                               f"{int(np.sum(x != x_gold))} of {d} words")
        loss.append(least_squares_loss(A, y, x / 2.0**23))
        cycles.append(c)
        stalls.append(s)
        beats_e.append(bt)
        secs.append(time.perf_counter() - te)
        if bar:
            bar.set_postfix(loss=f"{loss[-1]:.6f}", cycles=c)
            bar.update(1)
    if bar:
        bar.close()
    fp = linear_sgd(A, y, mode="full", epochs=epochs, step=2.0**-step_shift, batch_size=1, rng=seed,
                    schedule=lambda ep: 2.0**-(step_shift + ep // decay_every))
    sample_bytes = n * R * bus // 8
    wire = _wire_bytes(sample_bytes)
    return {
        "dataset": ds.name, "bits": bits, "epochs": epochs, "model": model,
        "backend": backend or getattr(device.transport, "name", type(device.transport).__name__),
        "loss_per_epoch": [float(v) for v in loss],
        "fp_loss_per_epoch": [float(v) for v in fp.loss[1:]],
        "initial_loss": float(fp.loss[0]),
        "final_loss_ratio": float(loss[-1] / fp.loss[-1]),
        "cycles_per_epoch": cycles, "stall_cycles_per_epoch": stalls, "beats_per_epoch": beats_e,
        "features": d, "samples": n, "bus_bits": bus, "lanes": p["lanes"], "beats_per_sample": R,
        "store_chunks_per_epoch": -(-n // chunk), "signed": signed,
        "step_shift": step_shift, "decay_every": decay_every, "batch_mask": batch_mask,
        "staleness_samples": delay, "pipe_latency_cycles": p["pipe_latency"],
        "golden_match": match if verify else None, "saturated": saturated, "grad_rounding": grad_rounding,
        "model_q23": [int(v) for v in x],
        "link_sample_bytes_per_epoch": sample_bytes, "link_wire_bytes_per_epoch": wire,
        "baud": baud, "link_limited_seconds_per_epoch": wire * 10 / baud,
        "link_bytes_moved": drv.link_bytes,
        "wall_seconds_per_epoch": secs, "wall_seconds": time.perf_counter() - t_start,
    }


def plot_loss(result: dict, path) -> Path:
    """PNG of the hardware model's loss and the full-precision reference's loss per epoch."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ep = np.arange(1, len(result["loss_per_epoch"]) + 1)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(ep, result["fp_loss_per_epoch"], "k--", label="full-precision reference (float64)")
    label = "32-bit fixed-point engine" if result["bits"] == 32 else f"Q{result['bits']} engine (double sampling)"
    ax.plot(ep, result["loss_per_epoch"], "o-", label=f"{label}, {result['backend']}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss (1/2n)||Ax-b||^2")
    ax.set_yscale("log")
    ax.set_title(f"{result['dataset']}: {result['features']} features, {result['samples']} samples, "
                 f"{result['bus_bits']}-bit bus")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(args) -> int:
    """Entry point for ``python host/run.py --dataset ...`` (``args`` from ``host/run.py``'s parser)."""
    import json
    import sys
    from host.backends import open_device
    try:
        # simulated backends run design_for(bits): its capacity is known before anything starts
        check_request(args.dataset, args.bits, args.epochs, args.model,
                      max_features=None if args.backend == "serial" else DEFAULT_MAX_FEATURES)
    except TrainError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    design = design_for(args.bits)
    try:
        with open_device(args.backend, design=design, port=args.port, baud=args.baud, timeout=args.timeout,
                         quiet=False) as dev:
            result = train(dev, dataset=args.dataset, bits=args.bits, epochs=args.epochs, model=args.model,
                           progress=not args.no_progress, baud=args.baud, backend=args.backend)
    except TrainError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{'epoch':>5} {'loss (hw)':>12} {'loss (fp ref)':>14} {'cycles':>10} {'stalls':>7}")
    for e, (l, f, c, s) in enumerate(zip(result["loss_per_epoch"], result["fp_loss_per_epoch"],
                                         result["cycles_per_epoch"], result["stall_cycles_per_epoch"]), 1):
        print(f"{e:>5} {l:>12.6f} {f:>14.6f} {c:>10,} {s:>7}")
    print(f"final loss {result['loss_per_epoch'][-1]:.6f} vs full precision {result['fp_loss_per_epoch'][-1]:.6f} "
          f"({100 * (result['final_loss_ratio'] - 1):+.2f} %); engine == bit-exact golden: "
          f"{result['golden_match']}")
    print(f"over a {args.baud}-baud link an epoch would move {result['link_wire_bytes_per_epoch']:,} bytes "
          f"({result['link_limited_seconds_per_epoch']:.1f} s)")
    plot = args.plot or Path("results") / f"{result['dataset']}_q{args.bits}_{args.backend}.png"
    plot_loss(result, plot)
    print(f"loss plot: {plot}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
        print(f"results: {args.json}")
    return 0
