"""One host API over every backend: registers, bulk data and design info over the framed link.

A ``Device`` talks to a *transport*, anything with ``write(bytes)``, ``read(timeout) -> bytes`` and
``close()``; optionally ``quiescent() -> bool`` (true when a simulation has nothing left to do, so a missing
reply is resent at once instead of after a wait), ``retry_s`` (the shortest wait for a missing reply) and
``timeout_hint`` (what to check when nothing answers). The code that uses a ``Device`` does not know whether
a board, Verilator or the Amaranth simulator is behind it. Lost and damaged frames are recovered from as
``hw.protocol`` describes ("Recovery"): requests are resent, nothing is executed twice.
"""
import hashlib
import json
import random
import time
from collections import deque
from dataclasses import dataclass

from hw import protocol as P

from .framing import FrameError, FrameSplitter, encode_frame, decode_frame

POS_MASK = 0xFFFFFFFF
SAFETY_S = 60.0  # a simulation that reports quiescence is waited for this much longer than the timeout


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
    """Registers, bulk data and design info over any transport.

    Recovery (``hw.protocol``, "Recovery"): a request whose reply does not come is sent again, up to
    ``retries`` times with the wait doubling each time, all within the timeout; the device answers a
    repeated state-changing request from its stored reply, so nothing runs twice. ``send`` keeps up to
    ``window`` WRITE_BULK frames in flight (``window=1`` is the old stop-and-wait).
    """

    def __init__(self, transport, *, timeout: float = 2.0, name: str = "device", window: int = 8,
                 retries: int = 8, retry_s: float | None = None):
        if window < 1:
            raise ValueError(f"window must be at least 1 request in flight, got {window}")
        self.transport = transport
        self.timeout = timeout
        self.name = name
        self.window = window
        self.retries = retries
        # shortest wait for a missing reply (a few frame times on a slow line, else 50 ms). As in TCP's
        # retransmission timer, the wait in use is four smoothed round trips (measured on requests sent once)
        # but not below that, and doubles while the line stays silent.
        self.retry_s = retry_s if retry_s is not None else getattr(transport, "retry_s", 0.05)
        self._wait = self.retry_s
        self._rtt = None
        self._sent_at = {}  # seq -> when a request was first sent
        self._seq = 0
        self._splitter = FrameSplitter()
        self._frames = deque()  # complete reply frames read but not looked at yet
        self._max_frame = None
        self._claimed = False
        self._in_pos = None  # the device's WRITE_BULK stream position, when known for sure
        # a simulation that reports when it has nothing left to do needs no timer: it is silent only then
        self._quiescent = getattr(transport, "quiescent", None)
        self.bad_replies = 0  # replies dropped for a bad COBS/CRC or an unknown sequence number
        self.resends = 0      # requests sent again because their reply did not come
        self.requests = 0     # requests sent (new ones, not counting resends)

    # --- context management
    def close(self):
        self.transport.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- raw transactions
    def _issue(self, cmd: int, args: bytes, out: list | None = None) -> tuple[int, bytes]:
        """Send a new request (or append its frame to ``out``, to be written with others in one go);
        returns its sequence number and its body."""
        if cmd in P.STATE_CHANGING and not self._claimed:
            self._claim()
        self._seq = (self._seq + 1) & 0xFF
        self.requests += 1
        request = bytes([self._seq, cmd]) + args
        if out is None:
            self.transport.write(encode_frame(request))
        else:
            out.append(encode_frame(request))
        self._sent_at[self._seq] = time.monotonic()
        return self._seq, request

    def _claim(self):
        """Make this host's requests distinct from whatever an earlier host sent last (``REG_SESSION``)."""
        self._claimed = True
        self.write_reg(P.REG_SESSION, random.getrandbits(32))

    def _await(self, pending: dict, wait: float, deadline: float):
        """The next reply to one of ``pending`` (seq -> request body) as ``(seq, status, data)``; None when
        the line stays silent for ``wait`` seconds, the deadline passes, or a simulation goes quiet."""
        if self._quiescent is not None:
            wait = float("inf")
        quiet_until = min(deadline, time.monotonic() + wait)
        chunk = b""
        while True:
            if not self._frames:
                chunk = self.transport.read(max(0.0, quiet_until - time.monotonic()))
                self._frames.extend(self._splitter.feed(chunk))
            while self._frames:  # frames that came in one chunk are kept for the next call
                wire = self._frames.popleft()
                try:
                    body = decode_frame(wire)
                except FrameError:
                    self.bad_replies += 1
                    continue
                if body == pending.get(body[0]):
                    raise LinkError(f"{self.name}: the port sends our own request back (a loopback or an "
                                    "echoing device, not a zippix design)")
                if body[0] not in pending:
                    self.bad_replies += 1
                    continue
                sent_at = self._sent_at.pop(body[0], None)
                if sent_at is not None:
                    rtt = time.monotonic() - sent_at
                    self._rtt = rtt if self._rtt is None else 0.875 * self._rtt + 0.125 * rtt
                self._wait = max(self.retry_s, 4 * (self._rtt or 0.0))
                return body[0], body[1], body[2:]
            now = time.monotonic()
            if chunk:
                quiet_until = min(deadline, now + wait)
            elif now >= quiet_until or (self._quiescent is not None and self._quiescent()):
                return None

    def _backoff(self, limit: float):
        self._wait = min(2 * self._wait, max(self.retry_s, limit / 4))

    def _no_reply(self, what: str, limit: float, tries: int) -> LinkTimeout:
        hint = getattr(self.transport, "timeout_hint", "is the port right, the board programmed with a "
                                                        "zippix bitstream, the baud rate matching?")
        return LinkTimeout(f"{self.name}: no valid reply to {what} within {limit:.1f} s "
                           f"({tries} {'try' if tries == 1 else 'tries'}; {hint})")

    def _check(self, cmd: int, status: int):
        if status != P.STATUS_OK:
            raise DeviceError(f"{self.name}: {P.COMMAND_NAMES.get(cmd, hex(cmd))} failed: "
                              f"{P.STATUS_NAMES.get(status, f'status 0x{status:02x}')}")

    def transact(self, cmd: int, args: bytes = b"", *, timeout: float | None = None) -> bytes:
        """Send one request and return the data of its OK reply (resending it while no reply comes)."""
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        if cmd == P.CMD_WRITE_BULK:
            self._in_pos = None  # a WRITE_BULK outside ``send``: ask the device next time
        seq, request = self._issue(cmd, args)
        frame = encode_frame(request)
        for attempt in range(self.retries + 1):
            if attempt:
                self.resends += 1
                self._sent_at.pop(seq, None)  # a reply to a resent request says nothing about the round trip
                self.transport.write(frame)
            reply = self._await({seq: request}, self._wait, deadline)
            if reply is not None:
                self._check(cmd, reply[1])
                return reply[2]
            if time.monotonic() >= deadline:
                break
            self._backoff(limit)
        raise self._no_reply(P.COMMAND_NAMES.get(cmd, hex(cmd)), limit, attempt + 1)

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
    def bulk_position(self) -> int:
        """The device's WRITE_BULK stream position: bytes the engine has taken since reset (mod 2**32)."""
        if self._in_pos is None:
            self._in_pos = self.read_reg(P.REG_BULK_IN_POS)
        return self._in_pos

    def send(self, data: bytes, *, timeout: float | None = None):
        """Push bytes into the engine's input stream, up to ``window`` frames in flight.

        Every frame carries its stream position; a frame the device took only part of (the engine
        stalled), or none of (an earlier frame was lost), makes the host go back to the first byte not
        taken. If the engine takes nothing for ``timeout`` seconds, ``LinkTimeout`` says how much got through.
        """
        data = bytes(data)
        if not data:
            return
        limit = self.timeout if timeout is None else timeout
        base = self.bulk_position()
        self._in_pos = None  # unknown until every byte is acknowledged
        chunk = self.max_frame - P.FRAME_OVERHEAD - P.BULK_POS_BYTES
        acked = sent = 0
        epoch = 0      # bumped at each go-back; only frames of the current epoch count against the window
        inflight = {}  # seq -> (request body, offset just after its data, epoch), in the order sent
        progress_at = time.monotonic()
        while acked < len(data):
            current = sum(1 for v in inflight.values() if v[2] == epoch)
            frames = []
            while sent < len(data) and current < self.window:
                piece = data[sent:sent + chunk]
                pos = ((base + sent) & POS_MASK).to_bytes(4, "little")
                seq, request = self._issue(P.CMD_WRITE_BULK, pos + piece, frames)
                sent += len(piece)
                inflight[seq] = (request, sent, epoch)
                current += 1
            if frames:
                self.transport.write(b"".join(frames))
            # the time limit is applied when the device answers short or not at all (a slow simulation
            # that is still working is not a stalled engine)
            reply = self._await({s: v[0] for s, v in inflight.items()}, self._wait,
                                time.monotonic() + limit + SAFETY_S)
            stalled = time.monotonic() >= progress_at + limit
            if reply is None:  # silence: a request or a reply was lost; go back to the first byte not taken
                if stalled:
                    raise self._stalled(acked, len(data), limit)
                self.resends += current
                epoch, sent = epoch + 1, acked
                self._backoff(limit)
                continue
            seq, status, payload = reply
            for older in list(inflight):  # the device answers in order: anything sent before is lost
                if older == seq:
                    break
                del inflight[older]
            _, end, frame_epoch = inflight.pop(seq)
            self._check(P.CMD_WRITE_BULK, status)
            if len(payload) != 4:
                raise LinkError(f"{self.name}: WRITE_BULK reply has {len(payload)} data bytes, expected 4")
            pos = (int.from_bytes(payload, "little") - base) & POS_MASK
            if pos > len(data):
                raise LinkError(f"{self.name}: device reports stream position {pos} beyond the {len(data)} "
                                "bytes sent (another host writing?)")
            if pos > acked:
                acked, progress_at = pos, time.monotonic()
            if pos < end and frame_epoch == epoch:  # not all of it went in: go back to the first byte not taken
                if stalled:
                    self._settle(inflight)
                    raise self._stalled(acked, len(data), limit)
                self.resends += current
                epoch, sent = epoch + 1, acked
        self._in_pos = (base + len(data)) & POS_MASK

    def _stalled(self, acked: int, total: int, limit: float) -> LinkTimeout:
        return LinkTimeout(f"{self.name}: engine took {acked} of {total} bytes and stopped accepting input "
                           f"for {limit:.1f} s (is its output being read?)")

    def _settle(self, inflight: dict):
        """Collect the replies of frames still in flight, so none of them runs after ``send`` gave up."""
        while inflight:
            reply = self._await({s: v[0] for s, v in inflight.items()}, self._wait,
                                time.monotonic() + self._wait)
            if reply is None:
                return
            for older in list(inflight):
                del inflight[older]
                if older == reply[0]:
                    break

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
