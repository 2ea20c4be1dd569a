"""`philip bench load` at a small scale: every session completes, and the numbers are reported."""

from __future__ import annotations

import pytest

from philip.bench.load import bench_load

pytestmark = pytest.mark.slow


async def test_a_few_concurrent_sessions_all_complete() -> None:
    result = await bench_load(sessions=4, steps=2, redis_url="redis://127.0.0.1:6379/15", timeout_s=120)
    assert (result["sessions"], result["completed"], result["lost"]) == (4, 4, 0), result["errors"]
    assert 0 < result["p50_round_s"] <= result["p95_round_s"] < 120
