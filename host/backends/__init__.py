"""Backends behind ``host.device.Device``: a board over pyserial, Verilator, the Amaranth simulator.

``open_device(backend, design=...)`` is the one entry point; what it returns behaves the same for all.
"""
from ..device import Device, LinkError

BACKENDS = ("verilator", "amaranth", "serial")


def open_device(backend: str, *, design=None, port: str | None = None,
                baud: int = 115200, timeout: float = 2.0, quiet: bool = True) -> Device:
    """Open a device. ``design`` selects the simulated gateware (ignored for ``serial``: the board
    holds its own bitstream; compare ``Device.info()`` with what you expect)."""
    if design is None and backend != "serial":
        from hw.design import Design  # (the gateware: only simulated backends need it)
        design = Design()
    if backend == "amaranth":
        from .amaranth_sim import AmaranthTransport
        return Device(AmaranthTransport(design.make_core()), timeout=timeout, name="amaranth")
    if backend == "verilator":
        from .verilator_sim import VerilatorTransport, build_simulator
        return Device(VerilatorTransport(build_simulator(design.make_core(), quiet=quiet)),
                      timeout=timeout, name="verilator")
    if backend == "serial":
        if not port:
            raise LinkError("--backend serial needs --port (e.g. /dev/ttyUSB1, socket://host:port, loop://)")
        from .serial_port import open_transport
        return Device(open_transport(port, baud), timeout=timeout, name=port)
    raise LinkError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
