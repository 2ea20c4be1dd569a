"""One real `philip serve all` (gRPC + HTTP edge, trained philip-tiny) per module, and headless Chromium.

Chromium and chromedriver come from Debian (/usr/bin/chromium, /usr/bin/chromedriver; .ci/run installs them);
Selenium Manager is never asked to download anything.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from philip.bench.server_process import free_port

REPO = Path(__file__).resolve().parents[2]
PHILIP = Path(sys.executable).parent / "philip"
READY_TIMEOUT_S = 120.0
GRACE_S = 30.0


@dataclass
class StudioServer:
    base_url: str
    log_path: Path

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def api(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """A plain JSON call to the server's /v1 API (no key: the test server has no keys file)."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base_url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data else {})
        with urllib.request.urlopen(req, timeout=30) as res:
            answer: dict[str, Any] = json.loads(res.read() or b"{}")
            return answer


def _ready(url: str) -> bool:
    with contextlib.suppress(OSError, urllib.error.URLError), urllib.request.urlopen(url, timeout=2) as res:
        return bool(res.status == 200)
    return False


@pytest.fixture(scope="module")
def studio_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StudioServer]:
    work = tmp_path_factory.mktemp("studio_server")
    http_port, grpc_port = free_port(), free_port()
    # The server's own settings only: nothing inherited (a keys file, a Redis URL) changes what it does.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PHILIP_")}
    env.update({
        "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1",
        "PHILIP_MODEL_DIR": str(REPO / "models" / "philip-tiny"),
        "PHILIP_UPSCALER_PATH": str(REPO / "models" / "philip-tiny-x4.onnx"),
        "PHILIP_LOG_FORMAT": "json", "PHILIP_THREADS": "1",
        "PHILIP_ADAPTERS_DIR": str(work / "adapters"),
    })
    log_path = work / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([str(PHILIP), "serve", "all", "--port", str(grpc_port), "--http-port", str(http_port)],
                                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    server = StudioServer(f"http://127.0.0.1:{http_port}", log_path)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not _ready(server.base_url + "/readyz"):
            if proc.poll() is not None:
                pytest.fail(f"philip serve all exited with {proc.returncode}:\n{server.log_tail()}")
            if time.monotonic() > deadline:
                pytest.fail(f"GET /readyz was not 200 after {READY_TIMEOUT_S:.0f} s:\n{server.log_tail()}")
            time.sleep(0.25)
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def browser() -> Iterator[Any]:
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not chromedriver:
        pytest.skip("chromium and chromedriver are not on PATH")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))
    try:
        yield driver
    finally:
        driver.quit()
