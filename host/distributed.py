"""Data-parallel ZipML on ``torch.distributed`` (gloo): one SGD engine per rank, low-precision model exchange.

Ref: ZipML (Zhang et al., ICML 2017, arXiv 1611.05402) §3: stochastic rounding of the model is unbiased, so it
needs no double sampling; QSGD (Alistarh et al., NeurIPS 2017) for quantized exchange between workers; periodic
model averaging ("local SGD": Zinkevich et al., NeurIPS 2010, "Parallelized stochastic gradient descent"); the
exchange is an all-gather of per-tensor-quantized payloads, as PyTorch's own
``torch.distributed.algorithms.ddp_comm_hooks.quantization_hooks`` do (sums of b-bit codes do not fit b bits).

Schedule (launched by ``torchrun ... host/run.py``, or ``host/run.py --workers N`` which starts torchrun itself):

* every rank prepares the dataset exactly as one device does (``prepare_linear``: the whole set's min-max
  scaling and step size) and keeps the strided shard ``rows[rank::world]``; it opens its own device (one
  simulator per rank, or ``--port`` entry ``rank`` of a comma-separated list) and trains the shard on the engine
  with the single-device epoch loop of :mod:`host.sgd_train` (fresh double-sampled codes every epoch, the store
  loaded in chunks, the shift-decay step; ``--scale-step`` doubles the step per doubling of the ranks), replaying
  every run on the bit-exact golden;
* after every ``sync_every`` epochs (and after the last), each rank encodes its model *update* since the last
  synchronized model ``x_s`` (which all ranks hold exactly): ``sync_bits=32`` sends the int32 model itself;
  ``16 | 8 | 4`` scale the update by its max |.| and round it stochastically onto the signed ``sync_bits``-bit
  levels with :func:`models.zipml.quantize.quantize_codes` (the sample quantizer), packed with
  :func:`models.zipml.pack.pack_fields` after an 8-byte float64 scale;
* the payloads are all-gathered; every rank decodes them in rank order and computes the same average
  (:func:`average`), which is loaded back into its engine before the next epoch.

Bytes: ``payload_bytes_per_rank`` is one rank's encoded model; ``bytes_per_sync_per_rank`` is what each rank
sends in one exchange, ``(world - 1) * payload``: gloo's all-gather is a ring (pytorch/gloo ``gloo/allgather.cc``)
in which each rank sends ``world - 1`` payloads.  The per-epoch status records (a few
hundred bytes) and the loss evaluation (one float64 per rank) are control traffic, not counted.

Correctness: with one rank the result equals :func:`host.sgd_train.train` (rank 0 draws the same random codes);
:func:`replay` recomputes a whole run in NumPy (per-rank golden runs + :func:`average`) and the runner's
``model_sha_per_epoch`` must equal it.  A rank whose device fails (simulator gone, board silent past the link
timeout) reports it in the next status exchange and every rank stops with the same message naming it.
``--checkpoint PATH`` holds the last synchronized model, every rank's random-generator state and the history
so far (JSON, written atomically by rank 0 after every sync); a run started with an existing checkpoint resumes
from it and ends with the same model as an uninterrupted run.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SYNC_BITS = (32, 16, 8, 4)
SCALE_BYTES = 8  # float64 per-tensor scale in front of the packed codes
CHECKPOINT_VERSION = 1


class RankFailed(RuntimeError):
    """A rank's device or process failed; the message names the rank."""


# ----------------------------------------------------------------------------------------- the exchange codec


def payload_bytes(d: int, sync_bits: int) -> int:
    """Size of one rank's encoded model of ``d`` words."""
    if sync_bits == 32:
        return 4 * d
    return SCALE_BYTES + 4 * -(-d * sync_bits // 32)


def encode(x_local, x_sync, sync_bits: int, rng) -> np.ndarray:
    """One rank's payload (uint8): its int32 model (32 bits) or its stochastically rounded update."""
    from models.zipml.pack import pack_fields
    from models.zipml.quantize import quantize_codes, to_field
    x_local = np.asarray(x_local, dtype=np.int64)
    if sync_bits == 32:
        return np.frombuffer(x_local.astype("<i4").tobytes(), dtype=np.uint8).copy()
    delta = (x_local - np.asarray(x_sync, dtype=np.int64)).astype(np.float64)
    scale = float(np.max(np.abs(delta))) if delta.size else 0.0
    codes = quantize_codes(delta / scale if scale > 0 else delta, sync_bits, signed=True, rng=rng)
    packed = pack_fields(to_field(codes, sync_bits), sync_bits, 32)
    return np.frombuffer(np.float64(scale).astype("<f8").tobytes() + packed.astype("<u4").tobytes(),
                         dtype=np.uint8).copy()


def decode(payload, d: int, sync_bits: int) -> np.ndarray:
    """Inverse of :func:`encode`: the int64 model (32 bits) or the float64 update in Q.23 units."""
    from models.zipml.pack import unpack_fields
    from models.zipml.quantize import dequantize, from_field
    raw = np.asarray(payload, dtype=np.uint8).tobytes()
    if len(raw) != payload_bytes(d, sync_bits):
        raise ValueError(f"payload of {len(raw)} bytes; {d} words at {sync_bits} bits take "
                         f"{payload_bytes(d, sync_bits)}")
    if sync_bits == 32:
        return np.frombuffer(raw, dtype="<i4").astype(np.int64)
    scale = float(np.frombuffer(raw[:SCALE_BYTES], dtype="<f8")[0])
    fields = unpack_fields(np.frombuffer(raw[SCALE_BYTES:], dtype="<u4"), sync_bits, d)
    return dequantize(from_field(fields, sync_bits, signed=True), sync_bits, signed=True) * scale


def average(x_sync, payloads, d: int, sync_bits: int) -> np.ndarray:
    """The next synchronized model (int64 holding int32, Q.23) from every rank's payload, in rank order.

    32 bits: the exact integer mean rounded to nearest (``(sum + N//2) // N``).  Fewer bits: ``x_sync`` plus the
    mean of the decoded updates (float64, rank order), rounded to nearest and saturated to int32."""
    from models.zipml.fixed_point import saturate32
    n = len(payloads)
    parts = [decode(p, d, sync_bits) for p in payloads]
    if sync_bits == 32:
        return (np.sum(parts, axis=0) + n // 2) // n
    mean = parts[0].copy()
    for p in parts[1:]:
        mean += p
    mean /= n
    return saturate32(np.asarray(x_sync, dtype=np.int64) + np.floor(mean + 0.5).astype(np.int64))


def model_sha(x) -> str:
    """Short digest of a Q.23 model (its int32 little-endian words)."""
    return hashlib.sha256(np.asarray(x, dtype=np.int64).astype("<i4").tobytes()).hexdigest()[:16]


# ------------------------------------------------------------------------------- one rank's data and golden


class Shard:
    """One rank's rows and random streams, and its golden epoch (NumPy only; the runner and :func:`replay`)."""

    def __init__(self, dataset, bits: int, rank: int, world: int, *, seed: int = 0, step_shift=None,
                 scale_step: bool = False):
        from host.sgd_train import check_request
        from models.zipml.datasets import prepare_linear
        from models.zipml.fixed_point import to_fixed
        from models.zipml.sgd import auto_step
        self.ds, self.signed = check_request(dataset, bits, 1)
        A, y = prepare_linear(self.ds, signed=self.signed)  # the whole set's scaling, as on one device
        if world > A.shape[0]:
            raise ValueError(f"{world} ranks but dataset {self.ds.name} has only {A.shape[0]} samples")
        self.n_total = A.shape[0]
        self.step_shift = (max(0, math.ceil(math.log2(1.0 / auto_step(A, 1))) + 3)
                           if step_shift is None else step_shift)
        # the engines' step: 2**k times the single-device step with --scale-step (k = floor(log2 world), at most
        # 3: the auto step leaves an 8x margin), so the average of world models that each took n/world steps
        # moves as far per epoch as one device's n steps (the linear scaling rule, Goyal et al. 2017)
        self.engine_shift = max(0, self.step_shift - (min(3, world.bit_length() - 1) if scale_step else 0))
        self.full = (A, y) if rank == 0 else None  # rank 0 runs the single-device full-precision reference
        rows = np.arange(rank, A.shape[0], world)
        self.A, self.y = A[rows], y[rows]
        self.labels = to_fixed(self.y)
        self.bits, self.rank, self.world = bits, rank, world
        # rank 0 draws exactly the single-device stream; the exchange rounding has a stream of its own
        self.rng = np.random.default_rng(seed if rank == 0 else [seed, rank])
        self.sync_rng = np.random.default_rng([seed, rank, 1])

    @property
    def n(self) -> int:
        return self.A.shape[0]

    @property
    def d(self) -> int:
        return self.A.shape[1]

    def codes(self):
        """This epoch's two independent quantizations (``train``'s draws; 32 bits: the fixed-point data once)."""
        from hw.sgd.layout import encode_32bit
        from models.zipml.quantize import quantize_codes
        if self.bits == 32:
            q = encode_32bit(self.A, self.signed)
            return q, q
        q1 = quantize_codes(self.A, self.bits, signed=self.signed, rng=self.rng)
        q2 = quantize_codes(self.A, self.bits, signed=self.signed, rng=self.rng)
        return q1, q2

    def golden(self, x, q1, q2, lo, hi, *, shift, delay, batch_mask=0):
        from models.zipml.fixed_point import engine_run
        return engine_run(x, q1[lo:hi], q2[lo:hi], self.labels[lo:hi], self.bits, signed=self.signed,
                          step_shift=shift, batch_mask=batch_mask, delay=delay).x

    def sse(self, x) -> float:
        """Sum of squared residuals of the Q.23 model on this shard."""
        r = self.A @ (np.asarray(x) / 2.0**23) - self.y
        return float(np.sum(r * r))

    def rng_states(self) -> dict:
        return {"samples": self.rng.bit_generator.state, "sync": self.sync_rng.bit_generator.state}

    def set_rng_states(self, states: dict):
        self.rng.bit_generator.state = states["samples"]
        self.sync_rng.bit_generator.state = states["sync"]


def sync_epochs(epochs: int, sync_every: int) -> list[int]:
    """0-based epochs after which the ranks exchange models: every ``sync_every``-th and the last."""
    return [e for e in range(epochs) if (e + 1) % sync_every == 0 or e == epochs - 1]


def replay(dataset, bits: int, epochs: int, world: int, *, sync_every: int = 1, sync_bits: int = 32, seed: int = 0,
           scale_step: bool = False, chunk: int, delay: int, decay_every: int = 2) -> list[np.ndarray]:
    """NumPy replay of a whole data-parallel run: per rank the golden engine runs of its shard, then
    :func:`average` at every sync.  Returns the averaged model after each epoch (at non-sync epochs the exact
    32-bit average the runner reports the loss of); the runner's ``model_sha_per_epoch`` are their digests.  ``chunk`` (samples per store load) and
    ``delay`` (pipeline staleness) are the engine's, as the runner's JSON reports them."""
    shards = [Shard(dataset, bits, r, world, seed=seed, scale_step=scale_step) for r in range(world)]
    d = shards[0].d
    xs = [np.zeros(d, dtype=np.int64) for _ in range(world)]
    x_sync = xs[0].copy()
    syncs, out = set(sync_epochs(epochs, sync_every)), []
    for e in range(epochs):
        shift = shards[0].engine_shift + e // decay_every
        for r, sh in enumerate(shards):
            q1, q2 = sh.codes()
            for lo in range(0, sh.n, chunk):
                xs[r] = sh.golden(xs[r], q1, q2, lo, min(sh.n, lo + chunk), shift=shift, delay=delay)
        if e in syncs:
            payloads = [encode(xs[r], x_sync, sync_bits, sh.sync_rng) for r, sh in enumerate(shards)]
            x_sync = average(x_sync, payloads, d, sync_bits)
            xs = [x_sync.copy() for _ in range(world)]
            out.append(x_sync)
        else:
            out.append(average(x_sync, [encode(x, x_sync, 32, None) for x in xs], d, 32))
    return out


# ------------------------------------------------------------------------------------------------ the runner


def under_torchrun() -> bool:
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def wanted(args) -> bool:
    """Does this ``host/run.py train`` invocation run data-parallel?  Under torchrun, with ``--workers N > 1``, or
    with any data-parallel flag (one rank then gives the single-device result, plus checkpoints)."""
    return (under_torchrun() or args.workers != 1 or args.sync_every != 1 or args.sync_bits != 32
            or args.checkpoint is not None or args.scale_step)


def usage_problem(args, world: int | None = None) -> str | None:
    """Everything about the data-parallel flags that needs no device; an error message or None."""
    if args.model != "linreg":
        return f"data-parallel runs train --model linreg only, not {args.model}"
    if args.workers < 1:
        return f"--workers must be >= 1, got {args.workers}"
    if world is not None and args.workers > 1 and args.workers != world:
        return f"--workers {args.workers} but torchrun started {world} ranks; drop --workers under torchrun"
    if args.sync_every < 1:
        return f"--sync-every must be >= 1, got {args.sync_every}"
    if args.sync_bits not in SYNC_BITS:
        return f"--sync-bits must be one of {', '.join(map(str, SYNC_BITS))}, got {args.sync_bits}"
    if args.backend == "serial":
        ports = (args.port or "").split(",")
        n = world or args.workers
        if not all(ports) or len(ports) != n:
            return (f"--backend serial with {n} ranks needs --port with one port per rank, comma-separated "
                    f"(got {args.port!r})")
    return None


NOT_DATA_PARALLEL = ("step", "decay", "batch", "save_model", "load_model")  # single-device flags only


def check_args(args) -> None:
    """``python host/run.py``'s checks for a data-parallel run, before any rank starts: the data-parallel
    flags, the single-device flags it does not take, then the single-device checks (dataset, plot path).
    Raises ``host.cli_checks.UsageError``."""
    from host import sgd_train
    from host.cli_checks import UsageError, flag
    err = usage_problem(args, int(os.environ["WORLD_SIZE"]) if under_torchrun() else None)
    if err is not None:
        raise UsageError(err)
    if args.loss != "ls":
        raise UsageError(f"--loss {args.loss}: data-parallel runs train least squares only (--loss ls)")
    given = sorted(set(NOT_DATA_PARALLEL) & getattr(args, "given", set()))
    if given:
        raise UsageError(f"{flag(given[0])} does not apply to data-parallel runs (they use the single-device "
                         f"default schedule)")
    sgd_train.check_args(args)


def launch(args) -> int:
    """``--workers N`` without torchrun: start N local ranks with torchrun (gloo on 127.0.0.1, a free port)."""
    script = Path(__file__).resolve().parent / "run.py"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.workers}",
           str(script), *args.argv]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    return subprocess.run(cmd, env=env).returncode


def _port_for(args, rank):
    return args.port.split(",")[rank] if args.backend == "serial" else args.port


def main(args) -> int:
    """Entry point from ``host/run.py`` when :func:`wanted`."""
    world = int(os.environ["WORLD_SIZE"]) if under_torchrun() else None
    err = usage_problem(args, world)
    if err is None:
        from host.sgd_train import TrainError, check_request
        try:
            check_request(args.dataset, args.bits, args.epochs, args.model)
        except TrainError as exc:
            err = str(exc)
    if err is not None:
        if world is None or int(os.environ["RANK"]) == 0:
            print(f"error: {err}", file=sys.stderr)
        return 2
    if world is None:
        return launch(args)
    import torch.distributed as dist
    rank = int(os.environ["RANK"])
    if os.environ.get("MASTER_ADDR") in ("127.0.0.1", "localhost"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=max(60.0, 20 * args.timeout)))
    try:
        result = run_rank(args, rank, world)
    except (RankFailed, ValueError) as exc:  # ValueError: a request every rank rejects alike
        if rank == 0:
            print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    finally:
        dist.destroy_process_group()
    if rank == 0:
        report(args, result)
    return 0


def _gather(obj, where: str):
    """all_gather_object, with a peer that vanished turned into :class:`RankFailed`."""
    import torch.distributed as dist
    out = [None] * dist.get_world_size()
    try:
        dist.all_gather_object(out, obj)
    except RuntimeError as exc:
        raise RankFailed(f"a peer rank stopped answering {where} (its process exited or hung; torchrun names "
                         f"it): {exc}") from None
    return out


def _check_status(statuses, where: str):
    bad = [s for s in statuses if not s["ok"]]
    if bad:
        s = bad[0]
        raise RankFailed(f"rank {s['rank']} ({s['device']}) failed {where}: {s['error']}")


def _load_checkpoint(path: Path, config: dict):
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RankFailed(f"checkpoint {path} cannot be read ({exc}); remove it to start afresh") from None
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
        raise RankFailed(f"checkpoint {path} is not a zippix checkpoint of version {CHECKPOINT_VERSION}")
    mismatch = {k: (state["config"].get(k), v) for k, v in config.items() if state["config"].get(k) != v}
    if mismatch:
        raise RankFailed(f"checkpoint {path} is from a different run: " +
                         ", ".join(f"{k} {a!r} there, {b!r} here" for k, (a, b) in mismatch.items()))
    return state


def _save_checkpoint(path: Path, state: dict):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, path)


def run_rank(args, rank: int, world: int) -> dict:
    """One rank's share of the run (the process group is up); returns the result dict on every rank."""
    import torch
    import torch.distributed as dist
    from host.backends import open_device
    from host.sgd_train import SgdDriver, TrainError, _wire_bytes, design_for
    from hw.sgd import engine as E
    from hw.sgd.layout import beats_per_sample, pack_samples, staleness
    from models.zipml.sgd import least_squares_loss, linear_sgd

    decay_every, batch_mask = 2, 0  # host.sgd_train.train's defaults, the single-device schedule
    seed = getattr(args, "seed", None) or 0
    epochs, sync_bits = args.epochs, args.sync_bits
    sh = Shard(args.dataset, args.bits, rank, world, seed=seed, scale_step=args.scale_step)
    n, d = sh.n, sh.d
    config = {"dataset": sh.ds.name, "bits": args.bits, "workers": world, "sync_every": args.sync_every,
              "sync_bits": sync_bits, "seed": seed, "features": d, "samples": sh.n_total,
              "step_shift": sh.step_shift, "engine_step_shift": sh.engine_shift}
    ckpt_path = Path(args.checkpoint) if args.checkpoint else None
    state = None
    if ckpt_path is not None and ckpt_path.exists():
        state = _load_checkpoint(ckpt_path, config)  # every rank reads it (one file system) or fails alike
        if state["epochs_done"] > epochs:
            raise RankFailed(f"checkpoint {ckpt_path} is at epoch {state['epochs_done']}, past --epochs {epochs}")

    label = f"{args.backend}" + (f" {_port_for(args, rank)}" if args.backend == "serial" else "")
    status = {"rank": rank, "device": label, "ok": True, "error": ""}
    dev = drv = None
    try:
        dev = open_device(args.backend, design=design_for(args.bits, encoding=args.encoding), port=_port_for(args, rank), baud=args.baud,
                          timeout=args.timeout, quiet=rank != 0)
        drv = SgdDriver(dev)
        p = drv.params
        if p["bits"] != args.bits:
            raise TrainError(f"the engine is built for {p['bits']}-bit samples, not {args.bits}")
        if d > p["max_features"]:
            raise TrainError(f"{d} model words but the engine holds at most {p['max_features']}")
        R = beats_per_sample(d, args.bits, p["bus_bits"], p["encoding"])
        chunk = min(n, p["store_beats"] // R)
        if chunk < 1:
            raise TrainError(f"one sample needs {R} beats but the sample store holds {p['store_beats']}")
        drv.clear_model()
        drv.configure(d, R, signed=sh.signed, step_shift=sh.engine_shift, batch_mask=batch_mask)
    except Exception as exc:  # noqa: BLE001 - any failure of this rank's device is reported to every rank
        status.update(ok=False, error=f"{type(exc).__name__}: {exc}")
    _check_status(_gather(status, "while opening the devices"), "while opening its device")
    delay = staleness(p["pipe_latency"], R)

    x_sync = np.zeros(d, dtype=np.int64)
    hist = {"loss": [], "cycles": [], "stalls": [], "beats": [], "secs": [], "sha": [], "saturated": False}
    first = 0
    if state is not None:
        x_sync = np.asarray(state["model_q23"], dtype=np.int64)
        sh.set_rng_states(state["rng_states"][rank])
        hist.update(state["history"])
        first = state["epochs_done"]
    x_engine = np.zeros(d, dtype=np.int64)  # what the engine holds (cleared)
    x_gold = x_sync.copy()
    syncs = set(sync_epochs(epochs, args.sync_every))
    pay = payload_bytes(d, sync_bits)
    sent = 0
    bar = None
    if rank == 0 and not args.no_progress:
        from tqdm import tqdm
        bar = tqdm(total=epochs, initial=first, unit="epoch", desc=f"{sh.ds.name} Q{args.bits} x{world}")
    t_start = time.perf_counter()
    for e in range(first, epochs):
        te = time.perf_counter()
        shift = sh.engine_shift + e // decay_every
        status = {"rank": rank, "device": label, "ok": True, "error": "", "cycles": 0, "stalls": 0, "beats": 0,
                  "saturated": False}
        try:
            if not np.array_equal(x_engine, x_gold):  # the synchronized model into the engine (both banks)
                drv.load_model(x_gold)
            drv.w(E.REG_STEP_SHIFT, shift)
            q1, q2 = sh.codes()
            for lo in range(0, n, chunk):
                hi = min(n, lo + chunk)
                drv.load_store(pack_samples(q1[lo:hi], q2[lo:hi], sh.labels[lo:hi], args.bits, p["bus_bits"], p["encoding"],
                                            signed=sh.signed))
                cnt = drv.run(hi - lo)
                for k in ("cycles", "stalls", "beats"):
                    status[k] += cnt[k]
                status["saturated"] |= cnt["t_saturated"] or cnt["x_saturated"]
                x_gold = sh.golden(x_gold, q1, q2, lo, hi, shift=shift, delay=delay, batch_mask=batch_mask)
            x_engine = drv.read_model(d)
            if not np.array_equal(x_engine, x_gold):
                raise RuntimeError(f"the engine's model differs from the bit-exact golden in "
                                   f"{int(np.sum(x_engine != x_gold))} of {d} words")
        except Exception as exc:  # noqa: BLE001 - reported to every rank in the status exchange
            status.update(ok=False, error=f"{type(exc).__name__}: {exc}")
        statuses = _gather(status, f"in the status exchange of epoch {e + 1}")
        _check_status(statuses, f"in epoch {e + 1}")
        if e in syncs:
            mine = torch.from_numpy(encode(x_engine, x_sync, sync_bits, sh.sync_rng))
            got = [torch.empty_like(mine) for _ in range(world)]
            try:
                dist.all_gather(got, mine)
            except RuntimeError as exc:
                raise RankFailed(f"a peer rank stopped answering during the model exchange of epoch {e + 1}: "
                                 f"{exc}") from None
            sent += (world - 1) * pay
            x_sync = average(x_sync, [g.numpy() for g in got], d, sync_bits)
            x_gold = x_sync.copy()
            x_avg = x_sync
        else:  # monitoring only: the exact mean of the local models, not loaded anywhere
            total = torch.from_numpy(x_engine.copy())
            dist.all_reduce(total)
            x_avg = (total.numpy() + world // 2) // world
        sse = torch.tensor([sh.sse(x_avg)], dtype=torch.float64)
        dist.all_reduce(sse)
        loss = 0.5 * float(sse.item() / sh.n_total)
        if world == 1:  # bit for bit the single-device figure
            loss = least_squares_loss(sh.A, sh.y, x_avg / 2.0**23)
        hist["loss"].append(loss)
        hist["cycles"].append([s["cycles"] for s in statuses])
        hist["stalls"].append([s["stalls"] for s in statuses])
        hist["beats"].append([s["beats"] for s in statuses])
        hist["saturated"] = hist["saturated"] or any(s["saturated"] for s in statuses)
        hist["secs"].append(time.perf_counter() - te)
        hist["sha"].append(model_sha(x_avg))
        if bar:
            bar.set_postfix(loss=f"{loss:.6f}", cycles=max(hist["cycles"][-1]))
            bar.update(1)
        if e in syncs and ckpt_path is not None:
            rng_states = _gather(sh.rng_states(), f"while checkpointing epoch {e + 1}")
            if rank == 0:
                _save_checkpoint(ckpt_path, {"version": CHECKPOINT_VERSION, "config": config,
                                             "epochs_done": e + 1, "model_q23": [int(v) for v in x_sync],
                                             "rng_states": rng_states, "history": hist})
    if bar:
        bar.close()
    dev.close()
    if rank != 0:
        return {}
    A, y = sh.full
    fp = linear_sgd(A, y, mode="full", epochs=epochs, step=2.0**-sh.step_shift, batch_size=1, rng=seed,
                    schedule=lambda ep: 2.0**-(sh.step_shift + ep // decay_every))
    per_rank = [list(c) for c in zip(*hist["cycles"])]
    sample_bytes = n * R * p["bus_bits"] // 8
    return {
        "dataset": sh.ds.name, "bits": args.bits, "epochs": epochs, "model": "linreg", "backend": args.backend,
        "workers": world, "sync_every": args.sync_every, "sync_bits": sync_bits,
        "sync_epochs": [e + 1 for e in sorted(syncs)],
        "loss_per_epoch": [float(v) for v in hist["loss"]],
        "fp_loss_per_epoch": [float(v) for v in fp.loss[1:]],
        "initial_loss": float(fp.loss[0]),
        "final_loss_ratio": float(hist["loss"][-1] / fp.loss[-1]),
        "cycles_per_epoch": [max(c) for c in hist["cycles"]],
        "cycles_per_epoch_per_rank": per_rank,
        "stall_cycles_per_epoch": [max(c) for c in hist["stalls"]],
        "beats_per_epoch": [sum(c) for c in hist["beats"]],
        "payload_bytes_per_rank": pay, "bytes_per_sync_per_rank": (world - 1) * pay,
        "bytes_sent_by_rank0_this_run": sent,
        "features": d, "samples": sh.n_total, "samples_per_rank": [len(range(r, sh.n_total, world))
                                                                  for r in range(world)],
        "bus_bits": p["bus_bits"], "lanes": p["lanes"], "beats_per_sample": R, "chunk_samples": chunk,
        "store_chunks_per_epoch": -(-n // chunk), "signed": sh.signed,
        "step_shift": sh.step_shift, "engine_step_shift": sh.engine_shift, "decay_every": decay_every, "batch_mask": batch_mask,
        "staleness_samples": delay, "pipe_latency_cycles": p["pipe_latency"],
        "golden_match": True, "saturated": hist["saturated"], "grad_rounding": "truncate",
        "model_q23": [int(v) for v in x_sync], "model_sha_per_epoch": hist["sha"],
        "resumed_from_epoch": state["epochs_done"] if state is not None else None,
        "link_sample_bytes_per_epoch": sample_bytes, "link_wire_bytes_per_epoch": _wire_bytes(sample_bytes),
        "baud": args.baud, "link_limited_seconds_per_epoch": _wire_bytes(sample_bytes) * 10 / args.baud,
        "link_bytes_moved": drv.link_bytes,
        "wall_seconds_per_epoch": hist["secs"], "wall_seconds": time.perf_counter() - t_start,
    }


def report(args, result: dict):
    """Rank 0: the table, the plot and the JSON (as ``host.sgd_train.main`` does for one device)."""
    from host.sgd_train import plot_loss
    w = result["workers"]
    print(f"{'epoch':>5} {'loss (avg)':>12} {'loss (fp ref)':>14} {'cycles/rank (max)':>18}")
    for e, (l, f, c) in enumerate(zip(result["loss_per_epoch"], result["fp_loss_per_epoch"],
                                      result["cycles_per_epoch"]), 1):
        print(f"{e:>5} {l:>12.6f} {f:>14.6f} {c:>18,}")
    print(f"{w} ranks, {result['sync_bits']}-bit model exchange every {result['sync_every']} epoch(s): "
          f"final loss {result['loss_per_epoch'][-1]:.6f} vs single-device full precision "
          f"{result['fp_loss_per_epoch'][-1]:.6f} ({100 * (result['final_loss_ratio'] - 1):+.2f} %); every "
          f"engine == its bit-exact golden: {result['golden_match']}")
    print(f"model exchange: {result['payload_bytes_per_rank']:,} bytes per rank per sync "
          f"({result['bytes_per_sync_per_rank']:,} sent by each rank in the all-gather)")
    plot = args.plot or Path("results") / f"{result['dataset']}_q{args.bits}_{args.backend}_w{w}_s{args.sync_bits}.png"
    plot_loss(result, plot)
    print(f"loss plot: {plot}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
        print(f"results: {args.json}")
