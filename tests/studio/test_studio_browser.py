"""PHiLIP Studio in a real browser against a real server: a session from the first prompt to the
upscaled final image (live previews, likes and dislikes, a second round, a reload that resumes), then
the gallery, the read-only viewer, the adapters page and errors shown where they happened, and what
prompt exploration learned shown as chips that pin or ban a slot's value.

Screenshots of every step go to the test's tmp folder; with PHILIP_STUDIO_SCREENSHOT=1 the final
state is also copied to docs/studio.png.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.studio.conftest import REPO, StudioServer

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (shutil.which("chromium") and shutil.which("chromedriver")),
                       reason="headless Chromium tests need chromium and chromedriver on PATH (apt-get install "
                              "chromium chromium-driver)"),
]

PROMPT = "a red circle on a blue background"
STEPS = 6
IMAGES = 4
TIMEOUT_S = 60


def wait_for(driver: WebDriver, what: str, check: Callable[[], Any], timeout: float = TIMEOUT_S) -> Any:
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.02).until(lambda _: check())
    except Exception as exc:
        status = driver.execute_script("return document.getElementById('status')?.textContent || ''")
        raise AssertionError(f"timed out waiting for {what} (status line: {status!r})") from exc


def js(driver: WebDriver, script: str, *args: Any) -> Any:
    return driver.execute_script(script, *args)


class Console:
    """Collects the browser's console; any SEVERE entry not expected fails the test."""

    def __init__(self, driver: WebDriver) -> None:
        self.driver = driver
        self.entries: list[dict[str, Any]] = []

    def check(self, allowed: tuple[str, ...] = ()) -> None:
        self.entries += self.driver.get_log("browser")
        severe = [e["message"] for e in self.entries
                  if e["level"] == "SEVERE" and not any(a in e["message"] for a in allowed)]
        assert not severe, f"browser console errors: {severe}"


def shoot(driver: WebDriver, folder: Path, name: str, whole_page: bool = False) -> Path:
    path = folder / f"{name}.png"
    size = driver.get_window_size()
    if whole_page:  # the window as tall as the page (capped), so the shot shows all of it
        height = js(driver, "return document.documentElement.scrollHeight")
        driver.set_window_size(size["width"], min(2400, max(size["height"], height + 140)))
    try:
        assert driver.save_screenshot(str(path)), f"cannot save {path}"
    finally:
        if whole_page:
            driver.set_window_size(size["width"], size["height"])
    return path


def wait_for_session_page(driver: WebDriver) -> None:
    """After Start: the page has moved to /s/{id} and shows the session (its grid is in the document)."""
    wait_for(driver, "the session page", lambda: "/s/" in driver.current_url and driver.find_elements(By.ID, "grid"))


def grid_tiles(driver: WebDriver) -> list[Any]:
    return driver.find_elements(By.CSS_SELECTOR, "#grid .tile")


def grid_round(driver: WebDriver) -> str:
    return str(js(driver, "return document.getElementById('grid').dataset.round"))


def finished_round(driver: WebDriver, number: int) -> bool:
    """Round `number` is in the grid with every image final and the round's progress bar at rest."""
    return bool(js(driver, """
        const grid = document.getElementById('grid');
        const tiles = [...grid.querySelectorAll('.tile')];
        return grid.dataset.round === String(arguments[0]) && tiles.length === arguments[1]
          && tiles.every(t => t.dataset.imageId && t.querySelector('img').complete
                              && t.querySelector('img').naturalWidth > 0)
          && document.getElementById('round-progress').dataset.active === 'false';
    """, number, IMAGES))


def test_session_from_prompt_to_final_image(studio_server: StudioServer, browser: WebDriver, tmp_path: Path) -> None:
    driver, console = browser, Console(browser)
    driver.get(studio_server.base_url + "/")
    prompt = wait_for(driver, "the prompt box", lambda: driver.find_element(By.ID, "prompt"))
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


def learned_rows(driver: WebDriver) -> list[dict[str, Any]]:
    """The "learned so far" rows under the grid: each slot with its chips (value, pin/ban state, shown text)."""
    rows: list[dict[str, Any]] = js(driver, """
        const box = document.getElementById('learned');
        if (!box || box.hidden) return [];
        return [...box.querySelectorAll('.learned-row')].map(row => ({
            slot: row.dataset.slot,
            chips: [...row.querySelectorAll('.value-chip')].map(c => ({
                value: c.dataset.value, state: c.dataset.state, probability: c.dataset.probability,
                text: c.textContent,
                pin: c.querySelector('.chip-btn.pin')?.getAttribute('aria-pressed'),
                ban: c.querySelector('.chip-btn.ban')?.getAttribute('aria-pressed')})),
        }));
    """)
    return rows


def chip_button(driver: WebDriver, kind: str, slot: str, value: str) -> Any:
    label = f"{kind.title()} {slot}: {value}"  # "Pin bg: blue"
    return driver.find_element(By.CSS_SELECTOR, f"#learned .chip-btn.{kind}[aria-label='{label}']")


def round_prompts(driver: WebDriver) -> list[str]:
    """The prompts the grid's images were drawn from, as their tiles' titles tell ("#1: a red circle on ...")."""
    return [str(t.get_attribute("title")).split(": ", 1)[-1] for t in grid_tiles(driver)]


def narrow_shot(driver: WebDriver, folder: Path, name: str) -> Path:
    """The learned chips at a phone's width (390 px), scrolled into view."""
    size = driver.get_window_size()
    driver.set_window_size(390, 844)
    try:
        js(driver, "document.getElementById('learned').scrollIntoView({block: 'center'})")
        time.sleep(0.3)  # the resize's relayout
        return shoot(driver, folder, name)
    finally:
        driver.set_window_size(size["width"], size["height"])


# One feedback POST whose pin names a value the vocabulary lacks: the server's 400 is what the page shows.
BAD_PIN_ONCE = """
    const real = window.fetch;
    window.fetch = (url, init) => {
        if (String(url).endsWith('/feedback') && init && init.body) {
            window.fetch = real;
            const body = JSON.parse(init.body);
            body.constraints.pinned = body.constraints.pinned.map(p => ({...p, value: 'teal'}));
            init = {...init, body: JSON.stringify(body)};
        }
        return real(url, init);
    };
"""


def test_learned_chips_pin_and_ban(studio_server: StudioServer, browser: WebDriver, tmp_path: Path) -> None:
    driver, console = browser, Console(browser)
    driver.get(studio_server.base_url + "/")
    prompt = wait_for(driver, "the prompt box", lambda: driver.find_element(By.ID, "prompt"))
    prompt.send_keys("a circle")
    Select(driver.find_element(By.ID, "num-images")).select_by_value(str(IMAGES))
    driver.find_element(By.CSS_SELECTOR, "#advanced > summary").click()
    driver.find_element(By.ID, "steps").send_keys(str(STEPS))
    prompt.send_keys(Keys.ENTER)

    # Round 1 is the prompt alone: nothing learned yet, no chips.
    wait_for_session_page(driver)
    wait_for(driver, "round 1's images", lambda: finished_round(driver, 1))
    session_id = driver.current_url.rsplit("/s/", 1)[1]
    assert learned_rows(driver) == []
    grid_tiles(driver)[0].click()
    driver.find_element(By.ID, "next-round").click()

    # Round 2 explored the slots the prompt leaves open (fg, bg; "circle" names the shape).
    wait_for(driver, "round 2's images", lambda: finished_round(driver, 2))
    rows = wait_for(driver, "the learned chips", lambda: learned_rows(driver))
    assert [r["slot"] for r in rows] == ["fg", "bg"], rows
    for row in rows:
        assert 1 <= len(row["chips"]) <= 3, row
        probabilities = [float(c["probability"]) for c in row["chips"]]
        assert probabilities == sorted(probabilities, reverse=True), row
        for chip in row["chips"]:
            assert chip["state"] == "none" and chip["pin"] == "false" and chip["ban"] == "false", chip
            shown = re.fullmatch(rf"{chip['value']}(\d+) %", chip["text"])  # "blue71 %": value, then percent
            assert shown and abs(int(shown[1]) - float(chip["probability"]) * 100) <= 0.5 + 1e-6, chip
    time.sleep(0.4)  # the panel's fade-in, for the screenshots
    shoot(driver, tmp_path, "11_learned_round2")
    narrow_shot(driver, tmp_path, "12_learned_round2_narrow")

    # Pin a background (pending until the next feedback), like an image; a 400 keeps both and shows why.
    pinned = rows[1]["chips"][0]["value"]
    chip_button(driver, "pin", "bg", pinned).click()
    bg = next(r for r in learned_rows(driver) if r["slot"] == "bg")
    changed = [(c["value"], c["state"], c["pin"]) for c in bg["chips"] if c["state"] != "none"]
    assert changed == [(pinned, "pinned", "true")], bg
    assert "next round" in driver.find_element(By.CSS_SELECTOR, "#learned .learned-note").text
    liked = grid_tiles(driver)[1]
    liked.click()
    js(driver, BAD_PIN_ONCE)
    driver.find_element(By.ID, "next-round").click()
    error = wait_for(driver, "the feedback error", lambda: driver.find_element(By.ID, "feedback-error").text.strip())
    assert "'teal' is not a value of 'bg'" in error, error
    assert grid_round(driver) == "2" and liked.get_attribute("data-state") == "liked"
    assert chip_button(driver, "pin", "bg", pinned).get_attribute("aria-pressed") == "true"
    shoot(driver, tmp_path, "13_learned_error")

    # Sent for real: every image of round 3 has the pinned background.
    driver.find_element(By.ID, "next-round").click()
    wait_for(driver, "round 3's images", lambda: finished_round(driver, 3))
    assert not driver.find_element(By.ID, "feedback-error").is_displayed()
    assert all(p.endswith(f"on a {pinned} background") for p in round_prompts(driver)), round_prompts(driver)
    snapshot = studio_server.api("GET", f"/v1/sessions/{session_id}")
    assert snapshot["constraints"]["pinned"] == [{"slot": "bg", "value": pinned}]
    assert all(ri["prompt"].endswith(f"on a {pinned} background") for ri in snapshot["rounds"][-1]["images"])

    # A reload shows the pin from the session's own state.
    driver.refresh()
    wait_for(driver, "round 3 after the reload", lambda: finished_round(driver, 3))
    rows = wait_for(driver, "the learned chips after the reload", lambda: learned_rows(driver))
    bg = next(r for r in rows if r["slot"] == "bg")
    assert [(c["value"], c["pin"]) for c in bg["chips"] if c["state"] == "pinned"] == [(pinned, "true")], bg
    assert "next round" not in driver.find_element(By.CSS_SELECTOR, "#learned .learned-note").text

    # Unpin and pin again is no change to send; then ban the likeliest foreground.
    chip_button(driver, "pin", "bg", pinned).click()
    assert chip_button(driver, "pin", "bg", pinned).get_attribute("aria-pressed") == "false"
    chip_button(driver, "pin", "bg", pinned).click()
    assert "next round" not in driver.find_element(By.CSS_SELECTOR, "#learned .learned-note").text
    banned = next(r for r in rows if r["slot"] == "fg")["chips"][0]["value"]
    chip_button(driver, "ban", "fg", banned).send_keys(Keys.SPACE)  # from the keyboard
    assert chip_button(driver, "ban", "fg", banned).get_attribute("aria-pressed") == "true"
    shoot(driver, tmp_path, "14_learned_pinned_banned")
    narrow_shot(driver, tmp_path, "15_learned_pinned_banned_narrow")
    driver.find_element(By.ID, "next-round").click()
    wait_for(driver, "round 4's images", lambda: finished_round(driver, 4))
    prompts = round_prompts(driver)
    assert all(p.endswith(f"on a {pinned} background") and not p.startswith(f"a {banned} ") for p in prompts), prompts
    snapshot = studio_server.api("GET", f"/v1/sessions/{session_id}")
    assert snapshot["constraints"] == {"pinned": [{"slot": "bg", "value": pinned}],
                                       "banned": [{"slot": "fg", "value": banned}]}
    rows = learned_rows(driver)
    fg = next(r for r in rows if r["slot"] == "fg")
    assert [(c["value"], c["ban"]) for c in fg["chips"] if c["state"] == "banned"] == [(banned, "true")], fg
    shoot(driver, tmp_path, "16_learned_round4")
    console.check(allowed=("the server responded with a status of 400",))
