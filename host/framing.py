"""Host side of the link protocol (``hw.protocol``): COBS from the PyPI ``cobs`` package and the CRC from
``binascii.crc_hqx`` (C speed; CRC-16/XMODEM's routine started at 0xFFFF is CRC-16/IBM-3740). The PyPI
``crc`` package stays the independent golden: ``tests/test_link_units.py`` checks that both agree with
each other and with the gateware's CRC."""
import binascii

from cobs import cobs

CRC_INIT = 0xFFFF


def crc16(data: bytes) -> int:
    """CRC-16/IBM-3740 (poly 0x1021, init 0xFFFF, MSB first, no final xor) of ``data``."""
    return binascii.crc_hqx(data, CRC_INIT)


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


class FrameSplitter:
    """Accumulates wire bytes and yields complete frames (between 0x00 delimiters)."""

    def __init__(self):
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        *frames, rest = bytes(self._buf).split(b"\x00")
        self._buf = bytearray(rest)
        return [f for f in frames if f]
