"""The status dashboard: services, served model, traffic, serving replicas, drift and pipeline runs,
refreshed live.

A timer starts a refresh worker (exclusive, so a slow Prometheus never piles up requests); the
worker reads ``Engine.status()`` and ``Backend.dashboard_data`` and the screen redraws from its
result. ``l`` opens the selected service's log, ``s`` restarts it after a confirmation.
"""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Footer, Static
from textual.worker import Worker, WorkerState

from appliance.footprint import add_memory, human
from tui.screens.base import AppScreen
from tui.screens.modals import ConfirmScreen, LogScreen
from tui.widgets.tables import fill_table, fmt_seconds

DASH = "-"


class DashboardScreen(AppScreen):
    """Live status of the stack the answers file describes."""

    BINDINGS = [
        Binding("r", "refresh", "Refresh"),
        Binding("l", "logs", "Log"),
        Binding("s", "restart", "Restart"),
        Binding("q", "quit", "Quit"),
    ]

    def compose(self) -> ComposeResult:
        yield Static(self._title(DASH), id="step-title")
        yield DataTable(id="services", cursor_type="row", zebra_stripes=False)
        yield Static("selected: -", id="selected")
        yield Static(f"Model: {DASH}   requests/s: {DASH}   p99: {DASH}", id="model")
        yield Static("", id="replicas")
        yield Static("Drift (PSI per feature, highest first)", classes="heading")
        yield DataTable(id="drift", cursor_type="none", zebra_stripes=False)
        yield Static("Pipeline runs (newest first)", classes="heading")
        yield DataTable(id="runs", cursor_type="none", zebra_stripes=False)
        yield Footer()

    def _title(self, at: str) -> str:
        profile = self.state.get("profile")
        return f"MLOps Appliance · status · profile {profile} · refreshed {at}"

    def on_mount(self) -> None:
        columns = ("service", "health", "uptime", "pid", "memory", "url")
        self.query_one("#services", DataTable).add_columns(*columns)
        self.query_one("#drift", DataTable).add_columns("feature", "PSI", "drift")
        self.query_one("#runs", DataTable).add_columns("run", "pipeline", "state", "outcome", "took")
        self.query_one("#services", DataTable).focus()
        self.action_refresh()
        if self.wizard.refresh_seconds > 0:
            self.set_interval(self.wizard.refresh_seconds, self.action_refresh)

    def action_refresh(self) -> None:
        engine, backend, clock = self.wizard.engine(), self.wizard.backend, self.wizard.clock

        def work() -> tuple[dict[str, Any], dict[str, Any], str]:
            status = engine.status()
            runtime = getattr(engine, "runtime", None)  # a real engine: measure its services
            if runtime is not None:
                add_memory(status, runtime)
            return status, backend.dashboard_data(engine.ctx, status), clock()

        self.run_worker(work, thread=True, exit_on_error=False, exclusive=True, group="refresh")

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.group == "refresh" and event.state == WorkerState.SUCCESS:
            status, data, at = event.worker.result  # type: ignore[misc]
            self.show(status, data, at)
        elif event.worker.group == "refresh" and event.state == WorkerState.ERROR:
            self.query_one("#step-title", Static).update(f"status unavailable: {event.worker.error}")
        elif event.worker.group == "restart" and event.state in (WorkerState.SUCCESS, WorkerState.ERROR):
            name = event.worker.name
            failed = event.state == WorkerState.ERROR
            text = f"restart of {name} failed: {event.worker.error}" if failed else f"{name} restarted"
            self.notify(text, severity="error" if failed else "information")
            self.action_refresh()

    def show(self, status: dict[str, Any], data: dict[str, Any], at: str) -> None:
        self.query_one("#step-title", Static).update(self._title(at))
        services = [
            (
                name,
                s.get("health") or DASH,
                fmt_seconds(s.get("uptime_seconds")),
                str(s.get("pid") or DASH),
                human(s["memory_bytes"]) if s.get("memory_bytes") is not None else DASH,
                s.get("url") or DASH,
            )
            for name, s in status.get("services", {}).items()
        ]
        fill_table(self.query_one("#services", DataTable), services, keys=[row[0] for row in services])
        self.query_one("#model", Static).update(
            f"Model: {data.get('model', DASH)}   requests/s: {data.get('rps', DASH)}   "
            f"p99: {data.get('p99', DASH)}"
        )
        replicas = self.query_one("#replicas", Static)
        replicas.update(data.get("replicas", ""))
        replicas.display = "replicas" in data  # one model server: no line
        # Each model's own threshold (models[].drift_psi_threshold), else monitoring's.
        default = self.state.get("monitoring.drift_psi_threshold")
        limits = {m.get("name"): m.get("drift_psi_threshold") for m in self.state.data.get("models") or []}
        drift = [
            (row[0], f"{row[1]:.3f}", "DRIFT" if row[1] > (limits.get(row[-1]) or default) else "ok")
            for row in data.get("drift", [])
        ]
        fill_table(self.query_one("#drift", DataTable), drift or [("no drift data yet", DASH, DASH)])
        runs = data.get("runs")
        rows = [
            (
                str(r.get("id", ""))[:8],
                str(r.get("pipeline") or DASH),
                str(r.get("state") or DASH),
                str(r.get("outcome") or DASH),
                fmt_seconds(r.get("duration")),
            )
            for r in runs or []
        ]
        fill_table(
            self.query_one("#runs", DataTable), rows or [("no pipeline runs yet", DASH, DASH, DASH, DASH)]
        )

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table.id == "services":
            name = self.selected_service() or DASH
            self.query_one("#selected", Static).update(f"selected: {name} (l: log, s: restart)")

    def selected_service(self) -> str | None:
        table = self.query_one("#services", DataTable)
        if not table.row_count:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        return str(key) if key is not None else None

    def action_logs(self) -> None:
        name = self.selected_service()
        if name is None:
            return
        engine, backend = self.wizard.engine(), self.wizard.backend
        self.app.push_screen(LogScreen(name, lambda: backend.log_tail(engine, name)))

    def action_restart(self) -> None:
        name = self.selected_service()
        if name is None:
            return
        engine = self.wizard.engine()

        def confirmed(yes: bool | None) -> None:
            if yes:
                self.notify(f"restarting {name}...")
                self.run_worker(
                    lambda: engine.restart(name), thread=True, exit_on_error=False, group="restart", name=name
                )

        self.app.push_screen(ConfirmScreen(f"Restart {name}? Its requests fail while it starts."), confirmed)

    async def action_quit(self) -> None:
        self.app.exit()
