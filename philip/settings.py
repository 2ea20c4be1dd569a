"""Typed, frozen runtime settings shared by every PHiLIP service, grouped by concern.

Settings come from ``PHILIP_*`` environment variables; keyword overrides (CLI flags) win over the
environment. Each group (``settings.store``, ``settings.batching``, ...) is a frozen dataclass that checks
its own fields when it is built, so a misconfigured pod fails at start-up with a message naming the
offending variable, instead of failing on the first request. Every field ``name`` is fed by
``PHILIP_<NAME>``, whatever its group, so the variables stay flat.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from philip.models.families import DTYPES as _DTYPES  # torch-free
from philip.settings_fields import Rule, check_group, check_value, coerce, env_name, field_types, parse

DEFAULT_HTTP_PORT = 8080
DEFAULT_VOCABULARY_PATH = "config/vocabulary.toml"
DEFAULT_SESSION_DEFAULTS_PATH = "config/session_defaults.toml"

LogFormat = Literal["json", "console"]
_LOG_FORMATS = ("json", "console")
_LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def _in_port_range(port: int | None) -> bool:
    return port is None or 0 <= port <= 65535


def _is_device(device: str) -> bool:
    prefix, _, index = device.partition(":")
    return device in ("cpu", "cuda") or (prefix == "cuda" and index.isdigit())


@dataclass(frozen=True, slots=True)
class StoreSettings:
    """Where state lives, and for how long generation results stay."""

    redis_url: str | None = None  # None => in-process embedded store
    # The in-process store's memory cap (keys nearest to expiring evicted first; 0 = none).
    memory_store_mb: int = 2048
    # Redis connections per process (a full pool makes callers wait up to the socket timeout).
    redis_max_connections: int = 64
    blob_ttl_s: int = 3600  # generation jobs' records and images

    RULES: ClassVar[dict[str, Rule]] = {
        "memory_store_mb": (lambda v: v >= 0, "must be >= 0 (0 = no cap)"),
        "redis_max_connections": (lambda v: 4 <= v <= 10_000, "must be in 4..10000"),
        "blob_ttl_s": (lambda v: v >= 1, "must be >= 1"),
    }

    def __post_init__(self) -> None:
        check_group(self, self.RULES)


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """The process: where it listens, how it logs, how long it drains, what it computes on."""

    host: str = "127.0.0.1"
    port: int = 50051
    log_format: LogFormat = "json"
    log_level: str = "info"
    max_message_mb: int = 32
    grace_s: float = 10.0
    metrics_port: int | None = None
    # A plaintext port that answers grpc.health.v1 only (for kubelet probes when the port needs mTLS).
    health_port: int | None = None
    device: str = "cpu"
    threads: int | None = None

    RULES: ClassVar[dict[str, Rule]] = {
        "host": (lambda v: bool(v.strip()), "must not be empty"),
        "port": (_in_port_range, "must be in 0..65535"),
        "metrics_port": (_in_port_range, "must be in 0..65535"),
        "health_port": (_in_port_range, "must be in 0..65535"),
        "log_format": (lambda v: v in _LOG_FORMATS, f"must be one of {', '.join(_LOG_FORMATS)}"),
        "log_level": (lambda v: v.lower() in _LOG_LEVELS, f"must be one of {', '.join(_LOG_LEVELS)}"),
        "max_message_mb": (lambda v: 1 <= v <= 2047, "must be in 1..2047"),
        "grace_s": (lambda v: v >= 0, "must be >= 0"),
        "device": (_is_device, "must be 'cpu', 'cuda' or 'cuda:N'"),
        "threads": (lambda v: v is None or v >= 1, "must be >= 1"),
    }

    def __post_init__(self) -> None:
        check_group(self, self.RULES)

    @property
    def torch_threads(self) -> int:
        """``threads``, else every core but one: the event loop needs a core of its own, or streaming
        previews and health checks stall torch's worker threads (measured: previews every step cost
        +14 % with 2 threads on 2 cores, +0.2 % with 1)."""
        return self.threads or max(1, (os.cpu_count() or 2) - 1)


@dataclass(frozen=True, slots=True)
class ModelSettings:
    """What the workers load."""

    model_dir: str = "models/philip-tiny"
    upscaler_path: str = "models/philip-tiny-x4.onnx"
    adapters_dir: str = "adapters"
    styles_path: str = "config/styles.toml"
    # Prompt exploration's modifier vocabulary for model folders without a prompt_vocabulary.json ("" = none).
    vocabulary_path: str = DEFAULT_VOCABULARY_PATH
    # The feedback weights a session without any gets, for model folders without a philip_defaults.json.
    session_defaults_path: str = DEFAULT_SESSION_DEFAULTS_PATH
    onnx_providers: tuple[str, ...] = field(default=("CPUExecutionProvider",))
    adapter_cache: int = 8  # adapters each generating process keeps loaded (LRU)
    # The pipelines' weights: fp16 | bf16 | fp32; "" = fp16 on a GPU, fp32 on the CPU (a force_upcast VAE stays fp32).
    dtype: str = ""
    # A UNet (folder or single .safetensors file, e.g. SDXL-Lightning's) loaded over the model folder's ("" = its own).
    unet_path: str = ""
    # A LoRA (folder or .safetensors) fused into the base weights at load (SDXL-Lightning's LoRA), at this scale.
    base_lora: str = ""
    base_lora_scale: float = 1.0
    compile: int = 0  # 1 = torch.compile the denoiser's unchanging parts (GPU start-up takes minutes longer)
    # "" = refuse to start when an asked-for ONNX Runtime GPU provider is missing; "cpu" = fall back to the CPU.
    onnx_fallback: str = ""
    # Which self-attention layers take FABRIC's references: all | up | mid+up | down+mid; "" = the family's own
    # (SD-1.x all, SDXL up: services/refiner/fabric_layers.py), so one deployment setting fits every model folder.
    fabric_layers: str = ""

    RULES: ClassVar[dict[str, Rule]] = {
        "onnx_providers": (lambda v: len(v) > 0, "must name at least one provider"),
        "base_lora_scale": (lambda v: 0.0 <= v <= 4.0, "must be in 0..4"),
        "compile": (lambda v: v in (0, 1), "must be 0 or 1"),
        "onnx_fallback": (lambda v: v in ("", "cpu"), "must be empty (refuse to start) or cpu"),
        "fabric_layers": (lambda v: v in ("", "all", "up", "mid+up", "down+mid"),
                          "must be empty (the family's default), all, up, mid+up or down+mid"),
        "dtype": (lambda v: v.lower() in ("", *_DTYPES), f"must be one of {', '.join(_DTYPES)} "
                                                          "(empty: fp16 on a GPU, fp32 on the CPU)"),
        "adapter_cache": (lambda v: 4 <= v <= 64, "must be in 4..64 (a batch may use 4 adapters)"),
    }

    def __post_init__(self) -> None:
        check_group(self, self.RULES)


@dataclass(frozen=True, slots=True)
class UpstreamSettings:
    """Addresses the gateway dials; None => that service runs in-process."""

    generator_addr: str | None = None
    refiner_addr: str | None = None
    personalizer_addr: str | None = None

    def __post_init__(self) -> None:
        check_group(self, {})


@dataclass(frozen=True, slots=True)
class BatchingSettings:
    """How work waits and is merged."""

    max_queue: int = 32
    max_batch: int = 8
    batch_window_ms: int = 15
    # Images per refiner batch (concurrent sessions' rounds share it); 0 = max_batch, 1 = one round at a time.
    refine_max_batch: int = 0

    RULES: ClassVar[dict[str, Rule]] = {
        "max_queue": (lambda v: v >= 1, "must be >= 1"),
        "max_batch": (lambda v: v >= 1, "must be >= 1"),
        "batch_window_ms": (lambda v: v >= 0, "must be >= 0"),
        "refine_max_batch": (lambda v: v >= 0, "must be >= 0 (0 = PHILIP_MAX_BATCH)"),
    }

    def __post_init__(self) -> None:
        check_group(self, self.RULES)


@dataclass(frozen=True, slots=True)
class SessionSettings:
    """Sessions' rounds, lifetimes and the streams that follow them."""

    # Likes (and dislikes) a feedback round conditions on: the most recent. Each costs one UNet
    # image evaluation per step, so 4 + 4 keep a FABRIC round within 2x a plain 4-image CFG round.
    max_references: int = 4
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

    RULES: ClassVar[dict[str, Rule]] = {
        "max_references": (lambda v: 1 <= v <= 16, "must be in 1..16"),
        "session_idle_s": (lambda v: 1.0 <= v <= 30 * 86_400.0, "must be in 1..2592000 seconds (30 days)"),
        "session_stale_s": (lambda v: 1.0 <= v <= 3600.0, "must be in 1..3600 seconds"),
        "max_streams": (lambda v: v >= 1, "must be >= 1"),
        "max_streams_per_tenant": (lambda v: v >= 1, "must be >= 1"),
    }

    def __post_init__(self) -> None:
        check_group(self, self.RULES)


@dataclass(frozen=True, slots=True)
class QuotaSettings:
    """Per-tenant quotas (0: none; an open gateway's calls have no tenant and no quota) and activity log."""

    quota_sessions: int = 8  # open sessions (not finalized or cancelled, a command within quota_session_idle_s)
    quota_generations: int = 16  # Generate jobs and session rounds queued or running
    quota_training_jobs: int = 2  # training jobs queued or running
    quota_session_idle_s: float = 900.0  # an open session untouched this long stops counting against the quota
    # Per-tenant activity log: kept this long, and at most this many entries.
    activity_retention_days: float = 30.0
    activity_max_entries: int = 10_000

    RULES: ClassVar[dict[str, Rule]] = {
        "quota_sessions": (lambda v: v >= 0, "must be >= 0 (0: no limit)"),
        "quota_generations": (lambda v: v >= 0, "must be >= 0 (0: no limit)"),
        "quota_training_jobs": (lambda v: v >= 0, "must be >= 0 (0: no limit)"),
        "quota_session_idle_s": (lambda v: 10.0 <= v <= 86_400.0, "must be in 10..86400 seconds"),
        "activity_retention_days": (lambda v: 0 < v <= 3650, "must be in (0, 3650] days"),
        "activity_max_entries": (lambda v: 100 <= v <= 10_000_000, "must be in 100..10000000"),
    }

    def __post_init__(self) -> None:
        check_group(self, self.RULES)


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """PEM files for mTLS between services: internal servers require a client certificate signed by
    tls_ca, and the gateway presents tls_cert to them. All three or none."""

    tls_cert: str | None = None
    tls_key: str | None = None
    tls_ca: str | None = None

    def __post_init__(self) -> None:
        check_group(self, {})
        tls = {env_name(f.name): getattr(self, f.name) for f in dataclasses.fields(self)}
        if any(tls.values()) and not all(tls.values()):
            missing = ", ".join(name for name, value in tls.items() if not value)
            raise ValueError(f"mTLS needs PHILIP_TLS_CERT, PHILIP_TLS_KEY and PHILIP_TLS_CA together; "
                             f"missing {missing}")


@dataclass(frozen=True, slots=True)
class AuthSettings:
    """Who may call: API keys at the gateway, the gateway's identity at the internal services."""

    # JSON file of hashed API keys -> tenants (`philip keys add`); None: the gateway is open.
    api_keys_file: str | None = None
    # Internal calls (philip/rpc/internal.py): the gateway sends the first token in this file (a
    # Secret) with every upstream call; with it, an API keys file or gateway_identity set, internal
    # services serve only calls that carry one of its tokens and the caller's tenant.
    internal_token_file: str | None = None
    # With mTLS: a SAN (DNS name or URI) of the gateway's certificate; internal services then accept
    # only that certificate, not every one the CA signed (each service has its own).
    gateway_identity: str | None = None

    RULES: ClassVar[dict[str, Rule]] = {
        "internal_token_file": (lambda v: v is None or bool(v.strip()), "must name the internal token's file"),
        "gateway_identity": (lambda v: v is None or (0 < len(v) <= 253 and v.isascii() and v.isprintable()
                                                     and " " not in v),
                             "must be a SAN of the gateway's certificate: a DNS name such as "
                             "philip-gateway.philip.svc, or a URI such as "
                             "spiffe://cluster.local/ns/philip/sa/philip-gateway"),
    }

    def __post_init__(self) -> None:
        check_group(self, self.RULES)


@dataclass(frozen=True, slots=True)
class TrainingSettings:
    # A training job whose worker stopped heart-beating this long is taken over by another worker.
    train_reclaim_idle_s: float = 60.0
    train_checkpoint_every: int = 50

    RULES: ClassVar[dict[str, Rule]] = {
        "train_reclaim_idle_s": (lambda v: 1.0 <= v <= 3600.0, "must be in 1..3600 seconds"),
        "train_checkpoint_every": (lambda v: 1 <= v <= 10_000, "must be in 1..10000 steps"),
    }

    def __post_init__(self) -> None:
        check_group(self, self.RULES)


@dataclass(frozen=True, slots=True)
class HttpSettings:
    """The gateway's HTTP/JSON + SSE edge and the studio (docs/HTTP.md), on the gateway's host."""

    http_port: int = DEFAULT_HTTP_PORT  # 0 = off
    # Origins allowed by CORS (empty: CORS off, the studio is same-origin).
    http_cors_origins: tuple[str, ...] = ()

    RULES: ClassVar[dict[str, Rule]] = {
        "http_port": (_in_port_range, "must be in 0..65535 (0: no HTTP edge)"),
        "http_cors_origins": (lambda v: all(o == "*" or o.startswith(("http://", "https://")) for o in v),
                              "must list origins such as https://studio.example.com (or *)"),
    }

    def __post_init__(self) -> None:
        check_group(self, self.RULES)


GROUPS: dict[str, type] = {
    "store": StoreSettings, "server": ServerSettings, "models": ModelSettings, "upstreams": UpstreamSettings,
    "batching": BatchingSettings, "sessions": SessionSettings, "quotas": QuotaSettings, "tls": TlsSettings,
    "auth": AuthSettings, "training": TrainingSettings, "http": HttpSettings,
}
# field name -> its group's attribute (field names are unique across groups: each is one PHILIP_ variable)
GROUP_OF: dict[str, str] = {f.name: g for g, cls in GROUPS.items() for f in dataclasses.fields(cls)}


class Settings:
    """Configuration of one PHiLIP process (all services read the same shape), one group per concern.

    Built from flat field names (``Settings(port=0, redis_url=...)``), which are also the variables'
    names, and read by group (``settings.server.port``, ``settings.store.redis_url``).
    """

    __slots__ = tuple(GROUPS)
    store: StoreSettings
    server: ServerSettings
    models: ModelSettings
    upstreams: UpstreamSettings
    batching: BatchingSettings
    sessions: SessionSettings
    quotas: QuotaSettings
    tls: TlsSettings
    auth: AuthSettings
    training: TrainingSettings
    http: HttpSettings

    def __init__(self, **flat: Any) -> None:
        unknown = set(flat) - set(GROUP_OF)
        if unknown:
            raise TypeError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        for group, cls in GROUPS.items():
            object.__setattr__(self, group, cls(**{k: v for k, v in flat.items() if GROUP_OF[k] == group}))

    def __setattr__(self, name: str, value: Any) -> None:
        raise dataclasses.FrozenInstanceError(f"settings are frozen; use with_({name}=...)")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Settings) and self.flat() == other.flat()

    def __hash__(self) -> int:
        return hash(tuple(self.flat().items()))

    def __repr__(self) -> str:
        return f"Settings({', '.join(f'{k}={v!r}' for k, v in self.flat().items())})"

    @staticmethod
    def field_names() -> tuple[str, ...]:
        """Every field, in group order; ``env_name`` of each is its variable."""
        return tuple(GROUP_OF)

    def groups(self) -> Iterator[tuple[str, Any]]:
        for name in GROUPS:
            yield name, getattr(self, name)

    def flat(self) -> dict[str, Any]:
        """``{field name: value}`` of every field."""
        return {f.name: getattr(g, f.name) for _, g in self.groups() for f in dataclasses.fields(g)}

    def with_(self, **changes: Any) -> Settings:
        """Copy with ``changes`` applied (validated again)."""
        return Settings(**{**self.flat(), **changes})

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ, **overrides: Any) -> Settings:
        """Build settings from ``PHILIP_*`` variables, then apply ``overrides``.

        Overrides whose value is ``None`` are ignored: that is how an unset CLI flag
        reads, so it must not clobber the environment (use :meth:`with_` to force None).
        String overrides are parsed like environment values.
        """
        unknown = set(overrides) - set(GROUP_OF)
        if unknown:
            raise ValueError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        values: dict[str, Any] = {}
        for name, group in GROUP_OF.items():
            group_cls = GROUPS[group]
            tp, rule = field_types(group_cls)[name], getattr(group_cls, "RULES", {}).get(name)
            var = env_name(name)
            if var in environ:
                values[name] = parse(var, environ[var], tp)
                check_value(name, values[name], tp, rule, shown=environ[var])  # report the raw text
            if overrides.get(name) is not None:
                raw = overrides[name]
                values[name] = parse(name, raw, tp) if isinstance(raw, str) else coerce(raw, tp)
                check_value(name, values[name], tp, rule, shown=raw)
        return cls(**values)


__all__ = [
    "DEFAULT_HTTP_PORT", "DEFAULT_SESSION_DEFAULTS_PATH", "DEFAULT_VOCABULARY_PATH", "GROUPS", "AuthSettings",
    "BatchingSettings", "HttpSettings", "ModelSettings", "QuotaSettings", "ServerSettings", "SessionSettings",
    "Settings", "StoreSettings", "TlsSettings", "TrainingSettings", "UpstreamSettings", "env_name",
]
