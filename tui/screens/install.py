"""Step 9: write the answers file, then ``Engine.up`` in a thread worker, rendering its events.

Each service gets a progress bar driven by its apply steps (start, wait for health, healthy);
the overall bar is the engine's own progress. Cancel sets the engine's cancel event, so the
apply stops between steps and the next ``up`` (Resume here, or ``appliance up``) completes the
work. Success moves on to the Done screen.

With a ``cluster`` section the worker runs ``cluster preflight`` then ``cluster up`` through the
cluster engine instead (what ``appliance cluster preflight|up`` run), and a row per host shows
Ansible's counts and the task (role and step) running there. Ansible runs a stage to its end, so
Cancel stops before the next stage; Resume runs the stages again and, every task being
idempotent, completes what an interrupted or unreachable host left undone.
"""

from __future__ import annotations

import threading

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Button, Footer, Label, Log, ProgressBar, Static

from appliance.apply import Event
from appliance.cluster.run import ClusterRunError, HostResult
from appliance.errors import ApplianceError, CancelledError, PreflightError
from tui.messages import ApplyEvent, ApplyFinished, ApplyPlanned, ClusterProgress, ClusterStage
from tui.screens.base import AppScreen
from tui.widgets.host_progress import HostProgress
from tui.widgets.service_progress import ServiceProgress

CLUSTER_STAGES = ("preflight", "up")


class InstallScreen(AppScreen):
    """Progress per service, the current step, an event log and a clean cancel."""

    BINDINGS = [Binding("escape", "cancel", "Cancel install")]

    def __init__(self) -> None:
        super().__init__()
        self.cancel = threading.Event()
        self.running = False
        self.started_at: float | None = None

    def compose(self) -> ComposeResult:
        where = f"a cluster of {len(self.hosts)} hosts" if self.state.is_cluster else "installing"
        yield Static(f"MLOps Appliance setup · {where} · {self.state.answers_out}", id="step-title")
        with Vertical(id="body"):
            with Horizontal(classes="toolbar"):
                yield Label("overall ", id="stage")
                yield ProgressBar(total=1.0, show_eta=False, id="overall")
            yield VerticalScroll(id="services")
            yield Static("writing the answers file...", id="current")
            yield Log(id="events", highlight=False)
        with Horizontal(id="nav"):
            yield Button("Cancel install", id="cancel", variant="error")
            yield Static("", id="why")
            yield Button("Back to review", id="review", disabled=True)
            yield Button("Resume install", id="resume", variant="primary", disabled=True)
        yield Footer()

    def on_mount(self) -> None:
        self.wizard.backend.write_answers(self.state.answers_out, self.state.answers_text())
        self.state.export_secret()
        self.log_line(f"wrote {self.state.answers_out}")
        self.start()

    def on_unmount(self) -> None:
        self.cancel.set()

    @property
    def hosts(self) -> list[str]:
        return [h["name"] for h in self.state.get("cluster")["hosts"]] if self.state.is_cluster else []

    def start(self) -> None:
        if self.state.is_cluster:
            self.start_cluster()
            return
        self.cancel = threading.Event()
        self.running = True
        self.query_one("#cancel", Button).disabled = False
        self.query_one("#resume", Button).disabled = True
        self.query_one("#review", Button).disabled = True
        self.query_one("#current", Static).update("planning...")
        engine, cancel = self.wizard.engine(), self.cancel

        def on_event(event: Event) -> None:
            self.post_message(ApplyEvent(event))

        def work() -> None:
            try:
                plan = engine.plan()
                self.post_message(ApplyPlanned([a.service for a in plan.actions]))
                result = engine.up(on_event, cancel)
                self.post_message(ApplyFinished(result))
            except CancelledError as err:
                self.post_message(ApplyFinished(None, str(err), cancelled=True))
            except ApplianceError as err:
                self.post_message(ApplyFinished(None, str(err)))
            except Exception as err:  # shown to the user; the UI must survive any engine failure
                self.post_message(ApplyFinished(None, f"{type(err).__name__}: {err}"))

        self.run_worker(work, thread=True, exit_on_error=False, group="install")

    def start_cluster(self) -> None:
        """``cluster preflight`` then ``cluster up`` in a worker, each host's progress as messages."""
        self.cancel = threading.Event()
        self.running = True
        self.query_one("#cancel", Button).disabled = False
        self.query_one("#resume", Button).disabled = True
        self.query_one("#review", Button).disabled = True
        # the bar counts stages done: Ansible does not say how many tasks a stage will run
        self.query_one("#overall", ProgressBar).update(total=len(CLUSTER_STAGES), progress=0)
        if not self.query(HostProgress):  # Resume keeps the table: each stage starts it afresh
            self.query_one("#services", VerticalScroll).mount(HostProgress(self.hosts, id="host-progress"))
        ctx, backend, cancel = self.wizard.context(), self.wizard.backend, self.cancel

        def stage_run(stage: str) -> dict[str, HostResult] | None:
            def on_progress(host: str, status: str, task: str) -> None:
                self.post_message(ClusterProgress(stage, host, status, task))

            self.post_message(ClusterStage(stage))
            try:
                return backend.cluster_run(ctx, stage, on_progress)
            except ClusterRunError as err:
                self.post_message(ClusterStage(stage, err.results, str(err)))
            except PreflightError as err:
                self.post_message(ClusterStage(stage, {}, str(err), failures=list(err.failures)))
            except ApplianceError as err:
                self.post_message(ClusterStage(stage, {}, str(err)))
            except Exception as err:  # shown to the user; the UI must survive any engine failure
                self.post_message(ClusterStage(stage, {}, f"{type(err).__name__}: {err}"))
            return None

        def work() -> None:
            for stage in CLUSTER_STAGES:
                if cancel.is_set():
                    self.post_message(
                        ClusterStage(stage, {}, f"cancelled before cluster {stage}", cancelled=True)
                    )
                    return
                results = stage_run(stage)
                if results is None:
                    return
                self.post_message(ClusterStage(stage, results))

        self.run_worker(work, thread=True, exit_on_error=False, group="install")

    def on_cluster_stage(self, message: ClusterStage) -> None:
        table = self.query_one(HostProgress)
        if message.results is None:
            table.start(message.stage)
            self.query_one("#stage", Label).update(f"cluster {message.stage} ")
            self.query_one("#current", Static).update(
                f"cluster {message.stage}: Ansible on {len(self.hosts)} hosts"
            )
            self.log_line(f"cluster {message.stage}: started")
            return
        if message.results or not message.error:
            table.finish(message.results)
        else:
            table.stop(
                {name: (problem, fix) for name, problem, fix in message.failures if name in table.tallies}
            )
        if message.error:
            self.running = False
            self.query_one("#cancel", Button).disabled = True
            self.show_failure(message.error, message.cancelled)
            return
        self.query_one("#overall", ProgressBar).advance(1)
        states = ", ".join(f"{h} {r.state}" for h, r in sorted(message.results.items()))
        self.log_line(f"cluster {message.stage}: done ({states})")
        if message.stage == CLUSTER_STAGES[-1]:
            self.running = False
            self.query_one("#cancel", Button).disabled = True
            self.wizard.cluster_results = dict(message.results)
            self.query_one("#current", Static).update("the cluster is up")
            self.wizard.goto("done")

    def on_cluster_progress(self, message: ClusterProgress) -> None:
        self.query_one(HostProgress).record(message.host, message.status, message.task)
        if message.status != "skipped":
            self.query_one("#current", Static).update(f"{message.host}: {message.task}")
            self.log_line(f"{message.stage:<9} {message.host:<14} {message.status:<11} {message.task}")

    def show_failure(self, error: str, cancelled: bool) -> None:
        head = "CANCELLED" if cancelled else "FAILED"
        self.query_one("#current", Static).update(f"{head}: {error.splitlines()[0]}")
        for line in error.splitlines():
            self.log_line(line)
        self.query_one("#why", Static).update("Resume runs `up` again and finishes the work")
        self.query_one("#resume", Button).disabled = False
        self.query_one("#review", Button).disabled = False
        self.query_one("#resume", Button).focus()

    def log_line(self, text: str) -> None:
        self.query_one("#events", Log).write_line(text)

    def on_apply_planned(self, message: ApplyPlanned) -> None:
        box = self.query_one("#services", VerticalScroll)
        box.remove_children()
        box.mount_all(ServiceProgress(name) for name in message.services)
        if not message.services:
            self.log_line("nothing to do: the stack already matches the answers file")

    def on_apply_event(self, message: ApplyEvent) -> None:
        event: Event = message.event
        if self.started_at is None:
            self.started_at = event.at
        self.query_one("#overall", ProgressBar).update(progress=event.progress)
        self.log_line(f"+{event.at - self.started_at:5.1f}s {event.service:<14} {event.message}")
        if event.service == "*":
            return
        self.query_one("#current", Static).update(f"{event.service}: {event.message}")
        rows = [r for r in self.query(ServiceProgress) if r.service == event.service]
        if not rows:
            rows = [ServiceProgress(event.service)]
            self.query_one("#services", VerticalScroll).mount(rows[0])
        rows[0].advance(event.step)

    def on_apply_finished(self, message: ApplyFinished) -> None:
        self.running = False
        self.query_one("#cancel", Button).disabled = True
        if message.result is not None:
            self.query_one("#overall", ProgressBar).update(progress=1.0)
            self.query_one("#current", Static).update("installed")
            self.wizard.goto("done")
            return
        self.show_failure(message.error, message.cancelled)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "cancel":
            self.action_cancel()
        elif event.button.id == "resume":
            self.start()
        elif event.button.id == "review":
            self.wizard.goto("review")

    def action_cancel(self) -> None:
        if self.running and not self.cancel.is_set():
            self.cancel.set()
            step = (
                "Ansible ends the running stage first"
                if self.state.is_cluster
                else "stopping after the current step"
            )
            self.query_one("#current", Static).update(f"cancelling: {step}...")
            self.log_line("cancel requested")
