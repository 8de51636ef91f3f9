"""Byte-stream transports: a board (or anything pyserial opens) and a plain TCP socket.

``open_transport(url)`` picks one: ``socket://host:port`` (a simulator, or a board behind a TCP bridge) gets
``SocketTransport`` (stdlib ``socket`` with TCP_NODELAY: a request is not held back by Nagle's algorithm
waiting for the previous one's acknowledgement); everything else goes to pyserial's ``serial_for_url``
(``/dev/ttyUSB0``, ``loop://``, ...). ``SerialTransport`` still opens ``socket://`` itself: that is the old
path, kept for ``bench/bench_link.py``'s side-by-side comparison.
"""
import select
import socket
from urllib.parse import urlsplit

import serial

from ..device import LinkError

POLL_S = 0.05


def line_retry_s(baud: int) -> float:
    """First wait for a missing reply on a serial line: a few full-frame times (10 bits a byte)."""
    return max(0.05, 3 * 10 * 520 / baud)


class SerialTransport:
    def __init__(self, url: str, baud: int = 115200):
        try:
            self.port = serial.serial_for_url(url, baudrate=baud, timeout=POLL_S)
        except (serial.SerialException, ValueError) as exc:
            raise LinkError(f"cannot open serial port {url!r}: {exc}") from None
        self.name = url
        self.baud = baud
        self.retry_s = line_retry_s(baud)

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


class SocketTransport:
    """``socket://host:port``: whole chunks per read, TCP_NODELAY on (``nodelay=False`` only for comparisons)."""

    def __init__(self, url: str, *, nodelay: bool = True, connect_timeout: float = 5.0, baud: int | None = None):
        """``baud``: the bit rate of a serial line behind the socket (a board on a TCP bridge, the board-top
        simulation), which sets the first wait for a missing reply; None for a byte-stream simulator."""
        parts = urlsplit(url)
        if parts.scheme != "socket" or not parts.hostname or not parts.port:
            raise LinkError(f"cannot open {url!r}: expected socket://HOST:PORT")
        try:
            self.sock = socket.create_connection((parts.hostname, parts.port), timeout=connect_timeout)
        except OSError as exc:
            raise LinkError(f"cannot open serial port {url!r}: {exc}") from None
        if nodelay:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.settimeout(None)  # blocking: reads wait in select() first, so recv() never blocks
        self.name = url
        self.retry_s = 0.05 if baud is None else line_retry_s(baud)

    def write(self, data: bytes):
        try:
            self.sock.sendall(data)
        except OSError as exc:
            raise LinkError(f"{self.name}: write failed: {exc}") from None

    def read(self, timeout: float) -> bytes:
        try:
            ready, _, _ = select.select([self.sock], [], [], max(0.0, min(timeout, POLL_S * 4)))
            if not ready:
                return b""
            data = self.sock.recv(1 << 16)
        except OSError as exc:
            raise LinkError(f"{self.name}: read failed: {exc}") from None
        if not data:
            raise LinkError(f"{self.name}: the other side closed the connection")
        return data

    def close(self):
        self.sock.close()


def open_transport(url: str, baud: int = 115200):
    return SocketTransport(url, baud=baud) if url.startswith("socket://") else SerialTransport(url, baud)
