"""Packing of quantized codes into bus words, as the SGD gateware reads them.

Ref: fpgasystems/ZipML-XeonFPGA@a7bdb44 SW/zipml_sgd.h ``copy_data_into_FPGA_memory_after_quantization`` (two codes
per feature packed as ``(q2 << b) | q1``; rows start on a cache-line boundary; the label, fixed point Q.23, in
32-bit word 15 of the row's last 512-bit line).  ZipML §2.2 (double sampling needs the two copies).

Format (all functions here):

* A *field* is the b-bit hardware form of an integer code (:func:`models.zipml.quantize.to_field`).
* A *slot* is ``slot_bits`` wide and holds one field (single copy) or, for double sampling, the ``2b``-bit value
  ``(q2_field << b) | q1_field`` (copy 1 in the low half).
* Slots are packed LSB-first: slot ``j`` of a row occupies bits ``[j*slot_bits, (j+1)*slot_bits)`` of the row's bit
  string; bit ``i`` of that string is bit ``i % word_bits`` of bus word ``i // word_bits``.  Every row starts on a new
  word and is zero-padded to whole words.  ``slot_bits`` divides 32, so no slot straddles a word.
* Words wider than 32 bits are returned as little-endian uint32 *chunks*: the result has shape
  ``(n_rows, words_per_row * word_bits // 32)`` with dtype ``<u4``; chunk ``c`` of a row is bits
  ``[32c, 32c+32)`` of its bit string, so ``packed.tobytes()`` is exactly the little-endian byte image in memory.
  :func:`words_as_ints` turns rows into Python integers, one per bus word.

Compact double sampling (ZipML §2.2, "the second sample costs about one extra bit"; shared reference
docs/zipml.md §2.4): both copies of a feature lie in the same quantization interval ``[lo + l, lo + l + 1]``, so
a ``(b + 1)``-bit slot ``l | (u1 << (b-1)) | (u2 << b)`` holds both (``l``: b - 1 bits, ``u``: up/down bit of a
copy), :func:`compact_double_sample_slots`.  Such slots do not divide 32; :func:`pack_beat_slots` puts a fixed
number of them in each bus word from bit 0 (the SGD engine's lanes) and leaves the word's top bits unused.
"""

from __future__ import annotations

import numpy as np

from .quantize import from_field, to_field

__all__ = [
    "slots_per_word", "pack_fields", "unpack_fields", "double_sample_slots", "pack_double_sampled",
    "unpack_double_sampled", "pack_rows_with_label", "unpack_rows_with_label", "words_as_ints",
    "compact_double_sample_slots", "decode_compact_slots", "pack_beat_slots", "unpack_beat_slots",
]


def _check(slot_bits: int, word_bits: int) -> None:
    if slot_bits not in (1, 2, 4, 8, 16, 32):
        raise ValueError(f"slot_bits must divide 32 (1, 2, 4, 8, 16, 32), got {slot_bits}")
    if word_bits < 32 or word_bits % 32:
        raise ValueError(f"word_bits must be a positive multiple of 32, got {word_bits}")


def slots_per_word(slot_bits: int, word_bits: int) -> int:
    """How many slots one bus word holds (e.g. 128 double-sampled Q2 features per 512-bit line)."""
    _check(slot_bits, word_bits)
    return word_bits // slot_bits


def pack_fields(fields, slot_bits: int, word_bits: int = 512) -> np.ndarray:
    """Pack unsigned slot values ``fields`` (shape ``(n_rows, n)`` or ``(n,)``) LSB-first into bus words."""
    _check(slot_bits, word_bits)
    f = np.asarray(fields)
    one_row = f.ndim == 1
    f = np.atleast_2d(f).astype(np.uint64)
    if f.size and (f.max() >> np.uint64(slot_bits)) != 0:
        raise ValueError(f"a field does not fit in {slot_bits} bits")
    n_rows, n = f.shape
    per_chunk = 32 // slot_bits
    chunks_per_word = word_bits // 32
    n_words = max(1, -(-n // (per_chunk * chunks_per_word)))
    n_chunks = n_words * chunks_per_word
    padded = np.zeros((n_rows, n_chunks * per_chunk), dtype=np.uint64)
    padded[:, :n] = f
    shifts = (np.arange(per_chunk, dtype=np.uint64) * np.uint64(slot_bits))
    chunks = np.bitwise_or.reduce(padded.reshape(n_rows, n_chunks, per_chunk) << shifts, axis=2)
    out = chunks.astype("<u4")
    return out[0] if one_row else out


def unpack_fields(packed, slot_bits: int, n: int) -> np.ndarray:
    """Inverse of :func:`pack_fields`: the first ``n`` slots of each row, as int64."""
    _check(slot_bits, 32)
    p = np.asarray(packed)
    one_row = p.ndim == 1
    p = np.atleast_2d(p).astype(np.uint64)
    per_chunk = 32 // slot_bits
    if n > p.shape[1] * per_chunk:
        raise ValueError(f"asked for {n} slots but rows hold only {p.shape[1] * per_chunk}")
    shifts = np.arange(per_chunk, dtype=np.uint64) * np.uint64(slot_bits)
    mask = np.uint64((1 << slot_bits) - 1)
    f = ((p[:, :, None] >> shifts) & mask).reshape(p.shape[0], -1)[:, :n].astype(np.int64)
    return f[0] if one_row else f


def double_sample_slots(q1, q2, bits: int) -> np.ndarray:
    """``(field(q2) << b) | field(q1)``: the 2b-bit slot of one double-sampled feature."""
    return (to_field(q2, bits).astype(np.uint64) << np.uint64(bits)) | to_field(q1, bits).astype(np.uint64)


def pack_double_sampled(q1, q2, bits: int, word_bits: int = 512) -> np.ndarray:
    """Pack two independent code copies (integer codes, shape ``(n_rows, d)``) into 2b-bit slots."""
    q1, q2 = np.asarray(q1), np.asarray(q2)
    if q1.shape != q2.shape:
        raise ValueError(f"copies differ in shape: {q1.shape} vs {q2.shape}")
    return pack_fields(double_sample_slots(q1, q2, bits), 2 * bits, word_bits)


def unpack_double_sampled(packed, bits: int, n_features: int, *, signed: bool = False):
    """Inverse of :func:`pack_double_sampled`; returns integer codes ``(q1, q2)``."""
    s = unpack_fields(packed, 2 * bits, n_features)
    q1 = from_field(s & ((1 << bits) - 1), bits, signed=signed)
    q2 = from_field(s >> bits, bits, signed=signed)
    return q1, q2


def pack_rows_with_label(slots, slot_bits: int, labels, *, label_frac_bits: int = 23, word_bits: int = 512):
    """Rows as the XeonFPGA qFSGD reads them: feature slots from bit 0, zero padding, and the label as a signed
    32-bit fixed-point number (``int(label * 2**label_frac_bits)``, truncated toward zero like the C cast) in the
    last 32-bit chunk of the row's last word (word 15 of the last cache line for 512-bit words)."""
    _check(slot_bits, word_bits)
    s = np.atleast_2d(np.asarray(slots))
    labels = np.asarray(labels, dtype=np.float64).ravel()
    if labels.shape[0] != s.shape[0]:
        raise ValueError(f"{s.shape[0]} rows but {labels.shape[0]} labels")
    n = s.shape[1]
    feat_chunks = -(-n * slot_bits // 32)
    chunks_per_word = word_bits // 32
    n_words = -(-(feat_chunks + 1) // chunks_per_word)
    out = np.zeros((s.shape[0], n_words * chunks_per_word), dtype="<u4")
    body = pack_fields(s, slot_bits, 32)  # 32-bit words == chunks
    out[:, : body.shape[1]] = body
    fixed = np.trunc(labels * 2.0**label_frac_bits).astype(np.int64)
    if np.any(fixed >= 2**31) or np.any(fixed < -(2**31)):
        raise ValueError("a label overflows 32-bit fixed point")
    out[:, -1] = (fixed & 0xFFFFFFFF).astype("<u4")
    return out


def unpack_rows_with_label(packed, slot_bits: int, n: int, *, label_frac_bits: int = 23):
    """Inverse of :func:`pack_rows_with_label`: ``(slots, labels)``."""
    p = np.atleast_2d(np.asarray(packed))
    slots = unpack_fields(p[:, :-1], slot_bits, n)
    raw = p[:, -1].astype(np.int64)
    raw = np.where(raw >= 2**31, raw - 2**32, raw)
    return slots, raw / 2.0**label_frac_bits


def words_as_ints(packed, word_bits: int = 512) -> list:
    """Rows of packed chunks as lists of Python ints, one per ``word_bits``-bit bus word."""
    p = np.atleast_2d(np.asarray(packed))
    cpw = word_bits // 32
    if p.shape[1] % cpw:
        raise ValueError(f"row length {p.shape[1]} chunks is not a whole number of {word_bits}-bit words")
    return [[int.from_bytes(row[w * cpw:(w + 1) * cpw].astype("<u4").tobytes(), "little")
             for w in range(p.shape[1] // cpw)] for row in p]


def _compact_range(bits: int, signed: bool):
    if bits not in (2, 4, 8):
        raise ValueError(f"compact slots need bits in 2, 4, 8, got {bits}")
    nb = bits - 2 if signed else bits - 1
    return (-(1 << nb) if signed else 0), 1 << (bits - 1)  # lowest level, number of intervals


def compact_double_sample_slots(q1, q2, bits: int, *, signed: bool) -> np.ndarray:
    """``(b + 1)``-bit slots ``l | (u1 << (b-1)) | (u2 << b)`` of two copies ``q1``, ``q2`` (integer codes) that
    lie in one interval (``|q1 - q2| <= 1``, as two stochastic roundings of one value do); raises otherwise."""
    q1 = np.asarray(q1, dtype=np.int64)
    q2 = np.asarray(q2, dtype=np.int64)
    if q1.shape != q2.shape:
        raise ValueError(f"copies differ in shape: {q1.shape} vs {q2.shape}")
    lo, intervals = _compact_range(bits, signed)
    hi = lo + intervals
    if q1.size and (min(q1.min(), q2.min()) < lo or max(q1.max(), q2.max()) > hi):
        raise ValueError(f"a code is outside [{lo}, {hi}] for {bits}-bit {'signed' if signed else 'unsigned'} data")
    ell = np.minimum(np.minimum(q1, q2) - lo, intervals - 1)
    u1, u2 = q1 - lo - ell, q2 - lo - ell
    if q1.size and (u1.min() < 0 or u1.max() > 1 or u2.min() < 0 or u2.max() > 1):
        raise ValueError("the two copies of a feature are not in one quantization interval (|q1 - q2| > 1): "
                         "the compact encoding holds only two stochastic roundings of the same value")
    return (ell | (u1 << (bits - 1)) | (u2 << bits)).astype(np.uint64)


def decode_compact_slots(slots, bits: int, *, signed: bool):
    """Inverse of :func:`compact_double_sample_slots` (the gateware's lane decode): integer codes ``(q1, q2)``."""
    s = np.asarray(slots, dtype=np.int64)
    lo, _ = _compact_range(bits, signed)
    ell = s & ((1 << (bits - 1)) - 1)
    return lo + ell + ((s >> (bits - 1)) & 1), lo + ell + ((s >> bits) & 1)


def pack_beat_slots(slots, slot_bits: int, per_word: int, word_bits: int, words: int) -> np.ndarray:
    """Rows of ``n`` slots (any width) into ``words`` bus words per row, ``per_word`` slots per word from bit 0
    (slot ``j`` in word ``j // per_word`` at bit ``(j % per_word) * slot_bits``); the rest of each word is zero.
    Returns little-endian uint32 chunks, shape ``(n_rows, words * word_bits // 32)``."""
    s = np.atleast_2d(np.asarray(slots)).astype(np.uint64)
    rows, n = s.shape
    if per_word * slot_bits > word_bits or word_bits % 32:
        raise ValueError(f"{per_word} slots of {slot_bits} bits do not fit a {word_bits}-bit word")
    if n > words * per_word:
        raise ValueError(f"{n} slots do not fit {words} words of {per_word}")
    if s.size and (s.max() >> np.uint64(slot_bits)) != 0:
        raise ValueError(f"a slot does not fit in {slot_bits} bits")
    grid = np.zeros((rows, words, per_word), dtype=np.uint64)
    grid.reshape(rows, -1)[:, :n] = s
    bits = ((grid[..., None] >> np.arange(slot_bits, dtype=np.uint64)) & np.uint64(1)).astype(np.uint8)
    wbits = np.zeros((rows, words, word_bits), dtype=np.uint8)
    wbits[:, :, :per_word * slot_bits] = bits.reshape(rows, words, -1)
    raw = np.packbits(wbits, axis=2, bitorder="little")
    return np.ascontiguousarray(raw).reshape(rows, -1).view("<u4")


def unpack_beat_slots(packed, slot_bits: int, per_word: int, word_bits: int, n: int) -> np.ndarray:
    """Inverse of :func:`pack_beat_slots`: the first ``n`` slots of each row, as int64."""
    p = np.ascontiguousarray(np.atleast_2d(np.asarray(packed, dtype="<u4")))
    rows = p.shape[0]
    wbits = np.unpackbits(p.view(np.uint8).reshape(rows, -1, word_bits // 8), axis=2, bitorder="little")
    b = wbits[:, :, :per_word * slot_bits].reshape(rows, -1, slot_bits).astype(np.int64)
    return (b << np.arange(slot_bits)).sum(axis=2)[:, :n]
