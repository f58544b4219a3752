"""The stack's own certificate authority and the gateway's server certificate, made at install.

Nothing is shipped: the CA key and the server key are generated on this machine the first time
TLS is wanted and kept in the secret store (mode 0600) with the certificates. The CA outlives
changes to the answers file; the server certificate is re-issued when the names it must cover
change (a new listen address or hostname), so clients keep trusting the same CA file.

ECDSA P-256 keys: small, fast handshakes, accepted by every TLS stack the clients use (curl,
Python's ssl, grpcio's BoringSSL, browsers).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from appliance.secrets_store import SecretStore, is_read_only

CA_CERT, CA_KEY = "tls_ca_cert", "tls_ca_key"
SERVER_CERT, SERVER_KEY = "gateway_tls_cert", "gateway_tls_key"
CA_DAYS, SERVER_DAYS = 3650, 825
"""Validity: the CA for ten years; the server certificate for the longest span browsers accept."""
PENDING = "to be issued by appliance up"
"""The fingerprint read-only commands see where ``up`` would make or re-issue a certificate."""


@dataclass(frozen=True)
class TlsFiles:
    """Paths of the PEM files, and the server certificate's SHA-256 fingerprint."""

    ca_cert: Path
    cert: Path
    key: Path
    fingerprint: str


def certificate_names(bind_address: str, listen_address: str, extra: Iterable[str] = ()) -> list[str]:
    """Every name the server certificate must cover: loopback, this host, the addresses the
    gateway is reached on, the gateway's name on a container network, and the user's own."""
    names = ["localhost", "127.0.0.1", "::1", "gateway", socket.gethostname()]
    for address in (bind_address, listen_address):
        if not ipaddress.ip_address(address).is_unspecified:
            names.append(address)
    names += list(extra)
    return list(dict.fromkeys(n for n in names if n))


def ensure_certificates(store: SecretStore, names: list[str]) -> TlsFiles:
    """The CA and a server certificate for ``names``: kept when present and still right,
    generated (or re-issued) otherwise. In read-only mode (``plan``, ``status``) nothing is made:
    a certificate ``up`` would make or re-issue shows as the ``PENDING`` fingerprint."""
    cert_path = store.root / SERVER_CERT
    if is_read_only():
        return _as_they_are(store, names)
    ca_key, ca_cert = _ensure_ca(store)
    current = load_cert(cert_path)
    if current is None or not _covers(current, names) or not signed_by(current, ca_cert) or expiring(current):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _issue(key, ca_key, ca_cert, names)
        store.put(SERVER_KEY, key_pem(key))
        store.put(SERVER_CERT, cert.public_bytes(serialization.Encoding.PEM).decode())
        current = cert
    der = current.public_bytes(serialization.Encoding.DER)
    return TlsFiles(
        ca_cert=store.root / CA_CERT,
        cert=cert_path,
        key=store.root / SERVER_KEY,
        fingerprint=hashlib.sha256(der).hexdigest(),
    )


def _as_they_are(store: SecretStore, names: list[str]) -> TlsFiles:
    """The files as they are now, without making anything: the current fingerprint when the
    certificates are present and right, ``PENDING`` when ``up`` would (re)issue them."""
    ca = load_cert(store.root / CA_CERT)
    current = load_cert(store.root / SERVER_CERT)
    fingerprint = PENDING
    if (
        ca is not None
        and (store.root / CA_KEY).exists()
        and not expiring(ca)
        and current is not None
        and _covers(current, names)
        and signed_by(current, ca)
        and not expiring(current)
    ):
        fingerprint = hashlib.sha256(current.public_bytes(serialization.Encoding.DER)).hexdigest()
    return TlsFiles(
        ca_cert=store.root / CA_CERT,
        cert=store.root / SERVER_CERT,
        key=store.root / SERVER_KEY,
        fingerprint=fingerprint,
    )


def _ensure_ca(store: SecretStore) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    return ensure_ca(store, CA_CERT, CA_KEY, f"MLOps Appliance CA {socket.gethostname()}")


def ensure_ca(
    store: SecretStore, cert_name: str, key_name: str, common_name: str
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A CA kept in ``store`` as ``cert_name``/``key_name`` (0600): the present one while it is
    not expiring, a new one otherwise. Each CA signs one kind of peer only (the gateway's, the
    object store's gRPC components), so a certificate of one never opens the other."""
    cert = load_cert(store.root / cert_name)
    key_path = store.root / key_name
    if cert is not None and key_path.exists() and not expiring(cert):
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if isinstance(key, ec.EllipticCurvePrivateKey):
            return key, cert
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "MLOps Appliance"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    store.put(key_name, key_pem(key))
    store.put(cert_name, cert.public_bytes(serialization.Encoding.PEM).decode())
    return key, cert


def _issue(
    key: ec.EllipticCurvePrivateKey,
    ca_key: ec.EllipticCurvePrivateKey,
    ca: x509.Certificate,
    names: list[str],
) -> x509.Certificate:
    return issue(key, ca_key, ca, names, [ExtendedKeyUsageOID.SERVER_AUTH], SERVER_DAYS)


def issue(
    key: ec.EllipticCurvePrivateKey,
    ca_key: ec.EllipticCurvePrivateKey,
    ca: x509.Certificate,
    names: list[str],
    usages: list[x509.ObjectIdentifier],
    days: int,
) -> x509.Certificate:
    """A certificate for ``key`` named ``names`` (the first is its common name, all its subject
    alternative names), for ``usages``, signed by ``ca``."""
    now = _now()
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([_general_name(n) for n in names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _covers(cert: x509.Certificate, names: list[str]) -> bool:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    present = {str(v) for v in san.get_values_for_type(x509.IPAddress)}
    present |= set(san.get_values_for_type(x509.DNSName))
    return {str(_general_name(n).value) for n in names} <= present


def signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def expiring(cert: x509.Certificate) -> bool:
    return cert.not_valid_after_utc - _now() < dt.timedelta(days=30)


def load_cert(path: Path) -> x509.Certificate | None:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None


def key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
