"""``appliance cluster preflight|plan|up|status|down``: render every host's units, write the
inventory, run the playbook, return per-host results. Nothing here prints; the CLI does."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from appliance.addressing import is_loopback
from appliance.answers import Cluster
from appliance.context import AppContext
from appliance.errors import ApplianceError, PreflightError
from appliance.mlflow_auth import forget_edge_secrets
from appliance.plan import Plan
from appliance.secrets_store import read_only
from appliance.state_lock import state_lock

from .applied import (
    DONE,
    LAST_TASK,
    applied_hosts,
    applied_inventory,
    applied_path,
    forget,
    joining,
    migrate,
    needs_migrating,
    record_down,
    record_finished,
    record_started,
)
from .host_plan import plan_hosts
from .inventory import Inventory, units_by_name
from .progress import ServiceProgress, ServiceSink, host_units
from .run import (
    ClusterPreflightError,
    ClusterRunError,
    HostResult,
    ProgressSink,
    cluster_dir,
    cluster_path,
    event_status,
    inventory_path,
    load_inventory,
    run_playbook,
    write_inventory,
)
from .units import edge_names, render_hosts

WHEELHOUSE_VAR = "appliance_common_wheelhouse"
"""The roles' wheelhouse: the tar the hosts install their virtualenv from (empty: none)."""
PREFLIGHT_WHEELS = "appliance_preflight_wheels_given"
"""Whether ``up`` will give the hosts wheels (preflight then accepts a host without its virtualenv)."""


def _cluster(ctx: AppContext) -> Inventory:
    if ctx.answers.cluster is None:
        raise ApplianceError(
            f"{ctx.answers_path or 'the answers'} has no cluster section",
            fix="add cluster.hosts (name, address, groups) to appliance.yaml; docs/cluster.md has an example",
        )
    return Inventory(ctx.answers.cluster)


def local_checks(ctx: AppContext, host_vars: dict[str, dict[str, Any]]) -> list[tuple[str, str, str]]:
    """What this machine can tell before Ansible runs: (check, problem, fix) for each failure."""
    inventory = _cluster(ctx)
    problems = []
    several = len(inventory.hosts) > 1
    if several and is_loopback(ctx.answers.bind_address):
        problems.append(
            (
                "bind address",
                f"bind_address is {ctx.answers.bind_address}: the other hosts cannot reach the services",
                "set bind_address: 0.0.0.0 (every service keeps its own credential; docs/security.md)",
            )
        )
    key = ctx.answers.cluster.ssh_key if ctx.answers.cluster else None
    if key is not None and not key.expanduser().is_file():
        problems.append(
            ("ssh key", f"cluster.ssh_key {key} does not exist", "point cluster.ssh_key at a private key")
        )
    serving = ctx.answers.serving
    serves = any(vars_.get("appliance_serving_units") for vars_ in host_vars.values())
    serving_hosts = len(inventory.hosts_of("serving"))
    if serves and serving.max_replicas > serving.min_replicas and serving_hosts > 1:
        problems.append(
            (
                "serving replicas",
                f"serving.min_replicas {serving.min_replicas} < max_replicas {serving.max_replicas} on "
                f"{serving_hosts} serving hosts: the autoscaler scales one host's "
                "replicas, not several hosts'",
                f"give each host a fixed count: set serving.min_replicas to {serving.max_replicas} "
                "(or serving.max_replicas to the minimum)",
            )
        )
    if not any(v for vars_ in host_vars.values() for k, v in vars_.items() if k.endswith("_units")):
        problems.append(("services", "no host runs any service", "check components and the hosts' groups"))
    return problems


def _render(ctx: AppContext, write_secrets: bool) -> dict[str, dict[str, Any]]:
    secrets = ctx.state_dir / "secrets"
    if write_secrets:
        return render_hosts(ctx.answers, secrets)
    with read_only():
        return render_hosts(ctx.answers, secrets)


def service_plans(ctx: AppContext) -> dict[str, Plan]:
    """What an ``up`` without ``--limit`` would do to each host's services (``host_plan``), from
    the answers and the record of the last ``up`` alone: no host is contacted, nothing is written
    (``cluster plan`` adds Ansible's check mode, which sees a host's own drift). The wizard's
    review shows it before its ``up``."""
    _cluster(ctx)
    return plan_hosts(applied_hosts(cluster_path(ctx.state_dir)), _render(ctx, write_secrets=False))


def run(
    ctx: AppContext,
    action: str,
    on_progress: ProgressSink | None = None,
    limit: list[str] | None = None,
    on_service: ServiceSink | None = None,
) -> dict[str, HostResult]:
    """Run ``action`` (preflight, plan, up, down) over the cluster; raises on a failed host.
    ``on_progress`` hears each task result, ``on_service`` (up) each service's change of state."""
    inventory = _cluster(ctx)
    inventory.check_limit(limit or [])
    host_vars = _render(ctx, write_secrets=action == "up")
    problems = local_checks(ctx, host_vars) if action in ("preflight", "plan", "up") else []
    if problems:
        raise PreflightError(list(problems))
    folder = cluster_dir(ctx.state_dir)
    # before this command writes its inventory over the one an older release left; preflight,
    # which holds no lock while Ansible runs, takes it for this alone
    if action == "preflight" and needs_migrating(folder):
        with state_lock(ctx.state_dir):
            migrate(folder)
    # plan too: it unpacks the bundle and packs the wheels where a running up reads them
    with state_lock(ctx.state_dir) if action in ("plan", "up", "down") else _nothing():
        migrate(folder)
        if action in ("plan", "up"):
            common = _offline_bundle(ctx, folder)
        else:  # the bundle's variables as plan or up last gave them (Vagrant provisions from them)
            kept = load_inventory(inventory_path(folder)).get("all", {}).get("vars") or {}
            common = {k: v for k, v in kept.items() if k != PREFLIGHT_WHEELS}
            if action == "preflight":
                common[PREFLIGHT_WHEELS] = _wheels_given(ctx)
        leaving = action in ("up", "down") and not limit
        gone = _stop_removed_hosts(inventory, folder, on_progress) if leaving else {}
        forget(folder, [h for h, r in gone.items() if r.state != "failed"])  # failed: tried again
        path = write_inventory(ctx.answers, host_vars, folder, common)
        if limit and action in ("plan", "up"):
            limit = _with_hosts_that_list_new_ones(inventory, limit, folder, path, on_progress)
        reached_end: set[str] = set()
        if action == "up":
            record_started(folder, path, limit or list(inventory.hosts))
        sink = with_services(on_progress, on_service, host_vars) if action == "up" else on_progress
        results = run_playbook(action, path, folder, _noting_the_end(sink, reached_end), limit)
        if action == "up":
            record_finished(folder, path, results, reached_end)
            _forget_retired_edge_secrets(ctx, inventory, host_vars, reached_end)
        if action == "down":
            record_down(folder, [h for h, r in results.items() if r.state in DONE])
        if action == "plan":
            _add_service_plans(results, plan_hosts(applied_hosts(folder), host_vars, limit))
    results |= gone
    raise_for_failed_hosts(action, results, gone)
    return results


def _forget_retired_edge_secrets(
    ctx: AppContext, inventory: Inventory, host_vars: dict[str, dict[str, Any]], reached_end: set[str]
) -> None:
    """Once the run reached its end on the host of MLflow's accounts job (which ran there with
    ``edge_names`` now, or before with the same names, and deleted every other edge account),
    delete the passwords of the edge boxes gone (``forget_edge_secrets``). An ``up --limit`` that
    left that host out, or failed there, keeps them: their accounts may still exist."""
    accounts = [host for host, variables in host_vars.items() if "mlflow-users" in units_by_name(variables)]
    if accounts and reached_end.issuperset(accounts):
        forget_edge_secrets(edge_names(ctx, inventory), ctx.secrets)


def with_services(
    on_progress: ProgressSink | None, on_service: ServiceSink | None, host_vars: dict[str, dict[str, Any]]
) -> ProgressSink | None:
    """``on_progress``, also telling ``on_service`` each service's change of state on its host."""
    if on_service is None:
        return on_progress
    services = ServiceProgress(host_units(host_vars))

    def sink(host: str, status: str, task: str) -> None:
        if on_progress is not None:
            on_progress(host, status, task)
        event = services.record(host, status, task)
        if event is not None:
            on_service(event)

    return sink


def _noting_the_end(sink: ProgressSink | None, reached_end: set[str]) -> ProgressSink:
    """``sink``, also noting in ``reached_end`` each host that ran the playbook's last play
    (``applied.LAST_TASK``)."""

    def noting(host: str, status: str, task: str) -> None:
        if task == LAST_TASK and status in DONE:
            reached_end.add(host)
        if sink is not None:
            sink(host, status, task)

    return noting


def raise_for_failed_hosts(action: str, results: dict[str, HostResult], gone: dict[str, HostResult]) -> None:
    """Raise when a host failed or could not be reached, with the exit code the CLI documents:
    preflight 3 when a host cannot run its part, 4 when one could not be reached (as the one-host
    preflight's 4 for a runtime it cannot reach); the other actions ClusterRunError's 4 or 1.
    A removed host that cannot be reached is already gone; one that failed to stop is reported."""
    left = {h: r for h, r in results.items() if not (h in gone and r.unreachable)}
    if not any(r.state in ("failed", "unreachable") for r in left.values()):
        return
    if action != "preflight":
        raise ClusterRunError(action, left)
    raise ClusterPreflightError(left)


def _offline_bundle(ctx: AppContext, folder: Path) -> dict[str, Any]:
    """The roles' variables for the offline bundle's debs and wheelhouse (``cluster.bundle``),
    verified here once before any host is touched: a bundle that is unsigned, untrusted or altered
    stops the run. The hosts' wheels come from one place, the bundle's or ``cluster.wheelhouse``
    (both are refused), packed into one tar for the hosts (``appliance.bundle.hosts``)."""
    cluster = ctx.answers.cluster
    if cluster is None:
        return {}
    from appliance.bundle.hosts import pack_wheelhouse, verified_for_hosts

    found, wheels = (
        verified_for_hosts(cluster.bundle.expanduser(), folder / "bundle") if cluster.bundle else ({}, None)
    )
    _refuse_wheels_from_both(cluster, wheels is not None)
    source = wheels or (cluster.wheelhouse.expanduser() if cluster.wheelhouse else None)
    if source is not None:
        found[WHEELHOUSE_VAR] = str(pack_wheelhouse(source, folder / "wheelhouse.tar"))
    return found


def _refuse_wheels_from_both(cluster: Cluster, bundled: bool) -> None:
    """The hosts' wheels come from one place: a bundle with a wheelhouse (``bundled``) and
    ``cluster.wheelhouse`` as well are refused, by preflight as by plan and up."""
    if bundled and cluster.wheelhouse is not None:
        raise ApplianceError(
            f"cluster.bundle ({cluster.bundle}) holds a wheelhouse and cluster.wheelhouse "
            f"({cluster.wheelhouse}) names another",
            fix="remove cluster.wheelhouse from appliance.yaml (the hosts install the bundle's wheels), "
            "or make the bundle with --no-wheelhouse",
        )


def _wheels_given(ctx: AppContext) -> bool:
    """For preflight, which reads no wheels: whether ``up`` will give the hosts some (so a host
    without its virtualenv yet is fine), from the answers and the bundle's manifest alone; wheels
    from both places are refused here as ``up`` refuses them."""
    from appliance.bundle.hosts import WHEELHOUSE_DIR
    from appliance.bundle.manifest import read_manifest

    cluster = ctx.answers.cluster
    if cluster is None:
        return False
    bundle = cluster.bundle.expanduser() if cluster.bundle is not None else None
    bundled = bundle is not None and bundle.exists() and read_manifest(bundle).holds(WHEELHOUSE_DIR)
    _refuse_wheels_from_both(cluster, bundled)
    return bundled or cluster.wheelhouse is not None


def _stop_removed_hosts(
    inventory: Inventory, folder: Path, on_progress: ProgressSink | None
) -> dict[str, HostResult]:
    """Hosts the last ``up`` applied (``applied``) but no longer in the answers: drained and
    stopped (``down`` on them alone, with the inventory they were brought up with) before the new
    one is written, so a host leaves the cluster the way ``cluster down --limit`` takes it out."""
    known = set(applied_hosts(folder))
    gone = sorted(known - set(inventory.hosts))
    return run_playbook("down", applied_path(folder), folder, on_progress, gone) if gone else {}


def _with_hosts_that_list_new_ones(
    inventory: Inventory, limit: list[str], folder: Path, written: Path, on_progress: ProgressSink | None
) -> list[str]:
    """``limit`` and, when it names hosts joining the cluster (``applied.joining``: new, an
    unfinished ``up``, other groups), the hosts whose configuration lists them
    (``Inventory.knowing``): a new serving host is reached through the gateway and scraped by
    Prometheus only once their hosts know it. Said through the progress, so a person sees why a
    host outside the limit runs."""
    new = joining(folder, written, limit)
    added = [h for h in inventory.knowing(new) if h not in limit]
    if added and on_progress is not None:
        for host in added:
            on_progress(host, "included", f"--limit widened: this host lists the joining {', '.join(new)}")
    return limit + added


def _add_service_plans(results: dict[str, HostResult], plans: dict[str, Plan]) -> None:
    """``plan``'s results with what each host's services would do (``host_plan``); a host leaving
    the cluster, which Ansible does not visit in a plan, gets a result of its own."""
    for host, planned in plans.items():
        results.setdefault(host, HostResult()).services = [asdict(action) for action in planned.actions]


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def status(ctx: AppContext) -> dict[str, dict[str, str]]:
    """Per host, each appliance unit's state (``active``, ``failed``, ...), or the host's trouble."""
    from .run import ansible_runner_module

    ansible_runner = ansible_runner_module()
    _cluster(ctx)
    folder = cluster_dir(ctx.state_dir)
    path = applied_inventory(folder)  # the hosts up brought up, a removed one not yet stopped too
    if path is None:
        raise ApplianceError(
            "the cluster has not been brought up from here", fix="run `appliance cluster up` first"
        )
    found: dict[str, dict[str, str]] = {}
    (folder / "runner" / "status").mkdir(mode=0o700, parents=True, exist_ok=True)

    def handle(event: dict[str, Any]) -> bool:
        data = event.get("event_data") or {}
        host, kind = data.get("host"), event.get("event", "")
        if host and kind == "runner_on_ok":
            units = {}
            for line in (data.get("res") or {}).get("stdout", "").splitlines():
                parts = line.split()
                if len(parts) >= 4 and parts[0].startswith("appliance-"):
                    units[parts[0].removeprefix("appliance-").removesuffix(".service")] = (
                        f"{parts[2]} ({parts[3]})"
                    )
            found[host] = units
        elif host and kind in ("runner_on_unreachable", "runner_on_failed"):
            found[host] = {"(host)": event_status(event)}
        return True

    from .run import ansible_env

    runner = ansible_runner.run(
        private_data_dir=str(folder / "runner" / "status"),
        inventory=str(path),
        host_pattern="all",
        module="ansible.builtin.command",
        module_args="systemctl list-units appliance-* --all --plain --no-legend --no-pager",
        envvars=ansible_env(folder),
        event_handler=handle,
        quiet=True,
    )
    if runner.rc != 0 and not found:
        raise ApplianceError(
            f"ansible ended with {runner.rc} before a host answered: {runner.stdout.read()[-1500:]}",
            fix="check the inventory in STATE/cluster/inventory (written by `appliance cluster up`)",
        )
    return found
