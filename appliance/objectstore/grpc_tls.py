"""Mutual TLS for a cluster's SeaweedFS gRPC, and the HTTP guard of its admin handlers.

On a cluster the master, filer, S3 gateway and volume servers listen on the hosts' private
addresses; without this anyone there could call the master's gRPC (``weed shell`` and
``collection.delete``) or its HTTP admin handlers (``/col/delete``), which delete a bucket's data.
SeaweedFS admits a gRPC peer only with a certificate of the store's own CA whose common name is
listed (``allowed_commonNames``), and its master and volume servers answer their HTTP admin
handlers only to the addresses of ``[guard] white_list``.

The CA is the store's own (not the gateway's, whose certificates must not open the store), made
on this machine the first time a cluster renders and kept in the secret store (0600) with one
certificate and key per component; the CA key never leaves this machine. Read-only commands
(``plan``, ``status``) make nothing.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from appliance.secrets_store import SecretStore, is_read_only

CA_CERT, CA_KEY = "seaweedfs_grpc_ca_cert", "seaweedfs_grpc_ca_key"
COMPONENTS = ("master", "volume", "filer", "s3", "client")
"""SeaweedFS's gRPC sections (``[grpc.<component>]``): each has its certificate, which it presents
both as a server and when it dials the others; ``client`` is ``weed shell``'s and the S3
gateway's outgoing one."""
CA_DAYS, CERT_DAYS = 3650, 3650
RENEW_BEFORE = dt.timedelta(days=30)


def cert_name(component: str) -> str:
    return f"seaweedfs_grpc_{component}_cert"


def key_name(component: str) -> str:
    return f"seaweedfs_grpc_{component}_key"


def common_name(component: str) -> str:
    """The subject a component's certificate carries, which ``allowed_commonNames`` lists."""
    return f"appliance-seaweedfs-{component}"


def ensure_certificates(store: SecretStore) -> None:
    """The store's CA and one certificate per component: kept when present, signed by the CA and
    not expiring; made (or re-issued) otherwise. Nothing in read-only mode."""
    if is_read_only():
        return
    ca_key, ca = _ensure_ca(store)
    for component in COMPONENTS:
        current = _load_cert(store.root / cert_name(component))
        if (
            current is not None
            and (store.root / key_name(component)).exists()
            and _signed_by(current, ca)
            and current.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == common_name(component)
            and not _expiring(current)
        ):
            continue
        key = ec.generate_private_key(ec.SECP256R1())
        store.put(key_name(component), _key_pem(key))
        store.put(cert_name(component), _issue(key, ca_key, ca, common_name(component)))


def fingerprint(store: SecretStore) -> str:
    """A digest of the CA and the components' certificates: written into ``security.toml``, so a
    re-issued certificate changes the file and the role restarts the store's services with it."""
    digest = hashlib.sha256()
    for name in (CA_CERT, *(cert_name(c) for c in COMPONENTS)):
        digest.update(store.get(name).encode())
    return digest.hexdigest()[:16]


def security_sections(
    secrets_dir: str, components: Iterable[str], white_list: Iterable[str], stamp: str = ""
) -> str:
    """The ``security.toml`` sections of a host's SeaweedFS process serving ``components``: the
    CA, each component's certificate and key (files of ``secrets_dir``), the common names of
    every component of the store as the only peers admitted, and the HTTP guard's addresses."""
    admitted = ",".join(common_name(c) for c in COMPONENTS)
    lines = [f"# gRPC certificates {stamp}".rstrip(), "[grpc]", f'ca = "{secrets_dir}/{CA_CERT}"', ""]
    for component in components:
        lines += [
            f"[grpc.{component}]",
            f'cert = "{secrets_dir}/{cert_name(component)}"',
            f'key = "{secrets_dir}/{key_name(component)}"',
        ]
        if component != "client":
            lines.append(f'allowed_commonNames = "{admitted}"')
        lines.append("")
    lines += ["[guard]", f'white_list = "{",".join(dict.fromkeys(white_list))}"', ""]
    return "\n".join(lines)


def _ensure_ca(store: SecretStore) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    cert = _load_cert(store.root / CA_CERT)
    key_path = store.root / CA_KEY
    if cert is not None and key_path.exists() and not _expiring(cert):
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if isinstance(key, ec.EllipticCurvePrivateKey):
            return key, cert
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "MLOps Appliance"),
            x509.NameAttribute(NameOID.COMMON_NAME, "MLOps Appliance SeaweedFS gRPC CA"),
        ]
    )
    now = dt.datetime.now(dt.UTC)
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
    store.put(CA_KEY, _key_pem(key))
    store.put(CA_CERT, cert.public_bytes(serialization.Encoding.PEM).decode())
    return key, cert


def _issue(
    key: ec.EllipticCurvePrivateKey, ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate, name: str
) -> str:
    """A certificate for ``name``, good as a gRPC server's and as a client's (SeaweedFS does not
    check host names, so it names no address)."""
    now = dt.datetime.now(dt.UTC)
    usage = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CERT_DAYS))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def _expiring(cert: x509.Certificate) -> bool:
    return cert.not_valid_after_utc - dt.datetime.now(dt.UTC) < RENEW_BEFORE


def _load_cert(path: Path) -> x509.Certificate | None:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
