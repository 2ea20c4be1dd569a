"""What a session learns and is told, over HTTP: the model's defaults, learned values, pins and bans, uploaded
reference images (the server of conftest.py)."""

from __future__ import annotations

import base64

import pytest

from tests.http.support import Served, image_ids, png_size, read_events, start_session

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="package")]  # the server of conftest.py


async def test_defaults_learned_values_pins_and_references_over_http(served: Served) -> None:
    from philip.evals.personalize import reference_images
    from philip.images import png_bytes

    async with served.client() as http:
        body = {"params": {"prompt": "a circle", "numImages": 2, "steps": 3, "seed": 5}}
        snapshot = await start_session(http, body)  # no weights: the model's own defaults, every field shown
        assert snapshot["weights"]["explore"] == 1 and snapshot["weights"]["maxWeight"] == 0
        session_id = snapshot["sessionId"]
        events = f"/v1/sessions/{session_id}/events"
        first = await read_events(http, events, until="round_images")
        round1 = first.events[-1].data["roundImages"]
        fed = await http.post(f"/v1/sessions/{session_id}/feedback", json={"likedImageIds": image_ids(round1)[:1]})
        assert fed.status_code == 200, fed.text
        second = await read_events(http, events, until="round_images", last_event_id=first.events[-1].id)
        learned = second.events[-1].data["roundImages"]["learned"]
        assert [b["slot"] for b in learned] == ["fg", "bg"] and all(b["values"][0]["probability"] > 0 for b in learned)
        served.validate(second.events[-1].data, "philip.v1.SessionEvent")

        bad = await http.post(f"/v1/sessions/{session_id}/feedback", json={
            "constraints": {"pinned": [{"slot": "background", "value": "blue"}]}})
        assert bad.status_code == 400 and "unknown slot 'background'" in bad.json()["message"]
        pin = {"pinned": [{"slot": "bg", "value": "yellow"}]}
        fed = await http.post(f"/v1/sessions/{session_id}/feedback", json={"constraints": pin})
        assert fed.status_code == 200, fed.text
        assert fed.json()["constraints"] == {**pin, "banned": []} and fed.json()["learned"] == learned
        third = await read_events(http, events, until="round_images", last_event_id=second.events[-1].id)
        prompts = [i["prompt"] for i in third.events[-1].data["roundImages"]["images"]]
        assert all(p.endswith("circle on a yellow background") for p in prompts)

        refs = [base64.b64encode(png_bytes(img)).decode() for img in reference_images(2)]
        with_refs = await start_session(http, {**body, "referenceImages": refs})
        assert with_refs["weights"]["explore"] == 0 and with_refs["weights"]["maxWeight"] == pytest.approx(0.8)
        assert len(with_refs["likedImageIds"]) == 2
        ref_png = await http.get(f"/v1/images/{with_refs['likedImageIds'][0]}.png")
        assert ref_png.status_code == 200 and png_size(ref_png.content) == (64, 64)
        rejected = await http.post("/v1/sessions", json={**body, "referenceImages": [base64.b64encode(b"x").decode()]})
        assert rejected.status_code == 400 and "reference_images[0]" in rejected.json()["message"]
