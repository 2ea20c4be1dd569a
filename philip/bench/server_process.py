"""`philip serve all` in a child process, for benchmarks that measure a real server from outside."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ServerProcess:
    """`philip serve all` in a child process: started, awaited until SERVING, measured, stopped."""

    def __init__(self, model_dir: Path, port: int, threads: int, log_dir: Path, http_port: int = 0) -> None:
        self.address = f"127.0.0.1:{port}"
        self.http_address = f"127.0.0.1:{http_port}" if http_port else ""
        self.log_path = log_dir / "server.log"
        env = {**os.environ, "PHILIP_THREADS": str(threads), "PHILIP_LOG_LEVEL": "warning"}
        self._log: IO[bytes] = self.log_path.open("wb")
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "philip.cli", "serve", "all", "--port", str(port),
                 "--http-port", str(http_port), "--model-dir", str(model_dir)],
                env=env, stdout=self._log, stderr=subprocess.STDOUT,
            )
        except BaseException:
            self._log.close()
            raise

    def log_tail(self, lines: int = 20) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    async def wait_ready(self, timeout_s: float) -> None:
        """Poll grpc.health.v1 until SERVING; fail early if the process exits."""
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        deadline = time.monotonic() + timeout_s
        async with grpc.aio.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"the server exited with {self.proc.returncode}:\n{self.log_tail()}")
                with contextlib.suppress(grpc.aio.AioRpcError):
                    reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"the server was not SERVING after {timeout_s:.0f} s:\n{self.log_tail()}")
                await asyncio.sleep(0.25)

    def peak_rss_mb(self) -> float:
        """High-water resident set size of the server process (Linux /proc)."""
        return self._status_mb("VmHWM")

    def rss_mb(self) -> float:
        """Current resident set size of the server process (Linux /proc)."""
        return self._status_mb("VmRSS")

    def _status_mb(self, key: str) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError(f"no {key} in /proc status")

    def stop(self, grace_s: float = 30.0) -> None:
        """SIGTERM (graceful drain), then SIGKILL if it has not exited after ``grace_s``."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=grace_s)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        finally:
            self._log.close()
