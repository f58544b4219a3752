"""The rendered alert rules, checked and exercised by ``promtool`` on synthetic series.

Each alert is shown to fire above its threshold once its ``for:`` duration has passed, to stay
silent before that, and to stay silent below its threshold.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from appliance.monitoring.rules import ALERT_NAMES, alert_rules, render_alert_rules

PROMTOOL = shutil.which("promtool") or ""
needs_promtool = pytest.mark.skipif(not PROMTOOL, reason="promtool (package prometheus) not installed")

SERVING = 'job="serving", instance="127.0.0.1:8082"'


def window_rows(model: str, values: str = "1000x10") -> dict:
    """The drift window's row count, which the drift rules require to be large enough."""
    return {"series": f'appliance_drift_window_rows{{model="{model}", {SERVING}}}', "values": values}


def promtool_test(
    tmp_path: Path, rules: str, tests: list[dict], evaluation_interval: str = "1m"
) -> subprocess.CompletedProcess[str]:
    (tmp_path / "rules.yml").write_text(rules)
    doc = {"rule_files": ["rules.yml"], "evaluation_interval": evaluation_interval, "tests": tests}
    (tmp_path / "test.yml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return subprocess.run(
        [PROMTOOL, "test", "rules", "test.yml"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )


def assert_passes(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stdout + result.stderr


def default_rules(**overrides: object) -> str:
    args: dict = {"psi_threshold": 0.2, "drift_for": "2m", "latency_p99_slo_seconds": 0.05}
    args.update(overrides)
    return render_alert_rules(**args)


def test_rule_names_follow_the_interface_contract() -> None:
    names = [rule["alert"] for rule in alert_rules(0.2, "5m", 0.05)]
    assert names == list(ALERT_NAMES)
    assert names == [
        "FeatureDrift",
        "PredictionDrift",
        "ServingLatencyHigh",
        "ServingErrorRatio",
        "TargetDown",
        "BackupTooOld",
    ]


def test_answers_values_reach_the_rules() -> None:
    rules = {r["alert"]: r for r in alert_rules(0.35, "7m", 0.125, target_down_for="90s")}
    assert rules["FeatureDrift"]["for"] == "7m"
    assert "appliance_feature_psi) > 0.35)" in rules["FeatureDrift"]["expr"]
    assert "appliance_prediction_psi) > 0.35)" in rules["PredictionDrift"]["expr"]
    for drift in ("FeatureDrift", "PredictionDrift"):
        assert rules[drift]["expr"].endswith("(appliance_drift_window_rows) >= 300)")
    fewer = {r["alert"]: r for r in alert_rules(0.2, "5m", 0.05, drift_min_rows=50)}
    assert fewer["FeatureDrift"]["expr"].endswith(">= 50)")
    assert rules["ServingLatencyHigh"]["expr"].endswith("> 0.125")
    assert rules["TargetDown"]["for"] == "90s"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"drift_for": "5 minutes"}, "drift_for"),
        ({"drift_for": ""}, "drift_for"),
        ({"psi_threshold": 0.0}, "drift_psi_threshold"),
        ({"latency_p99_slo_seconds": -1.0}, "latency_p99_slo_seconds"),
        ({"target_down_for": "1x"}, "target_down_for"),
        ({"drift_min_rows": 0}, "drift_min_rows"),
        ({"drift_min_rows": 2.5}, "drift_min_rows"),
    ],
)
def test_bad_settings_are_refused_by_name(kwargs: dict, message: str) -> None:
    args: dict = {"psi_threshold": 0.2, "drift_for": "5m", "latency_p99_slo_seconds": 0.05} | kwargs
    with pytest.raises(ValueError, match=message):
        render_alert_rules(**args)


@needs_promtool
def test_promtool_accepts_the_rule_file(tmp_path: Path) -> None:
    path = tmp_path / "rules.yml"
    path.write_text(default_rules())
    result = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "6 rules found" in result.stdout


def feature_alert(model: str, feature: str, value: str) -> dict:
    return {
        "exp_labels": {"severity": "warning", "model": model, "feature": feature},
        "exp_annotations": {
            "summary": f'Feature "{feature}" of model {model} has drifted',
            "description": f'PSI of feature "{feature}" is {value}, above 0.2 for 2m.',
        },
    }


@needs_promtool
def test_feature_drift_fires_after_drift_for_and_names_the_feature(tmp_path: Path) -> None:
    series = [
        # Two replicas see the same drifted feature: one alert, with the larger PSI.
        {
            "series": f'appliance_feature_psi{{model="cancer", feature="mean radius", {SERVING}}}',
            "values": "0.5x10",
        },
        {
            "series": 'appliance_feature_psi{model="cancer", feature="mean radius", job="serving", '
            'instance="127.0.0.1:8083"}',
            "values": "0.45x10",
        },
        # Below the threshold: never an alert.
        {
            "series": f'appliance_feature_psi{{model="cancer", feature="mean area", {SERVING}}}',
            "values": "0.19x10",
        },
        window_rows("cancer"),
    ]
    tests = [
        {
            "interval": "1m",
            "input_series": series,
            "alert_rule_test": [
                {"eval_time": "1m", "alertname": "FeatureDrift", "exp_alerts": []},
                {
                    "eval_time": "2m",
                    "alertname": "FeatureDrift",
                    "exp_alerts": [feature_alert("cancer", "mean radius", "0.500")],
                },
                {
                    "eval_time": "9m",
                    "alertname": "FeatureDrift",
                    "exp_alerts": [feature_alert("cancer", "mean radius", "0.500")],
                },
            ],
        }
    ]
    assert_passes(promtool_test(tmp_path, default_rules(), tests))


@needs_promtool
def test_feature_drift_that_recovers_before_drift_for_never_fires(tmp_path: Path) -> None:
    series = [
        {"series": f'appliance_feature_psi{{model="m", feature="f", {SERVING}}}', "values": "0.9 0.9 0.1x8"},
        window_rows("m"),
    ]
    tests = [
        {
            "interval": "1m",
            "input_series": series,
            "alert_rule_test": [
                {"eval_time": t, "alertname": "FeatureDrift", "exp_alerts": []}
                for t in ("1m", "2m", "3m", "8m")
            ],
        }
    ]
    assert_passes(promtool_test(tmp_path, default_rules(), tests))


@needs_promtool
def test_a_zero_drift_for_fires_at_once(tmp_path: Path) -> None:
    rules = default_rules(drift_for="0s")
    series = [
        {"series": f'appliance_feature_psi{{model="m", feature="f", {SERVING}}}', "values": "0.3x3"},
        window_rows("m"),
    ]
    expected = feature_alert("m", "f", "0.300")
    expected["exp_annotations"]["description"] = 'PSI of feature "f" is 0.300, above 0.2 for 0s.'
    tests = [
        {
            "interval": "1m",
            "input_series": series,
            "alert_rule_test": [{"eval_time": "0m", "alertname": "FeatureDrift", "exp_alerts": [expected]}],
        }
    ]
    assert_passes(promtool_test(tmp_path, rules, tests))


@needs_promtool
def test_a_drift_for_of_seconds_holds_at_a_two_second_evaluation_interval(tmp_path: Path) -> None:
    """The lab settings of the cluster lifecycle test (drift_for 10s, rules evaluated every 2 s):
    PSI jumps at 20 s, so the alert is pending from 20 s and fires at 30 s, not on the jump."""
    rules = default_rules(drift_for="10s")
    series = [
        {"series": f'appliance_feature_psi{{model="m", feature="f", {SERVING}}}', "values": "0.05x9 0.6x20"},
        window_rows("m", "1000x30"),
    ]
    expected = feature_alert("m", "f", "0.600")
    expected["exp_annotations"]["description"] = 'PSI of feature "f" is 0.600, above 0.2 for 10s.'
    tests = [
        {
            "interval": "2s",
            "input_series": series,
            "alert_rule_test": [
                *(
                    {"eval_time": f"{t}s", "alertname": "FeatureDrift", "exp_alerts": []}
                    for t in (18, 20, 24, 28)
                ),
                {"eval_time": "30s", "alertname": "FeatureDrift", "exp_alerts": [expected]},
            ],
        }
    ]
    assert_passes(promtool_test(tmp_path, rules, tests, evaluation_interval="2s"))


def test_drift_for_from_the_answers_reaches_every_drift_rule() -> None:
    from appliance.answers import Answers
    from appliance.monitoring.generate import _rules_text

    answers = Answers.model_validate(
        {
            "models": [
                {"name": "a", "dataset": "a"},
                {"name": "b", "dataset": "b", "drift_psi_threshold": 0.3},
            ],
            "monitoring": {"drift_for": "10s", "evaluation_interval": "2s"},
        }
    )
    rules = yaml.safe_load(_rules_text(answers))["groups"][0]["rules"]
    drift = [r for r in rules if r["alert"] in ("FeatureDrift", "PredictionDrift")]
    assert len(drift) == 4 and all(r["for"] == "10s" for r in drift), drift


@needs_promtool
def test_prediction_drift_uses_its_own_threshold(tmp_path: Path) -> None:
    rules = default_rules(prediction_psi_threshold=0.3)
    series = [
        {"series": f'appliance_prediction_psi{{model="above", {SERVING}}}', "values": "0.31x10"},
        {"series": f'appliance_prediction_psi{{model="below", {SERVING}}}', "values": "0.29x10"},
        window_rows("above"),
        window_rows("below"),
    ]
    fired = {
        "exp_labels": {"severity": "warning", "model": "above"},
        "exp_annotations": {
            "summary": "Predictions of model above have drifted",
            "description": "PSI of the predictions is 0.310, above 0.3 for 2m.",
        },
    }
    tests = [
        {
            "interval": "1m",
            "input_series": series,
            "alert_rule_test": [
                {"eval_time": "1m", "alertname": "PredictionDrift", "exp_alerts": []},
                {"eval_time": "3m", "alertname": "PredictionDrift", "exp_alerts": [fired]},
            ],
        }
    ]
    assert_passes(promtool_test(tmp_path, rules, tests))


def latency_series(model: str, per_bucket: dict[str, str]) -> list[dict]:
    return [
        {
            "series": "appliance_inference_request_duration_seconds_bucket"
            f'{{model="{model}", protocol="rest", le="{le}", {SERVING}}}',
            "values": values,
        }
        for le, values in per_bucket.items()
    ]


@needs_promtool
def test_serving_latency_fires_above_the_slo_only(tmp_path: Path) -> None:
    # "slow": every request lands between 0.05 s and 0.1 s, so p99 is 0.0995 s, above 0.05 s.
    slow = {"0.01": "0x20", "0.05": "0x20", "0.1": "0+60x20", "+Inf": "0+60x20"}
    # "fast": every request under 0.01 s.
    fast = {"0.01": "0+60x20", "0.05": "0+60x20", "0.1": "0+60x20", "+Inf": "0+60x20"}
    fired = {
        "exp_labels": {"severity": "warning", "model": "slow"},
        "exp_annotations": {
            "summary": "p99 latency of model slow is above its objective",
            "description": "p99 request latency is 99.5ms, above the 0.05s objective.",
        },
    }
    rules = default_rules(latency_for="2m")
    tests = [
        {
            "interval": "1m",
            "input_series": latency_series("slow", slow) + latency_series("fast", fast),
            "alert_rule_test": [
                {"eval_time": "2m", "alertname": "ServingLatencyHigh", "exp_alerts": []},
                {"eval_time": "10m", "alertname": "ServingLatencyHigh", "exp_alerts": [fired]},
            ],
        }
    ]
    assert_passes(promtool_test(tmp_path, rules, tests))


@needs_promtool
def test_serving_error_ratio_counts_server_errors_only(tmp_path: Path) -> None:
    def requests(model: str, outcome: str, values: str) -> dict:
        return {
            "series": f'appliance_inference_requests_total{{model="{model}", version="1", protocol="rest", '
            f'outcome="{outcome}", {SERVING}}}',
            "values": values,
        }

    series = [
        requests("failing", "success", "0+90x20"),
        requests("failing", "server_error", "0+10x20"),
        # Client errors are the caller's fault: 50% of them must not page anyone.
        requests("healthy", "success", "0+50x20"),
        requests("healthy", "client_error", "0+49x20"),
        requests("healthy", "server_error", "0+1x20"),
    ]
    fired = {
        "exp_labels": {"severity": "critical", "model": "failing"},
        "exp_annotations": {
            "summary": "Model failing fails too many requests",
            "description": "10% of requests end in a server error (limit 0.05).",
        },
    }
    tests = [
        {
            "interval": "1m",
            "input_series": series,
            "alert_rule_test": [
                {"eval_time": "3m", "alertname": "ServingErrorRatio", "exp_alerts": []},
                {"eval_time": "10m", "alertname": "ServingErrorRatio", "exp_alerts": [fired]},
            ],
        }
    ]
    assert_passes(promtool_test(tmp_path, default_rules(), tests))


@needs_promtool
def test_target_down_waits_for_target_down_for(tmp_path: Path) -> None:
    series = [
        {"series": 'up{job="controller", instance="127.0.0.1:8090"}', "values": "0x10"},
        {"series": 'up{job="serving", instance="127.0.0.1:8082"}', "values": "1x10"},
    ]
    fired = {
        "exp_labels": {"severity": "critical", "job": "controller", "instance": "127.0.0.1:8090"},
        "exp_annotations": {
            "summary": "controller at 127.0.0.1:8090 is down",
            "description": "Prometheus could not scrape 127.0.0.1:8090 (job controller) for 3m.",
        },
    }
    tests = [
        {
            "interval": "1m",
            "input_series": series,
            "alert_rule_test": [
                {"eval_time": "2m", "alertname": "TargetDown", "exp_alerts": []},
                {"eval_time": "3m", "alertname": "TargetDown", "exp_alerts": [fired]},
            ],
        }
    ]
    assert_passes(promtool_test(tmp_path, default_rules(target_down_for="3m"), tests))


@needs_promtool
def test_promtool_test_would_catch_a_wrong_expectation(tmp_path: Path) -> None:
    """The harness above is only worth something if promtool fails on a wrong expectation."""
    series = [{"series": f'appliance_feature_psi{{model="m", feature="f", {SERVING}}}', "values": "0.1x10"}]
    tests = [
        {
            "interval": "1m",
            "input_series": series,
            "alert_rule_test": [
                {
                    "eval_time": "5m",
                    "alertname": "FeatureDrift",
                    "exp_alerts": [feature_alert("m", "f", "0.100")],
                }
            ],
        }
    ]
    result = promtool_test(tmp_path, default_rules(), tests)
    assert result.returncode != 0
    assert "FeatureDrift" in result.stdout + result.stderr


@needs_promtool
def test_drift_in_a_nearly_empty_window_does_not_fire(tmp_path: Path) -> None:
    """After a restart the window fills from zero: high PSI over 40 rows is noise, not drift; the
    same PSI fires once the window holds drift_min_rows (here the default, 300)."""
    series = [
        {"series": f'appliance_feature_psi{{model="m", feature="f", {SERVING}}}', "values": "0.9x10"},
        {"series": f'appliance_prediction_psi{{model="m", {SERVING}}}', "values": "0.9x10"},
        window_rows("m", "40 120 299 299 300 1000x5"),
    ]
    fired = feature_alert("m", "f", "0.900")
    tests = [
        {
            "interval": "1m",
            "input_series": series,
            "alert_rule_test": [
                *(
                    {"eval_time": t, "alertname": name, "exp_alerts": []}
                    for t in ("0m", "2m", "3m", "5m")
                    for name in ("FeatureDrift", "PredictionDrift")
                ),
                {"eval_time": "6m", "alertname": "FeatureDrift", "exp_alerts": [fired]},
            ],
        }
    ]
    assert_passes(promtool_test(tmp_path, default_rules(), tests))


@needs_promtool
def test_a_model_with_its_own_threshold_and_min_rows_alerts_by_them_and_the_others_by_the_default(
    tmp_path: Path,
) -> None:
    # Both models see PSI 0.25 on a window of 100 rows. "wine" (its own: 0.3, 50 rows) stays
    # silent at 0.25 where the default (0.2) would fire; "cancer" (default: 0.2, 300 rows) stays
    # silent because its window is short; at 0.35 with 400 rows both fire, once each.
    series = [
        {
            "series": f'appliance_feature_psi{{model="wine", feature="alcohol", {SERVING}}}',
            "values": "0.25x4 0.35x6",
        },
        {
            "series": f'appliance_feature_psi{{model="cancer", feature="mean radius", {SERVING}}}',
            "values": "0.25x4 0.35x6",
        },
        window_rows("wine", "100x4 400x6"),
        window_rows("cancer", "100x4 400x6"),
    ]
    wine = {
        "exp_labels": {"severity": "warning", "model": "wine", "feature": "alcohol"},
        "exp_annotations": {
            "summary": 'Feature "alcohol" of model wine has drifted',
            "description": 'PSI of feature "alcohol" is 0.350, above 0.3 for 2m.',
        },
    }
    tests = [
        {
            "interval": "1m",
            "input_series": series,
            "alert_rule_test": [
                {"eval_time": "3m", "alertname": "FeatureDrift", "exp_alerts": []},
                {
                    "eval_time": "9m",
                    "alertname": "FeatureDrift",
                    "exp_alerts": [wine, feature_alert("cancer", "mean radius", "0.350")],
                },
            ],
        }
    ]
    rules = default_rules(per_model={"wine": (0.3, 50)})
    assert rules.count("alert: FeatureDrift") == 2, rules
    assert_passes(promtool_test(tmp_path, rules, tests))


def test_per_model_drift_settings_reach_the_rules_from_the_answers() -> None:
    from appliance.answers import Answers
    from appliance.monitoring.generate import _rules_text

    answers = Answers.model_validate(
        {"models": [{"name": "a", "dataset": "a"}, {"name": "b", "dataset": "b", "drift_min_rows": 40}]}
    )
    text = _rules_text(answers)
    assert 'appliance_feature_psi{model="b"}) > 0.2' in text and ">= 40" in text
    assert 'appliance_feature_psi{model!="b"}) > 0.2' in text and ">= 300" in text
