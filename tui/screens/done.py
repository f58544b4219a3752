"""The end: where everything is: service URLs (``Engine.status()``), credentials, next commands.

Secrets are never printed here: the screen names the folder they live in and the command that
shows one, so the terminal's scrollback does not keep them. After a cluster install the table
lists each host instead: its groups and what ``cluster up`` did there (Ansible's counts).
"""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Button, DataTable, Footer, Static
from textual.worker import Worker, WorkerState

from tui.screens.base import AppScreen

LOGINS = (
    ("mlflow_admin_password", "MLflow (user admin)"),
    ("jupyter_token", "workbench"),
    ("grafana_admin_password", "Grafana (user admin)"),
    ("serving_token", "model server (bearer)"),
)
"""The secrets a person types somewhere, named on the screen; the services' own accounts (a
dozen of them once every service asks for one) are only counted, so the screen fits 80x24."""


class DoneScreen(AppScreen):
    """Install finished: URLs, credentials and what to run next."""

    BINDINGS = [Binding("d", "dashboard", "Dashboard"), Binding("q", "quit", "Quit")]

    def compose(self) -> ComposeResult:
        what = "the cluster is up" if self.state.is_cluster else "the stack is up"
        yield Static(f"MLOps Appliance setup · done · {what}", id="step-title")
        with VerticalScroll(id="body"):
            yield DataTable(id="urls", cursor_type="none", zebra_stripes=False)
            yield Static("", id="credentials")
            yield Static(self._next_commands(), id="next-commands")
        with Horizontal(id="nav"):
            yield Button("Dashboard (d)", id="dashboard", variant="primary")
            yield Static("", id="why")
            yield Button("Quit (q)", id="quit")
        yield Footer()

    def _next_commands(self) -> str:
        """Copy-pasteable shell lines; the answers path (often long) is spelt once, as ``$A``."""
        if self.state.is_cluster:
            return "\n".join(
                [
                    "Next, in a shell:",
                    f"  A={self.state.answers_out}",
                    "  appliance --answers $A cluster status",
                    "  appliance --answers $A cluster plan     # what a change would do, per host",
                    "  appliance --answers $A secrets show NAME",
                ]
            )
        return "\n".join(
            [
                "Next, in a shell:",
                f"  A={self.state.answers_out}",
                "  appliance --answers $A status",
                "  appliance --answers $A secrets show NAME",
                "  appliance --answers $A data seed",
                "  appliance --answers $A train --dataset breast_cancer",
            ]
        )

    def on_mount(self) -> None:
        table = self.query_one("#urls", DataTable)
        self.query_one("#dashboard", Button).focus()
        engine = self.wizard.engine()
        backend = self.wizard.backend
        if self.state.is_cluster:
            self.query_one("#dashboard", Button).display = False
            self.show_hosts(table)
            self.run_worker(
                lambda: (None, backend.secret_names(engine.ctx)),
                thread=True,
                exit_on_error=False,
                group="status",
            )
            return
        table.add_columns("service", "health", "url")
        self.run_worker(
            lambda: (engine.status(), backend.secret_names(engine.ctx)),
            thread=True,
            exit_on_error=False,
            group="status",
        )

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.state == WorkerState.SUCCESS:
            status, secrets = event.worker.result  # type: ignore[misc]
            self.show(status, secrets)
        elif event.state == WorkerState.ERROR:
            self.query_one("#credentials", Static).update(f"cannot read status: {event.worker.error}")

    def show_hosts(self, table: DataTable[str]) -> None:
        """Each host of the cluster: its groups and Ansible's figures from ``cluster up``."""
        table.add_columns("host", "groups", "state", "ok", "changed", "failed", "unreach")
        results = self.wizard.cluster_results
        for host in self.state.get("cluster")["hosts"]:
            groups = ",".join(host.get("groups") or []) or "-"
            r = results.get(host["name"])
            figures = (
                [r.state, str(r.ok), str(r.changed), str(r.failed), str(r.unreachable)] if r else ["-"] * 5
            )
            table.add_row(host["name"], groups, *figures)

    def show(self, status: dict[str, Any] | None, secrets: list[str]) -> None:
        table = self.query_one("#urls", DataTable)
        for name, svc in (status or {}).get("services", {}).items():
            table.add_row(name, svc.get("health") or "-", svc.get("url") or "-")
        where = self.state.state_dir / "secrets"
        logins = ", ".join(f"{what}: {name}" for name, what in LOGINS if name in secrets)
        self.query_one("#credentials", Static).update(
            f"Credentials: {len(secrets)} generated, mode 0600, in {where}/"
            + (f"\nTo log in: {logins}" if logins else "")
        )

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "dashboard":
            self.action_dashboard()
        else:
            self.app.exit()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """No dashboard key after a cluster install: the dashboard shows this machine's stack."""
        return not (action == "dashboard" and self.state.is_cluster)

    def action_dashboard(self) -> None:
        if self.state.is_cluster:
            self.notify("the dashboard shows this machine's stack: run `appliance cluster status`")
            return
        self.wizard.goto("dashboard")

    async def action_quit(self) -> None:
        self.app.exit()
