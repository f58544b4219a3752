"""A cluster lab for the tests: test hosts (``_cluster_hosts``), one answers file that names them
with their groups, this machine's state folder, and the CLI's commands timed (and ``--json``
answers parsed). Every cluster module drives its hosts through this, so how a test writes the
cluster's answers and runs ``appliance cluster ...`` is decided in one place."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from appliance import __version__
from appliance.bundle.debs import read_index
from tests.conftest import run_cli, use_runtime
from tests.integration._cluster_hosts import ClusterHosts, _mirror, cluster_hosts

LOAD_PACE_S = 0.01
"""Each load client's pause between requests in the cluster tests: still dozens a second a client,
so a request is in flight at any moment the gateway or a host changes, while the load leaves the
CPU (CI has two cores) to the ``up`` or the servers under test instead of saturating it."""


@dataclass
class ClusterLab:
    """Hosts named after ``groups``' keys, and the answers and state that drive them."""

    hosts: ClusterHosts
    work: Path
    groups: dict[str, list[str]]
    """Host name -> its inventory groups."""
    base: dict[str, Any]
    """The answers besides the cluster's hosts (its ``cluster`` section may add keys, e.g. ``train``)."""
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def answers(self) -> Path:
        return self.work / "appliance.yaml"

    @property
    def state(self) -> Path:
        return self.work / "state"

    def address(self, host: str) -> str:
        return self.hosts.hosts[host].address

    def write_answers(self, members: Iterable[str] | None = None, **changes: Any) -> None:
        """The answers with ``members`` (all hosts when None) in the cluster, ``changes`` over the
        base; the other hosts keep running but are not in it. The hosts log in with the test's key
        and run the checkout's virtualenv, mounted read-only at the same path on every host."""
        names = list(self.groups) if members is None else list(members)
        hosts = [{"name": n, "address": self.address(n), "groups": self.groups[n]} for n in names]
        cluster = {"ssh_key": str(self.hosts.key), "venv": sys.prefix} | self.base.get("cluster", {})
        self.answers.write_text(yaml.safe_dump(self.base | changes | {"cluster": cluster | {"hosts": hosts}}))

    def run(self, *args: str, timeout: float = 900, label: str | None = None) -> tuple[int, str, str]:
        """``appliance ARGS`` with this lab's answers and state: exit code, stdout, stderr."""
        label = label or " ".join(a for a in args[:3] if a != "cluster")
        started = time.monotonic()
        done = run_cli(*args, answers=self.answers, state=self.state, check=False, timeout=timeout)
        runs = sum(1 for known in self.timings if known.startswith(label + " #"))
        self.timings[f"{label} #{runs + 1}"] = time.monotonic() - started
        return done.returncode, done.stdout, done.stderr

    def cli(self, *args: str, timeout: float = 900, label: str | None = None) -> tuple[int, Any, str]:
        """``appliance cluster ARGS --json``: exit code, the parsed answer (None when it is not
        JSON), and everything it printed."""
        code, out, err = self.run("cluster", *args, "--json", timeout=timeout, label=label or args[0])
        try:
            data = json.loads(out)
        except json.JSONDecodeError:
            data = None
        return code, data, out + err


Lab = TypeVar("Lab", bound=ClusterLab)


@contextmanager
def cluster_lab(
    tmp_path_factory: pytest.TempPathFactory,
    name: str,
    groups: dict[str, list[str]],
    base: dict[str, Any],
    kind: type[Lab] = ClusterLab,  # type: ignore[assignment]  # the default is the bound itself
    internal: bool = False,
    bare: tuple[str, ...] = (),
    overlay: tuple[str, ...] = (),
    **extra: Any,
) -> Iterator[Lab]:
    """Hosts for ``groups`` on podman, the answers written with all of them, the timings printed
    at the end (``pytest -s``); ``internal``: on a network with no route out; ``bare``: hosts
    that install their own virtualenv; ``overlay``: hosts that may change their mounted one
    (``cluster_hosts``)."""
    use_runtime("podman")
    work = tmp_path_factory.mktemp(name)
    with cluster_hosts(tuple(groups), work, internal=internal, bare=bare, overlay=overlay) as hosts:
        lab = kind(hosts=hosts, work=work, groups=groups, base=base, **extra)
        lab.write_answers()
        yield lab
        print(f"\n{name} timings (s): {json.dumps({k: round(v, 1) for k, v in lab.timings.items()})}")


def assert_venv_made_from(lab: ClusterLab, host: str, wheels: Iterable[str], foreign: set[str]) -> None:
    """``host``'s virtualenv (the answers' ``cluster.venv``) was made on the host by its own Python:
    every distribution in it at the version of one of ``wheels`` (file names), the appliance at
    this version, and none of ``foreign`` (another host's packages)."""
    shipped = {(w.split("-")[0].lower().replace("_", "-"), w.split("-")[1]) for w in wheels}
    venv = sys.prefix  # the answers' cluster.venv (ClusterLab.write_answers)
    listed = lab.hosts.ssh(host, f"{venv}/bin/python -m pip list --format json --disable-pip-version-check")
    assert listed.returncode == 0, listed.stderr
    installed = {(d["name"].lower().replace("_", "-"), d["version"]) for d in json.loads(listed.stdout)}
    assert ("mlops-appliance", __version__) in installed, installed
    unshipped = {(n, v) for n, v in installed if n not in ("pip", "setuptools")} - shipped
    assert not unshipped, unshipped
    names = {n for n, _ in installed}
    assert not names & foreign, names
    runs = lab.hosts.ssh(host, f"{venv}/bin/appliance --version && readlink -f {venv}/bin/python")
    assert runs.returncode == 0 and __version__ in runs.stdout, (runs.stdout, runs.stderr)
    assert runs.stdout.strip().endswith("/usr/bin/python3.11"), runs.stdout  # the host's own Python


def assert_no_route_out(lab: ClusterLab, host: str) -> None:
    """``host`` (on an ``internal`` lab's network) cannot open a connection to the Debian mirror
    this machine's apt uses: what it installs comes from the controller alone."""
    mirror = _mirror().split("/")[2]
    address = socket.getaddrinfo(mirror, 80, socket.AF_INET)[0][4][0]
    connect = f"import socket; socket.create_connection(('{address}', 80), timeout=5); print('reached')"
    done = lab.hosts.ssh(host, f'python3 -c "{connect}"')
    assert done.returncode != 0 and "reached" not in done.stdout, (host, done.stdout, done.stderr)
    assert "unreachable" in done.stderr.lower() or "timed out" in done.stderr.lower(), done.stderr


def debian_12() -> bool:
    """Whether this machine's apt, which makes a bundle's debs, is Debian 12's, as the hosts are."""
    release = Path("/etc/os-release")
    return release.exists() and "VERSION_CODENAME=bookworm" in release.read_text()


def bundle_index(bundle: Path) -> dict[str, dict[str, str]]:
    """The bundle's deb index: file name -> its package, version and checksum."""
    with tarfile.open(bundle) as tar:
        stream = tar.extractfile("debs/Packages")
        assert stream is not None
        return read_index(stream.read().decode())


def make_bundle(lab: ClusterLab, wheels: Path) -> Path:
    """The cluster bundle of ``lab``'s answers, made by `appliance bundle create` (debs on by
    default for a cluster, no images) with ``wheels`` as its wheelhouse."""
    path = lab.work / "cluster-bundle.tar"
    code, out, err = lab.run("bundle", "create", "-o", str(path), "--wheelhouse", str(wheels), timeout=600)
    assert code == 0, out + err
    return path


def purge_packages(lab: ClusterLab, host: str, packages: str) -> None:
    """Remove ``packages`` (apt-get patterns) from ``host``, which the host image carries, so that
    ``up`` has to install them."""
    subprocess.run(
        ["podman", "exec", lab.hosts.hosts[host].name, "sh", "-c", f"apt-get purge -y -q {packages}"],
        capture_output=True, check=True, timeout=300,
    )  # fmt: skip


def assert_installed_from(lab: ClusterLab, bundle: Path, installed: dict[str, list[str]]) -> None:
    """Each host's ``installed`` packages are at the bundle's versions, and apt read the bundle's
    folder alone: the host's own package lists stay empty."""
    version = {info["package"]: info["version"] for info in bundle_index(bundle).values()}
    for host, packages in installed.items():
        for package in packages:
            done = lab.hosts.ssh(host, f"dpkg-query -W -f '${{Version}}' {package}")
            assert done.returncode == 0 and done.stdout == version[package], (host, package, done)
        lists = lab.hosts.ssh(host, "ls /var/lib/apt/lists 2>/dev/null | grep -c Packages || true")
        assert lists.stdout.strip() == "0", lists.stdout
