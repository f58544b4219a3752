"""Step 6: bind address, the ports of the chosen services, and TLS, each checked as you type.

Only the ports the selected services use are shown and checked (``preflight.port_free`` on the
bind address); a busy, invalid or repeated port is marked on its own row and blocks the step.
The TLS switch (``tls.enabled``) adds the nginx gateway: its address (``tls.listen_address``,
empty for the bind address) and its ports, one per service it fronts, appear and are checked
only while it is on.
"""

from __future__ import annotations

import ipaddress

from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Checkbox, Input, Label, Static

from appliance.gateway import FRONTED
from tui.screens.base import WizardScreen
from tui.widgets.choices import Tick

GATEWAY_PORTS = {port: service for service, port, _ in FRONTED}
"""The gateway's ports and the service each fronts (the first is always open: its health check)."""


class NetworkScreen(WizardScreen):
    """Bind address, ports with their state, and the TLS gateway switch with its address and ports."""

    STEP = "network"

    def __init__(self) -> None:
        super().__init__()
        self.problems: dict[str, str] = {}

    def compose_body(self) -> ComposeResult:
        services = self.wizard.backend.services(self.wizard.context())
        self.users: dict[str, list[str]] = {}
        for svc in services.values():
            for key in svc.port_keys:
                if key not in GATEWAY_PORTS:
                    self.users.setdefault(key, []).append(svc.name)
        fronted = [k for k, target in GATEWAY_PORTS.items() if target in services or k == "gateway_serving"]
        self.gateway_users = {k: [f"gateway: {GATEWAY_PORTS[k]}"] for k in fronted}
        with Horizontal(classes="field-row"):
            yield Label(f"{'bind address':<18}")
            yield Input(self.state.get("bind_address"), id="bind", compact=True)
            yield Static("", id="bind-state", classes="port-state")
        tls = bool(self.state.get("tls.enabled"))
        yield Tick("TLS gateway: HTTPS and gRPC over TLS, CA made at install", tls, id="tls", compact=True)
        with Horizontal(classes="field-row gateway", id="listen-row"):
            yield Label(f"{'gateway address':<18}")
            listen = self.state.get("tls.listen_address") or ""
            yield Input(listen, placeholder="bind address", id="listen", compact=True)
            yield Static("", id="listen-state", classes="port-state")
        with VerticalScroll(id="ports"):
            for key in [*self.users, *self.gateway_users]:
                classes = "field-row gateway" if key in self.gateway_users else "field-row"
                with Horizontal(classes=classes):
                    yield Label(f"{key:<18}")
                    yield Input(str(self.state.get(f"ports.{key}")), id=f"port-{key}", compact=True)
                    yield Static("", id=f"state-{key}", classes="port-state")

    def on_mount(self) -> None:
        self.query_one("#bind", Input).focus()
        self.show_gateway()
        self.check_all()
        super().on_mount()

    @property
    def tls(self) -> bool:
        return bool(self.state.get("tls.enabled"))

    def show_gateway(self) -> None:
        for row in self.query(".gateway"):
            row.display = self.tls

    def on_checkbox_changed(self, event: Checkbox.Changed) -> None:
        self.state.set("tls.enabled", event.value)
        self.show_gateway()
        self.check_all()
        self.update_nav()

    def on_input_changed(self, event: Input.Changed) -> None:
        name = event.input.id or ""
        if name == "bind":
            self.state.set("bind_address", event.value.strip())
        elif name == "listen":
            self.state.set("tls.listen_address", event.value.strip() or None)
        else:
            key = name.removeprefix("port-")
            value = event.value.strip()
            self.state.set(f"ports.{key}", int(value) if value.isdigit() else value)
        self.check_all()
        self.update_nav()

    def check_all(self) -> None:
        """Re-check every row (a change can clear a duplicate elsewhere)."""
        self.problems = {}
        bind = self._address("bind", str(self.state.get("bind_address")), "bind address")
        listen_text = self.state.get("tls.listen_address")
        listen = bind
        if self.tls and listen_text:
            listen = self._address("listen", str(listen_text), "gateway address")
        elif self.tls:
            self.query_one("#listen-state", Static).update("same as the bind address")
        rows = {k: (users, bind) for k, users in self.users.items()}
        if self.tls:
            rows |= {k: (users, listen) for k, users in self.gateway_users.items()}
        hidden = [k for k in self.state.get("ports") if k not in rows]
        seen: dict[int, str] = {self.state.get(f"ports.{k}"): k for k in hidden}
        for key, (users, address) in rows.items():
            value = self.state.get(f"ports.{key}")
            text = self._port_state(key, value, seen, address, ", ".join(users))
            self.query_one(f"#state-{key}", Static).update(text)

    def _address(self, row: str, value: str, what: str) -> str | None:
        """The address if it is one (marked ok), else None with the problem recorded."""
        try:
            ipaddress.ip_address(value)
        except ValueError:
            self.problems[row] = f"{what} {value!r} is not an IP address"
            self.query_one(f"#{row}-state", Static).update("INVALID: not an IP address")
            return None
        self.query_one(f"#{row}-state", Static).update("ok")
        return value

    def _port_state(self, key: str, value: object, seen: dict[int, str], bind: str | None, users: str) -> str:
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
