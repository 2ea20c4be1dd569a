"""`python -m services.app all` (the Docker image's entry point) starts, serves and stops on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_python_m_services_app_serves_and_stops_on_sigterm() -> None:
    env = {**os.environ, "PHILIP_PORT": "0", "PHILIP_HTTP_PORT": "0", "PHILIP_THREADS": "1",
           "PHILIP_LOG_FORMAT": "json", "PHILIP_GRACE_S": "0.5"}
    env.pop("PHILIP_REDIS_URL", None)
    proc = subprocess.Popen([sys.executable, "-m", "services.app", "all"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        events = []
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            with_json = line.strip().startswith("{")
            event = json.loads(line).get("event") if with_json else None
            events.append(event or line.strip())
            if event == "app.serving":
                break
        assert "app.serving" in events, events[-20:]
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, rest[-2000:]
        assert '"app.stopping"' in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
