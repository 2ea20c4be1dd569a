"""Internal calls: only the gateway may speak for a tenant.

The generator, refiner and personalizer serve a call as the tenant in its ``x-philip-tenant``
metadata, so with auth on they must know the call is the gateway's: it carries the internal token
(``x-philip-internal``, from ``PHILIP_INTERNAL_TOKEN_FILE``, a Secret only the four services mount)
and/or, with mTLS, comes from a certificate whose subjectAltName is ``PHILIP_GATEWAY_IDENTITY``
(every service has a certificate from the same CA, so the CA alone does not tell the gateway from a
generator). Anything else is UNAUTHENTICATED; health and reflection need neither (kubelet probes).

Auth is on when any of ``PHILIP_API_KEYS_FILE``, ``PHILIP_INTERNAL_TOKEN_FILE`` or
``PHILIP_GATEWAY_IDENTITY`` is set; :func:`internal_auth` then fails closed at start-up, naming the
variable to set, when the process could not tell (or, for the gateway, prove) who calls.
``philip serve all`` makes a random token for itself when none is configured.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc import aio

from philip.logs import get_logger
from philip.rpc.auth import (
    TENANT_KEY,
    TENANT_RE,
    TenantInterceptor,
    TenantInterceptorBase,
    header_interceptors,
    metadata_value,
)
from philip.rpc.errors import Unauthenticated
from philip.settings import Settings

INTERNAL_KEY = "x-philip-internal"
SAN_PROPERTY = "x509_subject_alternative_name"  # grpc's auth context: one entry per SAN of the peer
MIN_TOKEN_CHARS = 32
_NOT_THE_GATEWAY = "internal services serve only the PHiLIP gateway; call the gateway instead"

log = get_logger("philip.rpc.internal")


@dataclass(frozen=True)
class InternalAuth:
    """How this process proves (gateway) or checks (internal services) that a call is the gateway's."""

    # Tokens accepted; the gateway sends the first. Several, so that a rotation can add the new one
    # everywhere before the gateway switches to it. Kept out of repr so no log line can carry them.
    tokens: tuple[str, ...] = field(default=(), repr=False)
    identity: str | None = None  # a SAN the caller's certificate must have (internal services, mTLS)
    require_tenant: bool = False  # API keys on here: every call has a tenant, "" would mean "all"

    def check(self, details: grpc.HandlerCallDetails, context: aio.ServicerContext) -> str:
        """The tenant the gateway forwarded; raises Unauthenticated unless the call is the gateway's."""
        if self.tokens and not _known(metadata_value(details, INTERNAL_KEY), self.tokens):
            raise Unauthenticated(f"{_NOT_THE_GATEWAY} (no valid {INTERNAL_KEY} token: the gateway sends the "
                                  "one in PHILIP_INTERNAL_TOKEN_FILE; mount the same Secret in both)")
        if self.identity is not None and self.identity not in _sans(context):
            raise Unauthenticated(f"{_NOT_THE_GATEWAY} (the client certificate does not name the gateway: "
                                  "PHILIP_GATEWAY_IDENTITY must be a subjectAltName of the gateway's certificate)")
        tenant = metadata_value(details, TENANT_KEY)
        if tenant is None or (tenant == "" and self.require_tenant) or (tenant and not TENANT_RE.match(tenant)):
            raise Unauthenticated(f"{_NOT_THE_GATEWAY} (no valid {TENANT_KEY}: the gateway forwards the "
                                  "caller's tenant with every call)")
        return tenant


def _known(sent: str | None, tokens: tuple[str, ...]) -> bool:
    if sent is None:
        return False
    # compare_digest: no timing hint of how much of a guess was right; every token is compared.
    given = sent.encode()
    return any([hmac.compare_digest(given, token.encode()) for token in tokens])


def _sans(context: aio.ServicerContext) -> set[str]:
    return {value.decode(errors="replace") for value in context.auth_context().get(SAN_PROPERTY, [])}


class InternalInterceptor(TenantInterceptorBase):
    """Internal services with auth on: ``/philip.v1.`` calls only from the gateway, as its tenant."""

    def __init__(self, auth: InternalAuth) -> None:
        self.auth = auth

    def tenant_of(self, details: grpc.HandlerCallDetails, context: aio.ServicerContext) -> str:
        return self.auth.check(details, context)


def read_tokens(path: str) -> tuple[str, ...]:
    """The tokens in ``path``, one a line (blank lines ignored); ValueError naming the variable."""
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"PHILIP_INTERNAL_TOKEN_FILE={path!r}: cannot read it ({exc})") from None
    tokens = tuple(line.strip() for line in lines if line.strip())
    # Metadata values are printable ASCII; a short token is guessable. The token itself is never shown.
    if not tokens or any(len(t) < MIN_TOKEN_CHARS or not (t.isascii() and t.isprintable()) for t in tokens):
        raise ValueError(f"PHILIP_INTERNAL_TOKEN_FILE={path!r}: each line must be a token of at least "
                         f"{MIN_TOKEN_CHARS} printable ASCII characters (e.g. `openssl rand -hex 32`)")
    return tokens


def auth_on(settings: Settings) -> bool:
    return bool(settings.auth.api_keys_file or settings.auth.internal_token_file or settings.auth.gateway_identity)


def internal_auth(role: str, settings: Settings) -> InternalAuth | None:
    """What ``role`` needs for internal calls; None when auth is off (internal services open, as the
    gateway is). Raises ValueError, naming what to set, where auth is on but cannot work."""
    if not auth_on(settings):
        return None
    tokens = read_tokens(settings.auth.internal_token_file) if settings.auth.internal_token_file else ()
    require_tenant = settings.auth.api_keys_file is not None
    if role == "all":
        # Its services listen on plaintext loopback, where no certificate tells who calls; a token it
        # makes for itself, shared in memory with its own gateway, keeps other local processes out.
        return InternalAuth(tokens or (secrets.token_urlsafe(32),), None, require_tenant)
    if role == "gateway":
        if not tokens and not settings.tls.tls_cert:
            raise ValueError("the gateway has no credentials the internal services accept: set "
                             "PHILIP_INTERNAL_TOKEN_FILE (the internal token Secret they mount too), or mTLS "
                             "(PHILIP_TLS_CERT/KEY/CA, a certificate whose SAN is their PHILIP_GATEWAY_IDENTITY)")
        return InternalAuth(tokens)
    identity = settings.auth.gateway_identity
    if identity is not None and not settings.tls.tls_cert:
        raise ValueError("PHILIP_GATEWAY_IDENTITY needs mTLS: set PHILIP_TLS_CERT, PHILIP_TLS_KEY and PHILIP_TLS_CA "
                         "(or use PHILIP_INTERNAL_TOKEN_FILE alone)")
    if not tokens and identity is None:
        raise ValueError(f"auth is on (PHILIP_API_KEYS_FILE is set) but the {role} cannot tell the gateway's calls "
                         "from anyone else's: set PHILIP_INTERNAL_TOKEN_FILE (the gateway's internal token Secret) "
                         "or, with mTLS, PHILIP_GATEWAY_IDENTITY (the gateway certificate's SAN)")
    return InternalAuth(tokens, identity, require_tenant)


def server_interceptor(auth: InternalAuth | None) -> aio.ServerInterceptor:
    """An internal service's tenant interceptor: checked with auth on, as forwarded without."""
    if auth is None:
        log.warning("internal.open", why="auth is off: any caller that reaches this port acts as any tenant")
        return TenantInterceptor()
    log.info("internal.auth", tokens=len(auth.tokens), gateway_identity=auth.identity)
    return InternalInterceptor(auth)


def upstream_interceptors(auth: InternalAuth | None) -> list[aio.ClientInterceptor]:
    """The gateway's interceptors for its channels to the internal services: the internal token."""
    return header_interceptors(INTERNAL_KEY, auth.tokens[0]) if auth is not None and auth.tokens else []


__all__ = ["INTERNAL_KEY", "InternalAuth", "InternalInterceptor", "auth_on", "internal_auth", "read_tokens",
           "server_interceptor", "upstream_interceptors"]
