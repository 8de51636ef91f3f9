"""One host API over every backend: registers, bulk data and design info over the framed link.

A ``Device`` talks to a *transport*, anything with ``write(bytes)``, ``read(timeout) -> bytes`` and
``close()`` (plus optionally ``quiescent() -> bool``, true when a simulation has nothing left to do, so
a missing reply is reported at once instead of after the timeout). The code that uses a ``Device`` does
not know whether a board, Verilator or the Amaranth simulator is behind it.
"""
import hashlib
import json
import time
from dataclasses import dataclass

from hw import protocol as P

from .framing import FrameError, FrameSplitter, encode_frame, decode_frame


class LinkError(RuntimeError):
    """The device could not be reached or did not answer properly."""


class LinkTimeout(LinkError):
    pass


class DeviceError(LinkError):
    """The device answered with an error status."""


@dataclass
class DeviceInfo:
    id_value: int
    protocol: int
    digest: int
    engine: str
    max_frame: int
    params: dict

    def describe(self) -> str:
        lines = [
            f"design id      : 0x{self.id_value:08x} (protocol v{self.protocol})",
            f"design digest  : 0x{self.digest:08x}",
            f"engine         : {self.engine}",
            f"max frame      : {self.max_frame} bytes",
            "parameters     : " + json.dumps(self.params, sort_keys=True),
        ]
        return "\n".join(lines)


class Device:
    def __init__(self, transport, *, timeout: float = 2.0, name: str = "device"):
        self.transport = transport
        self.timeout = timeout
        self.name = name
        self._seq = 0
        self._splitter = FrameSplitter()
        self._max_frame = None
        self.bad_replies = 0  # replies dropped for a bad COBS/CRC or a stale sequence number

    # --- context management
    def close(self):
        self.transport.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- raw transactions
    def transact(self, cmd: int, args: bytes = b"", *, timeout: float | None = None) -> bytes:
        """Send one request and return the data of its OK reply."""
        self._seq = (self._seq + 1) & 0xFF
        seq = self._seq
        request = bytes([seq, cmd]) + args
        self.transport.write(encode_frame(request))
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        quiescent = getattr(self.transport, "quiescent", lambda: False)
        while True:
            chunk = self.transport.read(max(0.0, deadline - time.monotonic()))
            for wire in self._splitter.feed(chunk):
                try:
                    body = decode_frame(wire)
                except FrameError:
                    self.bad_replies += 1
                    continue
                if body == request:
                    raise LinkError(f"{self.name}: the port sends our own request back (a loopback or an "
                                    "echoing device, not a zippix design)")
                if body[0] != seq:
                    self.bad_replies += 1
                    continue
                if body[1] != P.STATUS_OK:
                    raise DeviceError(f"{self.name}: {P.COMMAND_NAMES.get(cmd, hex(cmd))} failed: "
                                      f"{P.STATUS_NAMES.get(body[1], f'status 0x{body[1]:02x}')}")
                return body[2:]
            if not chunk and (time.monotonic() >= deadline or quiescent()):
                raise LinkTimeout(
                    f"{self.name}: no valid reply to {P.COMMAND_NAMES.get(cmd, hex(cmd))} within "
                    f"{self.timeout if timeout is None else timeout:.1f} s (is the port right, the board "
                    f"programmed with a zippix bitstream, the baud rate matching?)")

    # --- registers
    def read_reg(self, addr: int) -> int:
        data = self.transact(P.CMD_READ_REG, bytes([addr]))
        if len(data) != 4:
            raise LinkError(f"{self.name}: READ_REG reply has {len(data)} data bytes, expected 4")
        return int.from_bytes(data, "little")

    def write_reg(self, addr: int, value: int):
        if not 0 <= addr <= 0xFF:
            raise ValueError(f"register address out of range: {addr}")
        self.transact(P.CMD_WRITE_REG, bytes([addr]) + (value & 0xFFFFFFFF).to_bytes(4, "little"))

    def read_engine_reg(self, index: int) -> int:
        return self.read_reg(P.ENGINE_REG_BASE + index)

    def write_engine_reg(self, index: int, value: int):
        self.write_reg(P.ENGINE_REG_BASE + index, value)

    def cycles(self) -> int:
        """The design's free-running clock-cycle counter (64 bit)."""
        lo = self.read_reg(P.REG_CYCLES_LO)
        return (self.read_reg(P.REG_CYCLES_HI) << 32) | lo

    @property
    def max_frame(self) -> int:
        if self._max_frame is None:
            self._max_frame = self.read_reg(P.REG_MAX_FRAME)
            if self._max_frame < 16:
                raise LinkError(f"{self.name}: implausible max frame size {self._max_frame}")
        return self._max_frame

    # --- bulk data
    def send(self, data: bytes, *, timeout: float | None = None):
        """Push bytes into the engine's input stream.

        The device replies early when the engine stops taking input (its buffers are full); the rest is
        resent until ``timeout`` passes, then ``LinkTimeout`` says how much got through.
        """
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        chunk = self.max_frame - P.FRAME_OVERHEAD
        data = bytes(data)
        done = 0
        while done < len(data):
            piece = data[done:done + chunk]
            taken = int.from_bytes(self.transact(P.CMD_WRITE_BULK, piece), "little")
            if taken > len(piece):
                raise LinkError(f"{self.name}: engine reports taking {taken} of {len(piece)} bytes")
            done += taken
            if taken < len(piece) and time.monotonic() >= deadline:
                raise LinkTimeout(f"{self.name}: engine took {done} of {len(data)} bytes and stopped "
                                  f"accepting input for {limit:.1f} s (is its output being read?)")

    def recv(self, n: int, *, timeout: float | None = None) -> bytes:
        """Read exactly ``n`` bytes from the engine's output stream."""
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        out = bytearray()
        chunk = self.max_frame - P.FRAME_OVERHEAD
        while len(out) < n:
            piece = self.transact(P.CMD_READ_BULK, min(n - len(out), chunk).to_bytes(2, "little"))
            out += piece
            if not piece and time.monotonic() >= deadline:
                raise LinkTimeout(f"{self.name}: engine produced {len(out)} of {n} bytes within {limit:.1f} s")
        return bytes(out)

    # --- identity
    def info(self) -> DeviceInfo:
        id_value = self.read_reg(P.REG_ID)
        if id_value >> 8 != P.MAGIC:
            raise LinkError(f"{self.name}: not a zippix design (ID register reads 0x{id_value:08x})")
        protocol = id_value & 0xFF
        if protocol != P.PROTOCOL_VERSION:
            raise LinkError(f"{self.name}: design speaks protocol v{protocol}, this host v{P.PROTOCOL_VERSION}; "
                            "rebuild the bitstream or update the host")
        digest = self.read_reg(P.REG_DIGEST)
        engine = P.engine_id_name(self.read_reg(P.REG_ENGINE_ID))
        blob = bytearray()
        total = None
        while total is None or len(blob) < total:
            data = self.transact(P.CMD_INFO, len(blob).to_bytes(2, "little"))
            total = int.from_bytes(data[:2], "little")
            if len(data) == 2 and len(blob) < total:
                raise LinkError(f"{self.name}: info blob stopped at {len(blob)} of {total} bytes")
            blob += data[2:]
        if int.from_bytes(hashlib.sha256(blob).digest()[:4], "big") != digest:
            raise LinkError(f"{self.name}: design parameters do not match the digest register")
        return DeviceInfo(id_value, protocol, digest, engine, self.max_frame, json.loads(blob))
