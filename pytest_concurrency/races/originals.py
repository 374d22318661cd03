"""The real primitives, captured once: what the lock-tracking window replaces and puts back.

Every module of lock tracking imports this one first, before any window can open, so these are
the standard library's own ``threading.Lock``, ``RLock``, ``Condition`` and ``time.sleep``,
never a replacement.

Pure module: no pytest import.
"""

from __future__ import annotations

import _thread
import threading
import time
from collections.abc import Callable
from typing import Any

ORIGINAL_LOCK: Any = threading.Lock
ORIGINAL_RLOCK: Any = threading.RLock
ORIGINAL_CONDITION: Any = threading.Condition
ORIGINAL_SLEEP: Callable[[float], None] = time.sleep
RAW_LOCK_TYPE = type(_thread.allocate_lock())
"""The type of a real lock, as the locks made before a window (at import time) are."""
RAW_RLOCK_TYPE = type(_thread.RLock())
"""The type of a real reentrant lock (C), as ``threading.RLock()`` makes them."""
