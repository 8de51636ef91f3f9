"""Recovery on the simulated backends: requests and replies corrupted at volume (bit flips, truncation,
garbage, missing delimiters, lost frames, oversized frames with good CRCs) and every host operation still
ends with the right data, each byte reaching the engine exactly once; a training run with a corrupted
request in the middle ends with the same model as a clean run."""
import random

import pytest

from host.backends import open_device
from host.backends.amaranth_sim import AmaranthTransport
from host.device import Device
from host.faulty_line import FaultyLine, fault_workload
from host.sgd_train import design_for, train
from hw import protocol as P

@pytest.mark.parametrize("backend,rounds", [("amaranth", 12), ("verilator", 200)])
def test_faults_at_volume_lose_duplicate_and_corrupt_nothing(backend, rounds):
    """Verilator takes the volume (about 1,400 requests, 300 faults); the slower Amaranth simulator a sample."""
    rng = random.Random(f"faults-{backend}")
    dev = open_device(backend, timeout=30.0)
    line = FaultyLine(dev.transport, rng, rate=0.15, reply_rate=0.04)
    dev.transport = line
    try:
        result = fault_workload(dev, line, rng, rounds)
        latency_ms = result.pop("latency_ms")
        replayed = dev.read_reg(P.REG_FRAMES_REPLAYED)
    finally:
        dev.close()
    assert result["requests"] > 6 * rounds
    assert result == {**result, "taken": result["sent"], "wrong": 0, "left": 0}
    assert len(latency_ms) == 6 * rounds
    if backend == "verilator":
        assert all(line.injected.values()), line.injected  # every fault class was exercised
    assert sum(line.injected.values()) >= 5, line.injected
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
