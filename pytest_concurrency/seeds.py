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


def run_seed(series_seed: int, run_index: int) -> int:
    return derive_seed("run", series_seed, run_index)
