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
"""

PROTOCOL_VERSION = 1
MAGIC = 0x5A5058  # "ZPX"
ID_VALUE = (MAGIC << 8) | PROTOCOL_VERSION

# Commands
CMD_READ_REG = 0x01    # args: addr u8                  -> data: value u32 LE
CMD_WRITE_REG = 0x02   # args: addr u8, value u32 LE    -> data: (none)
CMD_WRITE_BULK = 0x03  # args: bytes...                 -> data: count u16 LE of bytes the engine took
#                        (all of them, or fewer if the engine stalled for STALL_CYCLES: the host resends the rest)
CMD_READ_BULK = 0x04   # args: max u16 LE               -> data: up to max bytes the engine has ready
CMD_INFO = 0x05        # args: offset u16 LE            -> data: total u16 LE, chunk of the info blob

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
ENGINE_REG_BASE = 0x10

FRAME_OVERHEAD = 4  # seq, cmd/status, crc16


def engine_id_value(name: str) -> int:
    """Pack a four-character engine name into the 32-bit ENGINE_ID register value."""
    raw = name.encode("ascii")
    if len(raw) != 4:
        raise ValueError(f"engine id must be 4 ASCII characters, got {name!r}")
    return int.from_bytes(raw, "big")


def engine_id_name(value: int) -> str:
    return value.to_bytes(4, "big").decode("ascii", errors="replace")
