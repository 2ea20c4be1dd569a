"""The CLI end to end: `philip serve all` in its own process, `philip generate` against it."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from philip.bench.server_process import free_port
from philip.evals.personalize import reference_images

ROOT = Path(__file__).resolve().parents[1]
PHILIP = [sys.executable, "-m", "philip.cli"]



@pytest.mark.slow
def test_serve_generate_and_graceful_stop(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "PHILIP_LOG_FORMAT": "json", "PHILIP_THREADS": "2", "PHILIP_HTTP_PORT": "0",
           "PHILIP_ADAPTERS_DIR": str(tmp_path / "adapters")}
    env.pop("PHILIP_REDIS_URL", None)  # the embedded default: in-process store
    server = subprocess.Popen([*PHILIP, "serve", "all", "--port", str(port)], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        health = subprocess.run([*PHILIP, "health", "--gateway", f"127.0.0.1:{port}", "--wait", "120"],
                                cwd=ROOT, env=env, capture_output=True, text=True)
        assert health.stdout.strip() == "SERVING", health
        out = tmp_path / "out"
        gen = subprocess.run(
            [*PHILIP, "generate", "a green square on a white background", "-n", "3", "--seed", "11",
             "--out", str(out), "--gateway", f"127.0.0.1:{port}"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
        )
        assert gen.returncode == 0, gen.stderr
        pngs = sorted(out.glob("*_seed*.png"))
        assert [p.name.split("_seed")[1] for p in pngs] == ["11.png", "12.png", "13.png"]
        assert all(Image.open(p).size == (64, 64) for p in pngs)
        assert len(list(out.glob("*_sheet.png"))) == 1
        bad = subprocess.run([*PHILIP, "generate", "x", "-n", "9", "--gateway", f"127.0.0.1:{port}"],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert bad.returncode == 2 and "INVALID_ARGUMENT" in bad.stderr and "num_images" in bad.stderr

        refs = []
        for i, image in enumerate(reference_images(4)):
            refs.append(tmp_path / f"ref{i}.png")
            image.save(refs[-1])
        gateway = ["--gateway", f"127.0.0.1:{port}"]
        made = subprocess.run([*PHILIP, "adapter", "create", *map(str, refs), "--token", "sks", "--class-word",
                               "shape", "--steps", "4", "--out", str(tmp_path / "samples"), *gateway],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
        assert made.returncode == 0, made.stderr
        adapter_id = re.findall(r"adapter (ad_[0-9a-f]{16})", made.stderr)[-1]
        listed = subprocess.run([*PHILIP, "adapter", "list", *gateway], cwd=ROOT, env=env, capture_output=True,
                                text=True, timeout=60)
        assert f"{adapter_id}  token=sks" in listed.stderr
        used = subprocess.run([*PHILIP, "generate", "a sks on a red background", "-n", "1", "--adapter", adapter_id,
                               "--out", str(tmp_path / "adapted"), *gateway],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert used.returncode == 0, used.stderr
        taken = subprocess.run([*PHILIP, "adapter", "create", *map(str, refs), "--token", "sks", "--class-word",
                                "shape", *gateway], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert taken.returncode == 2 and "ALREADY_EXISTS" in taken.stderr
        gone = subprocess.run([*PHILIP, "adapter", "delete", adapter_id, *gateway], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=60)
        assert gone.returncode == 0 and not (tmp_path / "adapters" / adapter_id).exists()
    finally:
        t0 = time.monotonic()
        server.send_signal(signal.SIGTERM)
        logs, _ = server.communicate(timeout=60)
    assert server.returncode == 0, logs[-2000:]
    assert time.monotonic() - t0 < 30
    assert '"event": "app.stopping"' in logs
    not_json = [line for line in logs.splitlines() if line.strip() and not line.startswith("{")]
    assert not_json == [], f"a JSON log stream holds only log lines: {not_json[:3]}"
