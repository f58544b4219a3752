"""Metric-name extraction from PromQL and Grafana variable queries."""

from __future__ import annotations

import pytest

from appliance.monitoring.promql import metric_names, variable_query_metric_names


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("up", {"up"}),
        ("up == 0", {"up"}),
        ('up{job="serving"} == bool 0', {"up"}),
        (
            "histogram_quantile(0.99, sum by (le, model) (rate("
            'appliance_inference_request_duration_seconds_bucket{model=~"$model"}[$__rate_interval])))',
            {"appliance_inference_request_duration_seconds_bucket"},
        ),
        (
            'sum(rate(a_total{outcome="server_error"}[5m])) by (model) / ignoring(outcome)'
            " group_left(version) sum without (instance) (rate(b_total[5m] offset 1h))",
            {"a_total", "b_total"},
        ),
        ("topk(10, max by (feature) (appliance_feature_psi))", {"appliance_feature_psi"}),
        # Label values that look like metric names are not metric names.
        ('label_replace(up, "dst", "$1", "job", "(node_load1)")', {"up"}),
        ('x{le="+Inf", a=~"b|c"}', {"x"}),
        # Numbers, durations and special values.
        ("foo > 1e-4 and bar < Inf or baz != NaN", {"foo", "bar", "baz"}),
        ("rate(x[1h30m:5m]) * 0x1F", {"x"}),
        ("sum(increase(appliance_pipeline_runs_total[$__range]))", {"appliance_pipeline_runs_total"}),
        ("rate(x[${window}]) + y[[suffix]]", {"x", "y"}),
        ("vector(1) + time()", set()),
        ("recorded:metric:rate5m", {"recorded:metric:rate5m"}),
        (
            "DCGM_FI_DEV_FB_USED / (DCGM_FI_DEV_FB_USED + DCGM_FI_DEV_FB_FREE)",
            {"DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE"},
        ),
        ("a unless on (model) b", {"a", "b"}),
        ("a @ 1609746000", {"a"}),
    ],
)
def test_metric_names(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


@pytest.mark.parametrize(
    ("query", "names"),
    [
        ("label_values(appliance_model_info, model)", {"appliance_model_info"}),
        ('label_values(appliance_model_info{model=~"$model", a="b"}, version)', {"appliance_model_info"}),
        ("label_values(model)", set()),
        ("metrics(appliance_.*)", set()),
        ("query_result(topk(5, sum by (model) (rate(x_total[5m]))))", {"x_total"}),
        ("up", {"up"}),
    ],
)
def test_variable_query_metric_names(query: str, names: set[str]) -> None:
    assert variable_query_metric_names(query) == names
