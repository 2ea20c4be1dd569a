"""Typed, frozen runtime settings shared by every PHiLIP service.

Settings come from ``PHILIP_*`` environment variables; keyword overrides (CLI flags)
win over the environment. Every value is parsed and validated up front so that a
misconfigured pod fails at start-up with a message naming the offending variable,
instead of failing on the first request.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

ENV_PREFIX = "PHILIP_"
DEFAULT_HTTP_PORT = 8080
DEFAULT_VOCABULARY_PATH = "config/vocabulary.toml"
DEFAULT_SESSION_DEFAULTS_PATH = "config/session_defaults.toml"

LogFormat = Literal["json", "console"]
_LOG_FORMATS = ("json", "console")
_LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def env_name(field_name: str) -> str:
    """Environment variable that feeds ``field_name`` (e.g. ``port`` -> ``PHILIP_PORT``)."""
    return ENV_PREFIX + field_name.upper()


@dataclass(frozen=True, slots=True)
class Settings:
    """Configuration of one PHiLIP process (all services read the same shape)."""

    redis_url: str | None = None  # None => in-process embedded store
    # The in-process store's memory cap (keys nearest to expiring evicted first; 0 = none).
    memory_store_mb: int = 2048
    host: str = "127.0.0.1"
    port: int = 50051
    model_dir: str = "models/philip-tiny"
    upscaler_path: str = "models/philip-tiny-x4.onnx"
    adapters_dir: str = "adapters"
    styles_path: str = "config/styles.toml"
    # Prompt exploration's modifier vocabulary for model folders without a prompt_vocabulary.json ("" = none).
    vocabulary_path: str = DEFAULT_VOCABULARY_PATH
    # The feedback weights a session without any gets, for model folders without a philip_defaults.json.
    session_defaults_path: str = DEFAULT_SESSION_DEFAULTS_PATH
    # Addresses the gateway dials; None => that service runs in-process.
    generator_addr: str | None = None
    refiner_addr: str | None = None
    personalizer_addr: str | None = None
    log_format: LogFormat = "json"
    log_level: str = "info"
    max_message_mb: int = 32
    grace_s: float = 10.0
    max_queue: int = 32
    max_batch: int = 8
    batch_window_ms: int = 15
    # Images per refiner batch (concurrent sessions' rounds share it); 0 = max_batch, 1 = one round at a time.
    refine_max_batch: int = 0
    device: str = "cpu"
    threads: int | None = None
    onnx_providers: tuple[str, ...] = field(default=("CPUExecutionProvider",))
    blob_ttl_s: int = 3600
    # Likes (and dislikes) a feedback round conditions on: the most recent. Each costs one UNet
    # image evaluation per step, so 4 + 4 keep a FABRIC round within 2x a plain 4-image CFG round.
    max_references: int = 4
    metrics_port: int | None = None
    # A training job whose worker stopped heart-beating this long is taken over by another worker.
    train_reclaim_idle_s: float = 60.0
    train_checkpoint_every: int = 50
    # Adapters each generating process keeps loaded (LRU).
    adapter_cache: int = 8
    # JSON file of hashed API keys -> tenants (`philip keys add`); None: the gateway is open.
    api_keys_file: str | None = None
    # Per-tenant quotas (0: none; an open gateway's calls have no tenant and no quota).
    quota_sessions: int = 8  # open sessions (not finalized or cancelled, a command within quota_session_idle_s)
    quota_generations: int = 16  # Generate jobs and session rounds queued or running
    quota_training_jobs: int = 2  # training jobs queued or running
    quota_session_idle_s: float = 900.0  # an open session untouched this long stops counting against the quota
    # A session untouched this long is gone with all its keys (record, images, events); every command
    # and every finished round starts the clock again.
    session_idle_s: float = 86_400.0
    # A round or upscale whose replica has not heart-beaten this long (it beats every quarter of it,
    # also while the round waits in a queue) is failed by the next replica that looks, so it can be re-sent.
    session_stale_s: float = 60.0
    # Open event streams (Session, Subscribe, SSE) per gateway process, and per tenant; beyond them
    # RESOURCE_EXHAUSTED / 429 with a retry delay.
    max_streams: int = 1000
    max_streams_per_tenant: int = 200
    # Redis connections per process (a full pool makes callers wait up to the socket timeout).
    redis_max_connections: int = 64
    # Per-tenant activity log: kept this long, and at most this many entries.
    activity_retention_days: float = 30.0
    activity_max_entries: int = 10_000
    # PEM files for mTLS between services: internal servers require a client certificate signed by
    # tls_ca, and the gateway presents tls_cert to them. All three or none.
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_ca: str | None = None
    # A plaintext port that answers grpc.health.v1 only (for kubelet probes when the port needs mTLS).
    health_port: int | None = None
    # Internal calls (philip/rpc/internal.py): the gateway sends the first token in this file (a
    # Secret) with every upstream call; with it, an API keys file or gateway_identity set, internal
    # services serve only calls that carry one of its tokens and the caller's tenant.
    internal_token_file: str | None = None
    # With mTLS: a SAN (DNS name or URI) of the gateway's certificate; internal services then accept
    # only that certificate, not every one the CA signed (each service has its own).
    gateway_identity: str | None = None
    # The gateway's HTTP/JSON + SSE edge and the studio (docs/HTTP.md), on the gateway's host; 0 = off.
    http_port: int = DEFAULT_HTTP_PORT
    # Origins allowed by CORS (empty: CORS off, the studio is same-origin).
    http_cors_origins: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # from_env parses strings first; checking here too means Settings(port="x") or
        # with_(port=-1) built by hand fail just as loudly.
        for f in dataclasses.fields(self):
            _validate(f.name, getattr(self, f.name))
        tls = {env_name(n): getattr(self, n) for n in ("tls_cert", "tls_key", "tls_ca")}
        if any(tls.values()) and not all(tls.values()):
            missing = ", ".join(name for name, value in tls.items() if not value)
            raise ValueError(f"mTLS needs PHILIP_TLS_CERT, PHILIP_TLS_KEY and PHILIP_TLS_CA together; "
                             f"missing {missing}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ, **overrides: Any) -> Settings:
        """Build settings from ``PHILIP_*`` variables, then apply ``overrides``.

        Overrides whose value is ``None`` are ignored: that is how an unset CLI flag
        reads, so it must not clobber the environment (use :meth:`with_` to force None).
        String overrides are parsed like environment values.
        """
        types_ = _field_types()
        unknown = set(overrides) - set(types_)
        if unknown:
            raise ValueError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        values: dict[str, Any] = {}
        for name, tp in types_.items():
            var = env_name(name)
            if var in environ:
                values[name] = _parse(var, environ[var], tp)
                _validate(name, values[name], shown=environ[var])  # report the raw text
            if overrides.get(name) is not None:
                raw = overrides[name]
                values[name] = _parse(name, raw, tp) if isinstance(raw, str) else _coerce(name, raw, tp)
                _validate(name, values[name], shown=raw)
        return cls(**values)

    @property
    def torch_threads(self) -> int:
        """``threads``, else every core but one: the event loop needs a core of its own, or streaming
        previews and health checks stall torch's worker threads (measured: previews every step cost
        +14 % with 2 threads on 2 cores, +0.2 % with 1)."""
        return self.threads or max(1, (os.cpu_count() or 2) - 1)

    def with_(self, **changes: Any) -> Settings:
        """Copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)


def _field_types() -> dict[str, Any]:
    # Resolved lazily because ``from __future__ import annotations`` keeps them as strings.
    global _FIELD_TYPES
    if _FIELD_TYPES is None:
        _FIELD_TYPES = typing.get_type_hints(Settings)
    return _FIELD_TYPES


_FIELD_TYPES: dict[str, Any] | None = None
_UNSET: Any = object()


def _in_port_range(port: int | None) -> bool:
    return port is None or 0 <= port <= 65535


def _is_device(device: str) -> bool:
    prefix, _, index = device.partition(":")
    return device in ("cpu", "cuda") or (prefix == "cuda" and index.isdigit())


# Range/choice rules per field, applied after the type check: (predicate, why).
_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "host": (lambda v: bool(v.strip()), "must not be empty"),
    "port": (_in_port_range, "must be in 0..65535"),
    "metrics_port": (_in_port_range, "must be in 0..65535"),
    "health_port": (_in_port_range, "must be in 0..65535"),
    "http_port": (_in_port_range, "must be in 0..65535 (0: no HTTP edge)"),
    "http_cors_origins": (lambda v: all(o == "*" or o.startswith(("http://", "https://")) for o in v),
                          "must list origins such as https://studio.example.com (or *)"),
    "log_format": (lambda v: v in _LOG_FORMATS, f"must be one of {', '.join(_LOG_FORMATS)}"),
    "log_level": (lambda v: v.lower() in _LOG_LEVELS, f"must be one of {', '.join(_LOG_LEVELS)}"),
    "max_message_mb": (lambda v: 1 <= v <= 2047, "must be in 1..2047"),
    "grace_s": (lambda v: v >= 0, "must be >= 0"),
    "max_queue": (lambda v: v >= 1, "must be >= 1"),
    "max_batch": (lambda v: v >= 1, "must be >= 1"),
    "batch_window_ms": (lambda v: v >= 0, "must be >= 0"),
    "refine_max_batch": (lambda v: v >= 0, "must be >= 0 (0 = PHILIP_MAX_BATCH)"),
    "memory_store_mb": (lambda v: v >= 0, "must be >= 0 (0 = no cap)"),
    "device": (_is_device, "must be 'cpu', 'cuda' or 'cuda:N'"),
    "threads": (lambda v: v is None or v >= 1, "must be >= 1"),
    "onnx_providers": (lambda v: len(v) > 0, "must name at least one provider"),
    "blob_ttl_s": (lambda v: v >= 1, "must be >= 1"),
    "max_references": (lambda v: 1 <= v <= 16, "must be in 1..16"),
    "train_reclaim_idle_s": (lambda v: 1.0 <= v <= 3600.0, "must be in 1..3600 seconds"),
    "train_checkpoint_every": (lambda v: 1 <= v <= 10_000, "must be in 1..10000 steps"),
    "adapter_cache": (lambda v: 4 <= v <= 64, "must be in 4..64 (a batch may use 4 adapters)"),
    "quota_sessions": (lambda v: v >= 0, "must be >= 0 (0: no limit)"),
    "quota_generations": (lambda v: v >= 0, "must be >= 0 (0: no limit)"),
    "quota_training_jobs": (lambda v: v >= 0, "must be >= 0 (0: no limit)"),
    "quota_session_idle_s": (lambda v: 10.0 <= v <= 86_400.0, "must be in 10..86400 seconds"),
    "session_idle_s": (lambda v: 1.0 <= v <= 30 * 86_400.0, "must be in 1..2592000 seconds (30 days)"),
    "session_stale_s": (lambda v: 1.0 <= v <= 3600.0, "must be in 1..3600 seconds"),
    "max_streams": (lambda v: v >= 1, "must be >= 1"),
    "max_streams_per_tenant": (lambda v: v >= 1, "must be >= 1"),
    "redis_max_connections": (lambda v: 4 <= v <= 10_000, "must be in 4..10000"),
    "activity_retention_days": (lambda v: 0 < v <= 3650, "must be in (0, 3650] days"),
    "activity_max_entries": (lambda v: 100 <= v <= 10_000_000, "must be in 100..10000000"),
    # Internal auth (philip/rpc/internal.py).
    "internal_token_file": (lambda v: v is None or bool(v.strip()), "must name the internal token's file"),
    "gateway_identity": (lambda v: v is None or (0 < len(v) <= 253 and v.isascii() and v.isprintable()
                                                 and " " not in v),
                         "must be a SAN of the gateway's certificate: a DNS name such as "
                         "philip-gateway.philip.svc, or a URI such as spiffe://cluster.local/ns/philip/sa/philip-gateway"),
}


def _validate(name: str, value: Any, *, shown: Any = _UNSET) -> None:
    """Type- and range-check one field; errors show ``shown`` (the raw input) if given."""
    display = value if shown is _UNSET else shown
    _check_type(name, value, _field_types()[name], display)
    rule = _RULES.get(name)
    if rule is not None and not rule[0](value):
        raise ValueError(f"{_label(name)}={display!r}: {rule[1]}")


def _label(name: str) -> str:
    """Name errors by env var when ``name`` is a field, or as given (already a var)."""
    return name if name.startswith(ENV_PREFIX) else env_name(name)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _parse(name: str, raw: str, tp: Any) -> Any:
    """Parse one environment string into the field's type."""
    inner, optional = _unwrap_optional(tp)
    text = raw.strip()
    if optional and text.lower() in ("", "none", "null"):
        return None
    try:
        if inner is int:
            return int(text)
        if inner is float:
            return float(text)
        if typing.get_origin(inner) is tuple:
            return tuple(part.strip() for part in text.split(",") if part.strip())
        if typing.get_origin(inner) is Literal:
            return text.lower()
        if inner is str:
            return text
    except ValueError:
        raise ValueError(f"{_label(name)}={raw!r}: expected {_type_word(inner)}") from None
    raise TypeError(f"unsupported settings type {tp!r}")


def _coerce(name: str, value: Any, tp: Any) -> Any:
    """Accept already-typed overrides; lists become tuples, ints are fine for floats."""
    inner, _ = _unwrap_optional(tp)
    if typing.get_origin(inner) is tuple and isinstance(value, list):
        return tuple(value)
    if inner is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _check_type(name: str, value: Any, tp: Any, display: Any) -> None:
    inner, optional = _unwrap_optional(tp)
    if value is None:
        if not optional:
            raise ValueError(f"{_label(name)}={display!r}: a value is required")
        return
    origin = typing.get_origin(inner)
    if origin is tuple:
        ok = isinstance(value, tuple) and all(isinstance(v, str) for v in value)
    elif origin is Literal:
        ok = isinstance(value, str)
    elif inner is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    else:
        # bool is an int subclass; PHILIP_PORT=True is surely a mistake.
        ok = isinstance(value, inner) and not isinstance(value, bool)
    if not ok:
        raise ValueError(f"{_label(name)}={display!r}: expected {_type_word(inner)}")


def _type_word(tp: Any) -> str:
    if typing.get_origin(tp) is tuple:
        return "a comma-separated list"
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(typing.get_args(tp))
    return {int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))
