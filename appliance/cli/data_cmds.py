"""``appliance data seed|ls``: demo datasets into the stack's data connection, and what is there.

The commands use the same data connection the workloads get (``AppContext.connection_env()``),
so what ``ls`` shows is exactly what the trainer and the notebooks can read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

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


data_group.add_command(seed_cmd)
data_group.add_command(ls_cmd)
