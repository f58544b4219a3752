"""How a playbook event counts for a host: a no_log task's change is a change too, and a task whose
host's connection dropped (Mitogen reports it as the task's failure) is the host unreachable."""

from __future__ import annotations

from typing import Any

from appliance.cluster.run import CONNECTION_LOST, event_status

CENSORED = {
    "censored": "the output has been hidden due to the fact that 'no_log: true' was specified for this result"
}


def event(kind: str, res: dict[str, Any], stdout: str = "", **data: Any) -> dict[str, Any]:
    """An event as ansible-runner hands it to the handler (the shape of its job_events files)."""
    return {"event": kind, "stdout": stdout, "event_data": {"host": "sto1", "task": "t", "res": res, **data}}


def test_a_no_log_tasks_change_is_read_from_the_line_ansible_printed() -> None:
    assert event_status(event("runner_on_ok", CENSORED, "changed: [sto1]")) == "changed"
    assert event_status(event("runner_on_ok", CENSORED, "ok: [sto1]")) == "ok"
    assert event_status(event("runner_on_ok", CENSORED)) == "ok"


def test_a_visible_result_says_itself_whether_it_changed() -> None:
    assert event_status(event("runner_on_ok", {"changed": True}, "ok: [sto1]")) == "changed"
    # only a censored result is read from the printed line
    assert event_status(event("runner_on_ok", {"changed": False}, "changed: [sto1]")) == "ok"


def test_failures_unreachable_and_skipped_keep_their_kind() -> None:
    assert event_status(event("runner_on_failed", {"msg": "x"})) == "failed"
    assert event_status(event("runner_on_failed", {"msg": "x"}, ignore_errors=True)) == "ignored"
    assert event_status(event("runner_on_unreachable", {})) == "unreachable"
    assert event_status(event("runner_on_skipped", {})) == "skipped"


def test_a_connection_dropped_in_a_task_is_the_host_unreachable_under_mitogen() -> None:
    """Mitogen's wording, as it failed the task when a serving host stopped mid-up."""
    for message in (
        "Task failed: the respondent Context has disconnected",
        "Mitogen was disconnected from the remote environment while a call was in-progress. If you "
        "feel this is in error, please file a bug. Original error was: Channel closed by remote end.",
    ):
        assert event_status(event("runner_on_failed", {"msg": message})) == "unreachable", message
    assert len(CONNECTION_LOST) == 2
    # a task's own failure that merely mentions a context stays a failure
    assert event_status(event("runner_on_failed", {"msg": "the Context file is missing"})) == "failed"
