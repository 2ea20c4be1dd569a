"""Wall-clock timestamps as the store keeps them: epoch milliseconds (also the first part of stream ids)."""

from __future__ import annotations

import time


def now_ms() -> int:
    return int(time.time() * 1000)


__all__ = ["now_ms"]
