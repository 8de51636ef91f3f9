"""The board top as a serial port: a Verilator model of what a bitstream holds, on a TCP socket.

The model is ``hw.board.BoardSim`` (UART PHY at the board's clock and baud rate, FIFO, link, engine) built
by ``verilator_sim``; its bridge plays the far end of the serial line bit by bit in simulated time and
serves ``socket://127.0.0.1:PORT``, so the serial backend drives it exactly as it drives a board::

    python -m host.backends.board_sim --board icebreaker --engine echo
    python host/run.py info --backend serial --port socket://127.0.0.1:PORT

The design keeps its state from one connection to the next, as a board does; Ctrl-C ends it.
"""
import argparse
import json
import sys
import weakref

from hw.board import DEFAULT_BAUD, BoardSim
from hw.design import ENGINES, Design

from .verilator_sim import _kill_group, build_board_simulator, start_simulator


def board_clock_hz(board: str) -> float:
    from hw.build import get_board
    return get_board(board).make_platform().default_clk_frequency


class BoardSimulator:
    """A running board-top model; ``url`` is the port to open. ``close()`` (or exit) ends the process."""

    def __init__(self, design: Design, *, board: str = "icebreaker", baud: int = DEFAULT_BAUD,
                 quiet: bool = True, port: int = 0):
        sim = BoardSim(design, board=board, clk_hz=board_clock_hz(board), baud=baud)
        self.divisor = sim.top.divisor
        exe = build_board_simulator(sim, quiet=quiet)
        self.process, self.port = start_simulator([str(exe), "--port", str(port), "--serve"])
        self._finalizer = weakref.finalize(self, _kill_group, self.process)
        self.url = f"socket://127.0.0.1:{self.port}"

    def close(self):
        self._finalizer()
        self.process.stdout.close()
        self.process.stderr.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Serve a Verilator model of the board top (UART pins at a real "
                                            "bit rate) on a TCP port, for --backend serial --port socket://...")
    p.add_argument("--board", default="icebreaker", help="board whose clock the model runs at (default: icebreaker)")
    p.add_argument("--engine", default="echo", choices=sorted(ENGINES), help="engine (default: echo)")
    p.add_argument("--engine-args", default="{}", metavar="JSON",
                   help='engine parameters as JSON, e.g. \'{"bits": 4}\' (default: {})')
    p.add_argument("--max-frame", type=int, default=512, help="link frame size, bytes (default: 512)")
    p.add_argument("--baud", type=int, default=DEFAULT_BAUD, help=f"UART bit rate (default: {DEFAULT_BAUD})")
    p.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (default: 0, any free one)")
    args = p.parse_args(argv)
    try:
        design = Design(engine=args.engine, engine_args=json.loads(args.engine_args), max_frame=args.max_frame)
        sim = BoardSimulator(design, board=args.board, baud=args.baud, quiet=False, port=args.port)
    except (ValueError, TypeError) as exc:
        p.error(str(exc))
    print(f"board top of {args.board} at {args.baud} baud ({sim.divisor} cycles a bit) on {sim.url}", flush=True)
    try:
        sim.process.wait()
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    finally:
        sim.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
