"""Step 6: bind address and the ports of the chosen services, each checked free as you type.

Only the ports the selected services use are shown and checked (``preflight.port_free`` on the
bind address); a busy, invalid or repeated port is marked on its own row and blocks the step.
TLS has no answers-file field yet, so it is shown as an unavailable option instead of a switch
that would write nothing.
"""

from __future__ import annotations

import ipaddress

from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Input, Label, Static

from tui.screens.base import WizardScreen
from tui.widgets.choices import Tick


class NetworkScreen(WizardScreen):
    """Bind address, ports with their state, and the (unavailable) TLS gateway."""

    STEP = "network"

    def __init__(self) -> None:
        super().__init__()
        self.problems: dict[str, str] = {}

    def compose_body(self) -> ComposeResult:
        services = self.wizard.backend.services(self.wizard.context())
        self.users: dict[str, list[str]] = {}
        for svc in services.values():
            for key in svc.port_keys:
                self.users.setdefault(key, []).append(svc.name)
        with Horizontal(classes="field-row"):
            yield Label(f"{'bind address':<16}")
            yield Input(self.state.get("bind_address"), id="bind", compact=True)
            yield Static("", id="bind-state", classes="port-state")
        with VerticalScroll(id="ports"):
            for key in self.users:
                with Horizontal(classes="field-row"):
                    yield Label(f"{key:<16}")
                    yield Input(str(self.state.get(f"ports.{key}")), id=f"port-{key}", compact=True)
                    yield Static("", id=f"state-{key}", classes="port-state")
        yield Tick("TLS gateway: not available in this version", False, disabled=True, id="tls", compact=True)

    def on_mount(self) -> None:
        self.query_one("#bind", Input).focus()
        self.check_all()
        super().on_mount()

    def on_input_changed(self, event: Input.Changed) -> None:
        name = event.input.id or ""
        if name == "bind":
            self.state.set("bind_address", event.value.strip())
        else:
            key = name.removeprefix("port-")
            value = event.value.strip()
            self.state.set(f"ports.{key}", int(value) if value.isdigit() else value)
        self.check_all()
        self.update_nav()

    def check_all(self) -> None:
        """Re-check every row (a change can clear a duplicate elsewhere)."""
        self.problems = {}
        bind = str(self.state.get("bind_address"))
        try:
            ipaddress.ip_address(bind)
            bind_ok = True
            self.query_one("#bind-state", Static).update("ok")
        except ValueError:
            bind_ok = False
            self.problems["bind"] = f"bind address {bind!r} is not an IP address"
            self.query_one("#bind-state", Static).update("INVALID: not an IP address")
        hidden = [k for k in self.state.get("ports") if k not in self.users]
        seen: dict[int, str] = {self.state.get(f"ports.{k}"): k for k in hidden}
        for key in self.users:
            value = self.state.get(f"ports.{key}")
            text = self._port_state(key, value, seen, bind if bind_ok else None)
            self.query_one(f"#state-{key}", Static).update(text)

    def _port_state(self, key: str, value: object, seen: dict[int, str], bind: str | None) -> str:
        users = ", ".join(self.users[key])
        if not isinstance(value, int) or not 1 <= value <= 65535:
            self.problems[key] = f"ports.{key} must be a number from 1 to 65535"
            return "INVALID: 1-65535"
        if value in seen:
            self.problems[key] = f"ports.{key} repeats ports.{seen[value]} ({value})"
            return f"DUPLICATE of {seen[value]}"
        seen[value] = key
        if bind is not None and not self.wizard.backend.port_free(bind, value):
            self.problems[key] = f"port {value} ({key}) is in use by another program"
            return "BUSY: in use"
        return f"free ({users})"

    def blockers(self) -> list[str]:
        return list(self.problems.values())
