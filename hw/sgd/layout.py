"""Sample/beat layout and derived constants of the SGD engine, shared by the gateware, the host and the tests.

A sample is ``R`` consecutive bus beats of ``W`` bits (``models.zipml.pack.pack_rows_with_label``): feature slots
LSB-first from bit 0, zero padding, and the label (signed 32-bit, Q.23) in the top 32 bits of the sample's last
beat.  Two encodings of a double-sampled feature (``encoding``):

* ``pair``: a ``2b``-bit slot ``(q2 << b) | q1`` (the public RTL's packing), b in {1, 2, 4, 8};
* ``compact``: a ``(b + 1)``-bit slot, the interval index ``l`` (b - 1 bits) and one up/down bit per copy
  (``models.zipml.pack.compact_double_sample_slots``, ZipML §2.2's "one extra bit"), b in {2, 4, 8}.  A beat holds
  ``L = W // (b + 1)`` slots from bit 0; its top ``W - L (b + 1)`` bits are unused.

The 32-bit fixed-point baseline has one 32-bit copy (used for both the dot product and the gradient).
"""
from __future__ import annotations

import numpy as np

SUPPORTED_BITS = (1, 2, 4, 8, 32)
SUPPORTED_BUS_BITS = (32, 64, 128, 256, 512)
ENCODINGS = ("pair", "compact")
COMPACT_BITS = (2, 4, 8)
FRAC_BITS = 23


def check_bits(bits: int):
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"unsupported precision {bits!r}: the SGD engine supports bits in "
                         f"{', '.join(map(str, SUPPORTED_BITS))} (32 = the fixed-point baseline)")


def check_bus_bits(bus_bits: int):
    if bus_bits not in SUPPORTED_BUS_BITS:
        raise ValueError(f"unsupported bus width {bus_bits!r}: use one of {SUPPORTED_BUS_BITS}")


def check_encoding(bits: int, encoding: str):
    if encoding not in ENCODINGS:
        raise ValueError(f"unknown encoding {encoding!r}: use one of {', '.join(ENCODINGS)}")
    if encoding == "compact" and bits not in COMPACT_BITS:
        raise ValueError(f"the compact encoding needs bits in {', '.join(map(str, COMPACT_BITS))} (for 1 bit it "
                         f"would equal the pair slot; 32 bits has one copy), got {bits}")


def default_encoding(bits: int) -> str:
    """``compact`` where it saves bits (b in 2, 4, 8), else ``pair``."""
    return "compact" if bits in COMPACT_BITS else "pair"


def slot_bits(bits: int, encoding: str = "pair") -> int:
    """Bits per feature on the bus: two codes (pair) or interval + 2 up/down bits (compact) for double sampling,
    one 32-bit word for the baseline."""
    check_bits(bits)
    check_encoding(bits, encoding)
    if bits == 32:
        return 32
    return bits + 1 if encoding == "compact" else 2 * bits


def lanes(bits: int, bus_bits: int, encoding: str = "pair") -> int:
    """Features per beat (= parallel multiplier lanes)."""
    check_bus_bits(bus_bits)
    return bus_bits // slot_bits(bits, encoding)


def beats_per_sample(d: int, bits: int, bus_bits: int, encoding: str = "pair") -> int:
    """Beats of one sample with ``d`` features (bias included) and its label chunk."""
    if encoding == "compact":
        L, s = lanes(bits, bus_bits, encoding), slot_bits(bits, encoding)
        R = max(1, -(-d // L))
        if (d - (R - 1) * L) * s + 32 > bus_bits:  # the label does not fit above the last beat's features
            R += 1
        return R
    feat_chunks = -(-d * slot_bits(bits) // 32)
    return -(-(feat_chunks + 1) * 32 // bus_bits)


def nb_shift(bits: int, signed: bool) -> int:
    """Code value = q / 2**nb."""
    if bits == 1:
        if signed:
            raise ValueError("1-bit codes have no signed ([-1, 1]) mode; use unsigned [0, 1] data")
        return 0
    return bits - 2 if signed else bits - 1


def code_range(bits: int, signed: bool) -> tuple[int, int]:
    nb = nb_shift(bits, signed)
    return (-(1 << nb), 1 << nb) if signed else (0, 1 << nb)


def staleness(pipe_latency: int, beats: int) -> int:
    """Samples between an update and the first dot product that sees it (``delay`` of the golden)."""
    return 1 + -(-pipe_latency // beats)


def pack_samples(q1, q2, labels_fixed, bits: int, bus_bits: int, encoding: str = "pair", *,
                 signed: bool = True) -> np.ndarray:
    """Beats of ``n`` samples as little-endian uint32 chunks, shape ``(n, R * bus_bits // 32)``.

    ``q1``/``q2``: integer codes ``(n, d)`` (for bits=32 only ``q1`` is used); ``labels_fixed``: int labels Q.23.
    ``signed`` (compact only): codes on [-1, 1] (else [0, 1]); the interval index counts from the lowest level.
    ``result.tobytes()`` is the byte stream the engine takes (beat after beat, each beat little-endian).
    """
    from models.zipml.pack import double_sample_slots, pack_beat_slots, pack_fields

    q1 = np.asarray(q1, dtype=np.int64)
    n, d = q1.shape
    if encoding == "compact":
        from models.zipml.pack import compact_double_sample_slots
        check_encoding(bits, encoding)
        slots = compact_double_sample_slots(q1, np.asarray(q2, dtype=np.int64), bits, signed=signed)
        L, s = lanes(bits, bus_bits, encoding), slot_bits(bits, encoding)
        out = pack_beat_slots(slots, s, L, bus_bits, beats_per_sample(d, bits, bus_bits, encoding))
        return _put_labels(out, labels_fixed, n)
    sb = slot_bits(bits)
    if bits == 32:
        if q1.min(initial=0) < -(2**31) or q1.max(initial=0) > 2**31:
            raise ValueError("a 32-bit code is out of range")
        slots = (q1 & 0xFFFFFFFF).astype(np.uint64)
    else:
        slots = double_sample_slots(q1, np.asarray(q2, dtype=np.int64), bits)
    R = beats_per_sample(d, bits, bus_bits)
    chunks = R * bus_bits // 32
    out = np.zeros((n, chunks), dtype="<u4")
    body = pack_fields(slots, sb, 32)
    out[:, :body.shape[1]] = body
    return _put_labels(out, labels_fixed, n)


def _put_labels(out, labels_fixed, n):
    """The label (int32) in the top 32 bits of each sample's last beat."""
    lab = np.asarray(labels_fixed, dtype=np.int64).ravel()
    if lab.shape[0] != n:
        raise ValueError(f"{n} samples but {lab.shape[0]} labels")
    if lab.min(initial=0) < -(2**31) or lab.max(initial=0) >= 2**31:
        raise ValueError("a label overflows 32-bit fixed point")
    out[:, -1] = (lab & 0xFFFFFFFF).astype("<u4")
    return out


def beats_as_ints(packed: np.ndarray, bus_bits: int) -> list[int]:
    """Packed samples (from :func:`pack_samples`) as one Python int per beat, in stream order."""
    flat = np.ascontiguousarray(packed).reshape(-1).astype("<u4")
    raw = flat.tobytes()
    nb = bus_bits // 8
    return [int.from_bytes(raw[i:i + nb], "little") for i in range(0, len(raw), nb)]


def encode_32bit(A, signed: bool) -> np.ndarray:
    """Codes of the 32-bit baseline: round-to-nearest of ``a * 2**nb`` (nb = 30 signed, 31 unsigned)."""
    nb = nb_shift(32, signed)
    lo, hi = code_range(32, signed)
    return np.clip(np.floor(np.asarray(A, dtype=np.float64) * 2.0**nb + 0.5), lo, hi).astype(np.int64)
