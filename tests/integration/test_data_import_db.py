"""Datasets from a real PostgreSQL, started by this module (initdb + pg_ctl on a free loopback
port, password authentication): ``appliance data import`` snapshots a query into the store as a
Parquet version, ``appliance train`` trains on it, and the retrain pipeline re-runs the saved query
as its ingest step once the table has new rows. Bad input (wrong password, unreachable server, a
failing query, a write, no rows, a column Parquet cannot hold) each gets its message and leaves
the newest version as it was.

initdb refuses to run as root, so as root the server runs as Debian's ``postgres`` user in a
folder of its own under /tmp (pytest's own temporary folders are closed to other users).
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REQUIRE_RUNTIMES, free_port, run_cli, write_answers
from tests.integration._controller_fixtures import Home, home_fixture, mlflow_server_fixture

pytestmark = pytest.mark.integration
__all__ = ["home_fixture", "mlflow_server_fixture"]  # fixtures, found by their names

PASSWORD = "import-test-pw-7f3a"
FIRST_ROWS = 150
"""Rows in the table at the first import; the rest of wine's 178 arrive before the retrain."""


@dataclass
class Postgres:
    """A running server: its URL (no password) and a way to run SQL as its superuser."""

    url: str
    port: int

    def sql(self, statement: str, rows: list[tuple[object, ...]] | None = None) -> None:
        import psycopg

        with psycopg.connect(self.url, password=PASSWORD, autocommit=True) as conn:
            if rows is None:
                conn.execute(statement)
            else:
                with conn.cursor() as cur:
                    cur.executemany(statement, rows)


def _bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


def _as_owner(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _wine() -> list[tuple[object, ...]]:
    from sklearn.datasets import load_wine

    frame = load_wine(as_frame=True).frame.sample(frac=1.0, random_state=0)
    return [(*(float(v) for v in row[:-1]), int(row[-1])) for row in frame.itertuples(index=False)]


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    """PostgreSQL with database ``shop`` and table ``wine`` (13 features and ``cultivar``)."""
    bindir = _bin()
    if bindir is None:
        if os.environ.get(REQUIRE_RUNTIMES, "0") not in ("", "0"):
            pytest.fail(
                "PostgreSQL's server is not installed (scripts/bootstrap.sh installs it)", pytrace=False
            )
        pytest.skip("PostgreSQL's server is not installed (apt-get install postgresql)")
    root = Path(tempfile.mkdtemp(prefix="appliance-pg-"))
    (root / "pw").write_text(PASSWORD)
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(root / "pw", "postgres")
    data, port = root / "data", free_port()
    init = [str(bindir / "initdb"), "-D", str(data), "-U", "admin", "--pwfile", str(root / "pw")]
    subprocess.run(_as_owner([*init, "--auth=scram-sha-256", "-E", "UTF8"]), check=True, capture_output=True)
    ctl = [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log")]
    opts = f"-h 127.0.0.1 -p {port} -k {root}"
    subprocess.run(_as_owner([*ctl, "-w", "-t", "60", "-o", opts, "start"]), check=True, capture_output=True)
    try:
        admin = Postgres(f"postgresql://admin@127.0.0.1:{port}/postgres", port)
        admin.sql("CREATE DATABASE shop")
        server = Postgres(f"postgresql://admin@127.0.0.1:{port}/shop", port)
        from sklearn.datasets import load_wine

        features = [str(c) for c in load_wine(as_frame=True).frame.columns[:-1]]
        columns = ", ".join(f'"{c}" double precision' for c in features)
        server.sql(f"CREATE TABLE wine ({columns}, cultivar integer)")
        server.sql("CREATE SEQUENCE tickets")
        server.sql(f"INSERT INTO wine VALUES ({', '.join(['%s'] * 14)})", _wine()[:FIRST_ROWS])
        yield server
    finally:
        subprocess.run(_as_owner([*ctl, "-m", "immediate", "stop"]), check=False, capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def versions(state: Path, name: str) -> list[str]:
    folder = state / "data" / "datasets" / name
    return sorted(p.name for p in folder.glob("*.parquet")) if folder.is_dir() else []


@pytest.mark.slow
def test_a_table_imports_trains_and_retrains_through_the_pipeline(postgres: Postgres, home: Home) -> None:
    pw = home.root / "pw"
    pw.write_text(PASSWORD + "\n")
    query = "SELECT * FROM wine"
    first = home.cli(
        "data", "import", "--dataset", "wine", "--from", postgres.url, "--query", query,
        "--target", "cultivar", "--password-file", str(pw), "--json",
    )  # fmt: skip
    imported = json.loads(first.stdout)
    assert imported["rows"] == FIRST_ROWS and imported["columns"] == 14 and imported["written"] is True
    key = imported["key"]
    assert key.startswith("wine/wine-") and key.endswith(".parquet")
    secret = home.state / "secrets" / "db_wine_password"
    assert secret.read_text() == PASSWORD and secret.stat().st_mode & 0o777 == 0o600
    saved = (home.state / "data" / "datasets" / "wine" / "query.json").read_text()
    assert json.loads(saved)["query"] == query and PASSWORD not in saved

    work = home.root / "train"
    out = home.cli("train", "--dataset", "wine", "--epochs", "5", "--workdir", str(work), "--json").stdout
    trained = json.loads(out.splitlines()[-1])
    assert trained["version"] == "1" and trained["dataset"]["key"] == key
    assert trained["dataset"]["sha256"] == imported["sha256"]  # the trainer read the very bytes imported
    spec = json.loads((work / "dataset.json").read_text())["spec"]
    assert spec["target"] == "cultivar" and trained["task"] == "classification"

    postgres.sql(f"INSERT INTO wine VALUES ({', '.join(['%s'] * 14)})", _wine()[FIRST_ROWS:])
    ran = home.cli(
        "pipeline", "run", "retrain", "--model", "wine", "--param", "dataset=wine", "--param", "epochs=5",
        "--json", timeout=900,
    )  # fmt: skip
    run = json.loads(ran.stdout[ran.stdout.index("{") :])
    assert run["state"] == "succeeded", run
    assert run["version"] == "2"
    newest = versions(home.state, "wine")[-1]
    assert len(versions(home.state, "wine")) == 2 and f"wine/{newest}" != key
    work = Path(run["workdir"])
    assert (work / "dataset_key.txt").read_text().strip() == f"wine/{newest}"  # ingest pinned the new one
    info = json.loads((work / "dataset.json").read_text())
    assert info["spec"]["n_rows"] == 178 and info["key"] == f"wine/{newest}"


def test_bad_input_names_the_problem_and_leaves_the_newest_version(
    postgres: Postgres, tmp_path: Path
) -> None:
    answers = write_answers(tmp_path / "appliance.yaml", object_store={"kind": "filesystem"})
    state = tmp_path / "state"

    def attempt(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return run_cli(
            "data", "import", "--dataset", "shop", *args, answers=answers, state=state, check=False, env=env
        )

    good = attempt(
        "--from", postgres.url, "--query", "SELECT * FROM wine", env={"APPLIANCE_DB_PASSWORD": PASSWORD}
    )
    assert good.returncode == 0, good.stderr
    before = versions(state, "shop")
    secret = (state / "secrets" / "db_shop_password").read_text()
    assert len(before) == 1 and secret == PASSWORD

    wrong = attempt("--from", postgres.url, "--query", "SELECT 1", env={"APPLIANCE_DB_PASSWORD": "nope"})
    assert (
        wrong.returncode == 1
        and "refused the credentials" in wrong.stderr
        and "--password-file" in wrong.stderr
    )
    assert (state / "secrets" / "db_shop_password").read_text() == PASSWORD  # a failed password is not kept
    closed = f"postgresql://admin@127.0.0.1:{free_port()}/shop"
    down = attempt("--from", closed, "--query", "SELECT 1")
    assert down.returncode == 1 and f"cannot reach the database at {closed}" in down.stderr
    cases = {
        "SELECT * FROM wines": 'relation "wines" does not exist',
        "SELECT nextval('tickets')": "the query tries to change",
        "SELECT * FROM wine WHERE cultivar > 99": "the query returned no rows",
        "SELECT int4range(1, cultivar + 2) AS span FROM wine": "column 'span' (int4range)",
        "SELECT cultivar, cultivar FROM wine": "more than one column named 'cultivar'",
    }
    for query, message in cases.items():
        failed = attempt("--from", postgres.url, "--query", query)  # the stored password is used
        assert failed.returncode == 2 and message in failed.stderr, (query, failed.stderr)
        assert "fix:" in failed.stderr
    capped = attempt("--from", postgres.url, "--query", "SELECT * FROM wine", "--max-rows", "10")
    assert capped.returncode == 2 and "more than 10 rows" in capped.stderr
    in_url = attempt("--from", postgres.url.replace("admin@", f"admin:{PASSWORD}@"), "--query", "SELECT 1")
    assert in_url.returncode == 2 and "holds a password" in in_url.stderr and PASSWORD not in in_url.stderr
    assert versions(state, "shop") == before
    numeric = attempt(
        "--from", postgres.url, "--query", "SELECT alcohol::numeric(6, 2) AS alcohol, cultivar FROM wine"
    )
    assert numeric.returncode == 0, numeric.stderr
    import pandas as pd

    newest = pd.read_parquet(state / "data" / "datasets" / "shop" / versions(state, "shop")[-1])
    assert str(newest["alcohol"].dtype) == "float64"  # NUMERIC arrives as numbers the trainer takes
    postgres.sql("SELECT 1")  # the server still answers and nothing was dropped or changed
    import psycopg

    with psycopg.connect(postgres.url, password=PASSWORD) as conn:
        count = conn.execute("SELECT count(*), (SELECT is_called FROM tickets) FROM wine").fetchone()
    assert count is not None and count[0] >= FIRST_ROWS and count[1] is False  # nextval never ran
