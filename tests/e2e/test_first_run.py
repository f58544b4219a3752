"""What `make up` does after installing (``scripts/lab-up.sh``), run as a new user runs it.

The README's first command brings the lab stack up, seeds the demo dataset, trains the first
champion and ends by calling the served model with the generated token. Nothing else in the
tests runs that script, so a change to a command's output it reads (`models list`, `status
--json`) or to the server's paths would break a new user's first minute unseen. It runs here on
free ports (``APPLIANCE_ANSWERS``) twice: the first run trains and answers, the second, as the
script promises, trains nothing again and answers the same.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import free_ports, run_cli

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(1500)]

REPO = Path(__file__).resolve().parents[2]


def lab_up(answers: Path) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"APPLIANCE_ANSWERS": str(answers)}
    return subprocess.run(
        ["bash", str(REPO / "scripts" / "lab-up.sh")], capture_output=True, text=True, env=env, timeout=1200
    )


def answer_of(output: str) -> dict:
    """The served model's answer: the script's last line, the JSON the curl it shows printed."""
    return dict(json.loads(output.strip().splitlines()[-1]))


def test_lab_up_serves_a_trained_champion_and_runs_again_without_training_again(tmp_path: Path) -> None:
    answers = tmp_path / "appliance.yaml"
    answers.write_text(
        yaml.safe_dump(
            {"state_dir": str(tmp_path / "state"), "ports": free_ports(), "health_timeout_seconds": 300}
        )
    )
    try:
        first = lab_up(answers)
        assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
        answer = answer_of(first.stdout)
        assert answer["model_name"] == "breast_cancer" and answer["model_version"] == "1", answer
        [output] = answer["outputs"]
        assert output["name"] == "probabilities" and output["shape"] == [1, 2], output
        assert abs(sum(output["data"]) - 1) < 1e-4, output
        # the hint it prints names the token by command, not by value
        token = run_cli("secrets", "show", "serving_token", answers=answers).stdout.strip()
        assert "secrets show serving_token" in first.stdout and token not in first.stdout

        again = lab_up(answers)
        assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-4000:]
        assert answer_of(again.stdout)["model_version"] == "1", "the second run trained again"
        models = run_cli("models", "list", answers=answers).stdout
        assert "champion" in models and "breast_cancer" in models, models
    finally:
        run_cli("down", answers=answers, check=False, timeout=300)
