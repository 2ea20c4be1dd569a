"""mTLS between PHiLIP services (optional).

With ``PHILIP_TLS_CERT``, ``PHILIP_TLS_KEY`` and ``PHILIP_TLS_CA`` set, the internal services
(generator, refiner, personalizer) accept only connections that present a certificate signed by
the CA, and the gateway presents its certificate to them and checks theirs against the same CA
(the server certificate must name the address the gateway dials, e.g. ``philip-generator``).
kubelet's gRPC probes cannot present a certificate, so such a server can also answer health
checks, and nothing else, in plaintext on ``PHILIP_HEALTH_PORT``.
"""

from __future__ import annotations

from pathlib import Path

import grpc

from philip.settings import Settings


def _read(setting: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"{setting}={path!r}: cannot read it ({exc.strerror})") from None


def _pems(settings: Settings) -> tuple[bytes, bytes, bytes] | None:
    if not settings.tls.tls_cert:
        return None
    assert settings.tls.tls_key and settings.tls.tls_ca  # Settings checks all three or none
    return (_read("PHILIP_TLS_CERT", settings.tls.tls_cert), _read("PHILIP_TLS_KEY", settings.tls.tls_key),
            _read("PHILIP_TLS_CA", settings.tls.tls_ca))


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """Credentials that require and verify a client certificate; None without TLS settings."""
    pems = _pems(settings)
    if pems is None:
        return None
    cert, key, ca = pems
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)


def channel_credentials(settings: Settings) -> grpc.ChannelCredentials | None:
    """Credentials that present our certificate and verify the server's; None without TLS settings."""
    pems = _pems(settings)
    if pems is None:
        return None
    cert, key, ca = pems
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


__all__ = ["channel_credentials", "server_credentials"]
