"""The ZipML low-precision SGD engine: streaming double-sampled least-squares SGD with an on-chip model."""
from .layout import SUPPORTED_BITS, SUPPORTED_BUS_BITS, beats_per_sample, lanes, slot_bits, staleness

__all__ = ["SUPPORTED_BITS", "SUPPORTED_BUS_BITS", "beats_per_sample", "lanes", "slot_bits", "staleness",
           "SgdEngine"]


def __getattr__(name):
    if name == "SgdEngine":
        from .engine import SgdEngine
        return SgdEngine
    raise AttributeError(name)
