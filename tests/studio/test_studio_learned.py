"""What prompt exploration learned, in a real browser: chips per slot that pin or ban a value, sent with the next
feedback and honoured by the next round (against the real server and model of conftest.py)."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select

from tests.studio.browser_support import (
    BROWSER_TEST,
    IMAGES,
    STEPS,
    Console,
    finished_round,
    grid_round,
    grid_tiles,
    js,
    shoot,
    wait_for,
    wait_for_session_page,
)
from tests.studio.conftest import StudioServer

pytestmark = BROWSER_TEST


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
