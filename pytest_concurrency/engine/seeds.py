"""One seed drives every random choice: derive the per-test and per-run seeds from it.

Pure module. Derivation is stable across processes and Python versions (no ``hash()``), so a
printed seed replays on any machine.
"""

from __future__ import annotations

import hashlib
import secrets

SEED_BITS = 32


def new_session_seed() -> int:
    return secrets.randbits(SEED_BITS)


def derive_seed(*parts: object) -> int:
    text = "\x1f".join(str(part) for part in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big") & (
        (1 << SEED_BITS) - 1
    )


def test_seed(session_seed: int, nodeid: str) -> int:
    return derive_seed("test", session_seed, nodeid)


MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15


def splitmix64(value: int) -> int:
    """One step of SplitMix64 (Steele et al., 2014): a fast, well-mixed 64-bit hash."""
    value = (value + GOLDEN) & MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & MASK64
    return value ^ (value >> 31)


def run_seed(series_seed: int, run_index: int) -> int:
    """The seed of one run: integer mixing, cheap enough for the once-per-run hot path."""
    return run_seed_from(run_seed_base(series_seed), run_index)


def run_seed_base(series_seed: int) -> int:
    """The half of :func:`run_seed` that depends on the series only: computed once per series."""
    return splitmix64(series_seed & MASK64)


def run_seed_from(base: int, run_index: int) -> int:
    """``run_seed(series_seed, run_index)`` given ``base = run_seed_base(series_seed)``."""
    return splitmix64(base ^ run_index) & SEED_MASK


SEED_MASK = (1 << SEED_BITS) - 1
