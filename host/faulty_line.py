"""A transport wrapper that damages the traffic on a link, for the recovery tests and the link benchmark.

Requests: bit flips, truncation, lost frames, a missing closing delimiter, garbage in front, an oversized
frame with a good CRC in front. Replies: bit flips, lost chunks, chunks cut short. Counts what it did.
"""
import random
import time

from cobs import cobs

from hw import protocol as P
from hw.echo import REG_COUNT, REG_XOR

from .framing import crc16

REQUEST_FAULTS = ("flip", "truncate", "drop", "no_delimiter", "garbage", "oversized")
REPLY_FAULTS = ("flip", "drop", "cut")


class FaultyLine:
    """A transport wrapper that damages a fraction of what goes each way and counts what it did."""

    def __init__(self, inner, rng: random.Random, rate: float, reply_rate: float = 0.0, max_frame: int = 512,
                 only=None):
        self.inner = inner
        self.rng = rng
        self.rate = rate  # per request written
        self.reply_rate = reply_rate  # per chunk read (a long reply arrives in several chunks)
        self.max_frame = max_frame
        self.only = only  # None, or the indices of the writes to damage (then ``rate`` is ignored)
        self.writes = 0
        self.injected = {name: 0 for name in REQUEST_FAULTS + tuple("reply_" + f for f in REPLY_FAULTS)}

    def __getattr__(self, name):  # quiescent, retry_s, name, timeout_hint...
        if name == "write_engine_memory":
            raise AttributeError(name)  # training data must go over the (damaged) link
        return getattr(self.inner, name)

    def _hit(self):
        if self.only is not None:
            return self.writes in self.only
        return self.rng.random() < self.rate

    def write(self, data: bytes):
        self.writes += 1
        if not self._hit():
            return self.inner.write(data)
        rng = self.rng
        fault = rng.choice(REQUEST_FAULTS)
        self.injected[fault] += 1
        if fault == "flip":
            i = rng.randrange(1, len(data) - 1)
            bit = 1 << rng.randrange(8)
            if data[i] ^ bit == 0:  # a flip to 0x00 is a delimiter: the frame is cut there instead
                bit ^= 0xFF
            data = data[:i] + bytes([data[i] ^ bit]) + data[i + 1:]
        elif fault == "truncate":
            data = data[:rng.randrange(1, len(data) - 1)] + b"\x00"
        elif fault == "drop":
            data = b""
        elif fault == "no_delimiter":
            data = data[:-1]  # the request waits for the next delimiter (the next write)
        elif fault == "garbage":
            data = rng.randbytes(rng.randrange(1, 40)) + data
        elif fault == "oversized":
            body = bytes([0x99, P.CMD_WRITE_BULK]) + rng.randbytes(self.max_frame + 10)
            data = b"\x00" + cobs.encode(body + crc16(body).to_bytes(2, "big")) + data
        self.inner.write(data)

    def read(self, timeout: float) -> bytes:
        data = self.inner.read(timeout)
        if data and self.only is None and self.rng.random() < self.reply_rate:
            fault = self.rng.choice(REPLY_FAULTS)
            self.injected["reply_" + fault] += 1
            if fault == "flip":
                i = self.rng.randrange(len(data))
                data = data[:i] + bytes([data[i] ^ (1 << self.rng.randrange(8))]) + data[i + 1:]
            elif fault == "drop":
                data = b""
            else:
                data = data[:self.rng.randrange(len(data))]
        return data


def fault_workload(dev, line: FaultyLine, rng: random.Random, rounds: int) -> dict:
    """Echo traffic, engine and link register writes and reads through ``line`` (which ``dev`` must use) on the
    echo design. Returns what went wrong (``wrong`` replies; bytes the engine ``taken`` against ``sent``, so a
    duplicate or a loss shows; bytes ``left`` behind) and each host operation's latency."""
    wrong = sent = 0
    latency = []

    def timed(fn, *args):
        t = time.perf_counter()
        out = fn(*args)
        latency.append(1e3 * (time.perf_counter() - t))
        return out

    requests = dev.requests
    base_count = dev.read_engine_reg(REG_COUNT)
    for _ in range(rounds):
        key = rng.randrange(256)
        timed(dev.write_engine_reg, REG_XOR, key)
        data = rng.randbytes(rng.randrange(1, 511))  # under the echo FIFO's 512 bytes
        timed(dev.send, data)
        sent += len(data)
        wrong += timed(dev.recv, len(data)) != bytes(b ^ key for b in data)
        value = rng.getrandbits(32)
        timed(dev.write_reg, P.REG_SCRATCH, value)
        wrong += timed(dev.read_reg, P.REG_SCRATCH) != value
        wrong += timed(dev.read_reg, P.REG_ID) != P.ID_VALUE
    requests = dev.requests - requests
    rate, reply_rate = line.rate, line.reply_rate
    line.rate = line.reply_rate = 0.0
    taken = dev.read_engine_reg(REG_COUNT) - base_count
    left = len(dev.transact(P.CMD_READ_BULK, (512).to_bytes(2, "little")))  # no duplicate left behind
    line.rate, line.reply_rate = rate, reply_rate
    return {"requests": requests, "sent": sent, "taken": taken, "wrong": wrong, "left": left, "latency_ms": latency}
