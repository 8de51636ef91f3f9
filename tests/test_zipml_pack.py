"""Bus-word packing of quantized codes (models.zipml.pack)."""

import numpy as np
import pytest

from models.zipml.pack import (double_sample_slots, pack_double_sampled, pack_fields, pack_rows_with_label,
                               slots_per_word, unpack_double_sampled, unpack_fields, unpack_rows_with_label,
                               words_as_ints)
from models.zipml.quantize import code_range, quantize_codes


def bit_string_reference(fields, slot_bits):
    """Python-int reference: slot j at bits [j*w, (j+1)*w) of the row's bit string."""
    v = 0
    for j, f in enumerate(fields):
        v |= int(f) << (j * slot_bits)
    return v


def test_lsb_first_small_example():
    p = pack_fields([1, 2, 3], 2, 32)
    assert p.tolist() == [1 | 2 << 2 | 3 << 4]


@pytest.mark.parametrize("slot_bits", [1, 2, 4, 8, 16])
@pytest.mark.parametrize("word_bits", [32, 64, 128, 256, 512])
def test_pack_roundtrip_and_bit_positions(slot_bits, word_bits):
    rng = np.random.default_rng(slot_bits * 1000 + word_bits)
    n = 37 + slot_bits  # not a multiple of anything
    f = rng.integers(0, 2**slot_bits, size=(5, n))
    p = pack_fields(f, slot_bits, word_bits)
    assert p.dtype == np.dtype("<u4")
    words_per_row = -(-n * slot_bits // word_bits)
    assert p.shape == (5, words_per_row * word_bits // 32)
    assert np.array_equal(unpack_fields(p, slot_bits, n), f)
    ints = words_as_ints(p, word_bits)
    for r in range(5):
        ref = bit_string_reference(f[r], slot_bits)
        got = sum(w << (i * word_bits) for i, w in enumerate(ints[r]))
        assert got == ref
        assert all(w < 2**word_bits for w in ints[r])
        assert int.from_bytes(p[r].tobytes(), "little") == ref  # the memory image is little-endian


@pytest.mark.parametrize("bits,signed", [(1, False), (2, False), (2, True), (4, False), (4, True), (8, True)])
def test_double_sampled_slot_format_and_roundtrip(bits, signed):
    rng = np.random.default_rng(bits)
    x = rng.uniform(-1 if signed else 0, 1, size=(4, 101))
    q1 = quantize_codes(x, bits, signed=signed, rng=rng)
    q2 = quantize_codes(x, bits, signed=signed, rng=rng)
    slots = double_sample_slots(q1, q2, bits)
    mask = (1 << bits) - 1
    assert np.all((slots & mask) == (q1 & mask)) and np.all((slots >> bits) == (q2 & mask))
    p = pack_double_sampled(q1, q2, bits, 512)
    assert slots_per_word(2 * bits, 512) == 512 // (2 * bits)  # Q8 32, Q4 64, Q2 128, Q1 256 per line
    a, b = unpack_double_sampled(p, bits, 101, signed=signed)
    assert np.array_equal(a, q1) and np.array_equal(b, q2)
    lo, hi = code_range(bits, signed)
    assert a.min() >= lo and a.max() <= hi


@pytest.mark.parametrize("bits,d,lines", [(8, 101, 4), (4, 101, 2), (2, 101, 1), (4, 781, 13), (2, 127, 2),
                                          (1, 1001, 4)])
def test_rows_with_label_cache_lines_match_xeon_layout(bits, d, lines):
    rng = np.random.default_rng(d)
    q1 = quantize_codes(rng.uniform(size=(3, d)), bits, rng=rng)
    q2 = quantize_codes(rng.uniform(size=(3, d)), bits, rng=rng)
    labels = np.array([0.5, -0.25, 1.0])
    p = pack_rows_with_label(double_sample_slots(q1, q2, bits), 2 * bits, labels)
    assert p.shape == (3, lines * 16)  # cache lines per sample, as in docs/zipml.md §7.5
    assert p[0, -1] == 0x00400000 and p[2, -1] == 0x00800000 and p[1, -1] == 0xFFE00000  # Q.23 in word 15
    s, lab = unpack_rows_with_label(p, 2 * bits, d)
    assert np.array_equal(lab, labels)
    assert np.array_equal(s, double_sample_slots(q1, q2, bits))


def test_pack_rejects_bad_input():
    with pytest.raises(ValueError, match="fit"):
        pack_fields([4], 2)
    with pytest.raises(ValueError, match="slot_bits"):
        pack_fields([1], 3)
    with pytest.raises(ValueError, match="word_bits"):
        pack_fields([1], 2, 48)
    with pytest.raises(ValueError, match="shape"):
        pack_double_sampled(np.zeros((2, 3), int), np.zeros((2, 4), int), 2)
