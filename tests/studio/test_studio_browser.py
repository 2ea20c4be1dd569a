"""PHiLIP Studio in a real browser against a real server: a session from the first prompt to the
upscaled final image (live previews, likes and dislikes, a second round, a reload that resumes), then
the gallery, the read-only viewer, the adapters page and errors shown where they happened.

Screenshots of every step go to the test's tmp folder; with PHILIP_STUDIO_SCREENSHOT=1 the final
state is also copied to docs/studio.png.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select

from tests.studio.browser_support import (
    BROWSER_TEST,
    IMAGES,
    PROMPT,
    STEPS,
    TIMEOUT_S,
    Console,
    finished_round,
    grid_round,
    grid_tiles,
    js,
    shoot,
    wait_for,
    wait_for_session_page,
)
from tests.studio.conftest import REPO, StudioServer

pytestmark = BROWSER_TEST


def test_session_from_prompt_to_final_image(studio_server: StudioServer, browser: WebDriver, tmp_path: Path) -> None:
    driver, console = browser, Console(browser)
    driver.get(studio_server.base_url + "/")
    prompt = wait_for(driver, "the prompt box", lambda: driver.find_element(By.ID, "prompt"))
    # The served model from GET /v1/model: its line under the form, its default steps in the steps field.
    line = wait_for(driver, "the model line",
                    lambda: js(driver, "return document.getElementById('model-line').textContent"))
    assert line == "philip-tiny · SD-1.x/2.x · 8 steps · 64 px"
    assert driver.find_element(By.ID, "steps").get_attribute("placeholder") == "8"
    shoot(driver, tmp_path, "01_start")

    prompt.send_keys(PROMPT)
    Select(driver.find_element(By.ID, "num-images")).select_by_value(str(IMAGES))
    driver.find_element(By.CSS_SELECTOR, "#advanced > summary").click()
    driver.find_element(By.ID, "steps").send_keys(str(STEPS))
    driver.find_element(By.ID, "seed").send_keys("7")
    prompt.send_keys(Keys.ENTER)
    wait_for_session_page(driver)

    # A live preview (data: URL) shows while the round still runs: no image id yet, progress bar active.
    wait_for(driver, "a preview tile", lambda: js(driver, """
        const progress = document.getElementById('round-progress');
        return progress.dataset.active === 'true' && [...document.querySelectorAll('#grid .tile')].some(
            t => !t.dataset.imageId && t.dataset.phase === 'preview'
                 && (t.querySelector('img').getAttribute('src') || '').startsWith('data:image/png;base64,'));
    """))
    shoot(driver, tmp_path, "02_previews")
    assert "/s/" in driver.current_url
    session_id = driver.current_url.rsplit("/s/", 1)[1]

    wait_for(driver, "round 1's images", lambda: finished_round(driver, 1))
    tiles = grid_tiles(driver)
    assert [t.get_attribute("data-state") for t in tiles] == ["none"] * IMAGES
    tiles[0].click()  # like
    tiles[1].click()  # like, then
    tiles[1].click()  # dislike
    assert [t.get_attribute("data-state") for t in tiles[:3]] == ["liked", "disliked", "none"]
    liked_id, disliked_id = tiles[0].get_attribute("data-image-id"), tiles[1].get_attribute("data-image-id")
    shoot(driver, tmp_path, "03_feedback")

    driver.find_element(By.ID, "next-round").click()
    wait_for(driver, "round 2 to start", lambda: grid_round(driver) == "2")
    # Round 1 moved to the history strip, with the likes and dislikes it got.
    states = wait_for(driver, "round 1 in the history", lambda: js(driver, """
        const t = [...document.querySelectorAll('#history .tile')];
        return t.length === arguments[0] ? Object.fromEntries(t.map(x => [x.dataset.imageId, x.dataset.state])) : null;
    """, IMAGES))
    assert states[liked_id] == "liked" and states[disliked_id] == "disliked"
    shoot(driver, tmp_path, "04_round2")

    # A reload resumes the session exactly where it stands: same URL, round 1 in the history, round 2 goes on.
    driver.refresh()
    wait_for(driver, "round 2 after the reload", lambda: finished_round(driver, 2))
    assert driver.current_url.endswith(f"/s/{session_id}")
    states = js(driver, "return Object.fromEntries([...document.querySelectorAll('#history .tile')]"
                        ".map(x => [x.dataset.imageId, x.dataset.state]))")
    assert states == {**dict.fromkeys(states, "none"), liked_id: "liked", disliked_id: "disliked"}
    assert len(states) == IMAGES
    assert js(driver, "return document.getElementById('prompt').value") == PROMPT
    shoot(driver, tmp_path, "05_resumed")

    # Finalize image 1 of round 2: upscaled 4x, shown at its natural size, downloadable.
    tile = grid_tiles(driver)[0]
    tile.click()
    chosen = tile.get_attribute("data-image-id")
    tile_width = js(driver, "return arguments[0].querySelector('img').naturalWidth", tile)
    driver.find_element(By.ID, "finalize").click()
    wait_for(driver, "the final image", lambda: js(driver, """
        const img = document.getElementById('final-image');
        return img && img.complete && img.naturalWidth > 0 && !document.getElementById('download').hidden;
    """))
    final_width = js(driver, "return document.getElementById('final-image').naturalWidth")
    assert final_width == 4 * tile_width, (final_width, tile_width)
    rendered = js(driver, "return document.getElementById('final-image').getBoundingClientRect().width")
    assert abs(rendered - final_width) < 1, "the final image is shown at its natural size"
    download = driver.find_element(By.ID, "download")
    assert download.get_attribute("href").startswith("blob:") and download.get_attribute("download").endswith(".png")
    assert js(driver, "return document.querySelector(`#grid .tile[data-image-id='${arguments[0]}']`)"
                      ".classList.contains('chosen')", chosen)
    snapshot = studio_server.api("GET", f"/v1/sessions/{session_id}")
    assert snapshot["phase"] == "SESSION_PHASE_DONE" and snapshot["final"]["sourceImageId"] == chosen
    assert liked_id in snapshot["likedImageIds"] and disliked_id in snapshot["dislikedImageIds"]
    final_shot = shoot(driver, tmp_path, "06_final", whole_page=True)
    if os.environ.get("PHILIP_STUDIO_SCREENSHOT") == "1":
        shutil.copyfile(final_shot, REPO / "docs" / "studio.png")
    console.check()


def start_session(server: StudioServer) -> str:
    """A session made through the API, waited for until round 1 is done."""
    snap = server.api("POST", "/v1/sessions", {"params": {"prompt": "a yellow triangle on a purple background",
                                                          "numImages": 2, "steps": 4, "previewEvery": 1}})
    session_id: str = snap["sessionId"]
    deadline = time.monotonic() + TIMEOUT_S
    while server.api("GET", f"/v1/sessions/{session_id}")["phase"] != "SESSION_PHASE_AWAITING_FEEDBACK":
        assert time.monotonic() < deadline, "round 1 did not finish"
        time.sleep(0.1)
    return session_id


def test_gallery_viewer_adapters_and_errors(studio_server: StudioServer, browser: WebDriver, tmp_path: Path) -> None:
    driver, console = browser, Console(browser)
    session_id = start_session(studio_server)

    # The gallery lists it, newest first, with its cover image; a click opens it in the studio.
    driver.get(studio_server.base_url + "/gallery")
    card = f"#gallery-grid .card[data-session-id='{session_id}']"
    wait_for(driver, "the session's card", lambda: js(driver, f"""
        const first = document.querySelector('#gallery-grid .card');
        const img = document.querySelector("{card} img");
        return first && first.dataset.sessionId === arguments[0] && img && img.complete && img.naturalWidth > 0;
    """, session_id))
    shoot(driver, tmp_path, "07_gallery")
    driver.find_element(By.CSS_SELECTOR, card).click()
    wait_for(driver, "the session from the gallery", lambda: js(driver, """
        return document.querySelectorAll('#grid .tile[data-image-id]').length === 2;
    """))
    assert driver.current_url.endswith(f"/s/{session_id}")

    # The read-only viewer shows the same round, with no feedback controls.
    driver.get(f"{studio_server.base_url}/v/{session_id}")
    wait_for(driver, "the viewer's tiles", lambda: js(driver, """
        return document.querySelectorAll('#viewer #grid .tile[data-image-id]').length === 2;
    """))
    assert not driver.find_element(By.CSS_SELECTOR, "#viewer #next-round").is_displayed()
    assert not driver.find_element(By.CSS_SELECTOR, "#viewer #cancel").is_displayed()
    tile = driver.find_element(By.CSS_SELECTOR, "#viewer #grid .tile")
    tile.click()
    assert tile.get_attribute("data-state") == "none"
    shoot(driver, tmp_path, "08_viewer")

    # The adapters page renders its form and the (empty) list; an incomplete form gets the server's message.
    driver.get(studio_server.base_url + "/adapters")
    wait_for(driver, "the adapter form", lambda: driver.find_element(By.ID, "adapter-form").is_displayed())
    for element_id in ("dropzone", "photos", "token", "class-word", "method", "train-steps", "train", "adapter-list"):
        assert driver.find_elements(By.ID, element_id), element_id
    methods = [o.get_attribute("value") for o in Select(driver.find_element(By.ID, "method")).options]
    assert methods == ["LORA", "TEXTUAL_INVERSION"]
    wait_for(driver, "the adapter list", lambda: driver.find_element(By.ID, "adapter-list").text.strip())
    driver.find_element(By.ID, "token").send_keys("sks")
    driver.find_element(By.ID, "class-word").send_keys("shape")
    driver.find_element(By.ID, "train").click()
    error = wait_for(driver, "the adapter error", lambda: driver.find_element(By.ID, "adapter-error").text.strip())
    assert "4" in error and "7" in error, error  # the server's count rule for the photos
    shoot(driver, tmp_path, "09_adapters")

    # An empty prompt: the server's 400 message shows under the prompt box.
    driver.get(studio_server.base_url + "/")
    wait_for(driver, "the prompt box", lambda: driver.find_element(By.ID, "prompt").is_displayed())
    driver.find_element(By.ID, "start").click()
    message = wait_for(driver, "the start error", lambda: driver.find_element(By.ID, "start-error").text.strip())
    assert "prompt" in message, message
    assert "/s/" not in driver.current_url
    shoot(driver, tmp_path, "10_start_error")
    console.check(allowed=("the server responded with a status of 400",))
