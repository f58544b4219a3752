"""Durations and the retrain schedule are checked in the answers model: `appliance plan` refuses a
bad one with exit 2 and the key's line, instead of a traceback (drift_for) or a controller that
fails only when it starts (cron). The controller's --schedule uses the same cron rule."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from appliance.cli import main
from appliance.cron import FORMAT, check_cron, cron_problem
from appliance.workloads.controller.schedule import InvalidScheduleError, check_schedule

Plan = Callable[[Path, str], "Done"]
DURATIONS = ["drift_for", "scrape_interval", "evaluation_interval", "alert_group_wait"]


class Done:
    def __init__(self, returncode: int, stderr: str) -> None:
        self.returncode, self.stderr = returncode, stderr


@pytest.fixture
def plan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Callable[[Path, str], Done]:
    """``appliance plan`` on an answers file holding ``text``, in this process."""

    def run(folder: Path, text: str) -> Done:
        answers = folder / "appliance.yaml"
        answers.write_text(text)
        try:
            main(["--answers", str(answers), "--state-dir", str(folder / "state"), "plan"])
            code = 0
        except SystemExit as exit_:
            code = int(exit_.code or 0)
        return Done(code, capsys.readouterr().err)

    return run


@pytest.mark.parametrize("key", DURATIONS)
def test_a_bad_duration_fails_plan_with_exit_2_and_the_line(plan: Plan, tmp_path: Path, key: str) -> None:
    done = plan(tmp_path, f"profile: lab\nmonitoring:\n  {key}: 5 minutes\n")
    assert done.returncode == 2, done.stderr
    assert f"appliance.yaml:3: monitoring.{key}:" in done.stderr
    assert "not a Prometheus duration (e.g. 30s, 5m, 1h)" in done.stderr and "fix: edit" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "state").exists()


@pytest.mark.parametrize("schedule", ["every night", "61 3 * * *", "0 3 * *", "*/0 * * * *"])
def test_a_bad_cron_fails_plan_with_exit_2_and_the_line(plan: Plan, tmp_path: Path, schedule: str) -> None:
    done = plan(tmp_path, f"monitoring:\n  drift_for: 10m\n  retrain_schedule: '{schedule}'\n")
    assert done.returncode == 2, done.stderr
    assert "appliance.yaml:3: monitoring.retrain_schedule:" in done.stderr
    assert "is not a cron expression" in done.stderr and "minute hour day-of-month" in done.stderr


def test_good_durations_and_cron_plan(plan: Plan, tmp_path: Path) -> None:
    done = plan(tmp_path, "monitoring:\n  drift_for: 1h30m\n  retrain_schedule: '0 3 * * mon-fri'\n")
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    "expression", ["0 3 * * *", "*/15 0-6 1,15 jan-mar mon-fri", "@daily", "* * * * * */2", "0 0 * * 7"]
)
def test_the_cron_rule_accepts_what_croniter_fires(expression: str) -> None:
    assert cron_problem(expression) is None
    assert check_schedule(expression) == expression


@pytest.mark.parametrize(
    ("expression", "problem"),
    [
        ("", "has 0 fields, not 5"),
        ("0 24 * * *", "hour field '24' is outside 0-23"),
        ("0 0 0 * *", "day of month field '0' is outside 1-31"),
        ("0 0 * 13 *", "month field '13' is outside 1-12"),
        ("0 0 * * 8", "day of week field '8' is outside 0-7"),
        ("5-1 * * * *", "minute field '5-1' runs backwards"),
        ("a * * * *", "minute field 'a' is outside 0-59"),
        ("0 3 ? * *", "day of month field '?' is not '*'"),
    ],
)
def test_the_controller_and_the_answers_refuse_the_same_expressions(expression: str, problem: str) -> None:
    found = cron_problem(expression)
    assert found is not None and found.startswith(problem)
    with pytest.raises(ValueError, match=r"monitoring\.retrain_schedule") as caught:
        check_cron(expression, "monitoring.retrain_schedule")
    assert FORMAT in str(caught.value)
    with pytest.raises(InvalidScheduleError) as refused:
        check_schedule(expression)
    assert problem in str(refused.value) and refused.value.exit_code == 2
