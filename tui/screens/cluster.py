"""Step 7: this machine alone, or a cluster of hosts that Ansible sets up over SSH.

A cluster is a table of hosts (name, address, and the groups each is in: control, storage,
serving, train_workers, monitoring, gateway, edge), the SSH user and the private key Ansible logs
in with. Every change is checked with the answers file's own models (``ClusterHost``,
``Cluster``) plus what ``appliance cluster preflight`` checks on this machine before Ansible runs
(the key file exists, other hosts can reach a service that is not on loopback); each problem is
shown on the row of its field with the fix, and blocks the step. The section reaches the answers
(and the review step) only once it is valid; what was typed is kept while "this machine only" is
chosen, so switching back and forth loses nothing.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Button, Checkbox, Input, Label, RadioSet, Static

from appliance.addressing import is_loopback
from appliance.answers import Cluster
from appliance.cluster.inventory import GROUPS
from tui.screens.base import WizardScreen
from tui.widgets.choices import Choice, Tick

HEADINGS = {
    "control": "ctl",
    "storage": "sto",
    "serving": "srv",
    "train_workers": "trn",
    "monitoring": "mon",
    "gateway": "gw",
    "edge": "edge",
}
"""Column headings of the group ticks (a legend under the table spells them out)."""
LEGEND = "ctl=control sto=storage srv=serving trn=train_workers mon=monitoring gw=gateway"
NAME_FIX = "use letters, digits, '.', '_' and '-' (e.g. gpu1)"


def cluster_problems(draft: dict[str, Any], bind_address: str) -> tuple[Cluster | None, dict[str, str]]:
    """``draft`` as a ``Cluster``, or None with each problem keyed by where it is shown.

    Keys: ``ssh_user``, ``ssh_key``, ``host-N`` (row N, 0-based) and ``hosts`` (the table as a
    whole). Every message says what to do about it.
    """
    problems: dict[str, str] = {}
    hosts = draft.get("hosts") or []
    if not str(draft.get("ssh_user") or "").strip():
        problems["ssh_user"] = "SSH user is empty: type the user Ansible logs in as (root, or one with sudo)"
    key = draft.get("ssh_key")
    if key and not Path(key).expanduser().is_file():
        problems["ssh_key"] = f"no file at {key}: give a private key's path, or leave empty for the SSH agent"
    try:
        cluster = Cluster.model_validate(draft)
    except ValidationError as err:
        for error in err.errors():
            loc = error["loc"]
            message = str(error["msg"]).removeprefix("Value error, ")
            if len(loc) >= 3 and loc[0] == "hosts" and isinstance(loc[1], int):
                field = str(loc[2])
                if field == "name" and not message.startswith("host name"):
                    message = f"name {message}: {NAME_FIX}"
                else:
                    message = f"{field}: {message}"
                problems.setdefault(f"host-{loc[1]}", message)
            elif loc == ("hosts",):
                problems.setdefault("hosts", "no hosts: add one (+ Add host) or choose this machine only")
            elif loc and str(loc[0]) in ("ssh_user", "ssh_key"):
                problems.setdefault(str(loc[0]), f"{loc[0]}: {message}")
            elif not message.startswith("host names must be unique"):  # shown on the rows
                problems.setdefault("hosts", message)
        cluster = None
    # a row shows one problem, the first from the left: the model's, a repeated name, the address
    names = [str(h.get("name") or "") for h in hosts]
    for i, host in enumerate(hosts):
        address = str(host.get("address") or "")
        if names[i] and names.count(names[i]) > 1:
            problems.setdefault(
                f"host-{i}", f"name {names[i]!r} is on another row too: give each host its own name"
            )
        if not address.strip() or any(c.isspace() for c in address):
            problems.setdefault(f"host-{i}", "address: type the IP address or DNS name the hosts reach it at")
    if len(hosts) > 1 and is_loopback(bind_address):
        problems["hosts"] = (
            f"the bind address is {bind_address}: the other hosts cannot reach the services; "
            "go Back to the network step and set it to 0.0.0.0"
        )
    return (cluster if not problems else None), problems


class HostRow(Vertical):
    """One host: name, address, a tick per group, a remove button; its problem on the line below."""

    DEFAULT_CSS = """
    HostRow { height: auto; }
    HostRow > Horizontal { height: 1; }
    HostRow .host-name { width: 14; }
    HostRow .host-address { width: 17; }
    HostRow Checkbox { width: 5; padding: 0; margin: 0; }
    HostRow Button { min-width: 3; width: 3; height: 1; border: none; margin-left: 1; }
    HostRow .host-problem { height: auto; color: $error; padding-left: 2; }
    """

    def __init__(self, key: int, host: dict[str, Any]) -> None:
        super().__init__(id=f"host-{key}")
        self.key = key
        self.host = host

    def compose(self) -> ComposeResult:
        with Horizontal():
            yield Input(
                self.host.get("name") or "",
                placeholder="name",
                id=f"name-{self.key}",
                compact=True,
                classes="host-name",
            )
            yield Input(
                self.host.get("address") or "",
                placeholder="address",
                id=f"addr-{self.key}",
                compact=True,
                classes="host-address",
            )
            for group in GROUPS:
                yield Tick(
                    "", group in (self.host.get("groups") or []), id=f"grp-{self.key}-{group}", compact=True
                )
            yield Button("x", id=f"rm-{self.key}", compact=True, tooltip="remove this host")
        yield Static("", id=f"problem-{self.key}", classes="host-problem")


class ClusterScreen(WizardScreen):
    """This machine only, or hosts with their groups, the SSH user and key."""

    STEP = "cluster"
    DEFAULT_CSS = """
    #cluster-fields { height: 1fr; }
    #cluster-fields .field-row Input { width: 40; }
    #host-heading { height: 1; color: $text-muted; }
    #hosts { height: auto; max-height: 12; }
    #host-tools { height: 1; }
    #host-tools Button { height: 1; border: none; min-width: 14; }
    #hosts-problem { height: auto; color: $error; }
    #legend { height: auto; color: $text-muted; }
    """

    def __init__(self) -> None:
        super().__init__()
        self.problems: dict[str, str] = {}
        self.keys: list[int] = []
        self.next_key = 0

    @property
    def draft(self) -> dict[str, Any]:
        if self.state.cluster_draft is None:
            self.state.cluster_draft = {
                "hosts": [self.wizard.backend.this_host()],
                "ssh_user": "root",
                "ssh_key": None,
            }
        return self.state.cluster_draft

    def compose_body(self) -> ComposeResult:
        with RadioSet(id="where", compact=True):
            yield Choice(
                "This machine only (appliance up)", value=not self.state.cluster_chosen, id="where-single"
            )
            yield Choice(
                "A cluster: hosts set up over SSH by Ansible (appliance cluster up)",
                value=self.state.cluster_chosen,
                id="where-cluster",
            )
        with Vertical(id="cluster-fields"):
            draft = self.draft
            with Horizontal(classes="field-row"):
                yield Label(f"{'SSH user':<10}")
                yield Input(draft.get("ssh_user") or "", id="ssh-user", compact=True)
                yield Static("", id="ssh-user-state", classes="port-state")
            with Horizontal(classes="field-row"):
                yield Label(f"{'SSH key':<10}")
                key = draft.get("ssh_key") or ""
                yield Input(str(key), placeholder="empty: the SSH agent's keys", id="ssh-key", compact=True)
                yield Static("", id="ssh-key-state", classes="port-state")
            heading = "".join(f"{h:<5}" for h in HEADINGS.values())
            yield Static(f"{'name':<14}{'address':<17}{heading}", id="host-heading")
            with VerticalScroll(id="hosts"):
                for host in draft["hosts"]:
                    yield self._row(host)
            yield Static(LEGEND, id="legend")
            with Horizontal(id="host-tools"):
                yield Button("+ Add host", id="add-host", compact=True)
                yield Static("", id="hosts-problem")

    def _row(self, host: dict[str, Any]) -> HostRow:
        key = self.next_key
        self.next_key += 1
        self.keys.append(key)
        return HostRow(key, host)

    def on_mount(self) -> None:
        self.query_one("#where", RadioSet).focus()
        self.show_fields()
        self.check()
        super().on_mount()

    def show_fields(self) -> None:
        self.query_one("#cluster-fields").display = self.state.cluster_chosen

    def _index(self, widget_id: str) -> tuple[int, str]:
        """(row index, what) of a host field's id, e.g. ``name-3`` -> (index of key 3, ``name``)."""
        what, _, rest = widget_id.partition("-")
        key = int(rest.split("-")[0])
        return self.keys.index(key), what

    def on_radio_set_changed(self, event: RadioSet.Changed) -> None:
        self.state.cluster_chosen = event.pressed.id == "where-cluster"
        self.show_fields()
        self.check()
        self.update_nav()

    def on_input_changed(self, event: Input.Changed) -> None:
        name, value = event.input.id or "", event.value.strip()
        draft = self.draft
        if name == "ssh-user":
            draft["ssh_user"] = value
        elif name == "ssh-key":
            draft["ssh_key"] = value or None
        else:
            index, what = self._index(name)
            draft["hosts"][index]["name" if what == "name" else "address"] = value
        self.check()
        self.update_nav()

    def on_checkbox_changed(self, event: Checkbox.Changed) -> None:
        _, _, rest = (event.checkbox.id or "").partition("-")
        key, _, group = rest.partition("-")
        host = self.draft["hosts"][self.keys.index(int(key))]
        groups = [g for g in host.get("groups", []) if g != group]
        host["groups"] = [g for g in GROUPS if g in groups or (g == group and event.value)]
        self.check()
        self.update_nav()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        button = event.button.id or ""
        if button == "add-host" or button.startswith("rm-"):
            event.stop()
            self.run_worker(self._edit_rows(button), group="rows")
        else:
            super().on_button_pressed(event)

    async def _edit_rows(self, button: str) -> None:
        """Add a row (focusing its name) or remove one, then check again."""
        if button == "add-host":
            host: dict[str, Any] = {"name": "", "address": "", "groups": []}
            self.draft["hosts"].append(host)
            row = self._row(host)
            await self.query_one("#hosts", VerticalScroll).mount(row)
            row.query_one(f"#name-{row.key}", Input).focus()
        else:
            index, _ = self._index(button)
            key = self.keys.pop(index)
            self.draft["hosts"].pop(index)
            await self.query_one(f"#host-{key}", HostRow).remove()
        self.check()
        self.update_nav()

    def check(self) -> None:
        """Validate the draft, put each problem beside its field, and set the answers' section."""
        if not self.state.cluster_chosen:
            self.problems = {}
            self.state.set("cluster", None)
            return
        missing = self.wizard.backend.cluster_missing()
        cluster, self.problems = cluster_problems(
            copy.deepcopy(self.draft), str(self.state.get("bind_address"))
        )
        if missing:
            self.problems["hosts"] = missing
            cluster = None
        self.state.set("cluster", cluster.model_dump(mode="json") if cluster else None)
        for field, widget in (("ssh_user", "#ssh-user-state"), ("ssh_key", "#ssh-key-state")):
            self.query_one(widget, Static).update(self.problems.get(field, "ok"))
        for i, key in enumerate(self.keys):
            self.query_one(f"#problem-{key}", Static).update(self.problems.get(f"host-{i}", ""))
            self.query_one(f"#problem-{key}", Static).display = f"host-{i}" in self.problems
        self.query_one("#hosts-problem", Static).update(self.problems.get("hosts", ""))

    def blockers(self) -> list[str]:
        rows = {f"host-{i}": f"host {i + 1}: " for i in range(len(self.keys))}
        order = ["ssh_user", "ssh_key", *rows, "hosts"]
        return [rows.get(k, "") + self.problems[k] for k in order if k in self.problems]
