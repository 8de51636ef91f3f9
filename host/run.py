#!/usr/bin/env python3
"""zippix host: train ZipML models and talk to the gateware, on a board or in simulation.

The main job is ``python host/run.py --dataset NAME`` (training on the device); with no arguments it
trains the bundled default on simulated hardware. Other actions: ``info`` (design ID and parameters
read from the device) and ``echo`` (a link self-test through the loopback engine).
"""
import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from host import cli_checks as C  # noqa: E402
from host.backends import BACKENDS, open_device  # noqa: E402
from host.device import LinkError  # noqa: E402
from hw.design import Design  # noqa: E402

ACTIONS = ("train", "info", "echo")
LINEAR_MODELS = list(C.LINEAR_MODELS)
PIXELCNN_MODELS = list(C.PIXELCNN_MODELS)


def _dataset_help() -> str:
    from host.pixelcnn_run import export_datasets
    from models.zipml.datasets import BUNDLED, DOWNLOADABLE, SYNTHETIC
    pixel = "; ".join(f"{m}: {', '.join(export_datasets(m)) or 'none'}" for m in PIXELCNN_MODELS)
    return (f"a dataset name or a file. linreg: {', '.join(BUNDLED + SYNTHETIC)} (bundled); "
            f"{', '.join(DOWNLOADABLE)} (LIBSVM, downloaded to the cache); a LIBSVM/svmlight file or an .npz "
            f"with X and y. {pixel}; or an export .npz (default: synthetic100 for linreg, digits for the "
            f"PixelCNN models)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python host/run.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=lambda prog: argparse.RawDescriptionHelpFormatter(prog, max_help_position=32),
        epilog="examples:\n"
               "  python host/run.py                                  # train synthetic100, Q4, simulated\n"
               "  python host/run.py --dataset diabetes --bits 2 --epochs 20 --json out.json\n"
               "  python host/run.py --dataset diabetes --epochs 4 --save-model m.npz\n"
               "  python host/run.py --dataset diabetes --epochs 4 --load-model m.npz  # 4 more epochs\n"
               "  python host/run.py --dataset diabetes --epochs 0 --load-model m.npz  # evaluate only\n"
               "  python host/run.py --dataset digits --loss logistic --bits 4   # ten-class classifier\n"
               "  python host/run.py --model pixelcnn --dataset digits --samples 16\n"
               "  python host/run.py --workers 2 --sync-bits 8       # data-parallel, 2 engines, 8-bit exchange\n"
               "  torchrun --standalone --nproc-per-node 4 host/run.py --dataset synthetic1000 --sync-bits 4\n"
               "  python host/run.py info --backend amaranth\n"
               "  python host/run.py info --backend serial --port /dev/ttyUSB1\n\n"
               + C.EXIT_CODES_HELP + "\n",
    )
    p.add_argument("action", nargs="?", choices=ACTIONS, default="train", metavar="ACTION",
                   help="train (run --model on --dataset) | info | echo (default: train)")
    dev = p.add_argument_group("device")
    dev.add_argument("--backend", choices=BACKENDS, default="verilator",
                     help="verilator: compiled simulation (built once, cached); amaranth: pure-Python "
                          "simulation; serial: a board (default: verilator)")
    dev.add_argument("--port", metavar="URL",
                     help="serial port for --backend serial: /dev/ttyUSB1, socket://host:port, loop:// "
                          "(default: none)")
    dev.add_argument("--baud", type=C.int_at_least(1), default=115200, metavar="RATE",
                     help="serial baud rate (default: 115200)")
    dev.add_argument("--timeout", type=C.positive_float, default=5.0, metavar="S",
                     help="seconds to wait for each reply (default: 5.0)")
    job = p.add_argument_group("training (flags given to a job that does not use them are an error)")
    job.add_argument("--model", default="linreg", choices=LINEAR_MODELS + PIXELCNN_MODELS, metavar="MODEL",
                     help="linreg: ZipML least squares on the SGD engine; pixelcnn (gated, no blind spot), "
                          "gray-pixelcnn, pyramid-pixelcnn, masked-pixelcnn (plain masked convs): likelihood "
                          "and sampling on the convolution engine (default: linreg)")
    job.add_argument("--dataset", default=None, metavar="NAME_OR_PATH", help=_dataset_help())
    job.add_argument("--weights", type=Path, default=None, metavar="EXPORT",
                     help="PixelCNN models: the integer export (.npz) to run (default: the bundled export for "
                          "--dataset, or for the shape of its images)")
    job.add_argument("--bits", type=int, default=None, metavar="B",
                     help="linreg: sample precision: 1, 2, 4, 8, or 32 for the full-precision datapath "
                          "(default: 4)")
    job.add_argument("--epochs", type=C.int_at_least(0), default=None, metavar="E",
                     help="linreg: training epochs; 0 with --load-model evaluates the model (default: 10)")
    job.add_argument("--loss", choices=["ls", "l2svm", "logistic"], default=None,
                     help="linreg on the SGD engine: ls (least squares), l2svm (squared hinge, labels +-1), "
                          "logistic (sigmoid table); classifiers train one-vs-rest for K > 2 classes and report "
                          "test accuracy next to scikit-learn (default: ls)")
    job.add_argument("--encoding", choices=["compact", "pair"], default=None,
                     help="double-sample encoding on the bus: compact (interval index + one up/down bit per "
                          "copy, b+1 bits) or pair (two b-bit codes, 2b bits) (default: compact for --bits 2, 4, "
                          "8; pair for 1 and 32)")
    job.add_argument("--seed", type=C.int_at_least(0), default=None, metavar="N",
                     help="linreg: seed of the stochastic quantization (default: 0); PixelCNN: seed of the "
                          "on-chip sampler, 1..2^32-1 (default: 0x2545F491)")
    job.add_argument("--step", type=C.step_size, default=None, metavar="S",
                     help="linreg: initial step size, a power of two: 0.0078125, 2^-7 or 2**-7 (default: "
                          "chosen from the data, 2^-(ceil(log2(1/safe step)) + 3))")
    job.add_argument("--decay", type=C.int_at_least(0), default=None, metavar="N",
                     help="linreg: halve the step every N epochs; 0 keeps it constant (default: 2)")
    job.add_argument("--batch", type=C.power_of_two, default=None, metavar="B",
                     help="linreg: minibatch size, a power of two: B samples share one model snapshot "
                          "(default: 1)")
    job.add_argument("--save-model", type=Path, default=None, metavar="NPZ",
                     help="linreg: write the trained model and what it was trained with to this .npz "
                          "(format in host/model_file.py; default: none)")
    job.add_argument("--load-model", type=Path, default=None, metavar="NPZ",
                     help="linreg: start from a model saved with --save-model: training continues its step "
                          "schedule and random stream (its --bits, --step, --decay, --batch and --seed unless "
                          "given); --epochs 0 only evaluates it (default: none)")
    job.add_argument("--json", type=Path, default=None, metavar="OUT",
                     help="write the results as JSON here (default: none)")
    job.add_argument("--plot", type=Path, metavar="PNG", default=None,
                     help="linreg: loss plot (default: results/<dataset>_q<bits>_<backend>.png); PixelCNN: "
                          "sample grid (default: results/conv_<model>_<dataset>_<backend>.png)")
    job.add_argument("--no-progress", action="store_true", help="no progress bars (default: shown)")
    job.add_argument("--samples", type=C.int_at_least(0, " (0: no sampling)"), default=None, metavar="N",
                     help="PixelCNN models: images to generate on the device, 0 for none (default: 16; 2 on "
                          "amaranth)")
    job.add_argument("--limit", type=C.int_at_least(1), default=None, metavar="N",
                     help="PixelCNN models: score only the first N test images (default: all; 2 on amaranth, "
                          "which simulates about 3,000 engine cycles/s)")
    par = p.add_argument_group("data-parallel training (linreg; see README 'Several boards or machines')")
    par.add_argument("--workers", type=int, default=None, metavar="N",
                     help="ranks, one engine each, started here with torchrun over 127.0.0.1 (default: 1; "
                          "under torchrun its --nproc-per-node/--nnodes decide)")
    par.add_argument("--sync-every", type=int, default=None, metavar="E",
                     help="epochs each rank trains its shard between model averagings (default: 1)")
    par.add_argument("--sync-bits", type=int, default=None, metavar="B",
                     help="model exchange precision: 32 (exact int32 model), 16, 8 or 4 (the update since the "
                          "last average, stochastically rounded with the sample quantizer) (default: 32)")
    par.add_argument("--scale-step", action="store_true", default=None,
                     help="each engine's step 2**k times the single-device step, 2**k the largest power of two "
                          "<= the ranks (at most 8): the average then moves per epoch as one device does "
                          "(default: off, the single-device step)")
    par.add_argument("--checkpoint", type=Path, metavar="PATH", default=None,
                     help="keep the last averaged model here and resume from it when it exists (default: none)")
    test = p.add_argument_group("echo self-test")
    test.add_argument("--bytes", type=C.int_at_least(1), default=None, metavar="N",
                      help="bytes to send through the loopback engine (default: 4096)")
    return p


def cmd_info(args) -> int:
    with open_device(args.backend, port=args.port, baud=args.baud, timeout=args.timeout, quiet=False) as dev:
        info = dev.info()
        print(f"backend        : {args.backend}" + (f" ({args.port})" if args.port else ""))
        print(info.describe())
    return 0


def cmd_echo(args) -> int:
    import random
    with open_device(args.backend, design=Design("echo"), port=args.port, baud=args.baud,
                     timeout=args.timeout, quiet=False) as dev:
        info = dev.info()
        if info.engine != "ECHO":
            raise LinkError(f"the device runs engine {info.engine}, not the ECHO loopback engine")
        rng = random.Random(1)
        key = rng.randrange(256)
        dev.write_engine_reg(0, key)
        data = bytes(rng.randrange(256) for _ in range(args.bytes))
        chunk = 256
        t0, c0 = time.perf_counter(), dev.cycles()
        back = bytearray()
        from tqdm import tqdm
        with tqdm(total=len(data), unit="B", unit_scale=True, desc=f"echo ({args.backend})",
                  disable=args.no_progress) as bar:
            for start in range(0, len(data), chunk):
                dev.send(data[start:start + chunk])
                back += dev.recv(len(data[start:start + chunk]))
                bar.update(len(data[start:start + chunk]))
        seconds, cycles = time.perf_counter() - t0, dev.cycles() - c0
        bad = sum(a ^ key != b for a, b in zip(data, back))
        print(f"echo: {len(data)} bytes each way in {seconds:.2f} s ({2 * len(data) / seconds:,.0f} B/s), "
              f"{cycles:,} cycles, {bad} mismatched bytes")
        return 1 if bad else 0


def job_module(args):
    """The module that runs the job: ``check_args(args)`` (usage checks that need the job's knowledge) and
    ``main(args) -> exit status``; None for info and echo."""
    job = C.job_of(args)
    if job == "pixelcnn":
        from host import pixelcnn_run
        return pixelcnn_run
    if job == "linreg":
        from host import distributed, sgd_train
        return distributed if distributed.wanted(args) else sgd_train
    return None


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # --workers N relaunches itself under torchrun
    try:
        try:
            C.validate(args)
            module = job_module(args)
            if module is not None:
                module.check_args(args)
        except C.UsageError as exc:
            parser.print_usage(sys.stderr)
            print(f"{parser.prog}: error: {exc}", file=sys.stderr)
            return C.EXIT_USAGE
        if module is not None:
            return module.main(args)
        return {"info": cmd_info, "echo": cmd_echo}[args.action](args)
    except KeyboardInterrupt:
        print(f"\n{parser.prog}: interrupted", file=sys.stderr)
        return C.EXIT_INTERRUPTED
    except Exception as exc:  # a run that failed: one line, not a traceback; anything else is a bug
        from host.backends.verilator_sim import SimulatorBuildError
        from hw.pixelcnn.program import EngineFitError  # the device's engine cannot run the export
        if not isinstance(exc, (LinkError, SimulatorBuildError, OSError, EngineFitError)):
            raise
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return C.EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
