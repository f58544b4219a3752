"""Datasets in the datasets store: ``<name>/<file>.csv|.parquet``, newest file wins.

Inside the datasets bucket (or the ``datasets`` folder of a filesystem root) a dataset is a
prefix; every CSV or Parquet object under it is a version and the newest is current, so users add
data by uploading a new file rather than overwriting one. Reads return the content hash, which the
trainer records so that a model can always be traced to the exact bytes it learned from.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from appliance.dataconn.connection import DataConnection
from appliance.dataconn.errors import DatasetFormatError, DatasetNotFoundError
from appliance.dataconn.stores import ObjectInfo
from appliance.names import check_name

if TYPE_CHECKING:
    import pandas as pd

FORMATS = (".csv", ".parquet")


@dataclass(frozen=True)
class DatasetEntry:
    """One dataset file as ``appliance data ls`` shows it."""

    name: str
    key: str
    size: int
    modified: datetime


@dataclass(frozen=True)
class LoadedDataset:
    """A dataset read into memory, with where it came from and a hash of its bytes."""

    name: str
    key: str
    uri: str
    sha256: str
    frame: pd.DataFrame


def _is_dataset_file(key: str) -> bool:
    return "/" in key and key.lower().endswith(FORMATS)


def list_datasets(conn: DataConnection) -> list[DatasetEntry]:
    """Every dataset file, grouped by name (the first path component) and sorted by key."""
    entries = [
        DatasetEntry(obj.key.split("/", 1)[0], obj.key, obj.size, obj.modified)
        for obj in conn.datasets.list()
        if _is_dataset_file(obj.key)
    ]
    return sorted(entries, key=lambda e: (e.name, e.key))


def resolve(conn: DataConnection, name: str, key: str | None = None) -> ObjectInfo:
    """The object holding dataset ``name``: ``key`` when given, else the newest file under it.

    The name becomes a key prefix (a folder of the filesystem store), so it is checked first."""
    check_name(name, "dataset name")
    candidates = [o for o in conn.datasets.list(f"{name}/") if _is_dataset_file(o.key)]
    if key is not None:
        candidates = [o for o in candidates if o.key == key]
    if not candidates:
        available = sorted({e.name for e in list_datasets(conn)})
        where = conn.datasets.uri(key) if key else conn.datasets.uri(f"{name}/")
        raise DatasetNotFoundError(name, where, available)
    return max(candidates, key=lambda o: (o.modified, o.key))


def parse(data: bytes, key: str, uri: str) -> pd.DataFrame:
    """Bytes of a CSV or Parquet file as a DataFrame, or a DatasetFormatError naming the file."""
    import pandas as pd

    try:
        if key.lower().endswith(".parquet"):
            return pd.read_parquet(io.BytesIO(data))
        return pd.read_csv(io.BytesIO(data))
    except Exception as err:  # pandas raises many types; all mean "not a valid file"
        raise DatasetFormatError(uri, f"{type(err).__name__}: {err}".splitlines()[0]) from err


def read_dataset(conn: DataConnection, name: str, key: str | None = None) -> LoadedDataset:
    """Read dataset ``name`` (its newest file, or ``key``) through the data connection."""
    obj = resolve(conn, name, key)
    data = conn.datasets.get(obj.key)
    uri = conn.datasets.uri(obj.key)
    frame = parse(data, obj.key, uri)
    return LoadedDataset(name, obj.key, uri, hashlib.sha256(data).hexdigest(), frame)


def serialize(frame: pd.DataFrame, fmt: str) -> bytes:
    """A DataFrame as CSV or Parquet bytes (no index), the two formats datasets may use."""
    buf = io.BytesIO()
    if fmt == "parquet":
        frame.to_parquet(buf, index=False)
    elif fmt == "csv":
        buf.write(frame.to_csv(index=False).encode())
    else:
        raise ValueError(f"unknown dataset format {fmt!r}: use csv or parquet")
    return buf.getvalue()


def write_dataset(conn: DataConnection, name: str, frame: pd.DataFrame, fmt: str = "csv") -> tuple[str, bool]:
    """Write ``frame`` as ``<name>/<name>.<fmt>``; returns the key and whether anything changed.

    Identical content is not written again, so seeding is idempotent and keeps the file's date.
    """
    check_name(name, "dataset name")
    key = f"{name}/{name}.{fmt}"
    data = serialize(frame, fmt)
    conn.datasets.ensure()
    if any(o.key == key for o in conn.datasets.list(f"{name}/")) and conn.datasets.get(key) == data:
        return key, False
    conn.datasets.put(key, data)
    return key, True
