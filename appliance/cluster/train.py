"""``appliance cluster train``: one training job over N train workers x M processes, under torchrun.

One launcher, ``run_job``, runs ``roles/train.yml`` through ansible-runner on the first N hosts of
the ``train_workers`` group, from either side: ``launch`` on the machine that runs ``appliance
cluster train`` (the inventory ``cluster up`` wrote), ``launch_from`` on the first control host for
a pipeline step that asks for hosts (``python -m appliance.cluster.train launch``, with the launcher
folder ``cluster up`` prepared there: its own key pair and an inventory of the train workers). The
data connection and MLflow's URI and writer account stay on each worker
(``STATE/secrets/train_job_env.json``, as that host reaches them), never on a command line nor
with the launcher. On each host the task runs this module (``python -m appliance.cluster.train``),
which reads the rendezvous settings the train_worker role wrote (``STATE/config/torchrun.env``)
and starts ``torchrun`` with the c10d rendezvous hosted on the first worker: every process runs
``python -m appliance.workloads.trainer run`` and rank 0 alone logs to MLflow and registers.

Results per host come back as data (state, exit code, seconds, the output's tail); a failed host's
``error:`` line is what the raised error shows.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shlex
import socket
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from appliance.errors import ApplianceError

ENV_FILE = "config/torchrun.env"
"""Below the hosts' state folder; written by roles/appliance_train_worker."""
PLAYBOOK = "train.yml"
TASK = "Run this host's part of the job under torchrun"
"""The playbook's task whose start and end are the host's (its name in roles/train.yml)."""
TRAINER_MODULE = "appliance.workloads.trainer"
LAUNCHER_DIR = "train-launcher"
"""Below the first control host's state folder: the launcher's key pair, known hosts and inventory
(written by roles/appliance_train_worker)."""
LAUNCHER_INVENTORY = "inventory.yml"


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=value`` lines (comments and blank lines skipped)."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip()
    return values


@dataclass(frozen=True)
class Rendezvous:
    """One host's view of the job's rendezvous (``torchrun.env``, ``--hosts`` and
    ``--nproc-per-node`` taking precedence)."""

    nnodes: int
    nproc_per_node: int
    endpoint: str
    is_host: bool
    local_addr: str

    @classmethod
    def from_env(
        cls, env: Mapping[str, str], nnodes: int | None = None, nproc_per_node: int | None = None
    ) -> Rendezvous:
        missing = [
            k
            for k in ("NNODES", "NPROC_PER_NODE", "RDZV_ENDPOINT", "RDZV_IS_HOST", "LOCAL_ADDR")
            if f"APPLIANCE_TRAIN_{k}" not in env
        ]
        if missing:
            raise ValueError(
                f"torchrun.env lacks {', '.join('APPLIANCE_TRAIN_' + k for k in missing)}: "
                "run `appliance cluster up` so the train_worker role writes it"
            )
        got = cls(
            nnodes=nnodes or int(env["APPLIANCE_TRAIN_NNODES"]),
            nproc_per_node=nproc_per_node or int(env["APPLIANCE_TRAIN_NPROC_PER_NODE"]),
            endpoint=env["APPLIANCE_TRAIN_RDZV_ENDPOINT"],
            is_host=env["APPLIANCE_TRAIN_RDZV_IS_HOST"].lower() == "true",
            local_addr=env["APPLIANCE_TRAIN_LOCAL_ADDR"],
        )
        if got.nnodes < 1 or got.nproc_per_node < 1:
            raise ValueError(f"{got.nnodes} hosts x {got.nproc_per_node} processes: both must be at least 1")
        return got


def torchrun_argv(rdzv: Rendezvous, job_id: str, trainer_args: list[str]) -> list[str]:
    """torchrun with the c10d rendezvous (hosted by the first worker: ``is_host``), this host's
    own address for its connections, no restarts (a failure is reported, not retried)."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nnodes={rdzv.nnodes}",
        f"--nproc-per-node={rdzv.nproc_per_node}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={rdzv.endpoint}",
        f"--rdzv-id={job_id}",
        f"--rdzv-conf=is_host={'true' if rdzv.is_host else 'false'}",
        f"--local-addr={rdzv.local_addr}",
        "--max-restarts=0",
        "--module",
        TRAINER_MODULE,
        "run",
        *trainer_args,
    ]


def interface_of(address: str) -> str | None:
    """The network interface holding IPv4 ``address`` (gloo and NCCL then connect through it,
    rather than whatever the host name resolves to); None when no interface has it."""
    try:
        wanted = socket.inet_aton(socket.gethostbyname(address))
    except OSError:
        return None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _, name in socket.if_nameindex():
            try:
                raw = fcntl.ioctl(
                    sock.fileno(), 0x8915, struct.pack("256s", name.encode()[:15])
                )  # SIOCGIFADDR
            except OSError:
                continue
            if raw[20:24] == wanted:
                return name
    return None


def host_main(argv: list[str] | None = None) -> int:
    """On a train worker: start torchrun for this host's part of the job and wait for it."""
    top = argparse.ArgumentParser(prog="python -m appliance.cluster.train", description=__doc__)
    top.add_argument("--env-file", type=Path, required=True, help="torchrun.env the train_worker role wrote")
    top.add_argument("--job-id", required=True, help="the rendezvous id, the same on every host")
    top.add_argument("--nnodes", type=int, help="hosts in the job (default: the env file's)")
    top.add_argument("--nproc-per-node", type=int, help="processes on this host (default: the env file's)")
    top.add_argument("--timeout", type=int, default=3600, help="seconds before the job is stopped")
    top.add_argument(
        "--job-env", type=Path, help="JSON: the data connection and MLflow as this host reaches them"
    )
    top.add_argument("trainer_args", nargs=argparse.REMAINDER, help="-- then the trainer's run arguments")
    args = top.parse_args(argv)
    trainer_args = args.trainer_args[1:] if args.trainer_args[:1] == ["--"] else args.trainer_args
    env = dict(os.environ)
    if args.job_env is not None:
        try:
            env |= {str(k): str(v) for k, v in json.loads(args.job_env.read_text()).items()}
        except (OSError, ValueError, AttributeError) as err:
            print(
                f"error: cannot read the job environment {args.job_env}: {err} (fix: run `appliance "
                "cluster up` so the train_worker role writes it)",
                file=sys.stderr,
            )
            return 2
    if not args.env_file.is_file():
        print(
            f"error: {args.env_file} is missing (fix: run `appliance cluster up` so the train_worker role "
            "writes it on every train worker)",
            file=sys.stderr,
        )
        return 2
    try:
        rdzv = Rendezvous.from_env(read_env_file(args.env_file), args.nnodes, args.nproc_per_node)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    nic = interface_of(rdzv.local_addr)
    if nic:
        env.setdefault("GLOO_SOCKET_IFNAME", nic)
        env.setdefault("NCCL_SOCKET_IFNAME", nic)
    env.setdefault("APPLIANCE_TRAIN_TIMEOUT_SECONDS", str(min(args.timeout, 1800)))
    argv_ = torchrun_argv(rdzv, args.job_id, trainer_args)
    print(f"torchrun: {shlex.join(argv_[3:])}", flush=True)
    process = subprocess.Popen(argv_, env=env, start_new_session=True)
    try:
        return process.wait(timeout=args.timeout)
    except subprocess.TimeoutExpired:
        print(f"error: the job ran past {args.timeout} s (fix: raise --timeout)", file=sys.stderr)
        return 124
    finally:
        if process.poll() is None:
            os.killpg(process.pid, 15)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, 9)


# --- the controller's side ---------------------------------------------------------------------


@dataclass
class HostRun:
    """One host's part of the job."""

    state: str = "pending"
    """``pending``, ``running``, ``ok``, ``failed`` or ``unreachable``."""
    node: int = 0
    """Its place in the job (0 hosts the rendezvous; rank 0 may land on any node, since the c10d
    rendezvous hands out ranks in the order nodes join)."""
    rc: int | None = None
    seconds: float = 0.0
    stdout_tail: list[str] = field(default_factory=list)
    stderr_tail: list[str] = field(default_factory=list)
    message: str = ""


@dataclass
class TrainJob:
    job_id: str
    hosts: dict[str, HostRun]
    nproc_per_node: int
    seconds: float = 0.0
    summary: dict[str, Any] | None = None
    """Rank 0's JSON summary (run id, registered version, metrics)."""

    def as_json(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "nnodes": len(self.hosts),
            "nproc_per_node": self.nproc_per_node,
            "seconds": round(self.seconds, 1),
            "hosts": {h: asdict(r) for h, r in self.hosts.items()},
            "summary": self.summary,
        }


Progress = Callable[[str, str, str], None]
"""``(host, state, detail)`` as the job goes."""


def _error_line(lines: list[str]) -> str:
    """The trainer's own ``error:`` line, else the last line that says something."""
    for line in reversed(lines):
        if "error:" in line:
            return line[line.index("error:") :].strip()
    return next((line.strip() for line in reversed(lines) if line.strip()), "")


def _summary(lines: list[str]) -> dict[str, Any] | None:
    for line in reversed(lines):
        if line.startswith("{") and '"run_id"' in line:
            try:
                found: dict[str, Any] = json.loads(line)
                return found
            except json.JSONDecodeError:
                return None
    return None


def workers(ctx: Any, hosts: int) -> list[str]:
    """The first ``hosts`` of the ``train_workers`` group (the first control host when empty)."""
    from .inventory import Inventory

    group = Inventory(ctx.answers.cluster).group("train_workers")
    return first_of(group, hosts, f"--hosts {hosts}", f"use --hosts 1..{len(group)}", "")


def first_of(group: list[str], hosts: int, asked: str, choose: str, then: str) -> list[str]:
    """The first ``hosts`` of the train workers ``group``; more than it holds (or none) is refused
    naming ``asked`` and how to ``choose`` instead (``then``: what to run after widening it)."""
    if hosts < 1 or hosts > len(group):
        raise ApplianceError(
            f"{asked}: the train_workers group has {len(group)} host(s) ({', '.join(group)})",
            fix=f"{choose}, or give more of cluster.hosts the train_workers group{then}",
        )
    return group[:hosts]


def launch(
    ctx: Any,
    hosts: int,
    trainer_args: list[str],
    nproc_per_node: int | None = None,
    timeout: int = 3600,
    on_progress: Progress | None = None,
) -> TrainJob:
    """``appliance cluster train``: one job on the first ``hosts`` train workers of the answers'
    cluster, through the inventory ``cluster up`` wrote here; raises naming each failed host."""
    from .applied import PENDING, applied_hosts, applied_inventory
    from .engine import _cluster
    from .run import ansible_env, cluster_dir

    _cluster(ctx)
    chosen = workers(ctx, hosts)
    folder = cluster_dir(ctx.state_dir)
    inventory = applied_inventory(folder)  # the workers as up set them up, not as a plan wrote them
    if inventory is None:
        raise ApplianceError(
            "the cluster has not been brought up from here", fix="run `appliance cluster up` first"
        )
    applied = applied_hosts(folder)
    missing = [h for h in chosen if h not in applied or applied[h].get(PENDING)]
    if missing:
        raise ApplianceError(
            f"train workers not brought up yet (or their last up did not finish): {', '.join(missing)}",
            fix=f"run `appliance cluster up --limit {','.join(missing)}` first",
        )
    nproc = nproc_per_node or ctx.answers.cluster.train.nproc_per_node
    return run_job(
        inventory,
        folder / "runner" / "train",
        ansible_env(folder, mitogen=False),
        chosen,
        nproc,
        trainer_args,
        timeout,
        on_progress,
    )


def launcher_workers(launcher: Path, hosts: int) -> list[str]:
    """The first ``hosts`` train workers of the launcher's inventory (the group's order)."""
    path = launcher / LAUNCHER_INVENTORY
    try:
        data = yaml.safe_load(path.read_text()) or {}
        group = list(data["all"]["children"]["train_workers"]["hosts"] or {})
    except (OSError, yaml.YAMLError, KeyError, TypeError) as err:
        raise ApplianceError(
            f"cannot read the train workers from {path}: {err}",
            fix="run `appliance cluster up`, which writes it on the first control host",
        ) from err
    choose = f"ask for 1..{len(group)} hosts"
    return first_of(group, hosts, f"{hosts} host(s) asked for", choose, " and run `appliance cluster up`")


def launcher_env(launcher: Path) -> dict[str, str]:
    """Ansible's settings for the launcher: the roles, SSH with the launcher's own key pair and
    the workers' host keys ``cluster up`` recorded (an unknown or changed key stops the run)."""
    from .run import ansible_env

    env = ansible_env(launcher, mitogen=False)
    env["ANSIBLE_SSH_ARGS"] = (
        "-C -o ControlMaster=auto -o ControlPersist=60s -o StrictHostKeyChecking=yes "
        f"-o UserKnownHostsFile={launcher / 'known_hosts'} -o IdentitiesOnly=yes"
    )
    return env


def launch_from(
    launcher: Path,
    hosts: int,
    trainer_args: list[str],
    nproc_per_node: int = 1,
    timeout: int = 3600,
    on_progress: Progress | None = None,
) -> TrainJob:
    """A pipeline step's job, from the first control host: the launcher folder ``cluster up``
    wrote there (key pair, known hosts, the train workers' inventory); raises naming each failed host."""
    chosen = launcher_workers(launcher, hosts)
    inventory = launcher / LAUNCHER_INVENTORY
    return run_job(
        inventory,
        launcher / "runner",
        launcher_env(launcher),
        chosen,
        nproc_per_node,
        trainer_args,
        timeout,
        on_progress,
    )


def run_job(
    inventory: Path,
    private: Path,
    envvars: dict[str, str],
    chosen: list[str],
    nproc: int,
    trainer_args: list[str],
    timeout: int = 3600,
    on_progress: Progress | None = None,
) -> TrainJob:
    """Run one job on ``chosen`` (node 0 first) through ``roles/train.yml``; raises naming each
    failed host."""
    from .run import ROLES_DIR, ansible_runner_module

    ansible_runner = ansible_runner_module()

    job = TrainJob(
        job_id=f"train-{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:6]}",
        hosts={h: HostRun(node=i) for i, h in enumerate(chosen)},
        nproc_per_node=nproc,
    )
    started: dict[str, float] = {}

    def handle(event: dict[str, Any]) -> bool:
        data = event.get("event_data") or {}
        host, kind = data.get("host"), event.get("event", "")
        if host not in job.hosts or not kind.startswith("runner_on_"):
            return True
        run = job.hosts[host]
        res = data.get("res") or {}
        ours = data.get("task", "") == TASK
        if kind in ("runner_on_start", "runner_on_ok") and not ours:
            return True  # the playbook's check of its variables
        if kind == "runner_on_start":
            started[host] = time.monotonic()
            run.state = "running"
            detail = f"torchrun node {run.node} of {len(job.hosts)}, {nproc} process(es)"
        elif kind in ("runner_on_ok", "runner_on_failed", "runner_on_unreachable"):
            run.seconds = time.monotonic() - started.get(host, time.monotonic())
            run.rc = res.get("rc")
            run.stdout_tail = str(res.get("stdout", "")).splitlines()[-15:]
            run.stderr_tail = str(res.get("stderr", "")).splitlines()[-15:]
            run.state = {"runner_on_ok": "ok", "runner_on_failed": "failed"}.get(kind, "unreachable")
            if run.state != "ok":
                run.message = _error_line(run.stderr_tail + run.stdout_tail) or str(res.get("msg", ""))[:300]
            detail = f"{run.seconds:.0f} s" + (f": {run.message}" if run.message else "")
        else:
            return True
        if on_progress:
            on_progress(host, run.state, detail)
        return True

    private.mkdir(mode=0o700, parents=True, exist_ok=True)
    began = time.monotonic()
    runner = ansible_runner.run(
        private_data_dir=str(private),
        project_dir=str(ROLES_DIR),
        playbook=str(ROLES_DIR / PLAYBOOK),
        inventory=str(inventory),
        envvars=envvars | {"ANSIBLE_FORKS": str(max(5, len(chosen)))},
        extravars={
            "appliance_train_job_id": job.job_id,
            "appliance_train_job_nnodes": len(chosen),
            "appliance_train_job_nproc": nproc,
            "appliance_train_job_args": list(trainer_args),
            "appliance_train_job_timeout": timeout,
        },
        limit=",".join(chosen),
        event_handler=handle,
        quiet=True,
        rotate_artifacts=3,
    )
    job.seconds = time.monotonic() - began
    # Rank 0 prints the summary (it alone has a run id), on whichever node it landed.
    job.summary = next((found for h in chosen if (found := _summary(job.hosts[h].stdout_tail))), None)
    bad = {h: r for h, r in job.hosts.items() if r.state != "ok"}
    if bad or runner.rc != 0:
        lines = [f"  - {h} (node {r.node}): {r.state}; {r.message or 'no result'}" for h, r in bad.items()]
        tail = "" if bad else f": {runner.stdout.read()[-1500:]}"
        head = f"training job {job.job_id} failed on {len(bad)} of {len(job.hosts)} hosts{tail}"
        raise TrainJobError(job, head + "".join("\n" + line for line in lines))
    return job


class TrainJobError(ApplianceError):
    """A host of the job failed (exit 4 when one could not be reached, else 1); ``job`` has them all."""

    def __init__(self, job: TrainJob, message: str) -> None:
        self.job = job
        self.exit_code = 4 if any(r.state == "unreachable" for r in job.hosts.values()) else 1
        super().__init__(
            message,
            fix="fix what the failed host reports (one rank's error stops the job), then run the same "
            "command again",
        )


def launch_main(argv: list[str] | None = None) -> int:
    """On the first control host, a pipeline step's job (``python -m appliance.cluster.train
    launch``): progress per host on stdout, rank 0's summary written to ``--summary`` and printed
    last; a failed host's line and the fix on stderr, exit 1 (4 when a host was unreachable)."""
    top = argparse.ArgumentParser(
        prog="python -m appliance.cluster.train launch", description=launch_from.__doc__
    )
    top.add_argument(
        "--launcher", type=Path, required=True, help=f"STATE/{LAUNCHER_DIR} on this control host"
    )
    top.add_argument("--hosts", type=int, required=True, help="train workers in the job")
    top.add_argument("--nproc-per-node", type=int, default=1, help="processes per host")
    top.add_argument("--timeout", type=int, default=3600, help="seconds before the job is stopped")
    top.add_argument("--summary", type=Path, required=True, help="where rank 0's JSON summary is written")
    top.add_argument("trainer_args", nargs=argparse.REMAINDER, help="-- then the trainer's run arguments")
    args = top.parse_args(argv)
    trainer_args = args.trainer_args[1:] if args.trainer_args[:1] == ["--"] else args.trainer_args

    def progress(host: str, state: str, detail: str) -> None:
        print(f"{host}: {state} ({detail})", flush=True)

    try:
        job = launch_from(
            args.launcher, args.hosts, trainer_args, args.nproc_per_node, args.timeout, progress
        )
    except ApplianceError as err:
        if isinstance(err, TrainJobError):
            print(json.dumps(err.job.as_json()), flush=True)
        fix = f" (fix: {err.fix})" if err.fix else ""
        print(f"error: {err.message}{fix}", file=sys.stderr, flush=True)
        return err.exit_code
    if job.summary is None:
        print(json.dumps(job.as_json()), flush=True)
        print(
            f"error: job {job.job_id} ended without rank 0's summary (see each host's output above)",
            file=sys.stderr,
        )
        return 1
    for host, run in job.hosts.items():
        print(
            f"{host} (node {run.node}), {run.seconds:.0f} s:",
            *(f"  {line}" for line in run.stdout_tail),
            sep="\n",
        )
    args.summary.write_text(json.dumps(job.summary, default=str) + "\n")
    print(json.dumps(job.summary, default=str), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``launch ...`` on the control host (a pipeline step), else a train worker's part of a job."""
    argv = sys.argv[1:] if argv is None else argv
    return launch_main(argv[1:]) if argv[:1] == ["launch"] else host_main(argv)


if __name__ == "__main__":
    sys.exit(main())
