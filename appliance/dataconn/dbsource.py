"""A query's result from PostgreSQL or SQLite, read-only and within limits, as a DataFrame.

A dataset import must never change the database it reads and must not take the machine down with
a runaway query, so every read here is read-only at the driver (a ``READ ONLY`` transaction in
PostgreSQL, a ``mode=ro`` connection with ``query_only`` in SQLite), bounded in time (the
server's ``statement_timeout``, SQLite's progress handler) and fetched in batches against a row
and a memory cap, so an oversized result is refused before it is all in memory.

Every failure is a :class:`DatabaseImportError` naming the database (never its password), what
went wrong and the fix; nothing here writes anywhere, so a failure leaves nothing behind.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from appliance.dataconn.errors import DataConnectionError

if TYPE_CHECKING:
    import pandas as pd

BATCH_ROWS = 5000
"""Rows fetched per round trip; the caps are checked after each batch."""
PASSWORD_HELP = "--password-file FILE (or the APPLIANCE_DB_PASSWORD variable)"


class DatabaseImportError(DataConnectionError):
    """A database could not be read, or its result cannot become a dataset version."""

    def __init__(self, message: str, fix: str, exit_code: int = 1) -> None:
        super().__init__(message, fix=fix)
        self.exit_code = exit_code


@dataclass(frozen=True)
class Limits:
    """How much one import may read, and for how long."""

    max_rows: int = 1_000_000
    max_bytes: int = 1 << 30
    timeout_seconds: float = 600.0


@dataclass(frozen=True)
class DatabaseURL:
    """Where to read: ``url`` is safe to show and to save (it never holds a password)."""

    url: str
    scheme: str
    """``postgresql`` or ``sqlite``."""
    path: Path | None = None
    """The SQLite file (absolute)."""


def parse_url(text: str, cwd: Path | None = None) -> DatabaseURL:
    """Check ``postgresql://USER@HOST:PORT/DB`` or ``sqlite:///PATH`` (relative to ``cwd``;
    ``sqlite:////PATH`` absolute) and refuse a password in it: passwords are secrets, never
    arguments that show up in the process list and the shell's history."""
    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    if scheme == "sqlite":
        raw = text[len("sqlite:///") :] if text.lower().startswith("sqlite:///") else ""
        if not raw or raw == ":memory:":
            raise DatabaseImportError(
                f"{text!r} names no SQLite file",
                fix="give sqlite:///RELATIVE/PATH.db or sqlite:////ABSOLUTE/PATH.db",
                exit_code=2,
            )
        path = (cwd or Path.cwd()) / raw if not raw.startswith("/") else Path(raw)
        path = path.resolve()
        return DatabaseURL(f"sqlite:///{path}", "sqlite", path)
    if scheme in ("postgresql", "postgres"):
        parts = urlsplit(text)
        if parts.password is not None or "password" in parse_qs(parts.query):
            raise DatabaseImportError(
                "the database URL holds a password, which would be visible to every user of this machine",
                fix=f"remove it from the URL (postgresql://USER@HOST:PORT/DB), give it with {PASSWORD_HELP}",
                exit_code=2,
            )
        try:
            parts.port  # noqa: B018 - raises ValueError on a port that is not a number
        except ValueError as err:
            raise DatabaseImportError(
                f"the database URL {text!r} has a bad port: {err}",
                fix="write it as postgresql://USER@HOST:PORT/DB",
                exit_code=2,
            ) from err
        return DatabaseURL(text, "postgresql")
    raise DatabaseImportError(
        f"{text!r} is not a database URL this appliance reads",
        fix="use postgresql://USER@HOST:PORT/DB or sqlite:///PATH.db",
        exit_code=2,
    )


def read_query(url: DatabaseURL, query: str, password: str | None, limits: Limits) -> pd.DataFrame:
    """The query's whole result, every column checked to fit in Parquet."""
    if not query.strip():
        raise DatabaseImportError(
            "the query is empty", fix='give one SELECT, e.g. --query "SELECT * FROM t"', exit_code=2
        )
    if url.scheme == "sqlite":
        return _read_sqlite(url, query, limits)
    return _read_postgres(url, query, password, limits)


def _read_postgres(url: DatabaseURL, query: str, password: str | None, limits: Limits) -> pd.DataFrame:
    import psycopg
    import psycopg.types.numeric

    try:
        conn = psycopg.connect(
            url.url, password=password or None, connect_timeout=10, application_name="appliance-data-import"
        )
    except psycopg.Error as err:
        raise _connect_error(url, str(err)) from err
    try:
        conn.read_only = True  # the transaction below is READ ONLY: the server refuses any write
        # NUMERIC as float64, as the same digits in a CSV are read: Parquet would keep Decimal
        # objects, which no model trains on (cast to text in the query to keep exact digits).
        conn.adapters.register_loader("numeric", psycopg.types.numeric.FloatLoader)
        with conn.cursor(name="appliance_import") as cur:
            timeout_ms = str(int(limits.timeout_seconds * 1000))
            conn.execute("SELECT set_config('statement_timeout', %s, true)", (timeout_ms,))
            cur.execute(query.strip().rstrip(";"))  # a server-side cursor: rows arrive in batches
            description = cur.description or []
            columns = [d.name for d in description]
            types = [_pg_type_name(conn, d.type_code) for d in description]
            return collect(columns, types, lambda: cur.fetchmany(BATCH_ROWS), limits)
    except psycopg.errors.QueryCanceled as err:
        raise _timeout_error(url, limits) from err
    except psycopg.Error as err:
        raise _query_error(url, _pg_message(err), "ReadOnlySqlTransaction" in type(err).__name__) from err
    finally:
        conn.close()  # ends the read-only transaction without committing anything


def _pg_type_name(conn: Any, oid: int) -> str:
    info = conn.adapters.types.get(oid)
    if info is None:
        return f"type oid {oid}"
    return f"{info.name}[]" if oid == info.array_oid else str(info.name)


def _pg_message(err: Exception) -> str:
    diag = getattr(err, "diag", None)
    primary = getattr(diag, "message_primary", None)
    return str(primary or str(err).strip().splitlines()[0])


def _connect_error(url: DatabaseURL, text: str) -> DatabaseImportError:
    detail = text.removeprefix("connection failed: ").strip().splitlines()[0]
    lowered = text.lower()
    if "password" in lowered or "authentication" in lowered:
        return DatabaseImportError(
            f"{url.url} refused the credentials: {detail}",
            fix=f"check the user in the URL and give the right password with {PASSWORD_HELP}",
        )
    if "does not exist" in lowered:
        return DatabaseImportError(f"{url.url}: {detail}", fix="correct the user or database name in the URL")
    return DatabaseImportError(
        f"cannot reach the database at {url.url}: {detail}",
        fix="start the database, or correct the host and port in the URL (reached from this machine)",
    )


def _query_error(url: DatabaseURL, detail: str, wrote: bool) -> DatabaseImportError:
    if wrote:
        return DatabaseImportError(
            f"the query tries to change {url.url}: {detail}",
            fix="an import only reads: give one SELECT (or WITH ... SELECT)",
            exit_code=2,
        )
    return DatabaseImportError(
        f"the query failed on {url.url}: {detail}",
        fix="correct the query (one SELECT; try it in psql or sqlite3 first)",
        exit_code=2,
    )


def _timeout_error(url: DatabaseURL, limits: Limits) -> DatabaseImportError:
    return DatabaseImportError(
        f"the query on {url.url} ran past {limits.timeout_seconds:g} s and was cancelled",
        fix="narrow the query, add an index, or raise --timeout",
        exit_code=2,
    )


def _read_sqlite(url: DatabaseURL, query: str, limits: Limits) -> pd.DataFrame:
    assert url.path is not None
    if not url.path.is_file():
        raise DatabaseImportError(
            f"no SQLite database at {url.path}",
            fix="correct the path: sqlite:///PATH is relative to this folder, sqlite:////PATH absolute",
            exit_code=2,
        )
    try:
        conn = sqlite3.connect(f"{url.path.as_uri()}?mode=ro", uri=True, timeout=10)
    except sqlite3.Error as err:
        raise DatabaseImportError(
            f"cannot open {url.url}: {err}", fix="check the file's permissions"
        ) from err
    deadline = time.monotonic() + limits.timeout_seconds
    conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)  # non-zero aborts
    try:
        conn.execute("PRAGMA query_only = ON")
        cur = conn.execute(query)
        columns = [d[0] for d in cur.description or []]
        return collect(columns, ["sqlite value"] * len(columns), lambda: cur.fetchmany(BATCH_ROWS), limits)
    except sqlite3.Error as err:
        if "interrupted" in str(err):
            raise _timeout_error(url, limits) from err
        raise _query_error(url, str(err), "readonly" in str(err) or "query_only" in str(err)) from err
    finally:
        conn.close()


def collect(
    columns: list[str], types: list[str], fetch: Callable[[], Sequence[Any]], limits: Limits
) -> pd.DataFrame:
    """Fetch every batch into one DataFrame, refusing past the caps, no rows, repeated column
    names, and columns whose values Parquet cannot store (each named, with its database type)."""
    import pandas as pd

    if not columns:
        raise DatabaseImportError(
            "the query returns no columns",
            fix="give a SELECT that returns the dataset's columns",
            exit_code=2,
        )
    repeated = sorted({c for c in columns if columns.count(c) > 1})
    if repeated:
        raise DatabaseImportError(
            f"the query returns more than one column named {', '.join(map(repr, repeated))}",
            fix="give each column its own name (SELECT a.x AS a_x, b.x AS b_x ...)",
            exit_code=2,
        )
    chunks: list[pd.DataFrame] = []
    rows = size = 0
    while batch := fetch():
        rows += len(batch)
        if rows > limits.max_rows:
            raise DatabaseImportError(
                f"the query returns more than {limits.max_rows} rows",
                fix="narrow it (WHERE, LIMIT, a sample) or raise --max-rows",
                exit_code=2,
            )
        chunk = pd.DataFrame.from_records(list(batch), columns=columns)
        size += int(chunk.memory_usage(deep=True, index=False).sum())
        if size > limits.max_bytes:
            raise DatabaseImportError(
                f"the query's result is larger than {limits.max_bytes // (1 << 20)} MiB in memory",
                fix="select fewer columns or rows, or raise --max-mb",
                exit_code=2,
            )
        chunks.append(chunk)
    if not rows:
        raise DatabaseImportError(
            "the query returned no rows: an empty version cannot train anything",
            fix="check its WHERE clause and the table's contents",
            exit_code=2,
        )
    frame = chunks[0] if len(chunks) == 1 else pd.concat(chunks, ignore_index=True)
    check_parquet_types(frame, types)
    return frame


def check_parquet_types(frame: pd.DataFrame, types: list[str]) -> None:
    """Refuse the first column pyarrow cannot convert, naming it, its type and the cast to use."""
    import pyarrow as pa

    for column, db_type in zip(frame.columns, types, strict=True):
        try:
            pa.array(frame[column], from_pandas=True)
        except (pa.ArrowException, TypeError, ValueError, OverflowError) as err:
            detail = str(err).splitlines()[0]
            raise DatabaseImportError(
                f"column {column!r} ({db_type}) holds values Parquet cannot store: {detail}",
                fix=f"convert it in the query, e.g. CAST({column} AS TEXT) AS {column}, or leave it out",
                exit_code=2,
            ) from err
