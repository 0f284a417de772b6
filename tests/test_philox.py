"""Every backend's raw Philox words against an independent numpy Philox4x32-10."""

import numpy as np
import pytest
import torch

from adt_fast.ops import dispatch, reference

KATS = [  # shared/reference/philox-kat.md
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


def numpy_philox(counter, key):
    """Philox4x32-10 in numpy uint64 arithmetic, written from the SC'11 description."""
    c = [np.asarray(v, dtype=np.uint64) for v in counter]
    k0, k1 = (np.uint64(v) for v in key)
    mask = np.uint64(0xFFFFFFFF)
    for _ in range(10):
        p0 = np.uint64(0xD2511F53) * c[0]
        p1 = np.uint64(0xCD9E8D57) * c[2]
        c = [(p1 >> np.uint64(32)) ^ c[1] ^ k0, p1 & mask, (p0 >> np.uint64(32)) ^ c[3] ^ k1, p0 & mask]
        k0, k1 = (k0 + np.uint64(0x9E3779B9)) & mask, (k1 + np.uint64(0xBB67AE85)) & mask
    return np.stack(c, axis=-1)


def numpy_words(seed, offset, numel, num_samples):
    """(k, ceil(numel/4), 4): sample s of quad q (elements 4q .. 4q+3) has counter (q, offset + s)."""
    q = np.arange(-(-numel // 4), dtype=np.uint64)
    samples = []
    for s in range(num_samples):
        base = (offset + s) % 2**64  # docs/randomness.md: (offset + s) div 2^32 mod 2^32
        counter = (q & np.uint64(0xFFFFFFFF), q >> np.uint64(32),
                   np.full_like(q, base & 0xFFFFFFFF), np.full_like(q, base >> 32))
        samples.append(numpy_philox(counter, (seed & 0xFFFFFFFF, seed >> 32)))
    return np.stack(samples).astype(np.int64)


@pytest.mark.parametrize("counter,key,expected", KATS)
def test_numpy_philox_known_answers(counter, key, expected):
    assert tuple(int(v) for v in numpy_philox(counter, key)) == expected


@pytest.mark.parametrize("counter,key,expected", KATS)
def test_reference_philox_known_answers(counter, key, expected):
    words = reference.philox4x32(tuple(torch.tensor([v]) for v in counter), key)
    assert tuple(int(w) for w in words) == expected


def usable_backends():
    return [name for name in dispatch.BACKENDS
            if dispatch.get(name).why_not(torch.device("cpu"), torch.float32) is None]


@pytest.mark.parametrize("backend", usable_backends())
@pytest.mark.parametrize("seed,offset,numel,k", [
    (0, 0, 7, 1), (123456789, 5, 33, 5), (2**62 - 1, 2**40 + 3, 9, 9), (2**63 + 17, 2**32 - 3, 4, 4),
    (5, 2**33, 17 * 4096 + 3, 2),  # offset + s crosses 2^32; many ranges of quads, a partial last quad
    (7, 2**64 - 2, 5, 4)])  # offset + s wraps at 2^64
def test_backend_words_match_numpy(backend, seed, offset, numel, k):
    seed_offset = torch.tensor([v - 2**64 if v >= 2**63 else v for v in (seed, offset)], dtype=torch.int64)
    words = dispatch.get(backend).philox_words(seed_offset, numel, k)
    expected = numpy_words(seed, offset, numel, k)
    assert words.dtype == torch.int64 and words.shape == (k, -(-numel // 4), 4)
    np.testing.assert_array_equal(words.cpu().numpy(), expected)


def test_reference_normals_take_lane_n_mod_4_of_quad_n_div_4():
    seed, offset, numel, k = 2**40 + 9, 77, 10, 3
    words = torch.from_numpy(numpy_words(seed, offset, numel, k))  # (3, 3, 4)
    z = reference.words_to_normals(words)
    r = reference.philox_normals(seed, offset, numel, k)
    assert r.shape == (k, numel)
    for s in range(k):
        for n in range(numel):
            assert r[s, n] == z[s, n // 4, n % 4]


def test_normals_follow_the_documented_box_muller():
    words = torch.tensor([[[0, 0, 0xFFFFFFFF, 0x40000000]]], dtype=torch.int64)
    z = reference.words_to_normals(words)[0, 0]
    r0 = np.sqrt(-2 * np.log(2.0**-24))
    torch.testing.assert_close(z, torch.tensor([r0, 0.0, 0.0, 0.0], dtype=torch.float64), atol=1e-12, rtol=0)
    assert reference.words_to_normals(torch.tensor([[[0xFFFFFFFF, 0, 0, 0]]]))[0, 0, 0] == 0.0
