"""A split deployment on one machine, process by process: ``philip serve <role>`` children and a
private ``redis-server`` (for the cluster tests and ``philip bench soak``).

What Kubernetes gives the real deployment is played here by hand: the gateway dials replicas through one
``ipv4:host:port,host:port`` target (gRPC's static resolver; ``make_channel`` balances it round_robin
and retries UNAVAILABLE), and a pod's end is a signal to its process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from philip.bench.server_process import free_port

REPO = Path(__file__).resolve().parents[2]
PHILIP = Path(sys.executable).parent / "philip"
GRACE_S = 30.0


@dataclass
class Service:
    """One ``philip serve <role>`` process and its JSON log."""

    name: str
    role: str
    port: int
    log: Path
    redis_url: str
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "PHILIP_HOST": "127.0.0.1",
               "PHILIP_PORT": str(self.port), "PHILIP_REDIS_URL": self.redis_url, "PHILIP_LOG_FORMAT": "json",
               "PHILIP_THREADS": "1", "PHILIP_GRACE_S": str(GRACE_S),
               "PHILIP_MODEL_DIR": str(REPO / "models" / "philip-tiny"),
               "PHILIP_UPSCALER_PATH": str(REPO / "models" / "philip-tiny-x4.onnx"),
               "PHILIP_STYLES_PATH": str(REPO / "config" / "styles.toml"), **self.env}
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([str(PHILIP), "serve", self.role], cwd=REPO, env=env,
                                         stdout=out, stderr=subprocess.STDOUT)

    def events(self, name: str) -> list[dict[str, object]]:
        """Log records whose event is ``name`` (JSON lines; other lines are skipped)."""
        records = []
        for line in self.log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict) and record.get("event") == name:
                    records.append(record)
        return records

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:]) if self.log.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = GRACE_S * 2 + 15) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)


class RedisServer:
    """A ``redis-server`` of its own on a free port, AOF on (fsync every write), so a restart keeps everything."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
             "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
            stdout=(self.folder / "redis.log").open("ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return
            time.sleep(0.05)
        raise RuntimeError(f"redis-server on {self.port} did not answer")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # SHUTDOWN: the AOF is complete on disk
            self.proc.wait(20)

    def restart(self, down_s: float = 1.0) -> None:
        self.stop()
        time.sleep(down_s)
        self.start()


async def health(address: str) -> str:
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
        except grpc.aio.AioRpcError as exc:
            return exc.code().name
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


async def wait_serving(services: list[Service], timeout_s: float = 240.0) -> None:
    """Until every service answers SERVING; RuntimeError when one exits or the time is up."""
    deadline = time.monotonic() + timeout_s
    pending = list(services)
    while pending:
        for service in list(pending):
            assert service.proc is not None
            if service.proc.poll() is not None:
                raise RuntimeError(f"{service.name} exited with {service.proc.returncode}:\n{service.tail()}")
            if await health(service.address) == "SERVING":
                pending.remove(service)
        if pending and time.monotonic() > deadline:
            raise RuntimeError(f"not SERVING after {timeout_s}s: {[s.name for s in pending]}\n{pending[0].tail()}")
        await asyncio.sleep(0.5)


def gateway_service(name: str, generators: list[Service], refiner: Service, logs: Path, redis_url: str,
                    personalizers: list[Service] | None = None, **env: str) -> Service:
    """A gateway (not started) over the replicas: several behind one target, as a headless Service."""
    wired = {"PHILIP_GENERATOR_ADDR": "ipv4:" + ",".join(g.address for g in generators),
             "PHILIP_REFINER_ADDR": refiner.address, "PHILIP_HTTP_PORT": str(free_port()), **env}
    if personalizers:
        wired["PHILIP_PERSONALIZER_ADDR"] = "ipv4:" + ",".join(p.address for p in personalizers)
    return Service(name, "gateway", free_port(), logs / f"{name}.log", redis_url, env=wired)


__all__ = ["GRACE_S", "PHILIP", "REPO", "RedisServer", "Service", "gateway_service", "health", "wait_serving"]
