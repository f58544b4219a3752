"""Step 2: the engine's preflight checks, run in a worker, each with its status word and fix.

Failures block the way forward (the same ones would stop ``appliance up``); warnings do not.
A busy port fails here too but does not block: step 6 is where ports change, and it checks them.
Statuses are words (PASS/WARN/FAIL), so the table reads the same without colour.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.markup import escape
from textual.widgets import Button, Static
from textual.worker import Worker, WorkerState

from appliance.preflight import Check
from tui.screens.base import WizardScreen

WORD = {"pass": "PASS", "warn": "WARN", "fail": "FAIL"}
STYLE = {"pass": "green", "warn": "yellow", "fail": "bold red"}


def deferred(check: Check) -> bool:
    """Port checks are settled on the Network step, where the ports can be changed."""
    return check.name.startswith("port ")


def check_line(check: Check) -> str:
    """A check as markup: status word, name, detail, and the fix on its own line when there is one."""
    fix = "choose another port in step 6" if check.status == "fail" and deferred(check) else check.fix
    word = f"[{STYLE[check.status]}]{WORD[check.status]}[/]"
    return f"{word} [b]{escape(check.name)}[/b]: {escape(check.detail)}" + (
        f"\n     fix: {escape(fix)}" if fix else ""
    )


class PreflightScreen(WizardScreen):
    """Live preflight with a re-run button."""

    STEP = "preflight"

    def __init__(self) -> None:
        super().__init__()
        self.checks: list[Check] | None = None
        self.error = ""

    def compose_body(self) -> ComposeResult:
        with Horizontal(classes="toolbar"):
            yield Static("running checks...", id="summary")
            yield Button("Re-run", id="rerun", compact=True)
        yield VerticalScroll(id="checks")

    def on_mount(self) -> None:
        super().on_mount()
        self.run_checks()

    def run_checks(self) -> None:
        self.checks = None
        self.error = ""
        self.query_one("#summary", Static).update("running checks...")
        self.query_one("#checks", VerticalScroll).remove_children()
        self.update_nav()
        engine = self.wizard.engine()
        self.run_worker(engine.preflight, thread=True, exit_on_error=False, exclusive=True, group="preflight")

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.group != "preflight":
            return
        if event.state == WorkerState.SUCCESS:
            self.show_checks(event.worker.result or [])
        elif event.state == WorkerState.ERROR:
            self.error = str(event.worker.error)
            self.query_one("#summary", Static).update(f"preflight could not run: {self.error}")
            self.update_nav()

    def show_checks(self, checks: list[Check]) -> None:
        self.checks = checks
        box = self.query_one("#checks", VerticalScroll)
        box.remove_children()
        box.mount_all(Static(check_line(c), classes=f"check {c.status}") for c in checks)
        counts = {s: sum(c.status == s for c in checks) for s in WORD}
        verdict = "cannot continue" if self.blockers() else "you can continue"
        self.query_one("#summary", Static).update(
            f"{counts['pass']} pass, {counts['warn']} warn, {counts['fail']} fail: {verdict}"
        )
        self.update_nav()

    def blockers(self) -> list[str]:
        if self.error:
            return [f"preflight could not run: {self.error}"]
        if self.checks is None:
            return ["preflight is still running"]
        failed = [c.name for c in self.checks if c.status == "fail" and not deferred(c)]
        return [f"{len(failed)} failing check(s): {', '.join(failed)}"] if failed else []

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "rerun":
            self.run_checks()
        else:
            super().on_button_pressed(event)
