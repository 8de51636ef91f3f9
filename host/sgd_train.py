"""Train linear models on the zippix SGD engine (``hw.sgd``) through any backend: board, Verilator, Amaranth.

Public API::

    design_for(bits, *, bus_bits=512, max_features=8192, store_beats=4096, max_frame=4096,
               stochastic_grad=False) -> hw.design.Design
    check_request(dataset, bits, epochs, model="linreg", *, max_features=None) -> (Dataset, signed)
    train(device, *, dataset, bits, epochs, model="linreg", progress=True, seed=0, step_shift=None,
          decay_every=2, batch_mask=0, baud=115200, verify=True, backend=None, max_samples=None,
          grad_rounding="truncate", init_model=None, first_epoch=0, rng_state=None) -> dict
    plot_loss(result, path) -> Path
    check_args(args)             # ``python host/run.py``'s checks that need this module; raises UsageError
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
from hw.sgd.layout import (ENCODINGS, SUPPORTED_BITS, beats_per_sample, check_bits, check_bus_bits,
                           check_encoding, default_encoding, encode_32bit, pack_samples, staleness)

MODELS = ("linreg",)
LOSSES = tuple(E.LOSSES)  # ls (least squares), l2svm (squared hinge), logistic
DEFAULT_BUS_BITS = 512
DEFAULT_MAX_FEATURES = 8192
DEFAULT_STORE_BEATS = 4096


class TrainError(ValueError):
    """A request that cannot run (bad dataset, precision, model, or a dataset the engine cannot hold)."""


class GoldenMismatch(RuntimeError):
    """The device's model differs from the bit-exact golden (``python host/run.py`` exits 3)."""


def engine_args(bits: int, *, bus_bits: int = DEFAULT_BUS_BITS, max_features: int = DEFAULT_MAX_FEATURES,
                store_beats: int = DEFAULT_STORE_BEATS, stochastic_grad: bool = False,
                encoding: str | None = None, model_bits: int = 32, model_frac_bits: int | None = None) -> dict:
    """``encoding=None``: compact where it saves bus bits (b in 2, 4, 8), else pair.  ``model_bits < 32``: the
    model stored at that width, stochastically rounded on write (``model_frac_bits`` default: w - 4, a +-8 range;
    :func:`model_frac_bits_for_dataset` picks it from the data)."""
    check_bits(bits)
    check_bus_bits(bus_bits)
    encoding = default_encoding(bits) if encoding is None else encoding
    check_encoding(bits, encoding)
    args = {"bits": bits, "bus_bits": bus_bits, "max_features": max_features, "store_beats": store_beats}
    if stochastic_grad:  # only then, so the default design (and its digest) stays as it was
        args["stochastic_grad"] = True
    if encoding != "pair":
        args["encoding"] = encoding
    if model_bits != 32:
        args["model_bits"] = model_bits
        if model_frac_bits is not None:
            args["model_frac_bits"] = model_frac_bits
    return args


def model_frac_bits_for_dataset(dataset, bits: int, model_bits: int) -> int:
    """Fractional bits of a ``model_bits``-wide engine model for least squares on ``dataset``, from the scale of
    its least-squares solution on the data as ``train`` scales them (``models.zipml.fixed_point.
    model_frac_bits_for``): ``design_for(bits, model_bits=8, model_frac_bits=model_frac_bits_for_dataset(...))``."""
    from models.zipml.datasets import prepare_linear
    from models.zipml.fixed_point import model_frac_bits_for
    ds, signed = check_request(dataset, bits, 1)
    A, y = prepare_linear(ds, signed=signed)
    return model_frac_bits_for(np.linalg.lstsq(A, y, rcond=None)[0], model_bits)


def design_for(bits: int, *, max_frame: int = 4096, **kw):
    """The simulated design (link + SGD engine) for a precision; the same gateware on every backend.
    4 KiB frames: an eighth of the link round trips of the default when the store is loaded over the link."""
    from hw.design import Design
    return Design(engine="sgd", engine_args=engine_args(bits, **kw), max_frame=max_frame)


def check_request(dataset, bits, epochs, model="linreg", *, max_features=None, loss="ls", encoding=None):
    """Validate everything that needs no device; returns ``(Dataset, signed)``.  Raises :class:`TrainError`."""
    from models.zipml.datasets import DatasetError, load_dataset
    if model not in MODELS:
        raise TrainError(f"unknown model {model!r}; the SGD engine trains: {', '.join(MODELS)}")
    if loss not in LOSSES:
        raise TrainError(f"unknown loss {loss!r}; the SGD engine has: {', '.join(LOSSES)}")
    if encoding is not None:
        if encoding not in ENCODINGS:
            raise TrainError(f"unknown encoding {encoding!r}; choose one of {', '.join(ENCODINGS)}")
        try:
            check_encoding(bits, encoding)
        except ValueError as exc:
            raise TrainError(str(exc)) from None
    if bits not in SUPPORTED_BITS:
        raise TrainError(f"unsupported precision --bits {bits}; choose one of "
                         f"{', '.join(map(str, SUPPORTED_BITS))} (32 = full-precision fixed-point datapath)")
    if not isinstance(epochs, int) or epochs < 1:
        raise TrainError(f"epochs must be a positive integer, got {epochs!r}")
    try:  # a sparse file wider than the engine is refused before it is made dense
        ds = load_dataset(dataset, max_features=None if max_features is None else max_features - 1)
    except DatasetError as exc:
        raise TrainError(str(exc)) from None
    if loss != "ls":
        classes = np.unique(ds.y)
        if ds.task == "regression" or not np.all(classes == np.round(classes)):
            raise TrainError(f"--loss {loss} trains a classifier, but dataset {ds.name} has a regression target "
                             f"({classes.size} distinct label values); use --loss ls")
        if classes.size < 2:
            raise TrainError(f"--loss {loss}: dataset {ds.name} has a single class")
        if classes.size > 2 and not np.array_equal(classes, np.arange(classes.size)):
            raise TrainError(f"dataset {ds.name}: multi-class labels must be 0, ..., K-1; got {classes[:10]}")
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
        ids = {v: k for k, v in E.ENCODING_IDS.items()}
        self.params["encoding"] = ids.get(r(E.REG_P_ENCODING), "pair")
        self.params["model_bits"] = r(E.REG_P_MODEL_BITS)
        self.params["model_frac_bits"] = r(E.REG_P_MODEL_FRAC)

    def load_rng(self, seed, *, grad: bool):
        """Seed the engine's xorshift32 lanes (gradient lanes when ``grad``, then the model lanes when the model
        is narrower than 32 bits); returns the twins ``(grad_rng, model_rng)`` (None where absent)."""
        from models.zipml.rng import Xorshift32Lanes, lane_seeds
        L = self.params["lanes"]
        sets = [("g", seed)] if grad else []
        if self.params["model_bits"] < 32:
            sets.append(("m", seed + 1))
        if not sets:
            return None, None
        self.w(E.REG_IN_MODE, E.IN_RNG)
        data = np.concatenate([lane_seeds(sd, L) for _, sd in sets]).astype("<u4").tobytes()
        self.dev.send(data)
        self.link_bytes += len(data)
        twins = {name: Xorshift32Lanes(seed=sd, n_lanes=L) for name, sd in sets}
        return twins.get("g"), twins.get("m")

    def golden_model_args(self, model_rng):
        """Keyword arguments of ``engine_run`` for the engine's model width."""
        if self.params["model_bits"] >= 32:
            return {}
        return {"model_bits": self.params["model_bits"], "model_frac_bits": self.params["model_frac_bits"],
                "model_rng": model_rng}

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

    @property
    def loads_over_link(self) -> bool:
        """False where the transport has a backdoor into the store (the Amaranth simulator)."""
        return getattr(self.dev.transport, "write_engine_memory", None) is None

    def load_store(self, packed, first=0, *, beats_per_sample=1, on_samples=None):
        """Beats (``pack_samples`` output) into the store from beat ``first``; over the link in pieces of
        whole samples, calling ``on_samples(k)`` after each piece of ``k`` samples."""
        bus = self.params["bus_bits"]
        raw = np.ascontiguousarray(packed).tobytes()
        n_beats = len(raw) * 8 // bus
        if not self.loads_over_link:
            step = bus // 8
            self.dev.transport.write_engine_memory(
                "store", first, [int.from_bytes(raw[i:i + step], "little") for i in range(0, len(raw), step)])
            self.w(E.REG_STORE_WADDR, (first + n_beats) % self.params["store_beats"])
            return
        self.w(E.REG_IN_MODE, E.IN_STORE)
        self.w(E.REG_STORE_WADDR, first)
        sample_bytes = beats_per_sample * bus // 8
        piece = max(1, (64 << 10) // sample_bytes) * sample_bytes  # ~64 KiB: a progress step, not a frame
        for lo in range(0, len(raw), piece):
            self.dev.send(raw[lo:lo + piece], timeout=max(self.dev.timeout, 60.0))
            if on_samples:
                on_samples(len(raw[lo:lo + piece]) // sample_bytes)
        self.link_bytes += len(raw)

    def configure(self, d, beats, *, signed, step_shift, batch_mask, loss="ls", ovr=False, step_shift_neg=None):
        flags = (E.FLAG_SIGNED if signed else 0) | (E.FLAG_OVR if ovr else 0)
        if step_shift_neg is not None:
            flags |= E.FLAG_CLASS_WEIGHT
            self.w(E.REG_STEP_SHIFT_NEG, step_shift_neg)
        for reg, v in [(E.REG_FEATURES, d), (E.REG_BEATS, beats), (E.REG_STEP_SHIFT, step_shift),
                       (E.REG_BATCH_MASK, batch_mask), (E.REG_FLAGS, flags), (E.REG_LOSS, E.LOSSES[loss]),
                       (E.REG_STORE_WRAP, 0)]:
            self.w(reg, v)

    def run(self, n_samples, store_base=0, *, on_samples=None):
        """One RUN from the store; returns the engine's counters for it.  ``on_samples(k)``: called with the
        samples finished since the last call, about every 0.2 s (from the engine's SAMPLES_DONE counter)."""
        self.w(E.REG_RUN_SAMPLES, n_samples)
        self.w(E.REG_STORE_BASE, store_base)
        self.w(E.REG_CMD, E.CMD_RUN)
        reported, polled = 0, time.monotonic()
        while True:
            status = self.dev.read_engine_reg(E.REG_STATUS)
            if not status & E.STATUS_RUNNING:
                break
            if on_samples and time.monotonic() - polled > 0.2:
                done = min(n_samples, self.dev.read_engine_reg(E.REG_SAMPLES_DONE))
                on_samples(done - reported)
                reported, polled = done, time.monotonic()
        if on_samples:
            on_samples(n_samples - reported)
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


def _engine_fit(p: dict, name: str, bits: int, n: int, d: int):
    """Check that ``n`` samples of ``d`` words (bias included) at ``bits`` fit the engine with parameters ``p``;
    returns ``(bus_bits, encoding, beats per sample, samples per store load, staleness in samples)``."""
    if p["bits"] != bits:
        raise TrainError(f"the device's engine is built for {p['bits']}-bit samples, not {bits}; open it with "
                         f"design_for({bits})")
    if d > p["max_features"]:
        raise TrainError(f"dataset {name} has {d - 1} features (+1 bias = {d}) but the engine holds at most "
                         f"{p['max_features']} model words")
    bus, enc = p["bus_bits"], p["encoding"]
    R = beats_per_sample(d, bits, bus, enc)
    chunk = min(n, p["store_beats"] // R)
    if chunk < 1:
        raise TrainError(f"one sample needs {R} beats but the sample store holds {p['store_beats']}")
    return bus, enc, R, chunk, staleness(p["pipe_latency"], R)


def step_shift_at(step_shift: int, epoch: int, decay_every: int) -> int:
    """The RTL's shift decay: step ``2**-(step_shift + epoch // decay_every)``; ``decay_every=0``: constant."""
    return step_shift + (epoch // decay_every if decay_every else 0)


def train(device, *, dataset, bits, epochs, model="linreg", progress=True, seed=0, step_shift=None,
          decay_every=None, batch_mask=0, baud=115200, verify=True, backend=None, max_samples=None,
          grad_rounding="truncate", init_model=None, first_epoch=0, rng_state=None, loss="ls", class_weight=None,
          test_size=0.25) -> dict:
    """Train least squares (``loss='ls'``) or a classifier (``l2svm``, ``logistic``: :func:`train_classifier`)
    on the device; returns a JSON-able dict (see ``docs/sgd-engine.md``).

    Step: ``2**-(step_shift + e // decay_every)`` in epoch ``e`` (the RTL's shift decay; ``decay_every=0``
    keeps it constant); ``step_shift=None`` picks ``ceil(log2(1 / auto_step)) + 3`` from the data.  ``verify``
    replays every run on the bit-exact golden (``models.zipml.fixed_point.engine_run``) and raises
    :class:`GoldenMismatch` if the device's model differs.  ``max_samples`` trains on the first rows only
    (benchmarks).  Resuming (``host.model_file``): ``init_model`` (Q8.23 words) is loaded into the engine
    instead of zeros, epochs are numbered from ``first_epoch`` (the step schedule continues) and ``rng_state``
    (a NumPy PCG64 state) continues the quantization stream, so 2 + 2 epochs give the model of 4.
    """
    from models.zipml.fixed_point import engine_run, to_fixed
    from models.zipml.quantize import quantize_codes
    from models.zipml.sgd import auto_step, least_squares_loss, linear_sgd
    from models.zipml.datasets import prepare_linear
    from tqdm import tqdm

    if loss != "ls":
        return train_classifier(device, dataset=dataset, bits=bits, epochs=epochs, loss=loss, model=model,
                                progress=progress, seed=seed, step_shift=step_shift, decay_every=decay_every,
                                batch_mask=batch_mask, baud=baud, verify=verify, backend=backend,
                                class_weight=class_weight, test_size=test_size)
    ds, signed = check_request(dataset, bits, epochs, model)        # no device work before this passes
    decay_every = 2 if decay_every is None else decay_every
    if decay_every < 0:
        raise TrainError("decay_every must be >= 0 (0: constant step)")
    if grad_rounding not in ("truncate", "stochastic"):
        raise TrainError(f"grad_rounding must be 'truncate' or 'stochastic', got {grad_rounding!r}")
    if init_model is not None and grad_rounding == "stochastic":
        raise TrainError("resuming from a saved model is not supported with grad_rounding='stochastic' (the "
                         "engine's gradient RNG state is not saved)")
    A, y = prepare_linear(ds, signed=signed)
    if max_samples is not None:  # benchmarks: the first rows only (normalisation still over the whole set)
        A, y = A[:max_samples], y[:max_samples]
    n, d = A.shape
    labels = to_fixed(y)
    if step_shift is None:
        step_shift = max(0, math.ceil(math.log2(1.0 / auto_step(A, 1))) + 3)
    last_shift = step_shift_at(step_shift, first_epoch + epochs - 1, decay_every)
    if last_shift > 63:
        raise TrainError(f"the step shift reaches {last_shift} by epoch {first_epoch + epochs} (start "
                         f"{step_shift}, halved every {decay_every} epochs) but the engine's STEP_SHIFT register "
                         f"holds at most 63: decay more slowly or train fewer epochs")
    x0 = np.zeros(d, dtype=np.int64) if init_model is None else np.asarray(init_model, dtype=np.int64)
    if x0.shape != (d,):
        raise TrainError(f"the initial model has {x0.size} words but dataset {ds.name} needs {d} "
                         f"({d - 1} features + bias)")

    drv = SgdDriver(device)
    p = drv.params
    bus, enc, R, chunk, delay = _engine_fit(p, ds.name, bits, n, d)

    if grad_rounding == "stochastic" and not drv.stochastic_grad:
        raise TrainError("grad_rounding='stochastic' needs an engine built with stochastic_grad=True "
                         "(design_for(bits, stochastic_grad=True); b in 2, 4, 8)")
    twin, mtwin = drv.load_rng(seed, grad=grad_rounding == "stochastic")
    if init_model is None:
        drv.clear_model()
    else:
        drv.load_model(x0)
    drv.configure(d, R, signed=signed, step_shift=step_shift, batch_mask=batch_mask)
    rng = np.random.default_rng(seed)
    if rng_state is not None:
        rng.bit_generator.state = rng_state
    x, x_gold = x0.copy(), x0.copy()
    loss, cycles, stalls, beats_e, secs = [], [], [], [], []
    start_loss = float(least_squares_loss(A, y, x0 / 2.0**23))
    saturated = False
    t_start = time.perf_counter()
    for e in range(first_epoch, first_epoch + epochs):
        te = time.perf_counter()
        shift = step_shift_at(step_shift, e, decay_every)
        drv.w(E.REG_STEP_SHIFT, shift)
        # one bar per epoch, moving inside it (samples loaded over the link, or run from a backdoor-loaded store)
        with tqdm(total=n, unit="sample", desc=f"{ds.name} Q{bits} epoch {e + 1}/{first_epoch + epochs}",
                  leave=True, dynamic_ncols=True, disable=not progress) as bar:
            if bits == 32:
                q1 = q2 = encode_32bit(A, signed)
            else:
                q1 = quantize_codes(A, bits, signed=signed, rng=rng)
                q2 = quantize_codes(A, bits, signed=signed, rng=rng)
            c = s = bt = 0
            for lo in range(0, n, chunk):
                hi = min(n, lo + chunk)
                link = drv.loads_over_link
                drv.load_store(pack_samples(q1[lo:hi], q2[lo:hi], labels[lo:hi], bits, bus, enc, signed=signed),
                               beats_per_sample=R,
                               on_samples=bar.update if link else None)
                cnt = drv.run(hi - lo, on_samples=None if link else bar.update)
                c, s, bt = c + cnt["cycles"], s + cnt["stalls"], bt + cnt["beats"]
                saturated |= cnt["t_saturated"] or cnt["x_saturated"]
                if verify:
                    x_gold = engine_run(x_gold, q1[lo:hi], q2[lo:hi], labels[lo:hi], bits, signed=signed,
                                        step_shift=shift, batch_mask=batch_mask, delay=delay, grad_rng=twin,
                                        **drv.golden_model_args(mtwin)).x
            x = drv.read_model(d)
            if verify and not np.array_equal(x, x_gold):
                raise GoldenMismatch(f"epoch {e + 1}: the device's model differs from the bit-exact golden in "
                                     f"{int(np.sum(x != x_gold))} of {d} words")
            loss.append(least_squares_loss(A, y, x / 2.0**23))
            bar.set_postfix(loss=f"{loss[-1]:.6f}", cycles=c)
        cycles.append(c)
        stalls.append(s)
        beats_e.append(bt)
        secs.append(time.perf_counter() - te)
    batch = batch_mask + 1 if not batch_mask & (batch_mask + 1) else 1  # the float reference's minibatch
    fp = linear_sgd(A, y, mode="full", epochs=epochs, step=2.0**-step_shift, batch_size=batch, rng=seed,
                    x0=x0 / 2.0**23,
                    schedule=lambda ep: batch * 2.0**-step_shift_at(step_shift, first_epoch + ep, decay_every))
    sample_bytes = n * R * bus // 8
    wire = _wire_bytes(sample_bytes)
    return {
        "dataset": ds.name, "bits": bits, "epochs": epochs, "first_epoch": first_epoch, "model": model,
        "loss": "ls", "encoding": enc,
        "backend": backend or getattr(device.transport, "name", type(device.transport).__name__),
        "loss_per_epoch": [float(v) for v in loss],
        "fp_loss_per_epoch": [float(v) for v in fp.loss[1:]],
        "initial_loss": start_loss,
        "final_loss_ratio": float(loss[-1] / fp.loss[-1]),
        "cycles_per_epoch": cycles, "stall_cycles_per_epoch": stalls, "beats_per_epoch": beats_e,
        "features": d, "samples": n, "bus_bits": bus, "lanes": p["lanes"], "beats_per_sample": R,
        "store_chunks_per_epoch": -(-n // chunk), "signed": signed, "seed": seed,
        "step_shift": step_shift, "decay_every": decay_every, "batch_mask": batch_mask,
        "staleness_samples": delay, "pipe_latency_cycles": p["pipe_latency"],
        "golden_match": True if verify else None, "saturated": saturated, "grad_rounding": grad_rounding,
        "model_bits": p["model_bits"], "model_frac_bits": p["model_frac_bits"],
        "model_q23": [int(v) for v in x],
        "engine_params": dict(p), "rng_state": rng.bit_generator.state,
        "link_sample_bytes_per_epoch": sample_bytes, "link_wire_bytes_per_epoch": wire,
        "baud": baud, "link_limited_seconds_per_epoch": wire * 10 / baud,
        "link_bytes_moved": drv.link_bytes,
        "wall_seconds_per_epoch": secs, "wall_seconds": time.perf_counter() - t_start,
    }


def _classifier_objective(scores, signs, loss):
    """Mean training objective of one-vs-rest models: logistic loss or squared hinge (labels +-1)."""
    z = signs * scores
    if loss == "logistic":
        return float(np.mean(np.logaddexp(0.0, -z)))
    return float(np.mean(np.maximum(0.0, 1.0 - z) ** 2))


def _predict(A, models, classes):
    scores = A @ (np.asarray(models, dtype=np.float64) / 2.0**23).T
    if len(classes) == 2:  # one model for the larger class: score > 0 (sigmoid > 1/2, or the SVM's side)
        return classes[(scores[:, 0] > 0).astype(int)], scores
    return classes[np.argmax(scores, axis=1)], scores


def train_classifier(device, *, dataset, bits, epochs, loss, model="linreg", progress=True, seed=0,
                     step_shift=None, decay_every=None, batch_mask=0, baud=115200, verify=True, backend=None,
                     class_weight=False, test_size=0.25) -> dict:
    """Train an L2-SVM (squared hinge, ZipML-PYNQ) or logistic regression on the engine; one-vs-rest for K > 2.

    The data are split (stratified, ``test_size``, ``seed``) into train and test sets.  Each epoch the training
    set is double-quantized afresh and loaded once with the class index as the label word; for every class the
    host loads that class's model, runs the store with FLAG_OVR and CLASS = k, and reads the model back (one
    model per class; two classes train one model for the larger label).  ``class_weight=True`` (the PYNQ
    design's class-weighted steps) gives negative samples the step 2**-(shift + w_k), w_k =
    round(log2(negatives / positives)); off by default (on digits it costs test accuracy for the argmax).
    Step: 2**-(step_shift + e // decay_every), by default step_shift = ceil(log2(1 / auto_step)) - 4 for
    logistic (its gradient factor is bounded by 1) and + 0 for l2svm, decay_every = 3.  Test accuracy is reported next to scikit-learn's LogisticRegression
    (logistic) or LinearSVC (l2svm, squared hinge) on the same split and scaling.
    """
    from sklearn.model_selection import train_test_split
    from models.zipml.datasets import prepare_linear
    from models.zipml.fixed_point import engine_run, ovr_labels
    from models.zipml.quantize import quantize_codes
    from models.zipml.sgd import auto_step

    ds, signed = check_request(dataset, bits, epochs, model, loss=loss)
    decay_every = 3 if decay_every is None else decay_every
    if decay_every < 0:
        raise TrainError("decay_every must be >= 0 (0: constant step)")
    if not 0.0 < test_size < 1.0:
        raise TrainError(f"test_size must be in (0, 1), got {test_size}")
    A, _ = prepare_linear(ds, signed=signed, labels="binary")  # features scaled as the FPGA host does
    classes = np.unique(ds.y)
    cls = np.searchsorted(classes, ds.y)
    A_tr, A_te, c_tr, c_te = train_test_split(A, cls, test_size=test_size, random_state=seed, stratify=cls)
    n, d = A_tr.shape
    K = len(classes)
    positives = [1] if K == 2 else list(range(K))
    weights = {k: (max(0, round(math.log2((n - np.sum(c_tr == k)) / max(1, np.sum(c_tr == k)))))
                   if class_weight else None) for k in positives}
    if step_shift is None:
        step_shift = max(0, math.ceil(math.log2(1.0 / auto_step(A_tr, 1))) + (-4 if loss == "logistic" else 0))

    drv = SgdDriver(device)
    p = drv.params
    bus, enc, R, chunk, delay = _engine_fit(p, ds.name, bits, n, d)
    _, mtwin = drv.load_rng(seed, grad=False)
    models = {k: np.zeros(d, dtype=np.int64) for k in positives}
    gold = {k: np.zeros(d, dtype=np.int64) for k in positives}
    rng = np.random.default_rng(seed)
    obj, acc_tr, acc_te, cycles, stalls, secs = [], [], [], [], [], []
    saturated, match = False, True
    signs = {k: np.where(c_tr == k, 1.0, -1.0) for k in positives}
    t_start = time.perf_counter()
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=epochs * len(positives), unit="model", desc=f"{ds.name} Q{bits} {loss}", leave=True)
    for e in range(epochs):
        te = time.perf_counter()
        shift = step_shift_at(step_shift, e, decay_every)
        if bits == 32:
            q1 = q2 = encode_32bit(A_tr, signed)
        else:
            q1 = quantize_codes(A_tr, bits, signed=signed, rng=rng)
            q2 = quantize_codes(A_tr, bits, signed=signed, rng=rng)
        c = s = 0
        for lo in range(0, n, chunk):
            hi = min(n, lo + chunk)
            drv.load_store(pack_samples(q1[lo:hi], q2[lo:hi], c_tr[lo:hi], bits, bus, enc, signed=signed))
            for k in positives:
                neg = None if weights[k] is None else shift + weights[k]
                drv.configure(d, R, signed=signed, step_shift=shift, batch_mask=batch_mask, loss=loss, ovr=True,
                              step_shift_neg=neg)
                drv.w(E.REG_CLASS, k)
                drv.load_model(models[k])
                cnt = drv.run(hi - lo)
                c, s = c + cnt["cycles"], s + cnt["stalls"]
                saturated |= cnt["t_saturated"] or cnt["x_saturated"]
                models[k] = drv.read_model(d)
                if verify:
                    gold[k] = engine_run(gold[k], q1[lo:hi], q2[lo:hi], ovr_labels(c_tr[lo:hi], k, loss), bits,
                                         signed=signed, step_shift=shift, batch_mask=batch_mask, delay=delay,
                                         loss=loss, step_shift_neg=neg, **drv.golden_model_args(mtwin)).x
                    if not np.array_equal(models[k], gold[k]):
                        match = False
                        raise GoldenMismatch(f"epoch {e + 1}, class {classes[k]}: the device's model differs from the "
                                           f"bit-exact golden in {int(np.sum(models[k] != gold[k]))} of {d} words")
                if bar:
                    bar.update(1)
        W = [models[k] for k in positives]
        pred_tr, scores = _predict(A_tr, W, classes)
        pred_te, _ = _predict(A_te, W, classes)
        obj.append(float(np.mean([_classifier_objective(scores[:, i], signs[k], loss)
                                  for i, k in enumerate(positives)])))
        acc_tr.append(float(np.mean(pred_tr == classes[c_tr])))
        acc_te.append(float(np.mean(pred_te == classes[c_te])))
        cycles.append(c)
        stalls.append(s)
        secs.append(time.perf_counter() - te)
        if bar:
            bar.set_postfix(objective=f"{obj[-1]:.4f}", test_acc=f"{acc_te[-1]:.3f}")
    if bar:
        bar.close()
    if loss == "logistic":
        from sklearn.linear_model import LogisticRegression
        ref = LogisticRegression(max_iter=5000)
    else:
        from sklearn.svm import LinearSVC
        ref = LinearSVC(loss="squared_hinge", max_iter=20000)
    ref.fit(A_tr, classes[c_tr])
    sample_bytes = n * R * bus // 8
    wire = _wire_bytes(sample_bytes)
    return {
        "dataset": ds.name, "bits": bits, "epochs": epochs, "model": model, "loss": loss, "encoding": enc,
        "backend": backend or getattr(device.transport, "name", type(device.transport).__name__),
        "classes": [int(v) for v in classes], "models_trained": len(positives), "class_weight": bool(class_weight),
        "test_size": test_size, "train_samples": n, "test_samples": int(len(c_te)),
        "objective_per_epoch": obj, "train_accuracy_per_epoch": acc_tr, "test_accuracy_per_epoch": acc_te,
        "test_accuracy": acc_te[-1], "sklearn_model": type(ref).__name__,
        "sklearn_test_accuracy": float(ref.score(A_te, classes[c_te])),
        "cycles_per_epoch": cycles, "stall_cycles_per_epoch": stalls,
        "features": d, "samples": n, "bus_bits": bus, "lanes": p["lanes"], "beats_per_sample": R,
        "store_chunks_per_epoch": -(-n // chunk), "signed": signed, "step_shift": step_shift,
        "decay_every": decay_every, "batch_mask": batch_mask, "staleness_samples": delay,
        "pipe_latency_cycles": p["pipe_latency"], "golden_match": match if verify else None,
        "saturated": saturated, "model_q23": {int(classes[k]): [int(v) for v in models[k]] for k in positives},
        "link_sample_bytes_per_epoch": sample_bytes, "link_wire_bytes_per_epoch": wire, "baud": baud,
        "link_limited_seconds_per_epoch": wire * 10 / baud, "link_bytes_moved": drv.link_bytes,
        "wall_seconds_per_epoch": secs, "wall_seconds": time.perf_counter() - t_start,
    }


def plot_loss(result: dict, path) -> Path:
    """PNG of :func:`loss_figure`."""
    import matplotlib.pyplot as plt
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = loss_figure(result)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def loss_figure(result: dict):
    """The hardware model's loss and the full-precision reference's loss at every whole epoch, from the
    starting model (epoch 0, or the epoch a resumed model had reached) on."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    first = result.get("first_epoch", 0)
    ep = np.arange(first, first + len(result["loss_per_epoch"]) + 1)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(ep, [result["initial_loss"]] + result["fp_loss_per_epoch"], "k--",
            label="full-precision reference (float64)")
    label = "32-bit fixed-point engine" if result["bits"] == 32 else f"Q{result['bits']} engine (double sampling)"
    ax.plot(ep, [result["initial_loss"]] + result["loss_per_epoch"], "o-", label=f"{label}, {result['backend']}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(ep[0], ep[-1])
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss (1/2n)||Ax-b||^2")
    ax.set_yscale("log")
    ax.set_title(f"{result['dataset']}: {result['features']} features, {result['samples']} samples, "
                 f"{result['bus_bits']}-bit bus")
    ax.legend()
    fig.tight_layout()
    return fig


def check_args(args) -> None:
    """``python host/run.py``'s checks for ``--model linreg`` that need this module, before any device work:
    the dataset (loaded; a sparse file wider than the engine is refused before it is made dense), the model
    file of ``--load-model`` and its fit to the dataset, the step schedule, the loss plot's path.  Fills in
    what a loaded model decides (bits, seed stream, step, decay, batch) unless given.  Raises UsageError."""
    from host import model_file
    from host.cli_checks import UsageError, check_input, check_output
    given = getattr(args, "given", set())
    args.resume = None
    if args.load_model is not None:
        path = check_input(args.load_model, "--load-model")
        try:
            q, meta = model_file.load(path)
        except model_file.ModelFileError as exc:
            raise UsageError(f"--load-model {exc}") from None
        args.resume = (q, meta)
        for dest, key in (("bits", "bits"), ("step", "step_shift"), ("decay", "decay_every"), ("batch", "batch")):
            if dest not in given:
                setattr(args, dest, meta[key])
    elif args.epochs == 0:
        raise UsageError("--epochs must be at least 1 (0 only with --load-model, to evaluate a saved model)")
    if args.loss != "ls":
        for dest in ("load_model", "save_model", "plot"):
            if getattr(args, dest) is not None:
                raise UsageError(f"--{dest.replace('_', '-')} applies to --loss ls only (classifier runs report "
                                 f"accuracy in the terminal and --json)")
    try:
        # simulated backends run design_for(bits): its capacity is known before anything starts
        ds, signed = check_request(args.dataset, args.bits, max(1, args.epochs), args.model,
                                   max_features=None if args.backend == "serial" else DEFAULT_MAX_FEATURES,
                                   loss=args.loss, encoding=args.encoding)
    except TrainError as exc:
        raise UsageError(str(exc)) from None
    args.loaded_dataset = ds
    if args.resume is not None:
        meta = args.resume[1]
        if meta["features"] != ds.n_features + 1:
            raise UsageError(f"--load-model {args.load_model}: the model has {meta['features']} words "
                             f"({meta['features'] - 1} features + bias) but dataset {ds.name} has "
                             f"{ds.n_features} features")
    first = args.resume[1]["epochs"] if args.resume is not None else 0
    if args.step is not None and args.epochs:
        last = step_shift_at(args.step, first + args.epochs - 1, args.decay)
        if last > 63:
            raise UsageError(f"with --step 2^-{args.step} and --decay {args.decay} the step reaches 2^-{last} by "
                             f"epoch {first + args.epochs}, below the engine's smallest step 2^-63: use a larger "
                             f"--decay or fewer --epochs")
    if args.epochs == 0:
        if args.plot is not None:
            raise UsageError("--plot: --epochs 0 evaluates the loaded model; there is no loss curve to plot")
        if args.save_model is not None:
            raise UsageError("--save-model: --epochs 0 evaluates the loaded model and does not change it")
    elif args.plot is None and args.loss == "ls":
        args.plot = check_output(Path("results") / f"{ds.name}_q{args.bits}_{args.backend}.png", "--plot")


def evaluate(args) -> dict:
    """``--epochs 0 --load-model``: the saved model's loss on the dataset, scaled as its training data was;
    no device."""
    from host import model_file
    from models.zipml.sgd import least_squares_loss
    q, meta = args.resume
    ds = args.loaded_dataset
    A, y = model_file.scale(meta["scaling"], ds.X, ds.y)
    return {"dataset": ds.name, "model_file": str(args.load_model), "model_dataset": meta["dataset"],
            "model_epochs": meta["epochs"], "bits": meta["bits"], "features": int(A.shape[1]),
            "samples": int(A.shape[0]), "loss": float(least_squares_loss(A, y, q / 2.0**23))}


def _save_model(path, result, args, ds) -> None:
    from host import model_file
    prior = args.resume[1]["epochs"] if args.resume is not None else 0
    meta = {k: result[k] for k in ("model", "dataset", "features", "samples", "bits", "signed", "seed",
                                   "step_shift", "decay_every", "grad_rounding", "engine_params", "backend",
                                   "rng_state")}
    meta.update(epochs=prior + result["epochs"], batch=result["batch_mask"] + 1,
                final_loss=result["loss_per_epoch"][-1],
                scaling=model_file.scaling_of(ds.X, ds.y, signed=result["signed"], task=ds.task))
    model_file.save(path, result["model_q23"], meta)


def _report_classifier(result, args) -> int:
    print(f"{'epoch':>5} {'objective':>10} {'train acc':>10} {'test acc':>9} {'cycles':>10}")
    for e, (o, a, t, c) in enumerate(zip(result["objective_per_epoch"], result["train_accuracy_per_epoch"],
                                         result["test_accuracy_per_epoch"], result["cycles_per_epoch"]), 1):
        print(f"{e:>5} {o:>10.4f} {a:>10.4f} {t:>9.4f} {c:>10,}")
    print(f"{result['loss']} on {result['dataset']} ({len(result['classes'])} classes, "
          f"{result['models_trained']} engine model(s), Q{result['bits']} {result['encoding']}): test accuracy "
          f"{result['test_accuracy']:.4f} vs scikit-learn {result['sklearn_model']} "
          f"{result['sklearn_test_accuracy']:.4f}; engine == bit-exact golden: {result['golden_match']}")
    _write_json(args.json, result)
    return 0


def _write_json(path, result) -> None:
    """``result`` as JSON at ``path`` (checked writable up front by ``host.cli_checks``); nothing when None."""
    if path:
        import json
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1))
        print(f"results: {path}")


def main(args) -> int:
    """Entry point for ``python host/run.py --dataset ...`` (``args`` from ``host/run.py``'s parser, after
    ``host.cli_checks.validate`` and :func:`check_args`)."""
    import sys
    from host.backends import open_device
    from host.cli_checks import EXIT_MISMATCH, EXIT_USAGE
    if args.epochs == 0:
        r = evaluate(args)
        print(f"{r['model_file']} ({r['model_epochs']} epochs on {r['model_dataset']}, Q{r['bits']}) on "
              f"{r['dataset']}: loss {r['loss']:.6f} over {r['samples']} samples")
        _write_json(args.json, r)
        return 0
    resume = {}
    if args.resume is not None:
        q, meta = args.resume
        resume = dict(init_model=q, first_epoch=meta["epochs"])
        if "seed" not in getattr(args, "given", set()):  # continue the saved random stream
            resume.update(rng_state=meta["rng_state"])
            args.seed = meta["seed"]
    loss = args.loss
    design = design_for(args.bits, encoding=args.encoding)
    try:
        with open_device(args.backend, design=design, port=args.port, baud=args.baud, timeout=args.timeout,
                         quiet=False) as dev:
            result = train(dev, dataset=args.dataset, bits=args.bits, epochs=args.epochs, model=args.model,
                           progress=not args.no_progress, baud=args.baud, backend=args.backend, seed=args.seed,
                           step_shift=args.step, batch_mask=args.batch - 1, loss=loss,
                           # classifiers have their own default decay unless --decay is given
                           decay_every=args.decay if loss == "ls" or "decay" in args.given else None,
                           **resume)
    except TrainError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except GoldenMismatch as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_MISMATCH
    if loss != "ls":
        return _report_classifier(result, args)
    first = result["first_epoch"]
    print(f"{'epoch':>5} {'loss (hw)':>12} {'loss (fp ref)':>14} {'cycles':>10} {'stalls':>7}")
    print(f"{first:>5} {result['initial_loss']:>12.6f} {result['initial_loss']:>14.6f} {'':>10} {'':>7}")
    for e, (l, f, c, s) in enumerate(zip(result["loss_per_epoch"], result["fp_loss_per_epoch"],
                                         result["cycles_per_epoch"], result["stall_cycles_per_epoch"]), first + 1):
        print(f"{e:>5} {l:>12.6f} {f:>14.6f} {c:>10,} {s:>7}")
    print(f"final loss {result['loss_per_epoch'][-1]:.6f} vs full precision {result['fp_loss_per_epoch'][-1]:.6f} "
          f"({100 * (result['final_loss_ratio'] - 1):+.2f} %); engine == bit-exact golden: "
          f"{result['golden_match']}")
    print(f"over a {args.baud}-baud link an epoch would move {result['link_wire_bytes_per_epoch']:,} bytes "
          f"({result['link_limited_seconds_per_epoch']:.1f} s)")
    _write_json(args.json, result)  # the results first: a plot that fails must not lose them
    if args.save_model:
        _save_model(args.save_model, result, args, args.loaded_dataset)
        print(f"model: {args.save_model}")
    plot_loss(result, args.plot)
    print(f"loss plot: {args.plot}")
    return 0
