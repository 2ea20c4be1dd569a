"""The fault soak, short (issue 22, item 10; `philip bench soak` runs 100 sessions and 5 jobs).

Processes as in production (two gateways, two generators, a refiner, a personalizer) on a private
redis-server with AOF; Redis is restarted once, a gateway and a generator are SIGKILLed and started again,
while scripted sessions and training jobs run over the gateways' HTTP edges.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from philip.bench.processes import PHILIP
from philip.bench.soak import run_soak

pytestmark = pytest.mark.slow


async def test_sessions_and_training_jobs_survive_a_redis_restart_and_killed_replicas(tmp_path: Path) -> None:
    if shutil.which("redis-server") is None or not PHILIP.is_file():
        pytest.skip("needs redis-server and the installed philip command")
    result = await run_soak(sessions=12, jobs=2, concurrency=6, folder=tmp_path)
    print(result)
    assert [f["fault"] for f in result["faults"]] == ["redis restarted", "gateway-2 SIGKILLed",
                                                      "generator-1 SIGKILLed"]
    assert all(f["at_done"] < 1.0 for f in result["faults"]), "every fault hit sessions in flight"
    assert result["completed"] == result["sessions"] == 12 and result["lost"] == 0, result["errors"]
    assert result["internal_errors"] == 0
    assert result["adapters"] == result["training_jobs"] == 2, result["errors"]
    assert result["orphan_folders"] == 0 and result["missing_folders"] == 0
