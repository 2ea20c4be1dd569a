"""Self-signed certificates for the mTLS tests: a CA, a server and a client certificate signed by
it, and a client certificate from another CA (which servers must refuse); and a certificate per
service (``make_service_certs``) for the gateway-identity tests."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Certs:
    ca: Path
    server: Pair
    client: Pair
    rogue_client: Pair  # signed by a CA the servers do not trust


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _write(folder: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Pair:
    pair = Pair(folder / f"{stem}.crt", folder / f"{stem}.key")
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pair.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return pair


def _builder(subject: str, issuer: x509.Name, key: ec.EllipticCurvePrivateKey) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1)))


def _ca(folder: Path, stem: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, Pair]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (_builder(f"{stem} CA", _name(f"{stem} CA"), key)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return cert, key, _write(folder, stem, cert, key)


def _leaf(folder: Path, stem: str, ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey,
          *usages: x509.ObjectIdentifier, names: list[x509.GeneralName] | None = None) -> Pair:
    key = ec.generate_private_key(ec.SECP256R1())
    names = names or [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (_builder(f"philip-{stem}", ca.subject, key)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return _write(folder, stem, cert, key)


def make_certs(folder: Path) -> Certs:
    ca, ca_key, ca_pair = _ca(folder, "ca")
    other, other_key, _ = _ca(folder, "other-ca")
    return Certs(ca=ca_pair.cert,
                 server=_leaf(folder, "server", ca, ca_key, ExtendedKeyUsageOID.SERVER_AUTH),
                 client=_leaf(folder, "client", ca, ca_key, ExtendedKeyUsageOID.CLIENT_AUTH),
                 rogue_client=_leaf(folder, "rogue", other, other_key, ExtendedKeyUsageOID.CLIENT_AUTH))


@dataclass(frozen=True)
class ServiceCerts:
    """One CA, a certificate per service (docs/DEPLOY.md): the workers' name the loopback addresses
    the gateway dials and, like a shared certificate would, can also act as clients; the gateway's
    names only ``GATEWAY_SAN``, the identity the workers accept."""

    ca: Path
    generator: Pair
    refiner: Pair
    gateway: Pair


GATEWAY_SAN = "philip-gateway"


def make_service_certs(folder: Path) -> ServiceCerts:
    ca, ca_key, ca_pair = _ca(folder, "ca")
    both = (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH)
    return ServiceCerts(ca=ca_pair.cert, generator=_leaf(folder, "generator", ca, ca_key, *both),
                        refiner=_leaf(folder, "refiner", ca, ca_key, *both),
                        gateway=_leaf(folder, "gateway", ca, ca_key, ExtendedKeyUsageOID.CLIENT_AUTH,
                                      names=[x509.DNSName(GATEWAY_SAN)]))
