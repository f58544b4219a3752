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

import hashlib
from collections.abc import Iterable

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from appliance.secrets_store import SecretStore, is_read_only
from appliance.tls import ensure_ca, expiring, issue, key_pem, load_cert, signed_by

CA_CERT, CA_KEY = "seaweedfs_grpc_ca_cert", "seaweedfs_grpc_ca_key"
COMPONENTS = ("master", "volume", "filer", "s3", "client")
"""SeaweedFS's gRPC sections (``[grpc.<component>]``): each has its certificate, which it presents
both as a server and when it dials the others; ``client`` is ``weed shell``'s and the S3
gateway's outgoing one."""
CERT_DAYS = 3650


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
    ca_key, ca = ensure_ca(store, CA_CERT, CA_KEY, "MLOps Appliance SeaweedFS gRPC CA")
    for component in COMPONENTS:
        current = load_cert(store.root / cert_name(component))
        if (
            current is not None
            and (store.root / key_name(component)).exists()
            and signed_by(current, ca)
            and current.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == common_name(component)
            and not expiring(current)
        ):
            continue
        key = ec.generate_private_key(ec.SECP256R1())
        store.put(key_name(component), key_pem(key))
        store.put(cert_name(component), _issue(key, ca_key, ca, common_name(component)))


def fingerprint(store: SecretStore) -> str:
    """A digest of the CA and the components' certificates: written into ``security.toml``, so a
    re-issued certificate changes the file and the role restarts the store's services with it."""
    digest = hashlib.sha256()
    for name in (CA_CERT, *(cert_name(c) for c in COMPONENTS)):
        digest.update(store.get(name).encode())
    return digest.hexdigest()[:16]


def security_sections(secrets_dir: str, components: Iterable[str], stamp: str = "") -> str:
    """The ``security.toml`` sections of a host's SeaweedFS process serving ``components``: the
    CA, each component's certificate and key (files of ``secrets_dir``), and the common names of
    every component of the store as the only peers admitted. Read at start only."""
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
    return "\n".join(lines)


def guard_section(white_list: Iterable[str]) -> str:
    """The ``[guard]`` section: the addresses the master's and volume servers' HTTP admin handlers
    answer. Unlike the rest of the file, SeaweedFS reads it again on SIGHUP (measured with 4.48:
    the master and a volume server answer an address added to it, and refuse one taken out,
    without a restart), so hosts joining or leaving the cluster need no restart of the store."""
    return "\n".join(["[guard]", f'white_list = "{",".join(dict.fromkeys(white_list))}"', ""])


def _issue(
    key: ec.EllipticCurvePrivateKey, ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate, name: str
) -> str:
    """A certificate for ``name``, good as a gRPC server's and as a client's (SeaweedFS does not
    check host names, so it names no address)."""
    usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    cert = issue(key, ca_key, ca, [name], usages, CERT_DAYS)
    return cert.public_bytes(serialization.Encoding.PEM).decode()
