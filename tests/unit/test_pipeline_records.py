"""Run records and model locks: shared state between the CLI and the controller."""

from __future__ import annotations

import os
import time
from pathlib import Path

from appliance.pipelines.locks import Holder, ModelLock, holder
from appliance.pipelines.records import RunStore
from appliance.pipelines.recovery import RESTART_REASON, fail_orphans


def test_a_model_lock_is_exclusive_even_within_one_process(tmp_path: Path) -> None:
    first, second = ModelLock(tmp_path, "wine"), ModelLock(tmp_path, "wine")
    assert first.acquire("run-1")
    assert not second.acquire("run-2")
    assert holder(tmp_path, "wine") == Holder(os.getpid(), "run-1")
    assert ModelLock(tmp_path, "iris").acquire("run-3"), "another model is not blocked"
    first.release()
    assert holder(tmp_path, "wine") is None
    assert second.acquire("run-2")
    second.release()


def test_records_round_trip_and_feed_the_metrics(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    store.create(
        "a1", "retrain", "wine", "alert", {"dataset": "wine"}, tmp_path / "w", ["ingest", "train"], 1
    )
    store.update_step("a1", "ingest", state="succeeded", attempts=1)
    store.finish("a1", "succeeded", outcome="promoted", version="3")
    store.create("b2", "retrain", "wine", "cron", {}, tmp_path / "w", ["ingest", "train"], 1)
    store.update_step("b2", "ingest", state="failed", attempts=3, error="exit code 1")
    store.finish("b2", "failed", outcome="failed at ingest", error="step 'ingest' failed: exit code 1")

    run = store.get("a1")
    assert run is not None and run["params"] == {"dataset": "wine"} and run["version"] == "3"
    assert [s["state"] for s in run["steps"]] == ["succeeded", "not run"]
    assert store.get("zz") is None
    assert [r["id"] for r in store.recent()] == ["b2", "a1"]
    counts = store.counts()
    assert {(r["pipeline"], r["state"], r["n"]) for r in counts["outcomes"]} == {
        ("retrain", "succeeded", 1),
        ("retrain", "failed", 1),
    }
    assert {(r["trigger"], r["n"]) for r in counts["triggers"]} == {("alert", 1), ("cron", 1)}
    assert [(r["model"], r["n"]) for r in counts["promotions"]] == [("wine", 1)]
    assert store.last_started("wine", "alert") is not None and store.last_started("iris", "alert") is None


def test_a_running_record_whose_lock_is_free_is_failed_but_a_held_one_is_kept(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    store.create("dead", "retrain", "wine", "alert", {}, tmp_path / "w", ["train", "promote"], 99999)
    store.update_step("dead", "train", state="running", started=time.time())
    lock = ModelLock(tmp_path, "iris")
    assert lock.acquire("alive")
    store.create("alive", "retrain", "iris", "alert", {}, tmp_path / "w", ["train"], os.getpid())

    assert fail_orphans(store, tmp_path, env={}) == ["dead"]
    dead, alive = store.get("dead"), store.get("alive")
    assert dead is not None and alive is not None
    assert (dead["state"], dead["error"]) == ("failed", RESTART_REASON)
    assert [s["state"] for s in dead["steps"]] == ["failed", "not run"]
    assert alive["state"] == "running"
    lock.release()
