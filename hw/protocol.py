"""Link protocol shared by the gateware (`hw.link`) and the host (`host.device`).

Wire format (both directions): ``0x00 | COBS(body | crc16_be) | 0x00``.
COBS is Cheshire & Baker's Consistent Overhead Byte Stuffing (the PyPI ``cobs`` package is the
reference); the CRC is CRC-16/IBM-3740 (poly 0x1021, init 0xFFFF, no reflection, no final xor),
sent big-endian, so the CRC over ``body | crc16_be`` is zero. A leading delimiter is allowed
(empty frames are ignored): the host sends one so that any garbage before a request is closed off.

Request body:  ``seq | cmd | args...``
Reply body:    ``seq | status | data...``

Frames that fail COBS decoding, the CRC, or exceed ``max_frame`` bytes (decoded, CRC included) are
dropped and counted in ``REG_FRAMES_DROPPED``; the device resynchronises on the next delimiter.
Frames with a good CRC but an unknown command or a wrong length get an error reply.

Recovery (protocol v2). The host resends a request whose reply is missing or garbled; nothing is
executed twice:

* Commands that change state (``STATE_CHANGING``: WRITE_REG, WRITE_BULK, READ_BULK) are remembered:
  the device keeps the sequence number and CRC of the last one it executed and that request's whole
  reply. A request with the same sequence number and CRC is a duplicate: the stored reply is sent
  again (counted in ``REG_FRAMES_REPLAYED``), the command is not executed. READ_REG and INFO are
  read-only and simply executed again. A host claims the link by writing a random value to
  ``REG_SESSION`` first, so a new host never matches the stored request of an earlier one.
* WRITE_BULK carries the stream position of its first byte (bytes the engine has taken since reset,
  mod 2**32) and the device takes only the bytes from its own position on: a duplicate, a frame after
  a lost one, or a frame after one the engine took only part of, takes nothing. Each reply carries the
  device's position, so the host can keep several WRITE_BULK frames in flight and go back to the
  first byte not taken (go-back-N), with the data always entering the engine once, in order.
"""

PROTOCOL_VERSION = 2
MAGIC = 0x5A5058  # "ZPX"
ID_VALUE = (MAGIC << 8) | PROTOCOL_VERSION

# Commands
CMD_READ_REG = 0x01    # args: addr u8                  -> data: value u32 LE
CMD_WRITE_REG = 0x02   # args: addr u8, value u32 LE    -> data: (none)
CMD_WRITE_BULK = 0x03  # args: pos u32 LE, bytes...      -> data: stream position u32 LE after the frame
#                        (the engine takes the bytes from the device's position on, if that lies inside the
#                        frame; it stops early if the engine stalls for STALL_CYCLES: the host resends the rest)
CMD_READ_BULK = 0x04   # args: max u16 LE               -> data: up to max bytes the engine has ready
CMD_INFO = 0x05        # args: offset u16 LE            -> data: total u16 LE, chunk of the info blob

STATE_CHANGING = (CMD_WRITE_REG, CMD_WRITE_BULK, CMD_READ_BULK)  # replayed, not re-executed, when repeated

COMMAND_NAMES = {
    CMD_READ_REG: "READ_REG", CMD_WRITE_REG: "WRITE_REG", CMD_WRITE_BULK: "WRITE_BULK",
    CMD_READ_BULK: "READ_BULK", CMD_INFO: "INFO",
}

# Reply status
STATUS_OK = 0x00
STATUS_BAD_CMD = 0x01  # unknown command
STATUS_BAD_LEN = 0x02  # arguments of the wrong length for the command

STATUS_NAMES = {STATUS_OK: "OK", STATUS_BAD_CMD: "unknown command", STATUS_BAD_LEN: "bad argument length"}

# Link registers (32 bit); addresses >= ENGINE_REG_BASE go to the engine at (addr - ENGINE_REG_BASE).
REG_ID = 0x00              # ro: MAGIC << 8 | PROTOCOL_VERSION
REG_DIGEST = 0x01          # ro: first 4 bytes (big-endian) of sha256(info blob)
REG_ENGINE_ID = 0x02       # ro: four ASCII characters, big-endian
REG_SCRATCH = 0x03         # rw
REG_CYCLES_LO = 0x04       # ro: free-running cycle counter; reading LO latches HI
REG_CYCLES_HI = 0x05
REG_FRAMES_OK = 0x06       # ro: frames executed
REG_FRAMES_DROPPED = 0x07  # ro: frames dropped (COBS error, CRC error, oversized, too short)
REG_FRAMES_REJECTED = 0x08 # ro: frames answered with an error status
REG_MAX_FRAME = 0x09       # ro: largest decoded frame accepted (body + CRC), bytes
REG_BULK_IN_POS = 0x0A     # ro: bytes the engine has taken from WRITE_BULK frames (mod 2**32)
REG_SESSION = 0x0B         # rw: written with a random value by a host when it opens the link
REG_FRAMES_REPLAYED = 0x0C # ro: duplicate requests answered with the stored reply
ENGINE_REG_BASE = 0x10

FRAME_OVERHEAD = 4  # seq, cmd/status, crc16
BULK_POS_BYTES = 4  # the stream position at the start of WRITE_BULK arguments


def engine_id_value(name: str) -> int:
    """Pack a four-character engine name into the 32-bit ENGINE_ID register value."""
    raw = name.encode("ascii")
    if len(raw) != 4:
        raise ValueError(f"engine id must be 4 ASCII characters, got {name!r}")
    return int.from_bytes(raw, "big")


def engine_id_name(value: int) -> str:
    return value.to_bytes(4, "big").decode("ascii", errors="replace")
