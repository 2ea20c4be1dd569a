"""A property-based fuzz of every route of the HTTP edge, generated from its OpenAPI document
(tests/http/fuzzing.py says what is drawn and what must hold), against the package's open deployment
(conftest.py). `make test` runs PHILIP_FUZZ_EXAMPLES (default 120) examples; `make fuzz` runs 1,000.
"""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from tests.http import fuzzing
from tests.http.support import Served, read_events

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="package")]
EXAMPLES = int(os.environ.get("PHILIP_FUZZ_EXAMPLES", "120"))


async def test_fuzz_every_route_from_the_openapi_document(served: Served) -> None:
    async with served.client() as http:  # real ids, for the fuzz to reach past NOT_FOUND
        created = await http.post("/v1/sessions", json={"params": {"prompt": "a fuzzed shape", "numImages": 2,
                                                                   "steps": 2, "seed": 5}})
        assert created.status_code == 201, created.text
        session_id = created.json()["sessionId"]
        first = await read_events(http, f"/v1/sessions/{session_id}/events", until="round_images")
        job = (await http.post("/v1/generations", json={"prompt": "a fuzz", "numImages": 1, "steps": 2})).json()
        await read_events(http, f"/v1/jobs/{job['jobId']}/events")
    images = [i["image"]["id"] for i in first.events[-1].data["roundImages"]["images"]]
    real_ids = [session_id, job["jobId"], *images]

    started = time.perf_counter()
    seen = await asyncio.to_thread(fuzzing.run, served.http, served.doc, real_ids, EXAMPLES)
    took = time.perf_counter() - started
    print(f"\nHTTP fuzz: {EXAMPLES} examples in {took:.1f} s; answers {dict(sorted(seen.items()))}")

    assert sum(seen.values()) == EXAMPLES
    # It reached past validation (successes) and most calls failed precisely (400s), on most routes.
    assert sum(n for k, n in seen.items() if k.split(" ")[-1].startswith("2")) > 0, seen
    assert sum(n for k, n in seen.items() if k.endswith(" 400")) > EXAMPLES // 10, seen
    routes = {(m.upper(), p) for p, ops in served.doc["paths"].items() for m in ops}
    reached = {tuple(k.split(" ")[:2]) for k in seen}
    assert len(reached) >= len(routes) * 2 // 3, sorted(routes - reached)
    async with served.client() as http:  # and the edge is healthy afterwards
        assert (await http.get("/readyz")).json() == {"status": "ok"}
        assert (await http.get(f"/v1/images/{images[0]}.png")).status_code == 200
