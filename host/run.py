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

from host.backends import BACKENDS, open_device  # noqa: E402
from host.device import LinkError  # noqa: E402
from hw.design import Design  # noqa: E402

ACTIONS = ("train", "info", "echo")
LINEAR_MODELS = ["linreg"]
PIXELCNN_MODELS = ["pixelcnn", "gray-pixelcnn", "pyramid-pixelcnn"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python host/run.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=lambda prog: argparse.RawDescriptionHelpFormatter(prog, max_help_position=32),
        epilog="examples:\n"
               "  python host/run.py                                  # train synthetic100, Q4, simulated\n"
               "  python host/run.py --dataset diabetes --bits 2 --epochs 20 --json out.json\n"
               "  python host/run.py --model pixelcnn --dataset digits --samples 16\n"
               "  python host/run.py info --backend amaranth\n"
               "  python host/run.py info --backend serial --port /dev/ttyUSB1\n",
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
    dev.add_argument("--baud", type=int, default=115200, help="serial baud rate (default: 115200)")
    dev.add_argument("--timeout", type=float, default=5.0, metavar="S",
                     help="seconds to wait for each reply (default: 5.0)")
    job = p.add_argument_group("training")
    job.add_argument("--model", default="linreg", choices=LINEAR_MODELS + PIXELCNN_MODELS, metavar="MODEL",
                     help="linreg: ZipML least squares on the SGD engine; pixelcnn, gray-pixelcnn, "
                          "pyramid-pixelcnn: likelihood and sampling on the convolution engine (default: linreg)")
    job.add_argument("--dataset", default=None, metavar="NAME_OR_PATH",
                     help="a bundled dataset name or a file (default: synthetic100 for linreg, digits for "
                          "the PixelCNN models)")
    job.add_argument("--bits", type=int, default=4, metavar="B",
                     help="sample precision: 1, 2, 4, 8, or 32 for the full-precision datapath (default: 4)")
    job.add_argument("--epochs", type=int, default=10, metavar="E", help="training epochs (default: 10)")
    job.add_argument("--loss", choices=["ls", "l2svm", "logistic"], default="ls",
                     help="linreg on the SGD engine: ls (least squares), l2svm (squared hinge, labels +-1), "
                          "logistic (sigmoid table); classifiers train one-vs-rest for K > 2 classes and report "
                          "test accuracy next to scikit-learn (default: ls)")
    job.add_argument("--encoding", choices=["compact", "pair"], default=None,
                     help="double-sample encoding on the bus: compact (interval index + one up/down bit per "
                          "copy, b+1 bits) or pair (two b-bit codes, 2b bits) (default: compact for --bits 2, 4, "
                          "8; pair for 1 and 32)")
    job.add_argument("--json", type=Path, metavar="OUT", help="write the results as JSON here (default: none)")
    job.add_argument("--plot", type=Path, metavar="PNG", default=None,
                     help="loss plot path (default: results/<dataset>_q<bits>_<backend>.png)")
    job.add_argument("--no-progress", action="store_true", help="no progress bar (default: shown)")
    job.add_argument("--samples", type=int, default=16, metavar="N",
                     help="PixelCNN models: images to generate on the device (default: 16; 2 on amaranth)")
    job.add_argument("--limit", type=int, default=None, metavar="N",
                     help="PixelCNN models: score only the first N test images (default: all; 2 on amaranth, "
                          "which simulates about 3,000 engine cycles/s)")
    test = p.add_argument_group("echo self-test")
    test.add_argument("--bytes", type=int, default=4096, metavar="N",
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
    if args.bytes <= 0:
        raise SystemExit("error: --bytes must be positive")
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
        for start in range(0, len(data), chunk):
            dev.send(data[start:start + chunk])
            back += dev.recv(len(data[start:start + chunk]))
        seconds, cycles = time.perf_counter() - t0, dev.cycles() - c0
        bad = sum(a ^ key != b for a, b in zip(data, back))
        print(f"echo: {len(data)} bytes each way in {seconds:.2f} s ({2 * len(data) / seconds:,.0f} B/s), "
              f"{cycles:,} cycles, {bad} mismatched bytes")
        return 1 if bad else 0


def cmd_train(args) -> int:
    if args.model in PIXELCNN_MODELS:
        from host import pixelcnn_run
        args.dataset = args.dataset or "digits"
        return pixelcnn_run.main(args)
    from host import sgd_train
    args.dataset = args.dataset or "synthetic100"
    return sgd_train.main(args)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return {"info": cmd_info, "echo": cmd_echo, "train": cmd_train}[args.action](args)
    except LinkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
