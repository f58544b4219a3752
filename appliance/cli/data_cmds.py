"""``appliance data seed|ls|import``: demo datasets, what is there, and datasets from databases.

The commands use the same data connection the workloads get (``AppContext.connection_env()``),
so what ``ls`` shows is exactly what the trainer and the notebooks can read.
"""

from __future__ import annotations

import json
import os
from typing import IO, TYPE_CHECKING

import click

if TYPE_CHECKING:
    from appliance.dataconn import DataConnection

SEED_NAMES = ("breast_cancer", "wine", "diabetes", "digits")


def _connection() -> DataConnection:
    from appliance.cli.common import app_context
    from appliance.dataconn import DataConnection

    return DataConnection.from_env(app_context().connection_env())


@click.group("data")
def data_group() -> None:
    """Datasets in the object store (or the filesystem data root)."""


@click.command("seed")
@click.option(
    "--dataset",
    "names",
    multiple=True,
    type=click.Choice([*SEED_NAMES, "all"]),
    help="Bundled scikit-learn dataset to write (repeatable; default breast_cancer; 'all' for every one).",
)
@click.option("--format", "fmt", type=click.Choice(["csv", "parquet"]), default="csv", show_default=True)
def seed_cmd(names: tuple[str, ...], fmt: str) -> None:
    """Write demo datasets as datasets/<name>/<name>.<format>; safe to run again."""
    from appliance.dataconn.seed import DEFAULT_DATASET, seed

    conn = _connection()
    chosen = list(SEED_NAMES) if "all" in names else list(dict.fromkeys(names)) or [DEFAULT_DATASET]
    for name in chosen:
        key, written = seed(conn, name, fmt)
        state = "written" if written else "unchanged"
        click.echo(f"{name}: {conn.datasets.uri(key)} ({state})")


@click.command("ls")
def ls_cmd() -> None:
    """List dataset files: name, key, size and modification time (the newest file is current)."""
    from appliance.dataconn import list_datasets

    conn = _connection()
    entries = list_datasets(conn)
    if not entries:
        click.echo(f"no datasets in {conn.datasets.location}: run `appliance data seed`")
        return
    width = max(len(e.key) for e in entries)
    click.echo(f"{'NAME':<16} {'KEY':<{width}} {'SIZE':>10}  MODIFIED (UTC)")
    for e in entries:
        modified = e.modified.strftime("%Y-%m-%d %H:%M:%S")
        click.echo(f"{e.name:<16} {e.key:<{width}} {e.size:>10}  {modified}")


@click.command("import")
@click.option("--dataset", required=True, help="Dataset to add the version to (created if new).")
@click.option(
    "--from",
    "source",
    required=True,
    metavar="URL",
    help="postgresql://USER@HOST:PORT/DB or sqlite:///PATH.db (no password in it).",
)
@click.option("--query", help="The SELECT whose result becomes the version.")
@click.option("--query-file", type=click.File("r"), help="Read the SELECT from a file ('-': stdin).")
@click.option("--target", help="Target column: written last, where `appliance train` looks for it.")
@click.option("--connection", help="Name of the stored password (default: the dataset name).")
@click.option(
    "--password-file",
    type=click.File("r"),
    help="The database password, stored 0600 as secret db_CONNECTION_password once the import works "
    "('-': stdin; or the APPLIANCE_DB_PASSWORD variable).",
)
@click.option("--max-rows", type=click.IntRange(min=1), default=1_000_000, show_default=True)
@click.option("--max-mb", type=click.IntRange(min=1), default=1024, show_default=True, help="Memory cap.")
@click.option("--timeout", type=click.FloatRange(min=1), default=600, show_default=True, help="Seconds.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def import_cmd(
    dataset: str,
    source: str,
    query: str | None,
    query_file: IO[str] | None,
    target: str | None,
    connection: str | None,
    password_file: IO[str] | None,
    max_rows: int,
    max_mb: int,
    timeout: float,
    as_json: bool,
) -> None:
    """Snapshot a query's result as a new Parquet version of a dataset (read-only on the database).

    The query and URL are saved beside the dataset, so the retrain pipeline's ingest step can run
    them again (`refresh`); a result identical to the newest version writes nothing."""
    from appliance.cli.common import app_context
    from appliance.dataconn import dbimport
    from appliance.dataconn.dbsource import DatabaseImportError, Limits, parse_url
    from appliance.names import check_name

    check_name(dataset, "dataset name")
    if (query is None) == (query_file is None):
        raise click.UsageError("give the SELECT with exactly one of --query or --query-file")
    sql = query if query is not None else query_file.read() if query_file else ""
    url = parse_url(source)
    conn_name = dbimport.connection_name(connection or dbimport.default_connection(dataset))
    given = _read_password(password_file) if password_file else os.environ.get(dbimport.PASSWORD_ENV)
    if given is not None and url.scheme == "sqlite":
        raise DatabaseImportError(
            "a password was given for a SQLite file, which has none",
            fix=f"drop --password-file / {dbimport.PASSWORD_ENV}",
            exit_code=2,
        )
    if given == "":
        raise DatabaseImportError(
            "the password given is empty", fix="put the password in the file", exit_code=2
        )
    secrets = app_context().secrets
    password = given if given is not None else dbimport.stored_password(secrets, conn_name)
    limits = Limits(max_rows=max_rows, max_bytes=max_mb << 20, timeout_seconds=timeout)
    saved = dbimport.SavedQuery(url.url, sql, conn_name, target, limits)
    result = dbimport.import_query(_connection(), dataset, saved, password)
    if given is not None:
        secrets.put(dbimport.secret_name(conn_name), given)
    if as_json:
        click.echo(json.dumps(dbimport.describe(result)))
        return
    state = "written" if result.written else "unchanged, same as the newest version"
    click.echo(f"{dataset}: {result.uri} ({state}; {result.rows} rows, {result.columns} columns)")
    click.echo(f"sha256 {result.sha256}")


def _read_password(handle: IO[str]) -> str:
    """The password file's text without its line end, or an error naming the file."""
    from appliance.dataconn.dbsource import DatabaseImportError

    try:
        return handle.read().strip()
    except UnicodeDecodeError as err:
        raise DatabaseImportError(
            f"the password file {handle.name} is not UTF-8 text",
            fix="give a file holding only the password",
            exit_code=2,
        ) from err


data_group.add_command(seed_cmd)
data_group.add_command(ls_cmd)
data_group.add_command(import_cmd)
