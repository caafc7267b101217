"""Philox4x32-10 random words, bit-identical to Triton's ``tl.randint``.

Triton 3.6 (``triton/language/random.py``) computes ``tl.randint(seed, offset)``
as the first word of Philox4x32 with 10 rounds, counter
``(offset mod 2^32, offset >> 32 (0 for 32-bit offsets), 0, 0)`` and key
``(seed mod 2^32, (seed >> 32) mod 2^32)`` where a negative seed is taken as its
64-bit two's complement.  Each round (A = 0xD2511F53, B = 0xCD9E8D57)::

    c0' = hi(B·c2) ^ c1 ^ k0     c1' = lo(B·c2)
    c2' = hi(A·c0) ^ c3 ^ k1     c3' = lo(A·c0)
    k0 += 0x9E3779B9             k1 += 0xBB67AE85

Known answer (Random123's kat_vectors, counter = key = 0):
``6627e8d5 e169c58d bc57ac4c 9b00dbd8``.
"""

from __future__ import annotations

import numba as nb
import numpy as np

_A = np.uint64(0xD2511F53)
_B = np.uint64(0xCD9E8D57)
_KA = np.uint64(0x9E3779B9)
_KB = np.uint64(0xBB67AE85)
_M32 = np.uint64(0xFFFFFFFF)


@nb.njit(inline="always", error_model="numpy")
def philox4x32(c0, c1, c2, c3, k0, k1):
    """Ten Philox rounds on uint64 holders of 32-bit words; returns 4 words."""
    s32 = np.uint64(32)
    for _ in range(10):
        pb = _B * c2
        pa = _A * c0
        n0 = (pb >> s32) ^ c1 ^ k0
        n2 = (pa >> s32) ^ c3 ^ k1
        c1 = pb & _M32
        c3 = pa & _M32
        c0 = n0 & _M32
        c2 = n2 & _M32
        k0 = (k0 + _KA) & _M32
        k1 = (k1 + _KB) & _M32
    return c0, c1, c2, c3


@nb.njit(inline="always", error_model="numpy")
def randint_word(seed_u64, offset):
    """``tl.randint(seed, offset)`` for one int64 offset: a uint32 in a uint64."""
    off = np.uint64(offset)
    w0, _, _, _ = philox4x32(off & _M32, off >> np.uint64(32), np.uint64(0), np.uint64(0),
                             seed_u64 & _M32, seed_u64 >> np.uint64(32))
    return w0


@nb.njit(cache=True, error_model="numpy")
def _fill_words(out, seed_u64, offset):
    for i in range(out.size):
        out[i] = randint_word(seed_u64, offset + i)


def seed_to_u64(seed) -> np.uint64:
    """The 64-bit key of an integer seed (negative seeds: two's complement)."""
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an integer, got {type(seed).__name__} ({seed!r})")
    seed = int(seed)
    if not -(1 << 63) <= seed < (1 << 64):
        raise ValueError(f"seed must fit in 64 bits (−2^63 ≤ seed < 2^64), got {seed}")
    return np.uint64(seed & 0xFFFFFFFFFFFFFFFF)


def philox_words(seed, n: int, offset: int = 0) -> np.ndarray:
    """``tl.randint(seed, offset + arange(n))`` as a uint32 array."""
    out = np.empty(n, dtype=np.uint64)
    _fill_words(out, seed_to_u64(seed), np.int64(offset))
    return out.astype(np.uint32)


def philox4x32_block(counter, key) -> tuple[int, int, int, int]:
    """One Philox4x32-10 block for explicit 4-word counter and 2-word key (for tests)."""
    c = [np.uint64(int(v) & 0xFFFFFFFF) for v in counter]
    k = [np.uint64(int(v) & 0xFFFFFFFF) for v in key]
    return tuple(int(v) for v in _block(c[0], c[1], c[2], c[3], k[0], k[1]))


@nb.njit(cache=True, error_model="numpy")
def _block(c0, c1, c2, c3, k0, k1):
    return philox4x32(c0, c1, c2, c3, k0, k1)
