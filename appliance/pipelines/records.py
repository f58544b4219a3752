"""Run records in STATE/controller/runs.db (sqlite), shared by the CLI and the controller.

sqlite because two processes write it (a CLI run and the controller's runs) and both read it
(``pipeline runs``, ``GET /runs``, the controller's metrics); each call opens its own short
connection so no thread or process keeps a write lock.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY, pipeline TEXT NOT NULL, model TEXT NOT NULL, trigger TEXT NOT NULL,
    state TEXT NOT NULL, started REAL NOT NULL, finished REAL, outcome TEXT, version TEXT,
    error TEXT, params TEXT NOT NULL, workdir TEXT NOT NULL, mlflow_run_id TEXT, pid INTEGER
);
CREATE TABLE IF NOT EXISTS steps (
    run_id TEXT NOT NULL, position INTEGER NOT NULL, name TEXT NOT NULL, state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, started REAL, finished REAL, exit_code INTEGER,
    log_path TEXT, mlflow_run_id TEXT, child_pid INTEGER, error TEXT,
    PRIMARY KEY (run_id, name)
);
CREATE INDEX IF NOT EXISTS runs_started ON runs (started);
"""
RUN_FIELDS = ("outcome", "version", "error", "mlflow_run_id", "state", "finished")
STEP_FIELDS = (
    "state",
    "attempts",
    "started",
    "finished",
    "exit_code",
    "log_path",
    "mlflow_run_id",
    "child_pid",
    "error",
)


def db_path(state_dir: Path) -> Path:
    return state_dir / "controller" / "runs.db"


class RunStore:
    """Create, update and read run records."""

    def __init__(self, state_dir: Path) -> None:
        self.path = db_path(state_dir)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._db() as db:
            db.executescript(SCHEMA)

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30)
        db.row_factory = sqlite3.Row
        try:
            with db:
                yield db
        finally:
            db.close()

    def create(
        self,
        run_id: str,
        pipeline: str,
        model: str,
        trigger: str,
        params: dict[str, str],
        workdir: Path,
        steps: list[str],
        pid: int,
    ) -> None:
        with self._db() as db:
            db.execute(
                "INSERT INTO runs (id, pipeline, model, trigger, state, started, params, workdir, pid)"
                " VALUES (?, ?, ?, ?, 'running', ?, ?, ?, ?)",
                (run_id, pipeline, model, trigger, time.time(), json.dumps(params), str(workdir), pid),
            )
            db.executemany(
                "INSERT INTO steps (run_id, position, name, state) VALUES (?, ?, ?, 'pending')",
                [(run_id, i, name) for i, name in enumerate(steps)],
            )

    def update_run(self, run_id: str, **fields: Any) -> None:
        unknown = set(fields) - set(RUN_FIELDS)
        assert not unknown, f"not run fields: {unknown}"
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self._db() as db:
            db.execute(f"UPDATE runs SET {sets} WHERE id = ?", (*fields.values(), run_id))

    def update_step(self, run_id: str, name: str, **fields: Any) -> None:
        unknown = set(fields) - set(STEP_FIELDS)
        assert not unknown, f"not step fields: {unknown}"
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self._db() as db:
            db.execute(
                f"UPDATE steps SET {sets} WHERE run_id = ? AND name = ?", (*fields.values(), run_id, name)
            )

    def finish(self, run_id: str, state: str, **fields: Any) -> None:
        """Close the run; steps that never started are ``not run``, one cut short is ``failed``."""
        self.update_run(run_id, state=state, finished=time.time(), **fields)
        with self._db() as db:
            db.execute("UPDATE steps SET state = 'not run' WHERE run_id = ? AND state = 'pending'", (run_id,))
            db.execute(
                "UPDATE steps SET state = 'failed', finished = ?, error = COALESCE(error, ?),"
                " child_pid = NULL WHERE run_id = ? AND state = 'running'",
                (time.time(), fields.get("error") or "interrupted", run_id),
            )

    def get(self, run_id: str) -> dict[str, Any] | None:
        """One run with its steps; ``run_id`` may be a unique prefix."""
        with self._db() as db:
            rows = db.execute(
                "SELECT * FROM runs WHERE id LIKE ? ORDER BY started DESC", (run_id + "%",)
            ).fetchall()
            if len(rows) != 1:
                return None
            steps = db.execute(
                "SELECT * FROM steps WHERE run_id = ? ORDER BY position", (rows[0]["id"],)
            ).fetchall()
        return _run_dict(rows[0], [dict(s) for s in steps])

    def recent(
        self, limit: int = 20, state: str | None = None, model: str | None = None
    ) -> list[dict[str, Any]]:
        """Newest runs first, with their steps."""
        where, args = [], []
        for column, value in (("state", state), ("model", model)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        with self._db() as db:
            rows = db.execute(
                f"SELECT * FROM runs {clause} ORDER BY started DESC LIMIT ?", (*args, limit)
            ).fetchall()
            out = []
            for row in rows:
                steps = db.execute(
                    "SELECT * FROM steps WHERE run_id = ? ORDER BY position", (row["id"],)
                ).fetchall()
                out.append(_run_dict(row, [dict(s) for s in steps]))
        return out

    def counts(self) -> dict[str, list[sqlite3.Row]]:
        """Aggregates the controller exports as metrics (so CLI runs count too)."""
        with self._db() as db:
            return {
                "outcomes": db.execute(
                    "SELECT pipeline, state, COUNT(*) AS n FROM runs WHERE state IN ('succeeded', 'failed')"
                    " GROUP BY pipeline, state"
                ).fetchall(),
                "triggers": db.execute(
                    "SELECT pipeline, trigger, COUNT(*) AS n FROM runs GROUP BY pipeline, trigger"
                ).fetchall(),
                "running": db.execute(
                    "SELECT pipeline, COUNT(*) AS n FROM runs WHERE state = 'running' GROUP BY pipeline"
                ).fetchall(),
                "last": db.execute(
                    "SELECT pipeline, finished - started AS seconds FROM runs r"
                    " WHERE finished IS NOT NULL AND started = (SELECT MAX(started) FROM runs"
                    " WHERE pipeline = r.pipeline AND finished IS NOT NULL)"
                ).fetchall(),
                "promotions": db.execute(
                    "SELECT model, COUNT(*) AS n FROM runs WHERE state = 'succeeded' AND outcome = 'promoted'"
                    " GROUP BY model"
                ).fetchall(),
            }

    def last_started(self, model: str, trigger: str) -> float | None:
        """When the newest run of ``model`` started by ``trigger`` began (seconds since the epoch)."""
        with self._db() as db:
            row = db.execute(
                "SELECT MAX(started) AS t FROM runs WHERE model = ? AND trigger = ?", (model, trigger)
            ).fetchone()
        return row["t"] if row and row["t"] is not None else None


def _run_dict(row: sqlite3.Row, steps: list[dict[str, Any]]) -> dict[str, Any]:
    run = dict(row)
    run["params"] = json.loads(run["params"])
    run["duration"] = (run["finished"] - run["started"]) if run["finished"] else None
    run["steps"] = steps
    return run
