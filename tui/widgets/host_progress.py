"""The hosts of a cluster run, a row each: its state, Ansible's counts so far and the current task.

The counts follow Ansible's recap (``ok`` counts every task that ran, ``changed`` those that
changed something), built live from the engine's progress events ``(host, status, task)``; when a
stage ends the engine's per-host results replace them, so the last figures are Ansible's own. The
task column is the task running on the host (a failed host's first message once the stage
ends); the state column is a word, readable without colour.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from textual.widgets import DataTable

from appliance.cluster.run import HostResult

COLUMNS = ("host", "state", "ok", "changed", "failed", "unreach", "task")
TASK_WIDTH = 24
"""The task column's width: at 80 columns the table fits with host names up to 12 characters."""


@dataclass
class HostTally:
    """One host's figures in the current stage."""

    stage: str = "queued"
    state: str = "waiting"
    ok: int = 0
    changed: int = 0
    failed: int = 0
    unreachable: int = 0
    task: str = ""

    def record(self, status: str, task: str) -> None:
        """Count one task result (``ok``, ``changed``, ``failed``, ``unreachable``, ``skipped``)."""
        if status in ("ok", "changed"):
            self.ok += 1
        if status == "changed":
            self.changed += 1
        elif status == "failed":
            self.failed += 1
        elif status == "unreachable":
            self.unreachable += 1
        self.task = task
        if self.state not in ("failed", "unreachable"):
            self.state = status if status in ("failed", "unreachable") else "running"

    def finish(self, result: HostResult | None) -> None:
        """The stage ended: Ansible's figures for the host (none: the host was not reached)."""
        if result is None:
            self.state = "not run"
            return
        self.ok, self.changed, self.failed = result.ok, result.changed, result.failed
        self.unreachable = result.unreachable
        self.state = result.state
        if result.messages:
            self.task = result.messages[0]


def short(text: str, width: int = TASK_WIDTH) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


class HostProgress(DataTable[str]):
    """Per-host progress of ``cluster preflight`` and ``cluster up``."""

    DEFAULT_CSS = """
    HostProgress { height: auto; max-height: 10; }
    """

    def __init__(self, hosts: Iterable[str], **kwargs: object) -> None:
        super().__init__(cursor_type="none", zebra_stripes=False, **kwargs)  # type: ignore[arg-type]
        self.tallies = {host: HostTally() for host in hosts}

    def on_mount(self) -> None:
        for name in COLUMNS:
            self.add_column(name, width=TASK_WIDTH if name == "task" else None)
        for host in self.tallies:
            self.add_row(*self._cells(host), key=host)

    def _cells(self, host: str) -> list[str]:
        t = self.tallies[host]
        counts = (t.ok, t.changed, t.failed, t.unreachable)
        return [host, t.state, *(str(n) for n in counts), short(t.task)]

    def _show(self, host: str) -> None:
        if host not in self.rows:
            self.add_row(*self._cells(host), key=host)
            return
        for column, value in zip(self.ordered_columns, self._cells(host), strict=True):
            self.update_cell(host, column.key, value, update_width=column.label.plain != "task")

    def start(self, stage: str) -> None:
        """A new stage: every host back to zero, waiting for its first task."""
        for host in self.tallies:
            self.tallies[host] = HostTally(stage=stage)
            self._show(host)

    def record(self, host: str, status: str, task: str) -> None:
        tally = self.tallies.setdefault(host, HostTally())
        tally.record(status, task)
        self._show(host)

    def stop(self, failures: dict[str, tuple[str, str]]) -> None:
        """The stage ended without Ansible's figures: the hosts named in ``failures`` get their
        (state, note); a host that ran tasks and is not named passed (a failed preflight names every
        host that did not), one that ran none was not reached."""
        for host, tally in self.tallies.items():
            if host in failures:
                tally.state, tally.task = failures[host]
            elif tally.state == "running":
                tally.state = "ok" if failures else "stopped"
            elif tally.state == "waiting":
                tally.state = "not run"
            self._show(host)

    def finish(self, results: dict[str, HostResult]) -> None:
        for host, tally in self.tallies.items():
            tally.finish(results.get(host))
            self._show(host)
        for host in results.keys() - self.tallies.keys():
            self.tallies[host] = HostTally()
            self.tallies[host].finish(results[host])
            self._show(host)
