"""Backends leave no processes behind: a simulator when the program ends by Ctrl-C or an error without closing
its device, a compile (and what it started) when Ctrl-C arrives during a build."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from host.backends.verilator_sim import run_tool


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie waiting for its parent counts as gone
        return f.read().split()[2] != "Z"


@pytest.mark.parametrize("ending", ["raise KeyboardInterrupt", "raise RuntimeError('boom')"])
def test_simulator_ends_with_the_program_that_did_not_close_it(ending):
    script = textwrap.dedent(f"""
        from host.backends import open_device
        dev = open_device("verilator")
        dev.info()
        print(dev.transport.process.pid, flush=True)
        {ending}
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    pid = int(result.stdout.split()[0])
    deadline = time.monotonic() + 5
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(pid), "the Verilator simulator outlived the program"


def test_ctrl_c_during_a_build_ends_the_whole_compile(tmp_path):
    # a stand-in for verilator -> make -> g++: a shell that starts a child and waits
    previous = signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    signal.setitimer(signal.ITIMER_REAL, 0.5)
    try:
        with pytest.raises(KeyboardInterrupt):
            run_tool(["sh", "-c", f"sleep 60 & echo $! > {tmp_path / 'child.pid'}; wait"])
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    child = int((tmp_path / "child.pid").read_text())
    time.sleep(0.2)
    assert not alive(child), "a process started by the build outlived Ctrl-C"
