"""Datasets from databases: a query's result snapshotted as a new Parquet version of a dataset.

Training must read a fixed, reproducible version, never a live table, so ``appliance data
import`` runs the query once and writes the result as ``<name>/<name>-<UTC time>.parquet`` beside
the dataset's other versions (the layout of :mod:`appliance.dataconn.datasets`: the newest file
is current, the trainer records its sha256). The query, the database URL (never a password) and
the connection's name are saved as ``<name>/query.json`` so the retrain pipeline's ingest step can
run it again (:func:`refresh`); a result identical to the newest version writes nothing, so a
nightly retrain does not pile up copies.

The password is a secret like the stack's own: ``STATE/secrets/db_<connection>_password``
(0600), stored only once an import with it has succeeded.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance.dataconn.connection import DataConnection
from appliance.dataconn.datasets import resolve, serialize
from appliance.dataconn.dbsource import DatabaseImportError, Limits, parse_url, read_query
from appliance.dataconn.errors import DatasetNotFoundError
from appliance.names import check_name
from appliance.secrets_store import SecretStore

if TYPE_CHECKING:
    import pandas as pd

QUERY_FILE = "query.json"
PASSWORD_ENV = "APPLIANCE_DB_PASSWORD"
_CONNECTION = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,47}")


@dataclass(frozen=True)
class SavedQuery:
    """What an import ran, saved beside the dataset's versions so it can run again."""

    url: str
    query: str
    connection: str
    target: str | None = None
    limits: Limits = field(default_factory=Limits)

    def to_json(self) -> bytes:
        return (json.dumps(asdict(self), indent=2) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes) -> SavedQuery:
        raw = json.loads(data)
        return cls(
            url=str(raw["url"]),
            query=str(raw["query"]),
            connection=str(raw["connection"]),
            target=None if raw.get("target") is None else str(raw["target"]),
            limits=Limits(**raw.get("limits", {})),
        )


@dataclass(frozen=True)
class ImportResult:
    """The version an import produced (or found identical), and what it holds."""

    key: str
    uri: str
    sha256: str
    rows: int
    columns: int
    written: bool


def connection_name(value: str) -> str:
    """A connection name (it becomes part of a secret's file name), or an error naming the rule."""
    if not _CONNECTION.fullmatch(value):
        raise DatabaseImportError(
            f"connection name {value!r} is not valid: it must be 1-48 letters, digits, '_' or '-', "
            "starting with a letter or digit",
            fix="give --connection a name such as 'warehouse' or 'sales_db'",
            exit_code=2,
        )
    return value


def default_connection(dataset: str) -> str:
    """The dataset's own name, with the '.' a secret's name cannot hold as '_'."""
    return dataset.replace(".", "_")


def secret_name(connection: str) -> str:
    return f"db_{connection_name(connection)}_password"


def stored_password(secrets: SecretStore, connection: str) -> str | None:
    """The connection's saved password, or None; never generates one (unlike ``SecretStore.get``)."""
    name = secret_name(connection)
    return secrets.get(name) if name in secrets.names() else None


def order_target(frame: pd.DataFrame, target: str | None) -> pd.DataFrame:
    """Put ``target`` last, where the trainer's default rule ('target', else the last column)
    finds it; refuse a column that is not there or a second column called 'target'."""
    if target is None:
        return frame
    columns = [str(c) for c in frame.columns]
    if target not in columns:
        raise DatabaseImportError(
            f"--target {target!r} is not a column of the query's result",
            fix=f"use one of: {', '.join(columns[:20])}",
            exit_code=2,
        )
    if target != "target" and "target" in columns:
        raise DatabaseImportError(
            f"the result has a column named 'target' besides --target {target!r}, and the trainer "
            "would take 'target'",
            fix="rename one in the query (SELECT target AS other_name ...)",
            exit_code=2,
        )
    return frame[[c for c in columns if c != target] + [target]]


def version_key(name: str, now: datetime | None = None) -> str:
    """A new version's key: the UTC time to the microsecond, so keys sort in import order."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{name}/{name}-{stamp}.parquet"


def import_query(conn: DataConnection, name: str, saved: SavedQuery, password: str | None) -> ImportResult:
    """Run ``saved`` and write its result as the newest version of dataset ``name``.

    Everything that can fail (the name, the URL, the database, the query, the caps, the column
    types) is checked before anything is written; the version is one whole-object write (atomic
    for a reader), and the saved query follows it."""
    check_name(name, "dataset name")
    connection_name(saved.connection)
    url = parse_url(saved.url)
    frame = order_target(read_query(url, saved.query, password, saved.limits), saved.target)
    try:
        data = serialize(frame, "parquet")
    except Exception as err:  # pyarrow raises many types; all mean "this frame cannot be Parquet"
        raise DatabaseImportError(
            f"the query's result cannot be written as Parquet: {str(err).splitlines()[0]}",
            fix="cast the columns named in the message to plain types (numbers, text, timestamps)",
            exit_code=2,
        ) from err
    conn.datasets.ensure()
    key, written = _newest_if_same(conn, name, data), False
    if key is None:
        key, written = version_key(name), True
        conn.datasets.put(key, data)
    conn.datasets.put(f"{name}/{QUERY_FILE}", replace(saved, url=url.url).to_json())
    sha = hashlib.sha256(data).hexdigest()
    return ImportResult(key, conn.datasets.uri(key), sha, len(frame), len(frame.columns), written)


def _newest_if_same(conn: DataConnection, name: str, data: bytes) -> str | None:
    """The newest version's key when its bytes equal ``data``, else None."""
    try:
        newest = resolve(conn, name)
    except DatasetNotFoundError:
        return None
    return newest.key if newest.size == len(data) and conn.datasets.get(newest.key) == data else None


def load_saved(conn: DataConnection, name: str) -> SavedQuery | None:
    """Dataset ``name``'s saved query, or None when it was not imported from a database."""
    check_name(name, "dataset name")
    key = f"{name}/{QUERY_FILE}"
    if not any(o.key == key for o in conn.datasets.list(f"{name}/")):
        return None
    try:
        return SavedQuery.from_json(conn.datasets.get(key))
    except (ValueError, TypeError, KeyError) as err:
        raise DatabaseImportError(
            f"{conn.datasets.uri(key)} is not a saved query ({type(err).__name__}: {err})",
            fix=f"import the dataset again: appliance data import --dataset {name} --from URL --query SQL",
            exit_code=2,
        ) from err


def refresh(conn: DataConnection, name: str, state_dir: Path) -> ImportResult:
    """Run dataset ``name``'s saved query again with its stored password (the pipeline's ingest)."""
    saved = load_saved(conn, name)
    if saved is None:
        raise DatabaseImportError(
            f"dataset {name!r} has no saved query ({conn.datasets.uri(f'{name}/{QUERY_FILE}')} is missing), "
            "so there is nothing to re-run",
            fix=f"import it with `appliance data import --dataset {name} ...`, or drop refresh from the step",
            exit_code=2,
        )
    password = stored_password(SecretStore(state_dir / "secrets"), saved.connection)
    return import_query(conn, name, saved, password)


def describe(result: ImportResult) -> dict[str, Any]:
    """The result as the CLI prints it with ``--json``."""
    return asdict(result)
