"""Verilog export of a design, shared by the Verilator backend and the cocotb suites.

Ports follow Amaranth's naming: ``clk``, ``rst`` (synchronous, active high), and the component's
signature flattened with ``__`` (``rx__payload``, ``rx__valid``, ``rx__ready``, ``tx__...``, ``busy``).
"""
from pathlib import Path

from amaranth.back import verilog

TOP_NAME = "zippix_top"


def export_verilog(core, path: Path, name: str = TOP_NAME) -> Path:
    """Write ``core`` as Verilog to ``path`` (only when the text changed, to keep make incremental)."""
    text = verilog.convert(core, name=name, emit_src=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return path
