"""API keys and tenants.

The gateway authenticates callers by ``authorization: Bearer <key>``; keys are stored hashed
(SHA-256) in ``PHILIP_API_KEYS_FILE`` (JSON, e.g. a mounted Secret), each belonging to a tenant.
The tenant of the call lives in one context variable: set from the key by ``AuthInterceptor`` at
the gateway, and from the ``x-philip-tenant`` metadata the gateway forwards at the internal
services: by ``philip.rpc.internal.InternalInterceptor`` once it has checked the call is the
gateway's (auth on), by ``TenantInterceptor`` when auth is off. Every session, job and adapter
record carries its tenant; another tenant's id reads as NOT_FOUND.
Without a keys file the gateway is open and everything belongs to the tenant "".
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import inspect
import json
import os
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
from grpc import aio

from philip.logs import get_logger
from philip.rpc.errors import Unauthenticated

log = get_logger("philip.rpc.auth")

TENANT_KEY = "x-philip-tenant"
KEY_PREFIX = "phk_"
# Tenant names end up in store keys and metric labels: short, plain, starting with a letter or digit.
TENANT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_tenant: contextvars.ContextVar[str] = contextvars.ContextVar("philip_tenant", default="")


def current_tenant() -> str:
    """The tenant of the call being served ("" when authentication is off)."""
    return _tenant.get()


@contextlib.contextmanager
def acting_as(tenant: str) -> Iterator[None]:
    """Run the block as ``tenant`` (work done on a tenant's behalf outside its call, and tests)."""
    token = _tenant.set(tenant)
    try:
        yield
    finally:
        _tenant.reset(token)


def owned_by_caller(record: dict[str, Any]) -> bool:
    """Whether a stored session/job/adapter record is the caller's. Calls without a tenant are the
    services' own work (round tasks, workers) or an open gateway, where everything is tenant ""."""
    tenant = current_tenant()
    return not tenant or record.get("tenant", "") == tenant


def tenant_metadata() -> tuple[tuple[str, str], ...]:
    """Metadata that carries the caller's tenant to an internal service. Always sent, "" for an open
    gateway's calls: with auth on, internal services refuse a call without it (a forgotten header
    must not read as "every tenant")."""
    return ((TENANT_KEY, current_tenant()),)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class ApiKeys:
    """Hashed API keys -> tenant, from a JSON file ``{"keys": [{"tenant": ..., "sha256": ...}]}``.

    Loaded from a file, the keys follow it: a change (its mtime, looked at most once a second) is read on the
    next lookup, so `philip keys add` or a rotated Secret takes effect without a restart; a file that no longer
    parses leaves the keys as they were (and says so in the log).
    """

    RECHECK_S = 1.0

    def __init__(self, by_hash: dict[str, str], path: str | Path | None = None) -> None:
        self.by_hash = by_hash
        self.path = Path(path) if path is not None else None
        self._mtime = self._stat()
        self._checked = time.monotonic()

    def _stat(self) -> float | None:
        try:
            return self.path.stat().st_mtime_ns if self.path is not None else None
        except OSError:
            return None

    def _follow_file(self) -> None:
        now = time.monotonic()
        if self.path is None or now - self._checked < self.RECHECK_S:
            return
        self._checked = now
        mtime = self._stat()
        if mtime == self._mtime or mtime is None:
            return
        self._mtime = mtime
        try:
            self.by_hash = self._parse(self.path)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("auth.keys_reload_failed", path=str(self.path), error=str(exc), kept=len(self.by_hash))
            return
        log.info("auth.keys_reloaded", path=str(self.path), keys=len(self.by_hash))

    @classmethod
    def load(cls, path: str | Path) -> ApiKeys:
        return cls(cls._parse(path), path)

    @staticmethod
    def _parse(path: str | Path) -> dict[str, str]:
        data = json.loads(Path(path).read_text())
        by_hash = {}
        for entry in data.get("keys", []):
            tenant, digest = str(entry["tenant"]), str(entry["sha256"]).lower()
            if not TENANT_RE.match(tenant) or len(digest) != 64:
                raise ValueError(f"{path}: every key needs a tenant (letters, digits, '_', '.', '-'; 1-64, "
                                 f"first a letter or digit) and a 64-hex-digit sha256; got tenant {tenant!r}")
            by_hash[digest] = tenant
        return by_hash

    def tenant_for(self, key: str) -> str | None:
        self._follow_file()
        return self.by_hash.get(hash_key(key)) if key.startswith(KEY_PREFIX) else None


def add_key(path: str | Path, tenant: str) -> str:
    """Create a key for ``tenant``, store its hash in ``path`` (created if absent); returns the key."""
    if not TENANT_RE.match(tenant):
        raise ValueError(f"tenant {tenant!r}: use 1-64 letters, digits, '_', '.' or '-', first a letter or digit")
    file = Path(path)
    data = json.loads(file.read_text()) if file.exists() else {"keys": []}
    key = KEY_PREFIX + secrets.token_hex(24)
    data["keys"].append({"tenant": tenant, "sha256": hash_key(key)})
    file.write_text(json.dumps(data, indent=2) + "\n")
    return key


def _bearer(details: grpc.HandlerCallDetails) -> str:
    for name, value in details.invocation_metadata or ():  # type: ignore[attr-defined]
        if name == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return value[len("Bearer "):].strip()
    return ""


def metadata_value(details: grpc.HandlerCallDetails, name: str) -> str | None:
    """The call's metadata ``name`` (its first value), None when absent."""
    for key, value in details.invocation_metadata or ():  # type: ignore[attr-defined]
        if key == name and isinstance(value, str):
            return value
    return None


TenantOf = Callable[[aio.ServicerContext], str]


def _with_tenant(handler: grpc.RpcMethodHandler, tenant_of: TenantOf) -> grpc.RpcMethodHandler:
    """The same handler, run as the tenant ``tenant_of`` names; it raises Unauthenticated to refuse.
    Resolved inside the call because only the servicer context knows the peer's certificate."""

    def unary(behavior: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
        async def wrapper(request: Any, context: aio.ServicerContext) -> Any:
            _tenant.set(tenant_of(context))
            result = behavior(request, context)
            return await result if inspect.isawaitable(result) else result
        return wrapper

    def stream(behavior: Callable[..., Any]) -> Callable[..., AsyncIterator[Any]]:
        async def wrapper(request: Any, context: aio.ServicerContext) -> AsyncIterator[Any]:
            _tenant.set(tenant_of(context))
            async for message in behavior(request, context):
                yield message
        return wrapper

    de, ser = handler.request_deserializer, handler.response_serializer
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary), de, ser)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(unary(handler.stream_unary), de, ser)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(stream(handler.unary_stream), de, ser)
    assert handler.stream_stream is not None
    return grpc.stream_stream_rpc_method_handler(stream(handler.stream_stream), de, ser)


class TenantInterceptorBase(aio.ServerInterceptor):
    """Runs every ``/philip.v1.`` method with the tenant ``tenant_of`` finds (health and reflection as
    they are: kubelet probes and grpcurl carry no credentials)."""

    def tenant_of(self, details: grpc.HandlerCallDetails, context: aio.ServicerContext) -> str:
        """The call's tenant; raises Unauthenticated to refuse the call."""
        raise NotImplementedError

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or not details.method.startswith("/philip.v1."):  # type: ignore[attr-defined]
            return handler
        return _with_tenant(handler, lambda context: self.tenant_of(details, context))


class AuthInterceptor(TenantInterceptorBase):
    """Gateway: every ``/philip.v1.`` method needs a valid API key (health and reflection do not)."""

    def __init__(self, keys: ApiKeys) -> None:
        self.keys = keys

    def tenant_of(self, details: grpc.HandlerCallDetails, context: aio.ServicerContext) -> str:
        tenant = self.keys.tenant_for(_bearer(details))
        if tenant is None:
            raise Unauthenticated("missing or unknown API key; send `authorization: Bearer <key>`")
        return tenant


class TenantInterceptor(TenantInterceptorBase):
    """Internal services with auth off: the tenant the gateway forwarded, unchecked ("" when none)."""

    def tenant_of(self, details: grpc.HandlerCallDetails, context: aio.ServicerContext) -> str:
        return metadata_value(details, TENANT_KEY) or ""


class _Header:
    """Client side: adds one metadata entry (an API key, the internal token) to every call. grpc.aio
    files an interceptor under its first matching arity only, so there is one class per arity."""

    def __init__(self, header: tuple[str, str]) -> None:
        self.header = header

    def _details(self, details: aio.ClientCallDetails) -> aio.ClientCallDetails:
        metadata = aio.Metadata(*(tuple(details.metadata) if details.metadata else ()), self.header)
        return aio.ClientCallDetails(details.method, details.timeout, metadata, details.credentials,
                                     details.wait_for_ready)


class _UnaryUnaryHeader(_Header, aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, details: aio.ClientCallDetails, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _UnaryStreamHeader(_Header, aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, details: aio.ClientCallDetails, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _StreamUnaryHeader(_Header, aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Any, details: aio.ClientCallDetails,
                                     request_iterator: Any) -> Any:
        return await continuation(self._details(details), request_iterator)


class _StreamStreamHeader(_Header, aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation: Any, details: aio.ClientCallDetails,
                                      request_iterator: Any) -> Any:
        return await continuation(self._details(details), request_iterator)


def header_interceptors(name: str, value: str) -> list[aio.ClientInterceptor]:
    """Interceptors that add the metadata ``name: value`` to every call of a channel."""
    header = (name, value)
    return [cls(header) for cls in (_UnaryUnaryHeader, _UnaryStreamHeader, _StreamUnaryHeader, _StreamStreamHeader)]


def client_interceptors(key: str | None = None) -> list[aio.ClientInterceptor]:
    """Interceptors for a client of the gateway: the API key given, or PHILIP_API_KEY if set."""
    key = key or os.environ.get("PHILIP_API_KEY")
    return header_interceptors("authorization", f"Bearer {key}") if key else []
