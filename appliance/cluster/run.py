"""Ansible through ansible-runner: the inventory written from the answers, the playbooks in
``roles/``, results per host as data and progress per host as events.

The inventory holds each host's rendered units and the secrets they name, so it is written 0600
in a 0700 folder of the state directory (``STATE/cluster/``). SSH trusts a host's key on first
contact and remembers it in ``STATE/cluster/known_hosts`` (a changed key then stops the run).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from appliance.answers import Answers
from appliance.errors import ApplianceError, PreflightError
from appliance.stack import ROLES_DIR

from .diffs import task_diffs
from .inventory import Inventory

PLAYBOOKS = {"preflight": "preflight.yml", "plan": "site.yml", "up": "site.yml", "down": "teardown.yml"}


@dataclass
class HostResult:
    """What Ansible did on one host."""

    ok: int = 0
    changed: int = 0
    failed: int = 0
    unreachable: int = 0
    skipped: int = 0
    messages: list[str] = field(default_factory=list)
    """The failed tasks' messages (task: message)."""
    changed_tasks: list[str] = field(default_factory=list)
    """The tasks that changed something, in order (what ``plan`` shows would change)."""
    diffs: list[str] = field(default_factory=list)
    """``plan`` only: each file a changed task would write, as a unified diff headed by the task
    (none from a task that sets no_log: its result is censored)."""
    services: list[dict[str, str]] = field(default_factory=list)
    """``plan`` only: what ``up`` would do to each of the host's services (``host_plan``): verb,
    service, reason."""

    @property
    def state(self) -> str:
        if self.unreachable:
            return "unreachable"
        return "failed" if self.failed else ("changed" if self.changed else "ok")


class ClusterRunError(ApplianceError):
    """A playbook failed on some host (exit 4 when a host could not be reached, else 1)."""

    def __init__(self, action: str, results: dict[str, HostResult]) -> None:
        self.results = results
        bad = {h: r for h, r in results.items() if r.state in ("failed", "unreachable")}
        self.exit_code = 4 if any(r.unreachable for r in bad.values()) else 1
        lines = [
            f"  - {h}: {r.state}" + "".join(f"\n      {m}" for m in r.messages[:3]) for h, r in bad.items()
        ]
        super().__init__(
            f"cluster {action} failed on {len(bad)} of {len(results)} hosts:\n" + "\n".join(lines),
            fix="fix what each host reports, then run the same command again (what is done stays done)",
        )


class ClusterPreflightError(PreflightError):
    """A host cannot run its part (exit 3) or could not be reached (exit 4), with every host's
    result, so ``--json`` still prints them all: a script reads which host failed from the data,
    not from the message."""

    def __init__(self, results: dict[str, HostResult]) -> None:
        self.results = results
        bad = {h: r for h, r in results.items() if r.state in ("failed", "unreachable")}
        super().__init__([(h, r.state, "; ".join(r.messages[:2])) for h, r in bad.items()])
        if any(r.unreachable for r in bad.values()):
            self.exit_code = 4


def inventory_path(folder: Path) -> Path:
    """The inventory the last cluster command wrote in the cluster folder ``folder``."""
    return folder / "inventory" / "hosts.yml"


def cluster_path(state_dir: Path) -> Path:
    """The cluster's folder in the state directory (inventories, the record, Ansible's runs), which
    may not exist yet: for commands that only read."""
    return state_dir / "cluster"


def cluster_dir(state_dir: Path) -> Path:
    """``cluster_path``, made (0700) when missing."""
    path = cluster_path(state_dir)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.chmod(0o700)
    return path


class _Unsafe(str):
    """A value Ansible must not template (``!unsafe``): rendered config files may hold Jinja-like
    text of their own, e.g. Prometheus's alert rules with ``{{ $labels.model }}``."""


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(_Unsafe, lambda dumper, value: dumper.represent_scalar("!unsafe", str(value)))


def _unsafe(value: Any) -> Any:
    """``value`` with every string that Ansible would read as a template marked ``!unsafe``."""
    if isinstance(value, str):
        return _Unsafe(value) if any(mark in value for mark in ("{{", "{%", "{#")) else value
    if isinstance(value, dict):
        return {k: _unsafe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unsafe(v) for v in value]
    return value


def write_inventory(
    answers: Answers,
    host_vars: dict[str, dict[str, Any]],
    folder: Path,
    common: dict[str, Any] | None = None,
) -> Path:
    """``hosts.yml`` (0600): the effective groups, SSH settings and each host's vars; ``common``:
    vars every host shares (the offline bundle's debs), written once."""
    assert answers.cluster is not None
    cluster = answers.cluster
    inventory = Inventory(cluster)
    hosts: dict[str, dict[str, Any]] = {}
    for host in cluster.hosts:
        user = host.ssh_user or cluster.ssh_user
        entry: dict[str, Any] = {
            "ansible_host": host.address,
            "ansible_port": host.ssh_port,
            "ansible_user": user,
            "ansible_python_interpreter": "/usr/bin/python3",
            "mitogen_task_isolation": MITOGEN_ISOLATION,
            "appliance_common_state_dir": cluster.state_dir,
            "appliance_common_venv": cluster.venv,
        }
        if cluster.ssh_key:
            entry["ansible_ssh_private_key_file"] = str(cluster.ssh_key.expanduser())
        hosts[host.name] = entry | host_vars.get(host.name, {})
    children = {g: {"hosts": {h: None for h in members}} for g, members in inventory.groups().items()}
    data: dict[str, Any] = {"all": {"hosts": hosts, "children": children}}
    if common:
        data["all"]["vars"] = common
    return dump_inventory(data, inventory_path(folder))


def dump_inventory(data: dict[str, Any], path: Path) -> Path:
    """Write an inventory (0600, its folder 0700) in place of the old one at once, every string
    Ansible would template marked ``!unsafe``: an inventory read back by ``load_inventory``
    (plain strings) is marked again."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # 0600, its own name
    partial = Path(name)
    with os.fdopen(fd, "w") as out:
        yaml.dump(_unsafe(data), out, Dumper=_Dumper, sort_keys=False)
        out.flush()
        os.fsync(out.fileno())
    partial.replace(path)  # whole or not at all: a crash never leaves half an inventory
    return path


def load_inventory(path: Path) -> dict[str, Any]:
    """An inventory this module wrote (``!unsafe`` values read as plain text), or {} when there
    is none."""
    if not path.exists():
        return {}

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!unsafe", lambda loader, node: loader.construct_scalar(node))  # type: ignore[arg-type]
    return yaml.load(path.read_text(), Loader=Loader) or {}


MITOGEN_STRATEGY = "mitogen_linear"
"""The strategy every run uses when Mitogen is installed (the ``cluster`` extra pins it)."""


MITOGEN_ISOLATION = "fork"
"""Each task's module runs in a fork of the host's Mitogen interpreter, not in the interpreter
itself, so nothing one module leaves in the process reaches the next: python-apt reads its
configuration once per process, and the debs' tasks point apt at the offline repository with
``APT_CONFIG`` (``roles/appliance_common/tasks/debs.yml``), which an apt already set up by an
earlier task in the same process ignored (the offline lab's ``up`` failed with "does not have a
Release file" from the host's own sources). A fork of the warm interpreter still skips the new
Python and the imports (``benchmarks/ansible_module_cost.py``)."""


def strategy_env() -> dict[str, str]:
    """Mitogen's ``mitogen_linear`` strategy where it is installed and the caller's environment
    chose no strategy (``ANSIBLE_STRATEGY=linear appliance cluster up`` runs without it).

    Why: a task's time on a host is mostly Python unpacking and compiling the module and Ansible's
    module_utils again, in a new interpreter for every task: measured with
    ``benchmarks/ansible_module_cost.py``, a ``stat`` cost a host 297 ms of CPU against 22 ms for
    an SSH session starting ``python3``, a ``copy`` 593 ms. Mitogen keeps one interpreter per host
    over the same SSH connection, each task forked from it (``MITOGEN_ISOLATION``): 62 and 97 ms,
    the tasks 1.4 to 2.5 times faster end to end. Its strategy runs the same plays, tasks,
    handlers and modules; a caller who sets ``ANSIBLE_STRATEGY`` (``linear`` for a host Mitogen
    cannot drive) gets that one. Without Mitogen (a controller without the ``cluster`` extra's
    pins) the runs use Ansible's own linear strategy."""
    if os.environ.get("ANSIBLE_STRATEGY"):
        return {}
    spec = importlib.util.find_spec("ansible_mitogen")
    if spec is None or not spec.submodule_search_locations:
        return {}
    plugins = Path(next(iter(spec.submodule_search_locations))) / "plugins" / "strategy"
    return {"ANSIBLE_STRATEGY_PLUGINS": str(plugins), "ANSIBLE_STRATEGY": MITOGEN_STRATEGY}


def ansible_env(folder: Path, mitogen: bool = True) -> dict[str, str]:
    """Ansible's settings for every run: the roles, SSH trusting a host's key on first contact
    (remembered in ``folder/known_hosts``), this virtualenv's ``ansible`` programs first on PATH,
    Mitogen's strategy where it is installed (``strategy_env``) unless ``mitogen`` is False: a
    training job is one long command per host, with nothing for Mitogen to save and its whole
    run inside Mitogen's connection."""
    return (strategy_env() if mitogen else {}) | {
        "ANSIBLE_ROLES_PATH": str(ROLES_DIR),
        "ANSIBLE_SSH_ARGS": (
            "-C -o ControlMaster=auto -o ControlPersist=60s -o StrictHostKeyChecking=accept-new "
            f"-o UserKnownHostsFile={folder / 'known_hosts'}"
        ),
        "ANSIBLE_PIPELINING": "True",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_LOCAL_TEMP": str(folder / "tmp"),
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
    }


ProgressSink = Callable[[str, str, str], None]
"""``(host, status, task)`` for each task result as it happens."""


ANSIBLE_FIX = "run scripts/bootstrap.sh lab,cluster (the cluster extra)"
ANSIBLE_MISSING = f"Ansible is not installed here: {ANSIBLE_FIX}"
"""Why this machine cannot drive a cluster, with the fix (the CLI's error and the TUI's notice)."""


class AnsibleMissingError(ApplianceError):
    """This machine lacks the ``cluster`` extra: a set-up problem, exit 2 like other refused input."""

    exit_code = 2


def ansible_runner_module() -> Any:
    """ansible-runner, which only the cluster commands need (the ``cluster`` extra); its absence is
    an error naming the install command, not a traceback."""
    try:
        import ansible_runner
    except ModuleNotFoundError as err:
        raise AnsibleMissingError("Ansible (ansible-runner) is not installed here", fix=ANSIBLE_FIX) from err
    return ansible_runner


CONNECTION_LOST = (
    "the respondent Context has disconnected",
    "Mitogen was disconnected from the remote environment",
)
"""How Mitogen's strategy words a host's connection dropping in the middle of a task, which it
reports as the task's failure where Ansible's own strategy reports the host unreachable."""


def event_status(event: dict[str, Any]) -> str:
    """A ``runner_on_*`` event's status: ok, changed, failed, ignored, unreachable or skipped. A
    ``no_log`` task's result reaches ansible-runner's events censored to one key, its ``changed``
    gone too, so such a task's change (a secret, an environment file, a config file rewritten) is
    read from the line Ansible printed for it (``changed: [host]``): it still counts in the
    host's changed tasks and progress, as it does in Ansible's own totals. A task that failed
    because its host's connection dropped (``CONNECTION_LOST``) is unreachable, whichever strategy
    ran: the exit code (4) and the host's state say the host was lost, not that a task failed."""
    data = event.get("event_data") or {}
    status = str(event.get("event", "")).removeprefix("runner_on_")
    res = data.get("res") or {}
    if status == "failed" and any(lost in str(res.get("msg", "")) for lost in CONNECTION_LOST):
        return "unreachable"
    if status == "ok" and (res.get("changed") or ("censored" in res and _printed_changed(event))):
        return "changed"
    if status == "failed" and data.get("ignore_errors"):
        return "ignored"
    return status


def _printed_changed(event: dict[str, Any]) -> bool:
    return str(event.get("stdout") or "").lstrip().startswith("changed:")


def run_playbook(
    action: str,
    inventory: Path,
    folder: Path,
    on_progress: ProgressSink | None = None,
    limit: list[str] | None = None,
) -> dict[str, HostResult]:
    """Run ``action``'s playbook (``plan``: check and diff mode); per-host results."""
    ansible_runner = ansible_runner_module()

    results: dict[str, HostResult] = {}
    lost: dict[str, int] = {}
    """Per host, the tasks Ansible counted as failed that ``event_status`` reads as unreachable."""

    def handle(event: dict[str, Any]) -> bool:
        data = event.get("event_data") or {}
        host, kind = data.get("host"), event.get("event", "")
        if not host or not kind.startswith("runner_on_"):
            return True
        status = event_status(event)
        if status == "unreachable" and kind == "runner_on_failed":
            lost[host] = lost.get(host, 0) + 1
        result = results.setdefault(host, HostResult())
        if status == "changed" and data.get("task", "") not in result.changed_tasks:
            result.changed_tasks.append(data.get("task", ""))
        if status == "changed" and action == "plan":
            for text in task_diffs(data.get("res") or {}):  # a file that two tasks check shows once
                if not any(shown.endswith("\n" + text) for shown in result.diffs):
                    result.diffs.append(f"# {data.get('task', '')}\n{text}")
        if status in ("failed", "unreachable"):
            res = data.get("res") or {}
            result.messages.append(f"{data.get('task', '')}: {str(res.get('msg', ''))[:300]}")
        if on_progress and status in ("ok", "changed", "failed", "unreachable", "skipped"):
            on_progress(host, status, data.get("task", ""))
        return True

    # One folder per action: ansible-runner keeps a run's command line (plan's --check) in its
    # folder and would reuse it for the next run there.
    private = folder / "runner" / action
    private.mkdir(mode=0o700, parents=True, exist_ok=True)
    runner = ansible_runner.run(
        private_data_dir=str(private),
        project_dir=str(ROLES_DIR),
        playbook=str(ROLES_DIR / PLAYBOOKS[action]),
        inventory=str(inventory),
        envvars=ansible_env(folder),
        cmdline="--check --diff" if action == "plan" else None,
        limit=",".join(limit) if limit else None,
        event_handler=handle,
        quiet=True,
        rotate_artifacts=3,
    )
    stats = runner.stats or {}
    for host in set().union(*(stats.get(k, {}) for k in ("ok", "changed", "failures", "dark", "skipped"))):
        result = results.setdefault(host, HostResult())
        result.ok = stats.get("ok", {}).get(host, 0)
        result.changed = stats.get("changed", {}).get(host, 0)
        result.failed = max(0, stats.get("failures", {}).get(host, 0) - lost.get(host, 0))
        result.unreachable = stats.get("dark", {}).get(host, 0) + lost.get(host, 0)
        result.skipped = stats.get("skipped", {}).get(host, 0)
    if runner.rc != 0 and not any(r.state in ("failed", "unreachable") for r in results.values()):
        raise ApplianceError(
            f"ansible-playbook ended with {runner.rc} before a host reported: {runner.stdout.read()[-1500:]}",
            fix="check the inventory in STATE/cluster/inventory and the playbooks in roles/",
        )
    return results


def as_json(results: dict[str, HostResult]) -> dict[str, Any]:
    return {host: asdict(r) | {"state": r.state} for host, r in sorted(results.items())}
