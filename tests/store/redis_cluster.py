"""A throwaway 3-master Redis Cluster on loopback ports, for the store's contract tests in cluster mode."""

from __future__ import annotations

import random
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

NODES = 3
BUS_OFFSET = 10_000  # a cluster node also listens on its port + 10000 (the cluster bus)


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ports(n: int) -> list[int]:
    """``n`` ports that are free, and whose bus ports are free too (ephemeral ports + 10000 overflow)."""
    ports: list[int] = []
    while len(ports) < n:
        port = random.randrange(20_000, 30_000)
        if port not in ports and _free(port) and _free(port + BUS_OFFSET):
            ports.append(port)
    return ports


def _wait(what: str, ok: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not ok():
        if time.monotonic() > deadline:
            raise RuntimeError(f"redis cluster: {what} timed out")
        time.sleep(0.05)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _cli(port: int, *args: str) -> str:
    return subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, text=True, timeout=10).stdout


@contextmanager
def redis_cluster(workdir: Path) -> Iterator[str]:
    """Start ``NODES`` masters (no replicas, no persistence), join them, yield a redis+cluster:// URL; stop them."""
    ports = _ports(NODES)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for port in ports:
            procs.append(subprocess.Popen(
                ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                 "--cluster-config-file", str(workdir / f"nodes-{port}.conf"), "--dir", str(workdir),
                 "--save", "", "--appendonly", "no", "--cluster-node-timeout", "5000"],
                stdout=subprocess.DEVNULL))
        for port in ports:
            _wait(f"node {port} start", lambda port=port: _listening(port))
        subprocess.run(["redis-cli", "--cluster", "create", *[f"127.0.0.1:{p}" for p in ports],
                        "--cluster-replicas", "0", "--cluster-yes"],
                       check=True, capture_output=True, timeout=60)
        for port in ports:  # every node must know the whole slot map before a client asks it
            _wait(f"node {port} cluster_state:ok",
                  lambda port=port: "cluster_state:ok" in _cli(port, "cluster", "info"))
        yield f"redis+cluster://127.0.0.1:{ports[0]}"
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
