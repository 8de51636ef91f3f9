"""Recovery on the simulated backends: requests and replies corrupted at volume (bit flips, truncation,
garbage, missing delimiters, lost frames, oversized frames with good CRCs) and every host operation still
ends with the right data, each byte reaching the engine exactly once; a training run with a corrupted
request in the middle ends with the same model as a clean run."""
import random

import pytest
from cobs import cobs

from host.backends import open_device
from host.backends.amaranth_sim import AmaranthTransport
from host.device import Device
from host.framing import crc16
from host.sgd_train import design_for, train
from hw import protocol as P
from hw.echo import REG_COUNT, REG_XOR

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


def fault_workload(dev, line, rng, rounds: int) -> dict:
    """Echo traffic, register writes and reads; returns counts of lost/duplicated/wrong outcomes."""
    wrong = 0
    sent = 0
    base_count = dev.read_engine_reg(REG_COUNT)
    for _ in range(rounds):
        key = rng.randrange(256)
        dev.write_engine_reg(REG_XOR, key)
        data = rng.randbytes(rng.randrange(1, 511))  # under the echo FIFO's 512 bytes
        dev.send(data)
        sent += len(data)
        wrong += dev.recv(len(data)) != bytes(b ^ key for b in data)
        value = rng.getrandbits(32)
        dev.write_reg(P.REG_SCRATCH, value)
        wrong += dev.read_reg(P.REG_SCRATCH) != value
    line.rate = line.reply_rate = 0.0
    taken = dev.read_engine_reg(REG_COUNT) - base_count
    left = len(dev.transact(P.CMD_READ_BULK, (512).to_bytes(2, "little")))  # no duplicate left behind
    return {"sent": sent, "taken": taken, "wrong": wrong, "left": left}


@pytest.mark.parametrize("backend,rounds", [("amaranth", 12), ("verilator", 200)])
def test_faults_at_volume_lose_duplicate_and_corrupt_nothing(backend, rounds):
    """Verilator takes the volume (about 1,400 requests, 300 faults); the slower Amaranth simulator a sample."""
    rng = random.Random(f"faults-{backend}")
    dev = open_device(backend, timeout=30.0)
    line = FaultyLine(dev.transport, rng, rate=0.15, reply_rate=0.04)
    dev.transport = line
    try:
        result = fault_workload(dev, line, rng, rounds)
        replayed = dev.read_reg(P.REG_FRAMES_REPLAYED)
    finally:
        dev.close()
    assert result == {"sent": result["sent"], "taken": result["sent"], "wrong": 0, "left": 0}
    if backend == "verilator":
        assert all(line.injected.values()), line.injected  # every fault class was exercised
    assert sum(line.injected.values()) >= rounds, line.injected
    assert dev.resends > 0 and replayed > 0


def amaranth_sgd(**kw):
    return Device(AmaranthTransport(design_for(2, bus_bits=32, max_features=16, store_beats=64).make_core()),
                  timeout=30, **kw)


def test_training_with_a_corrupted_request_ends_with_the_same_model():
    kw = dict(dataset="diabetes", bits=2, epochs=2, progress=False, max_samples=40)
    clean_dev = amaranth_sgd()
    clean_dev.transport = FaultyLine(clean_dev.transport, random.Random(1), rate=0.0)
    clean = train(clean_dev, **kw)
    dev = amaranth_sgd()
    line = FaultyLine(dev.transport, random.Random(2), rate=0.0, only={clean_dev.transport.writes // 2})
    dev.transport = line
    hit = train(dev, **kw)
    assert sum(line.injected.values()) == 1 and dev.resends >= 1
    assert hit["model_q23"] == clean["model_q23"] and hit["loss_per_epoch"] == clean["loss_per_epoch"]
