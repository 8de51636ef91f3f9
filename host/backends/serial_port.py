"""A board (or anything pyserial opens) as a transport: ``serial_for_url`` accepts ``/dev/ttyUSB0``,
``socket://host:port`` and ``loop://``."""
import serial

from ..device import LinkError

POLL_S = 0.05


class SerialTransport:
    def __init__(self, url: str, baud: int = 115200):
        try:
            self.port = serial.serial_for_url(url, baudrate=baud, timeout=POLL_S)
        except (serial.SerialException, ValueError) as exc:
            raise LinkError(f"cannot open serial port {url!r}: {exc}") from None
        self.name = url
        self.baud = baud

    def write(self, data: bytes):
        try:
            self.port.write(data)
        except serial.SerialException as exc:
            raise LinkError(f"{self.name}: write failed: {exc}") from None

    def read(self, timeout: float) -> bytes:
        try:
            self.port.timeout = max(0.0, min(timeout, POLL_S * 4))
            first = self.port.read(1)
            if not first:
                return b""
            waiting = self.port.in_waiting
            return first + (self.port.read(waiting) if waiting else b"")
        except serial.SerialException as exc:
            raise LinkError(f"{self.name}: read failed: {exc}") from None

    def close(self):
        self.port.close()
