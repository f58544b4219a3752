"""What one Ansible task costs a cluster host, against the SSH session and the Python start it rides
on: where a cluster ``up``'s time goes, so that making it faster starts from figures.

Starts two test hosts (podman containers running systemd and sshd, ``tests/integration/
_cluster_hosts.py``, the image the cluster tests build) and runs, with the settings ``appliance
cluster`` gives Ansible (SSH multiplexing, pipelining; ``appliance.cluster.run.ansible_env``), a
playbook of ``--tasks`` tasks of one module at a time on both hosts, through ansible-runner as the
CLI does, once with Ansible's own ``linear`` strategy and once with Mitogen's (what the CLI uses,
``appliance.cluster.run.strategy_env``, each task forked from the host's interpreter). For each
module and strategy it reports, per task and host: the wall time, the CPU time of this machine's
side (ansible-playbook, its workers and ssh) and of the host (its container's cgroup); beside
them, as baselines on the same connection, an SSH session running ``true`` and one running
``python3 -c pass``. CPU time is what a 2-core machine running the controller and its hosts
spends, so it holds on a busy machine better than wall time does; the ratios compare runs of the
same script. Prints markdown tables. A benchmark (a few minutes), not a test.

    .venv/bin/python benchmarks/ansible_module_cost.py [--tasks N]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the cluster tests' host helper

from appliance.cluster.run import (  # noqa: E402
    MITOGEN_ISOLATION,
    ansible_env,
    ansible_runner_module,
    strategy_env,
)
from tests.integration._cluster_hosts import ClusterHosts, cluster_hosts, ssh_options  # noqa: E402

LIBRARY = REPO / "roles" / "appliance_common" / "library"
MODULES = {
    "set_fact (no module on the host)": "ansible.builtin.set_fact:\n        probe: 1",
    "stat": "ansible.builtin.stat:\n        path: /etc/hostname",
    "systemd_service (started, already running)": (
        "ansible.builtin.systemd_service:\n        name: ssh.service\n        state: started"
    ),
    "copy (content, unchanged)": (
        "ansible.builtin.copy:\n        content: probe\n        dest: /tmp/probe\n        mode: '0644'"
    ),
    "appliance_files (8 files, unchanged)": (
        "appliance_files:\n        folder: /tmp\n        name: probe-%s\n        mode: '0644'\n"
        "        files: {a: '1', b: '2', c: '3', d: '4', e: '5', f: '6', g: '7', h: '8'}"
    ),
}


def host_cpu_seconds(cluster: ClusterHosts) -> float:
    """CPU seconds the hosts' containers have used so far (cgroup v1 cpuacct or v2 cpu.stat)."""
    total = 0.0
    for host in cluster.hosts.values():
        inspect = ["podman", "inspect", "--format", "{{.Id}}", host.name]
        cid = subprocess.run(inspect, capture_output=True, text=True, check=True).stdout.strip()
        v1 = Path(f"/sys/fs/cgroup/cpuacct/libpod_parent/libpod-{cid}/cpuacct.usage")
        if v1.exists():
            total += int(v1.read_text()) / 1e9
            continue
        found = list(Path("/sys/fs/cgroup").glob(f"**/libpod-{cid}*/cpu.stat"))
        if not found:
            raise SystemExit(f"no cgroup CPU counter found for {host.name}")
        usage = dict(line.split() for line in found[0].read_text().splitlines())
        total += int(usage["usage_usec"]) / 1e6
    return total


def own_cpu_seconds() -> float:
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def measure(cluster: ClusterHosts, run: object) -> tuple[float, float, float]:
    """Wall, this machine's CPU and the hosts' CPU seconds of ``run()``."""
    wall, mine, hosts = time.monotonic(), own_cpu_seconds(), host_cpu_seconds(cluster)
    run()  # type: ignore[operator]
    return time.monotonic() - wall, own_cpu_seconds() - mine, host_cpu_seconds(cluster) - hosts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=20, help="tasks per module (default 20)")
    args = parser.parse_args()
    runner = ansible_runner_module()
    work = Path(tempfile.mkdtemp(prefix="ansible-module-cost."))
    rows: list[tuple[str, float, float, float]] = []
    mitogen = strategy_env()
    if not mitogen:
        raise SystemExit(
            "Mitogen is not installed here (or ANSIBLE_STRATEGY is set): scripts/bootstrap.sh lab,cluster"
        )
    with cluster_hosts(("h1", "h2"), work) as cluster:
        hosts = {
            name: {
                "ansible_host": host.address,
                "ansible_user": "root",
                "ansible_python_interpreter": "/usr/bin/python3",
                "ansible_ssh_private_key_file": str(cluster.key),
                "mitogen_task_isolation": MITOGEN_ISOLATION,  # as the CLI's inventory has it
            }
            for name, host in cluster.hosts.items()
        }
        inventory = work / "hosts.json"
        inventory.write_text(json.dumps({"all": {"hosts": hosts}}))
        linear = {k: v for k, v in ansible_env(work).items() if k not in mitogen} | {
            "ANSIBLE_LIBRARY": str(LIBRARY)
        }
        strategies = {"linear": linear, "mitogen": linear | mitogen}
        runs = args.tasks * len(hosts)
        for folder in ("warm", "runner"):
            (work / folder).mkdir()

        first = cluster.hosts["h1"]
        control = work / "ssh-control"
        ssh = ["ssh", *ssh_options(cluster.key), "-o", "ControlMaster=auto", "-o", f"ControlPath={control}",
               "-o", "ControlPersist=60s", f"root@{first.address}"]  # fmt: skip
        subprocess.run([*ssh, "true"], check=True, capture_output=True)
        baselines = (("SSH session: true", "true"), ("SSH session: python3 -c pass", "python3 -c pass"))
        for label, command in baselines:

            def sessions(command: str = command) -> None:
                for _ in range(runs):
                    subprocess.run([*ssh, command], check=True, capture_output=True)

            wall, mine, theirs = measure(cluster, sessions)
            rows.append((label, wall / runs, mine / runs, theirs / runs))

        for label, body in MODULES.items():
            tasks = "".join(f"\n    - name: probe {i}\n      {body}\n" for i in range(args.tasks))
            playbook = work / "probe.yml"
            playbook.write_text(f"- hosts: all\n  gather_facts: false\n  tasks:{tasks}")
            for strategy, env in strategies.items():
                # a first run so that each measured one finds its files written (unchanged)
                runner.run(private_data_dir=str(work / "warm"), playbook=str(playbook),
                           inventory=str(inventory), envvars=env, quiet=True)  # fmt: skip
                outcome: dict[str, int] = {}

                def play(
                    env: dict[str, str] = env, outcome: dict[str, int] = outcome, playbook: Path = playbook
                ) -> None:
                    done = runner.run(private_data_dir=str(work / "runner"), playbook=str(playbook),
                                      inventory=str(inventory), envvars=env, quiet=True)  # fmt: skip
                    outcome["rc"] = done.rc

                wall, mine, theirs = measure(cluster, play)
                if outcome["rc"] != 0:
                    raise SystemExit(f"{label} ({strategy}) failed ({outcome['rc']}); see {work / 'runner'}")
                rows.append((f"{label}, {strategy}", wall / runs, mine / runs, theirs / runs))

    session = next(r for r in rows if r[0] == "SSH session: python3 -c pass")
    print(f"{args.tasks} tasks x {len(hosts)} hosts per row; per task and host, in milliseconds\n")
    print("| what | wall | this machine's CPU | the host's CPU | host CPU / a python3 session's |")
    print("| --- | --- | --- | --- | --- |")
    for label, wall, mine, theirs in rows:
        ratio = theirs / session[3] if session[3] else float("nan")
        print(f"| {label} | {wall * 1000:.0f} | {mine * 1000:.0f} | {theirs * 1000:.0f} | {ratio:.1f} |")
    by_label = {label: (wall, theirs) for label, wall, _, theirs in rows}
    print("\n| module | wall, linear / Mitogen | host CPU, linear / Mitogen |")
    print("| --- | --- | --- |")
    for label in MODULES:
        (wall_l, cpu_l), (wall_m, cpu_m) = by_label[f"{label}, linear"], by_label[f"{label}, mitogen"]
        cpu = f"{cpu_l / cpu_m:.1f}" if cpu_m > 0 else "-"
        print(f"| {label} | {wall_l / wall_m:.1f} | {cpu} |")


if __name__ == "__main__":
    main()
