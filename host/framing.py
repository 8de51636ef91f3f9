"""Host side of the link protocol (``hw.protocol``): frames built with the PyPI ``cobs`` and ``crc``
packages, which are also the golden models the gateware framing is tested against."""
from dataclasses import dataclass

from cobs import cobs
from crc import Calculator, Crc16

_CRC = Calculator(Crc16.IBM_3740)


def crc16(data: bytes) -> int:
    return _CRC.checksum(data)


def encode_frame(body: bytes) -> bytes:
    """``0x00 | COBS(body | crc16_be) | 0x00`` (the leading delimiter closes off any garbage)."""
    return b"\x00" + cobs.encode(body + crc16(body).to_bytes(2, "big")) + b"\x00"


class FrameError(ValueError):
    pass


def decode_frame(wire: bytes) -> bytes:
    """Decode one frame (without delimiters) and check its CRC; returns the body."""
    try:
        raw = cobs.decode(wire)
    except cobs.DecodeError as exc:
        raise FrameError(f"bad COBS encoding: {exc}") from None
    if len(raw) < 4:
        raise FrameError(f"frame too short ({len(raw)} bytes)")
    if crc16(raw) != 0:
        raise FrameError("bad CRC")
    return raw[:-2]


@dataclass
class Reply:
    seq: int
    status: int
    data: bytes


class FrameSplitter:
    """Accumulates wire bytes and yields complete frames (between 0x00 delimiters)."""

    def __init__(self):
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        *frames, rest = bytes(self._buf).split(b"\x00")
        self._buf = bytearray(rest)
        return [f for f in frames if f]
