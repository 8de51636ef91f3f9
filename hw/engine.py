"""The contract between the link's command router and an engine.

An engine is a ``wiring.Component`` whose signature contains ``ENGINE_MEMBERS``:

- ``i``: bytes from ``WRITE_BULK`` frames, in order (stream, the engine may stall it);
- ``o``: bytes for ``READ_BULK`` replies (stream; the router takes what is ready);
- ``reg_addr``/``reg_wdata``/``reg_we``/``reg_re``/``reg_rdata``: a register port. The router pulses
  ``reg_we`` for one cycle to write; it pulses ``reg_re`` and samples ``reg_rdata`` on the next cycle.
  Addresses are engine-relative (link address - ``ENGINE_REG_BASE``). An engine may apply a write on the
  cycle after its pulse (from registered address, data and decode, off its critical paths): the router's next
  access is in a later command, several cycles on;
- ``busy``: high while the engine is working without input (simulation bridges keep the clock running
  while it is high, and may sleep when everything is idle).
- optional ``reg_ack`` (``Out(1)``): a component that has it (``hw.link.crossing.EngineCrossing``, which runs an
  engine in its own clock domain) raises it for one cycle when a write is done or a read's data is on
  ``reg_rdata``, and the router waits for it. Without it the router takes ``reg_rdata`` on the cycle after
  ``reg_re`` and a write is done with its pulse. Engines themselves do not have it.

It also has two Python attributes: ``engine_id`` (four ASCII characters) and ``params`` (a JSON-able
dict of everything that changes its behaviour; it goes into the design digest).
New engines plug in by implementing this; the router does not change.
"""
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

ENGINE_MEMBERS = {
    "i": In(stream.Signature(8)),
    "o": Out(stream.Signature(8)),
    "reg_addr": In(8),
    "reg_wdata": In(32),
    "reg_we": In(1),
    "reg_re": In(1),
    "reg_rdata": Out(32),
    "busy": Out(1),
}


class Engine(wiring.Component):
    """Base class: subclasses set ``engine_id`` and ``params`` and may add members."""

    engine_id: str = "NONE"

    def __init__(self, params: dict, extra_members: dict | None = None):
        self.params = dict(params)
        super().__init__({**ENGINE_MEMBERS, **(extra_members or {})})
