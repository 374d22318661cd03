"""pytest-concurrency: run tests concurrently, hunt races by seed, judge scaling with cores."""

from __future__ import annotations

__version__ = "0.1.0"
