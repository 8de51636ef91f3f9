"""The host API over the simulated backends: identity, registers, bulk data, and bad input on the link.

Every fault case is followed by good requests that must work with nothing lost.
"""
import random
import subprocess
import sys
from pathlib import Path

import pytest
from cobs import cobs

from host.backends import open_device
from host.device import Device, DeviceError, LinkError, LinkTimeout
from host.framing import crc16, encode_frame
from hw import protocol as P
from hw.echo import REG_COUNT, REG_XOR

ROOT = Path(__file__).resolve().parent.parent
BACKENDS = ["amaranth", "verilator"]


@pytest.fixture(scope="module", params=BACKENDS)
def dev(request):
    device = open_device(request.param, timeout=10.0)  # the Amaranth simulator is slow on a busy machine
    yield device
    device.close()


def counters(dev):
    return {name: dev.read_reg(addr) for name, addr in
            [("ok", P.REG_FRAMES_OK), ("dropped", P.REG_FRAMES_DROPPED), ("rejected", P.REG_FRAMES_REJECTED)]}


def assert_echo_works(dev, n=300, seed=0):
    rng = random.Random(seed)
    key = rng.randrange(256)
    dev.write_engine_reg(REG_XOR, key)
    data = rng.randbytes(n)
    dev.send(data)
    assert dev.recv(n) == bytes(b ^ key for b in data)


def test_identity_and_registers(dev):
    info = dev.info()
    assert info.id_value == P.ID_VALUE
    assert info.engine == "ECHO"
    assert info.params["max_frame"] == dev.max_frame == 512
    dev.write_reg(P.REG_SCRATCH, 0xDEADBEEF)
    assert dev.read_reg(P.REG_SCRATCH) == 0xDEADBEEF
    dev.write_reg(P.REG_ID, 0)  # read-only: a write is ignored
    assert dev.read_reg(P.REG_ID) == P.ID_VALUE
    assert dev.read_reg(0x0F) == 0  # unassigned link register
    c1 = dev.cycles()
    c2 = dev.cycles()
    assert c2 > c1


def test_bulk_data_roundtrip_across_frames(dev):
    before = dev.read_engine_reg(REG_COUNT)
    assert_echo_works(dev, n=1200 // 3)  # under the FIFO depth, several frames
    assert dev.read_engine_reg(REG_COUNT) - before == 400


def test_bulk_send_reports_a_stalled_engine(dev):
    # The echo FIFO holds 512 bytes: without reading, sending more must fail clearly, not hang.
    with pytest.raises(LinkTimeout, match="took 512 of 700"):
        dev.send(bytes(700), timeout=0.3)
    assert len(dev.recv(512)) == 512
    assert_echo_works(dev)


def test_bad_crc_is_dropped_and_never_reaches_the_engine(dev):
    before, count = counters(dev), dev.read_engine_reg(REG_COUNT)
    body = bytes([0x77, P.CMD_WRITE_BULK]) + b"payload"
    bad = body + (crc16(body) ^ 0x0100).to_bytes(2, "big")
    dev.transport.write(b"\x00" + cobs.encode(bad) + b"\x00")
    after = counters(dev)
    assert after["dropped"] == before["dropped"] + 1
    assert dev.read_engine_reg(REG_COUNT) == count
    assert_echo_works(dev)


def test_truncated_frame_garbage_and_oversized_frames(dev):
    before = counters(dev)
    good = encode_frame(bytes([0x55, P.CMD_READ_REG, P.REG_ID]))
    truncated = good[:-4] + b"\x00"                        # cut mid-frame, then a delimiter
    rng = random.Random(7)
    garbage = bytes(rng.randrange(256) for _ in range(600)) + b"\x00"
    body = bytes([0x56, P.CMD_WRITE_BULK]) + bytes(range(1, 256)) * 3  # 767 + 2 > max_frame
    oversized = b"\x00" + cobs.encode(body + crc16(body).to_bytes(2, "big")) + b"\x00"
    no_delimiter = bytes(rng.randrange(1, 256) for _ in range(2000))  # closed by the next request
    for raw in (truncated, garbage, oversized, no_delimiter):
        dev.transport.write(raw)
    assert dev.read_reg(P.REG_ID) == P.ID_VALUE
    after = counters(dev)
    assert after["dropped"] - before["dropped"] >= 4  # the garbage may split into several frames
    assert_echo_works(dev)


def test_unknown_command_and_bad_length_get_error_replies(dev):
    before = counters(dev)
    with pytest.raises(DeviceError, match="unknown command"):
        dev.transact(0x6E)
    with pytest.raises(DeviceError, match="bad argument length"):
        dev.transact(P.CMD_READ_REG, b"\x00\x01\x02")
    with pytest.raises(DeviceError, match="bad argument length"):
        dev.transact(P.CMD_WRITE_REG, b"\x03\x01")
    assert counters(dev)["rejected"] == before["rejected"] + 3
    assert_echo_works(dev)


def test_a_repeated_request_is_answered_from_the_stored_reply(dev):
    dev.write_engine_reg(REG_XOR, 0)
    replayed, count = dev.read_reg(P.REG_FRAMES_REPLAYED), dev.read_engine_reg(REG_COUNT)

    def again(cmd, args):  # the same request with the same sequence number, as after a lost reply
        dev._seq = (dev._seq - 1) & 0xFF
        return dev.transact(cmd, args)

    args = dev.bulk_position().to_bytes(4, "little") + b"once"
    first = dev.transact(P.CMD_WRITE_BULK, args)
    assert again(P.CMD_WRITE_BULK, args) == first
    assert dev.read_engine_reg(REG_COUNT) == count + 4
    got = dev.transact(P.CMD_READ_BULK, (4).to_bytes(2, "little"))
    assert got == b"once" and again(P.CMD_READ_BULK, (4).to_bytes(2, "little")) == got
    assert again(P.CMD_READ_BULK, (5).to_bytes(2, "little")) == b""  # same number, other request: executed
    assert dev.read_reg(P.REG_FRAMES_REPLAYED) == replayed + 2
    assert dev.read_reg(P.REG_SESSION) != 0  # the host claimed the link before its first write
    # a stale WRITE_BULK (its bytes are already in) and one after a gap take nothing
    pos = dev.bulk_position()
    assert dev.transact(P.CMD_WRITE_BULK, (pos - 4).to_bytes(4, "little") + b"once") == pos.to_bytes(4, "little")
    assert dev.transact(P.CMD_WRITE_BULK, (pos + 9).to_bytes(4, "little") + b"gap") == pos.to_bytes(4, "little")
    assert dev.read_engine_reg(REG_COUNT) == count + 4
    assert_echo_works(dev)


def test_lost_request_times_out_clearly(dev):
    # A request the device drops every time gets no reply: after its retries the host raises, not hangs.
    original = dev.transport.write
    dev.transport.write = lambda data: original(data[:-3] + b"\xff\x00")  # corrupt the CRC
    try:
        with pytest.raises(LinkTimeout, match="no valid reply to READ_REG") as err:
            dev.transact(P.CMD_READ_REG, bytes([P.REG_ID]), timeout=0.5)
        assert "board" not in str(err.value)  # a simulator is not a board
    finally:
        dev.transport.write = original
    assert dev.read_reg(P.REG_ID) == P.ID_VALUE


def test_info_blob_larger_than_one_frame():
    # A small max_frame forces the INFO command to page through the blob.
    from hw.design import Design
    with open_device("amaranth", design=Design(max_frame=32)) as small:
        info = small.info()
        assert info.max_frame == 32 and info.params["max_frame"] == 32


class ScriptedTransport:
    """Replies with a fixed script of wire bytes, whatever is sent."""

    def __init__(self, replies):
        self.replies = list(replies)
        self.sent = []

    def write(self, data):
        self.sent.append(data)

    def read(self, timeout):
        return self.replies.pop(0) if self.replies else b""

    def quiescent(self):
        return not self.replies

    def close(self):
        pass


def test_host_ignores_garbage_and_stale_replies():
    good = encode_frame(bytes([1, P.STATUS_OK]) + (1234).to_bytes(4, "little"))
    stale = encode_frame(bytes([9, P.STATUS_OK]) + (5).to_bytes(4, "little"))
    noise = b"\x13\x37\x00\xff\xfe\x00" + encode_frame(b"\x01\x00")[:-3] + b"\x00"
    dev = Device(ScriptedTransport([noise, stale, good]))
    assert dev.read_reg(P.REG_SCRATCH) == 1234
    assert dev.bad_replies >= 2


def test_host_reports_silence_and_loopback():
    with pytest.raises(LinkTimeout):
        Device(ScriptedTransport([b"\x00\x01garbage"]), timeout=0.2).read_reg(0)
    with open_device("serial", port="loop://", timeout=0.5) as loop:
        with pytest.raises(LinkError, match="sends our own request back"):
            loop.info()
    with pytest.raises(LinkError, match="cannot open serial port"):
        open_device("serial", port="/dev/ttyDOES_NOT_EXIST")
    with pytest.raises(LinkError, match="needs --port"):
        open_device("serial")


def test_cli_info_prints_the_same_id_on_both_backends():
    outputs = []
    for backend in BACKENDS:
        result = subprocess.run([sys.executable, str(ROOT / "host" / "run.py"), "info", "--backend", backend],
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        lines = [line for line in result.stdout.splitlines() if line.startswith(("design", "engine", "param"))]
        assert any(f"0x{P.ID_VALUE:08x}" in line for line in lines)
        outputs.append(lines)
    assert outputs[0] == outputs[1]


def test_cli_rejects_bad_arguments():
    result = subprocess.run([sys.executable, str(ROOT / "host" / "run.py"), "info", "--backend", "fpga"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "invalid choice" in result.stderr
    result = subprocess.run([sys.executable, str(ROOT / "host" / "run.py"), "info", "--backend", "serial"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "needs --port" in result.stderr
