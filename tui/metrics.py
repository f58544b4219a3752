"""The dashboard's numbers: Prometheus queries over the serving metrics, and pipeline run records.

Everything here runs in a worker and degrades to "-" (or an empty list): Prometheus may be off,
starting, or have no serving metrics yet; the pipeline package may be absent or have no records.
A dashboard that raises on missing data would be useless exactly when it is needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from appliance.context import AppContext

QUERIES = {
    "model": "appliance_model_info",
    "rps": "sum(rate(appliance_inference_requests_total[1m]))",
    "p99": "histogram_quantile(0.99, sum by (le) "
    "(rate(appliance_inference_request_duration_seconds_bucket[5m])))",
    "drift": "appliance_feature_psi",
}
DASH = "-"


def prometheus_url(status: dict[str, Any]) -> str | None:
    """Prometheus's URL when the stack has one and it is healthy."""
    prom = status.get("services", {}).get("prometheus")
    if not prom or prom.get("health") != "healthy":
        return None
    url = prom.get("url")
    return str(url) if url else None


def query(
    url: str, promql: str, timeout: float = 2.0, auth: tuple[str, str] | None = None
) -> list[dict[str, Any]]:
    """An instant query's result vector (with Prometheus's basic auth ``auth``); empty on any failure."""
    import httpx

    try:
        response = httpx.get(f"{url}/api/v1/query", params={"query": promql}, timeout=timeout, auth=auth)
        body = response.json()
    except (httpx.HTTPError, ValueError):
        return []
    if body.get("status") != "success":
        return []
    result = body.get("data", {}).get("result", [])
    return result if isinstance(result, list) else []


def _number(sample: dict[str, Any]) -> float | None:
    try:
        value = float(sample["value"][1])
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    return None if value != value else value  # NaN: no traffic in the window


def summarize(results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Query results -> the strings and rows the dashboard shows."""
    models = [s.get("metric", {}) for s in results.get("model", [])]
    model = ", ".join(f"{m.get('model', '?')} v{m.get('version', '?')}" for m in models) or DASH
    rps = _number(results["rps"][0]) if results.get("rps") else None
    p99 = _number(results["p99"][0]) if results.get("p99") else None
    drift: list[tuple[str, float, str]] = []
    samples = results.get("drift", [])
    # With several models, each row says whose feature it is (rows: label, PSI, model).
    several = len({s.get("metric", {}).get("model") for s in samples}) > 1
    for sample in samples:
        value = _number(sample)
        if value is not None:
            labels = sample.get("metric", {})
            feature, owner = labels.get("feature", "?"), labels.get("model", "?")
            drift.append((f"{owner} / {feature}" if several else feature, value, owner))
    drift.sort(key=lambda row: -row[1])
    return {
        "model": model,
        "rps": DASH if rps is None else f"{rps:.2f}",
        "p99": DASH if p99 is None else f"{p99 * 1000:.1f} ms",
        "drift": drift,
    }


def pipeline_runs(state_dir: Path, limit: int = 5) -> list[dict[str, Any]] | None:
    """The newest run records, or None when there is no pipeline package or no record yet."""
    try:
        from appliance.pipelines.records import RunStore, db_path
    except ImportError:
        return None
    if not db_path(state_dir).exists():
        return None
    try:
        return RunStore(state_dir).recent(limit)
    except Exception:  # a record store being written concurrently must not break the dashboard
        return None


def gather(ctx: AppContext, status: dict[str, Any]) -> dict[str, Any]:
    """Everything the dashboard shows besides the service table."""
    from appliance.monitoring.web_auth import WEB_USER, read_password

    url = prometheus_url(status)
    password = read_password(ctx.state_dir, "prometheus")
    auth = (WEB_USER, password) if password else None
    results = {key: query(url, promql, auth=auth) for key, promql in QUERIES.items()} if url else {}
    return summarize(results) | {"runs": pipeline_runs(ctx.state_dir)} | serving_replicas(ctx, status)


def serving_replicas(ctx: AppContext, status: dict[str, Any]) -> dict[str, Any]:
    """The replicas line ``appliance status`` prints (ready, asked, the autoscaler's last decision)
    when the model server runs more than one; nothing otherwise."""
    from appliance.workloads.serving.replica_status import describe, replicas_status

    serving = status.get("services", {}).get("serving", {})
    state = replicas_status(ctx, serving.get("health") in ("healthy", "starting"))
    return {"replicas": describe(state)} if state is not None else {}
