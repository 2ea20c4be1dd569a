"""Client channels between PHiLIP services.

Targets
-------
* ``"host:port"`` is used as given; gRPC's default resolver is DNS, so a Kubernetes
  Service name works. With a normal (ClusterIP) Service, DNS returns one virtual IP
  and every call of the long-lived HTTP/2 connection goes to one pod.
* ``"dns:///svc.namespace:port"`` against a *headless* Service resolves to every
  pod address; with the ``round_robin`` policy configured here, calls spread over
  all of them, and re-resolution picks up new pods (servers set
  ``max_connection_age_ms`` to force that periodically).

Retries
-------
Transparent retries of ``UNAVAILABLE`` (pod restarting, connection reset) with
exponential backoff; gRPC only retries when no response message was received yet,
so streams never replay partially delivered results.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import grpc
from grpc import aio

MIB = 1024 * 1024
_MAX_ATTEMPTS_CAP = 5  # gRPC silently clamps maxAttempts to 5


def service_config(service_names: Sequence[str], *, retries: int = 5) -> dict[str, Any]:
    """The JSON service config: round-robin balancing and per-service retry policy.

    ``retries`` is the total number of attempts (first try included, at most 5);
    ``retries <= 1`` disables retrying.
    """
    config: dict[str, Any] = {"loadBalancingConfig": [{"round_robin": {}}]}
    attempts = min(retries, _MAX_ATTEMPTS_CAP)
    if service_names and attempts > 1:
        config["methodConfig"] = [
            {
                "name": [{"service": name} for name in service_names],
                "retryPolicy": {
                    "maxAttempts": attempts,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "2s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    return config


def channel_options(
    service_names: Sequence[str], *, max_message_mb: int = 32, retries: int = 5
) -> list[tuple[str, Any]]:
    """Channel arguments matching :func:`philip.rpc.server.server_options`."""
    limit = max_message_mb * MIB
    return [
        ("grpc.service_config", json.dumps(service_config(service_names, retries=retries))),
        ("grpc.enable_retries", 1),
        ("grpc.max_send_message_length", limit),
        ("grpc.max_receive_message_length", limit),
        # Detect dead peers (node gone, NAT dropped) within ~40 s instead of TCP's hours.
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        # Subchannels of this channel only: by default gRPC shares them process-wide by address, so a
        # new channel to a port an earlier, stopped server used can inherit that one's reconnect backoff.
        ("grpc.use_local_subchannel_pool", 1),
    ]


def make_channel(
    target: str,
    service_names: list[str],
    *,
    max_message_mb: int = 32,
    retries: int = 5,
    interceptors: Sequence[aio.ClientInterceptor] | None = None,
    credentials: grpc.ChannelCredentials | None = None,
) -> aio.Channel:
    """Open an asyncio channel to ``target`` (see module docs for target forms), over TLS with
    ``credentials`` (:func:`philip.rpc.tls.channel_credentials`), else in plaintext.

    ``service_names`` are the full names (``"philip.v1.Generator"``) whose methods
    get the retry policy.
    """
    options = channel_options(service_names, max_message_mb=max_message_mb, retries=retries)
    if credentials is not None:
        return aio.secure_channel(target, credentials, options=options, interceptors=interceptors)
    return aio.insecure_channel(target, options=options, interceptors=interceptors)


async def wait_ready(channel: aio.Channel, timeout_s: float) -> None:
    """Wait until ``channel`` is connected; raise ``TimeoutError`` naming the state otherwise."""
    try:
        await asyncio.wait_for(channel.channel_ready(), timeout_s)
    except TimeoutError:
        state = channel.get_state(try_to_connect=False)
        raise TimeoutError(f"channel not ready after {timeout_s}s (state {state.name})") from None


__all__ = ["channel_options", "make_channel", "service_config", "wait_ready"]
