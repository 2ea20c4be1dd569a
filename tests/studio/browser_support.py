"""What the studio's browser tests share: waiting on the page, reading the grid, screenshots."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

PROMPT = "a red circle on a blue background"
STEPS = 6
IMAGES = 4
TIMEOUT_S = 60

# The marks of every browser test module: slow, and skipped where Debian's chromium is not installed.
BROWSER_TEST = [
    pytest.mark.slow,
    pytest.mark.skipif(not (shutil.which("chromium") and shutil.which("chromedriver")),
                       reason="headless Chromium tests need chromium and chromedriver on PATH (apt-get install "
                              "chromium chromium-driver)"),
]


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
