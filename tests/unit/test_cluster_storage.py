"""SeaweedFS spread over the cluster's storage hosts: the control host's master, filer and S3
gateway without a volume server, a volume server per storage host reaching the master at the
control host's address, the replication from the answers, and answers that cannot hold the copies
refused with the fix (no hosts needed)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pydantic import ValidationError

from appliance.answers import Answers
from appliance.cluster.host_plan import plan_hosts
from appliance.cluster.units import SECURITY_DIGEST, render_hosts
from appliance.context import AppContext
from appliance.objectstore import grpc_tls
from appliance.objectstore.identities import security_toml
from appliance.render import render_stack
from appliance.secrets_store import SecretStore, read_only

STORE_ONLY = {
    "mlflow": False,
    "workbench": False,
    "monitoring": False,
    "serving": False,
    "controller": False,
    "dashboards": False,
}


def host(name: str, address: str, *groups: str) -> dict[str, Any]:
    return {"name": name, "address": address, "groups": list(groups)}


THREE = [
    host("ctl1", "10.0.0.1", "control"),
    host("sto1", "10.0.0.2", "storage"),
    host("sto2", "10.0.0.3", "storage"),
]


def answers(hosts: list[dict[str, Any]] | None = THREE, replication: int = 2, **extra: Any) -> Answers:
    data: dict[str, Any] = {
        "profile": "custom",
        "bind_address": "0.0.0.0",
        "object_store": {"kind": "seaweedfs", "replication": replication},
        "components": STORE_ONLY,
    }
    if hosts is not None:
        data["cluster"] = {"hosts": hosts, "venv": "/opt/appliance/venv"}
    return Answers.model_validate(data | extra)


def units(per_host: dict[str, dict[str, Any]], name: str) -> dict[str, dict[str, Any]]:
    return {u["name"]: u for u in per_host[name].get("appliance_seaweedfs_units", [])}


def flag(command: list[str], name: str) -> str | None:
    found = [a.split("=", 1)[1] for a in command if a.startswith(f"-{name}=")]
    return found[0] if found else None


@pytest.mark.parametrize("copies, code", [(1, "000"), (2, "001"), (3, "002")])
def test_copies_map_to_seaweedfs_placement_on_other_servers(copies: int, code: str) -> None:
    four = [*THREE, host("sto3", "10.0.0.4", "storage")]
    assert answers(four, replication=copies).object_store.seaweedfs_replication == code


def test_the_control_host_runs_master_filer_and_s3_and_each_storage_host_a_volume_server(
    tmp_path: Path,
) -> None:
    per_host = render_hosts(answers(), tmp_path / "secrets")
    control = units(per_host, "ctl1")
    assert list(control) == ["seaweedfs", "buckets"]
    server = control["seaweedfs"]["command"]
    at = server.index("server")
    assert server[at + 1 : at + 3] == ["-volume=false", "-master.defaultReplication=001"]
    # the master tells the volume servers and the filer where it is: its cluster address
    assert flag(server, "ip") == "10.0.0.1" and flag(server, "ip.bind") == "0.0.0.0"
    ready = per_host["ctl1"]["appliance_seaweedfs_ready"]
    assert ready[:3] == ["/opt/appliance/venv/bin/python", "-m", "appliance.objectstore.ready"]
    assert ready[-2:] == ["--volume-servers", "2"]
    # the role repairs missing copies through weed shell, with the weed the unit runs
    weed = server[server.index("--") + 1]
    assert weed.endswith("/weed") and weed.startswith("/opt/appliance/venv/")
    config = "-config_dir=/var/lib/appliance/config/seaweedfs"  # its security.toml: the client certificate
    assert per_host["ctl1"]["appliance_seaweedfs_shell"] == [weed, config, "shell", "-master=10.0.0.1:9333"]
    # the master's count of each volume's copies decides and checks the repair (the shell waits 15 s)
    count = per_host["ctl1"]["appliance_seaweedfs_copies"]
    assert count[:3] == [ready[0], "-m", "appliance.objectstore.copies"]
    assert count[3:] == ["--master", ready[ready.index("--master") + 1]]
    toml = {f["key"]: f["value"] for f in control["seaweedfs"]["files"]}["security.toml"]
    for name, address in (("sto1", "10.0.0.2"), ("sto2", "10.0.0.3")):
        mine = units(per_host, name)
        assert list(mine) == ["seaweedfs-volume"], "a storage host runs its volume server alone"
        volume = mine["seaweedfs-volume"]["command"]
        assert volume[volume.index("-config_dir=/var/lib/appliance/config/seaweedfs-volume") + 1] == "volume"
        assert flag(volume, "master") == "10.0.0.1:9333" and flag(volume, "ip") == address
        assert flag(volume, "dir") == "/var/lib/appliance/seaweedfs-volume"
        assert mine["seaweedfs-volume"]["health"] == {"url": "http://127.0.0.1:8334/status"}
        # the same signing keys: the volume servers accept only what the store signed
        files = {f["key"]: f["value"] for f in mine["seaweedfs-volume"]["files"]}
        assert list(files) == ["security.toml", SECURITY_DIGEST]
        assert files["security.toml"].split("[grpc]")[0] == toml.split("[grpc]")[0]
        assert "appliance_seaweedfs_ready" not in per_host[name]
        # restarted one host at a time: the next waits until the master (on ctl1) lists this one
        assert per_host[name]["appliance_seaweedfs_store_host"] == "ctl1"
        rejoined = per_host[name]["appliance_seaweedfs_rejoined"]
        assert rejoined[:3] == ready[:3] and rejoined[-2:] == ["--volume-server", f"{address}:8334"]


def test_without_storage_hosts_the_control_host_keeps_the_all_in_one_store(tmp_path: Path) -> None:
    alone = answers([host("ctl1", "10.0.0.1", "control"), host("srv1", "10.0.0.2", "serving")], 1)
    per_host = render_hosts(alone, tmp_path / "secrets")
    control = units(per_host, "ctl1")
    assert list(control) == ["seaweedfs", "buckets"] and units(per_host, "srv1") == {}
    server = control["seaweedfs"]["command"]
    assert "-volume=false" not in server and not any("defaultReplication" in a for a in server)
    assert per_host["ctl1"]["appliance_seaweedfs_ready"][-2:] == ["--volume-servers", "1"]
    assert "appliance_seaweedfs_shell" not in per_host["ctl1"]  # one copy: nothing to repair
    assert "appliance_seaweedfs_copies" not in per_host["ctl1"]


def test_the_one_host_stack_has_no_volume_server_of_its_own_and_the_same_command(tmp_path: Path) -> None:
    one = answers(None, 1)
    services = render_stack(AppContext(one, tmp_path / "state"))
    assert "seaweedfs-volume" not in services
    command = services["seaweedfs"].command
    assert "-volume=false" not in command and not any("defaultReplication" in a for a in command)
    assert (
        services["seaweedfs"].health.command
        and "--volume-servers" not in services["seaweedfs"].health.command
    )
    # a cluster section alone (appliance up on one machine) changes nothing either
    clustered = render_stack(AppContext(answers(), tmp_path / "state"))
    assert list(clustered) == list(services) and clustered["seaweedfs"].command == command


@pytest.mark.parametrize(
    "hosts, copies, expected",
    [
        (None, 2, "no cluster section"),
        ([host("ctl1", "10.0.0.1", "control")], 2, "no host of cluster.hosts in the storage group"),
        (THREE[:2], 2, "only sto1 of cluster.hosts in the storage group"),
        (THREE, 3, "only sto1, sto2 of cluster.hosts in the storage group"),
    ],
)
def test_more_copies_than_volume_servers_is_refused_with_the_fix(
    hosts: list[dict[str, Any]] | None, copies: int, expected: str
) -> None:
    with pytest.raises(ValidationError) as err:
        answers(hosts, copies)
    message = str(err.value)
    assert f"object_store.replication is {copies} with {expected}" in message
    assert f"list 'storage' in the groups of {copies} hosts of cluster.hosts" in message


def test_replication_is_for_seaweedfs_only() -> None:
    with pytest.raises(
        ValidationError, match=r"only SeaweedFS keeps copies: set object_store\.kind: seaweedfs"
    ):
        Answers.model_validate({"object_store": {"kind": "minio", "replication": 2}})
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        answers(replication=0)


def test_a_whole_lab_over_storage_hosts_gives_the_control_host_every_secret_its_units_name(
    tmp_path: Path,
) -> None:
    lab = answers(profile="lab", components={"workbench": False, "dashboards": False})
    per_host = render_hosts(lab, tmp_path / "secrets")
    secrets = per_host["ctl1"]["appliance_common_secrets"]
    assert "mlflow_db_password" in secrets and len(secrets) > 1
    for name, value in secrets.items():
        assert isinstance(value, str) and value == (tmp_path / "secrets" / name).read_text().strip()
    control = units(per_host, "ctl1")
    assert "-volume=false" in control["seaweedfs"]["command"]
    # MLflow and the model server reach the store's S3 gateway on the control host
    mlflow = {u["name"]: u for u in per_host["ctl1"]["appliance_mlflow_units"]}["mlflow"]
    assert "http://127.0.0.1:8333" in str(mlflow["env"]) or "http://127.0.0.1:8333" in str(mlflow["command"])


ADMITTED = ",".join(f"appliance-seaweedfs-{c}" for c in ("master", "volume", "filer", "s3", "client"))
SECRETS_ON_HOSTS = "/var/lib/appliance/secrets"


def files_of(per_host: dict[str, dict[str, Any]], host_name: str, unit: str) -> dict[str, str]:
    return {f["key"]: f["value"] for f in units(per_host, host_name)[unit]["files"]}


def security(per_host: dict[str, dict[str, Any]], host_name: str, unit: str) -> dict[str, Any]:
    return tomllib.loads(files_of(per_host, host_name, unit)["security.toml"])


def test_a_host_joining_or_leaving_changes_the_stores_guard_alone_which_reloads(tmp_path: Path) -> None:
    """The guard lists every host, so it changes whenever one joins or leaves; SeaweedFS reads it
    again on SIGHUP. Only ``security.toml`` changes then, a file rendered as one its service
    reloads, while the digest of the rest (certificates, signing keys) stays: the role reloads
    the store's units, and the plan says so, instead of restarting them."""
    secrets_dir = tmp_path / "secrets"
    before = render_hosts(answers(), secrets_dir)
    joined = render_hosts(answers([*THREE, host("srv1", "10.0.0.9", "serving")]), secrets_dir)
    store = (("ctl1", "seaweedfs"), ("sto1", "seaweedfs-volume"), ("sto2", "seaweedfs-volume"))
    for host_name, unit in store:
        old, new = files_of(before, host_name, unit), files_of(joined, host_name, unit)
        assert [k for k in new if new[k] != old[k]] == ["security.toml"], host_name
        assert security(joined, host_name, unit)["guard"]["white_list"].endswith(",10.0.0.9")
        reloadable = [f["key"] for f in units(joined, host_name)[unit]["files"] if f.get("reload")]
        assert reloadable == ["security.toml"], host_name
    planned = plan_hosts(before, joined)
    for host_name, unit in (("ctl1", "seaweedfs"), ("sto1", "seaweedfs-volume")):
        actions = [(a.verb, a.service) for a in planned[host_name].actions]
        assert ("reload", unit) in actions and ("recreate", unit) not in actions, actions
    left = plan_hosts(joined, before)  # and back: the host leaves
    assert [(a.verb, a.service) for a in left["sto2"].actions] == [("reload", "seaweedfs-volume")]


def test_the_cluster_store_authenticates_its_grpc_peers_and_guards_its_admin_http(tmp_path: Path) -> None:
    secrets_dir = tmp_path / "secrets"
    per_host = render_hosts(answers(), secrets_dir)
    ca = x509.load_pem_x509_certificate((secrets_dir / "seaweedfs_grpc_ca_cert").read_bytes())
    for host_name, unit, components in (
        ("ctl1", "seaweedfs", ["master", "filer", "s3", "client"]),
        ("sto1", "seaweedfs-volume", ["volume", "client"]),
        ("sto2", "seaweedfs-volume", ["volume", "client"]),
    ):
        toml = security(per_host, host_name, unit)
        assert toml["jwt"]["signing"]["key"], "the signing keys stay"
        assert toml["grpc"]["ca"] == f"{SECRETS_ON_HOSTS}/seaweedfs_grpc_ca_cert"
        served = sorted(k for k, v in toml["grpc"].items() if isinstance(v, dict))
        assert served == sorted(components)
        # the cluster's hosts and loopback alone reach the master's and volume servers' admin handlers
        white_list = toml["guard"]["white_list"].split(",")
        assert white_list == ["127.0.0.1", "@", "10.0.0.1", "10.0.0.2", "10.0.0.3"]
        delivered = per_host[host_name]["appliance_common_secrets"]
        assert "seaweedfs_grpc_ca_key" not in delivered, "the CA key stays on this machine"
        assert {n for n in delivered if n.startswith("seaweedfs_grpc_")} == {
            "seaweedfs_grpc_ca_cert",
            *(f"seaweedfs_grpc_{c}_{part}" for c in components for part in ("cert", "key")),
        }, "a host gets the certificates of the components it runs, nothing more"
        # the private keys reach the host as 0600 secrets, never inside a unit's files or command
        assert "PRIVATE KEY" not in repr(per_host[host_name].get("appliance_seaweedfs_units"))
        for component in components:
            section = toml["grpc"][component]
            assert section["cert"] == f"{SECRETS_ON_HOSTS}/seaweedfs_grpc_{component}_cert"
            assert section["key"] == f"{SECRETS_ON_HOSTS}/seaweedfs_grpc_{component}_key"
            if component != "client":  # a server admits the store's own components only
                assert section["allowed_commonNames"] == ADMITTED
            cert = x509.load_pem_x509_certificate(delivered[f"seaweedfs_grpc_{component}_cert"].encode())
            cert.verify_directly_issued_by(ca)
            name = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
            assert name == f"appliance-seaweedfs-{component}" and str(name) in ADMITTED.split(",")
            usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
            assert {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= set(usage)
            key = serialization.load_pem_private_key(
                delivered[f"seaweedfs_grpc_{component}_key"].encode(), password=None
            )
            assert key.public_key() == cert.public_key(), "the key is the certificate's"
            assert (secrets_dir / f"seaweedfs_grpc_{component}_key").stat().st_mode & 0o777 == 0o600
    assert (secrets_dir / "seaweedfs_grpc_ca_key").stat().st_mode & 0o777 == 0o600


def test_the_certificates_are_made_once_and_plan_makes_none(tmp_path: Path) -> None:
    secrets_dir = tmp_path / "secrets"
    with read_only():
        planned = render_hosts(answers(), secrets_dir)
    assert not secrets_dir.exists() or not any(secrets_dir.glob("seaweedfs_grpc_*"))
    assert planned["sto1"]["appliance_common_secrets"]["seaweedfs_grpc_volume_key"].startswith("<")
    first = render_hosts(answers(), secrets_dir)
    again = render_hosts(answers(), secrets_dir)
    assert first == again, "a second render keeps the CA, the certificates and the keys"
    # a certificate that is not the CA's is issued again
    other = tmp_path / "other"
    grpc_tls.ensure_certificates(SecretStore(other))
    (secrets_dir / "seaweedfs_grpc_volume_cert").write_text(
        (other / "seaweedfs_grpc_volume_cert").read_text()
    )
    renewed_hosts = render_hosts(answers(), secrets_dir)
    renewed = renewed_hosts["sto1"]["appliance_common_secrets"]
    # security.toml changes with it, and so does its digest: the role restarts the volume server
    # on the new certificate (a reload would keep the old one)
    assert security(renewed_hosts, "sto1", "seaweedfs-volume") == security(first, "sto1", "seaweedfs-volume")
    assert units(renewed_hosts, "sto1") != units(first, "sto1")
    assert (
        files_of(renewed_hosts, "sto1", "seaweedfs-volume")[SECURITY_DIGEST]
        != files_of(first, "sto1", "seaweedfs-volume")[SECURITY_DIGEST]
    )
    assert plan_hosts(first, renewed_hosts)["sto1"].actions[0].verb == "recreate"
    ca = x509.load_pem_x509_certificate(renewed["seaweedfs_grpc_ca_cert"].encode())
    x509.load_pem_x509_certificate(renewed["seaweedfs_grpc_volume_cert"].encode()).verify_directly_issued_by(
        ca
    )
    assert (
        renewed["seaweedfs_grpc_volume_key"]
        != first["sto1"]["appliance_common_secrets"]["seaweedfs_grpc_volume_key"]
    )


def test_an_all_in_one_cluster_store_authenticates_its_own_volume_server_too(tmp_path: Path) -> None:
    alone = answers([host("ctl1", "10.0.0.1", "control"), host("srv1", "10.0.0.2", "serving")], 1)
    toml = security(render_hosts(alone, tmp_path / "secrets"), "ctl1", "seaweedfs")
    assert sorted(k for k, v in toml["grpc"].items() if isinstance(v, dict)) == [
        "client", "filer", "master", "s3", "volume"
    ]  # fmt: skip
    assert toml["guard"]["white_list"] == "127.0.0.1,@,10.0.0.1,10.0.0.2"


def test_the_one_host_stack_keeps_its_security_toml(tmp_path: Path) -> None:
    ctx = AppContext(answers(None, 1), tmp_path / "state")
    services = render_stack(ctx)
    toml = services["seaweedfs"].files["security.toml"]
    assert toml == security_toml(ctx)
    assert set(tomllib.loads(toml)) == {"jwt"} and "[grpc" not in toml and "[guard]" not in toml
    assert not any((tmp_path / "state" / "secrets").glob("seaweedfs_grpc_*"))
