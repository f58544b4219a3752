"""Cluster hosts for the tests: podman containers running systemd and sshd, like small VMs.

The image is a Debian 12 root file system made with ``debootstrap`` (systemd-sysv, openssh-server,
python3, sudo) and imported into podman, built once and cached under a tag derived from its recipe
(a changed recipe builds a new one). Clones of one image would share ``/etc/machine-id`` and the
SSH host keys, so the image has neither: systemd makes a machine id at boot and a oneshot unit
runs ``ssh-keygen -A`` before sshd. Hosts run ``/sbin/init`` without ``--privileged`` (about
30 MB each when idle) on their own podman network, reached by Ansible over SSH with a key made
for the test session.

The appliance's virtualenv and the interpreter it was made from are mounted read-only at the same
paths, so a host runs the services from the checkout under test (a cluster made for users installs
from the offline bundle's wheelhouse instead: ``appliance_common_wheelhouse``).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("systemd-sysv", "openssh-server", "python3", "sudo", "ca-certificates", "python3-apt")
# What the roles install with apt, already in the image so that a test's `up` needs no mirror (a
# user's hosts get them from apt or the bundle's debs). Their own units are not enabled: the roles
# start PostgreSQL and run the monitoring binaries and the gateway's nginx as the appliance's units.
ROLE_PACKAGES = (
    "postgresql", "prometheus", "prometheus-alertmanager", "prometheus-node-exporter", "nginx",
    "python3-venv", "python3-packaging",  # the wheelhouse step's (appliance_common_venv_packages)
)  # fmt: skip
NOT_AT_BOOT = ("postgresql.service", "prometheus.service", "prometheus-alertmanager.service",
               "prometheus-node-exporter.service", "nginx.service")  # fmt: skip
HOST_KEYS_UNIT_NAME = "regen-ssh-host-keys.service"
HOST_KEYS_UNIT = """\
[Unit]
Description=Make this clone's own SSH host keys
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=multi-user.target
"""
# Units a container host does not need (no consoles, no udev, no time sync against the network).
MASKED = (
    "getty@tty1.service", "console-getty.service", "systemd-udevd.service", "systemd-timesyncd.service",
    "apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_reap.service", "systemd-logind.service",
)  # fmt: skip
APT_FOLDERS = ("var/lib/apt/lists/partial", "var/cache/apt/archives/partial")
"""Kept, emptied, in the image (``ensure_image``)."""
RECIPE = json.dumps(
    {
        "suite": "bookworm",
        "apt_folders": APT_FOLDERS,
        "packages": PACKAGES + ROLE_PACKAGES,
        "not_at_boot": NOT_AT_BOOT,
        HOST_KEYS_UNIT_NAME: HOST_KEYS_UNIT,
        "masked": MASKED,
    },
    sort_keys=True,
)
IMAGE = f"localhost/appliance-cluster-host:{hashlib.sha256(RECIPE.encode()).hexdigest()[:12]}"


def _run(*cmd: str, timeout: float = 600, stdin: bytes | None = None) -> str:
    done = subprocess.run(cmd, input=stdin, capture_output=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} failed ({done.returncode}): {done.stderr.decode()[-2000:]}")
    return done.stdout.decode()


def _mirror() -> str:
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if sources.exists():
        for line in sources.read_text().splitlines():
            if line.startswith("URIs:"):
                return line.split()[1]
    return "http://deb.debian.org/debian"


def ensure_image() -> str:
    """The host image's tag, built with debootstrap the first time (about a minute)."""
    if subprocess.run(["podman", "image", "exists", IMAGE], check=False).returncode == 0:
        return IMAGE
    root = Path(tempfile.mkdtemp(prefix="appliance-cluster-host.", dir="/var/tmp"))
    try:
        _run(
            "debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES + ROLE_PACKAGES)}",
            "bookworm", str(root), _mirror(), timeout=1200,
        )  # fmt: skip
        (root / "etc/machine-id").write_text("")
        for key in (root / "etc/ssh").glob("ssh_host_*"):
            key.unlink()
        (root / "etc/systemd/system" / HOST_KEYS_UNIT_NAME).write_text(HOST_KEYS_UNIT)
        wants = root / "etc/systemd/system/multi-user.target.wants"
        wants.mkdir(parents=True, exist_ok=True)
        (wants / HOST_KEYS_UNIT_NAME).symlink_to(f"/etc/systemd/system/{HOST_KEYS_UNIT_NAME}")
        for unit in NOT_AT_BOOT:
            (wants / unit).unlink(missing_ok=True)
        for unit in MASKED:
            (root / "etc/systemd/system" / unit).unlink(missing_ok=True)
            (root / "etc/systemd/system" / unit).symlink_to("/dev/null")
        (root / "root").chmod(0o711)  # the services' account reaches the mounted interpreter below /root
        for junk in ("var/lib/apt/lists", "var/cache/apt/archives", "usr/share/doc", "usr/share/man"):
            shutil.rmtree(root / junk, ignore_errors=True)
        # apt's folders stay, emptied, as on an installed Debian: apt locks lists/ before any
        # install, even of a package already there, and fails where the folder is missing.
        for kept in APT_FOLDERS:
            (root / kept).mkdir(parents=True)
        archive = subprocess.run(["tar", "-C", str(root), "-c", "."], capture_output=True, check=True).stdout
        _run(
            "podman", "import", "--change", 'CMD ["/sbin/init"]', "--change", "STOPSIGNAL SIGRTMIN+3",
            "-", IMAGE, stdin=archive,
        )  # fmt: skip
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return IMAGE


@dataclass
class Host:
    """One running host: its container name (also its inventory name) and address."""

    name: str
    address: str


@dataclass
class ClusterHosts:
    """N hosts on one podman network, reachable over SSH as root with ``key``."""

    network: str
    key: Path
    hosts: dict[str, Host] = field(default_factory=dict)

    def ssh(self, host: str, command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run ``command`` on ``host`` over SSH (what Ansible does); a connection that fails (255,
        e.g. a slow handshake on a loaded machine) is tried again, twice."""
        for _ in range(3):
            done = subprocess.run(
                ["ssh", *ssh_options(self.key), f"root@{self.hosts[host].address}", command],
                capture_output=True, text=True, timeout=timeout, check=False,
            )  # fmt: skip
            if done.returncode != 255:
                break
            time.sleep(2)
        return done

    def memory_bytes(self, host: str) -> int:
        """The host container's memory use, as podman reports it."""
        stats = json.loads(_run("podman", "stats", "--no-stream", "--format", "json", host))
        return int(stats[0]["mem_usage"].split("/")[0].strip().rstrip("B").split(".")[0] or 0)


def ssh_options(key: Path) -> list[str]:
    return [
        "-i", str(key), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
        "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=20", "-o", "BatchMode=yes",
    ]  # fmt: skip


def _mounts(overlay: bool = False) -> list[str]:
    """The checkout and its virtualenv, and the interpreter the virtualenv was made from.
    ``overlay``: the checkout and virtualenv as podman overlays (``:O``), writable in the host
    alone (what it writes stays in its container, the checkout is not touched)."""
    mode = "O" if overlay else "ro"
    mounts = [f"{ROOT}:{ROOT}:{mode}"]
    venv = Path(sys.prefix)
    if not venv.is_relative_to(ROOT):
        mounts.append(f"{venv}:{venv}:{mode}")
    base = Path(sys.base_prefix)
    if not base.is_relative_to("/usr"):  # a Debian python3 is already in the image
        mounts.append(f"{base}:{base}:ro")
    return mounts


def _wait_for_ssh(cluster: ClusterHosts, name: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((cluster.hosts[name].address, 22), timeout=2):
                pass
            done = cluster.ssh(name, "systemctl is-system-running --wait || true", timeout=60)
            if done.returncode == 0:
                return
            last = done.stderr
        except OSError as err:
            last = str(err)
        time.sleep(0.5)
    logs = subprocess.run(
        ["podman", "logs", "--tail", "30", name], capture_output=True, text=True, check=False
    )
    raise RuntimeError(
        f"host {name} did not answer SSH within {timeout:.0f} s: {last}\n{logs.stdout}{logs.stderr}"
    )


def _let_hosts_talk(network: str) -> list[str]:
    """Let the hosts of an internal network reach each other; returns the rule to delete after.

    On a machine where dockerd runs, bridged traffic passes iptables' FORWARD chain
    (``bridge-nf-call-iptables``), whose policy dockerd sets to DROP; podman's firewall rules
    accept a network's traffic only for networks with a route out, so on an ``--internal`` one
    the hosts' packets to each other were dropped (a gateway on one host timed out on MLflow on
    another). Separate machines on a private network have no such chain between them."""
    nf = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")
    if not nf.exists() or nf.read_text().strip() != "1" or shutil.which("iptables") is None:
        return []
    subnet = _run(
        "podman", "network", "inspect", "--format", "{{range .Subnets}}{{.Subnet}} {{end}}", network
    ).split()[0]  # fmt: skip
    rule = ["FORWARD", "-s", subnet, "-d", subnet, "-j", "ACCEPT"]
    _run("iptables", "-w", "-I", *rule)
    return rule


@contextmanager
def cluster_hosts(
    names: tuple[str, ...],
    workdir: Path,
    internal: bool = False,
    bare: tuple[str, ...] = (),
    overlay: tuple[str, ...] = (),
) -> Iterator[ClusterHosts]:
    """Start one host per name on a fresh podman network; remove them and the network after.
    ``internal``: the network has no route out (``podman network create --internal``), so the
    hosts reach each other and this machine reaches them, but nothing beyond. ``bare``: hosts
    without the checkout and its virtualenv mounted (they install their own). ``overlay``: hosts
    whose mounted virtualenv they may change (an upgrade's new packages) without touching this
    machine's."""
    image = ensure_image()
    suffix = uuid.uuid4().hex[:8]
    key = workdir / "id_ed25519"
    _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key))
    cluster = ClusterHosts(network=f"appliance-cluster-{suffix}", key=key)
    _run("podman", "network", "create", *(["--internal"] if internal else []), cluster.network)
    between = _let_hosts_talk(cluster.network) if internal else []
    try:
        for short in names:
            name = f"{short}-{suffix}"
            mounts = [] if short in bare else _mounts(overlay=short in overlay)
            volumes = [f"--volume={m}" for m in mounts]
            _run(
                "podman", "run", "--detach", "--name", name, "--hostname", short,
                "--network", cluster.network, "--systemd=always",
                f"--volume={key}.pub:/root/.ssh/authorized_keys:ro", *volumes, image,
            )  # fmt: skip
            address = _run(
                "podman",
                "inspect",
                "--format",
                "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                name,
            ).strip()
            cluster.hosts[short] = Host(name=name, address=address)
        for short in names:
            _wait_for_ssh(cluster, short)
        yield cluster
    finally:
        for host in cluster.hosts.values():
            subprocess.run(
                ["podman", "rm", "--force", "--time", "5", host.name], capture_output=True, check=False
            )
        subprocess.run(
            ["podman", "network", "rm", "--force", cluster.network], capture_output=True, check=False
        )
        if between:
            subprocess.run(["iptables", "-w", "-D", *between], capture_output=True, check=False)
