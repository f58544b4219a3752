"""``appliance backup`` (make, list, verify archives; keygen) and ``appliance restore``.

``backup`` and ``restore`` print one progress line per part as they go; ``list`` and ``verify``
only read (they write nothing, not even a state directory). Archive contents, encryption and
restoring onto another machine or runtime: docs/backup.md.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import click

from appliance.apply import Event
from appliance.backup.crypto import Secret, generate_keypair, load_private_key, load_public_key
from appliance.cli.common import app_context
from appliance.cli.progress import ProgressPrinter
from appliance.errors import ApplianceError

FILE = click.Path(path_type=Path, dir_okay=False)


class _Parts:
    """Turns the backup/restore progress callbacks into the CLI's usual progress lines."""

    def __init__(self, expected: int) -> None:
        self.printer = ProgressPrinter()
        self.expected, self.done = max(1, expected), 0

    def __call__(self, part: str, step: str, message: str) -> None:
        self.done += step == "done"
        self.printer(Event(part, step, min(1.0, self.done / self.expected), message))


def _secret(passphrase_file: Path | None, recipient: Path | None = None, identity: Path | None = None) -> Any:
    given = [x for x in (passphrase_file, recipient, identity) if x is not None]
    if len(given) > 1:
        raise click.UsageError("give one of --passphrase-file, --recipient, --identity")
    if passphrase_file:
        return Secret.from_passphrase_file(passphrase_file)
    if recipient:
        return Secret(recipient=load_public_key(recipient))
    if identity:
        return Secret(identity=load_private_key(identity))
    return None


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


@click.group("backup", invoke_without_command=True)
@click.option("--to", help="Archive file, folder, or s3://BUCKET/PREFIX (default: STATE/backups/).")
@click.option("--passphrase-file", type=FILE, help="Encrypt with the passphrase in this file.")
@click.option("--recipient", type=FILE, help="Encrypt to this public key (`appliance backup keygen`).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def backup_group(
    ctx: click.Context, to: str | None, passphrase_file: Path | None, recipient: Path | None, as_json: bool
) -> None:
    """Back up everything stateful while the stack runs: MLflow (runs, registry, users),
    artifacts, datasets, models, pipeline records, the answers file, secrets and certificates."""
    if ctx.invoked_subcommand is not None:
        return
    from appliance.backup.create import create_backup

    secret = _secret(passphrase_file, recipient)
    app = app_context()
    result = create_backup(app, to, secret, _Parts(expected=7))
    summary = {
        "path": result.path,
        "bytes": result.archive_bytes,
        "content_bytes": result.manifest.total_bytes,
        "members": len(result.manifest.members),
        "seconds": round(result.seconds, 2),
        "encrypted": secret is not None,
        "parts": result.manifest.parts,
    }
    if as_json:
        click.echo(json.dumps(summary))
    else:
        click.echo(
            f"{result.path}: {len(result.manifest.members)} files ({_mb(result.manifest.total_bytes)}), "
            f"archive {_mb(result.archive_bytes)}, in {result.seconds:.1f}s"
        )


@backup_group.command("list")
@click.option("--in", "where", help="Folder or s3://BUCKET/PREFIX (default: STATE/backups/).")
@click.option("--json", "as_json", is_flag=True)
def list_cmd(where: str | None, as_json: bool) -> None:
    """Archives, newest first: time, size, the appliance version that wrote them. Writes nothing."""
    from appliance.backup.read import read_info

    rows: list[dict[str, Any]] = []
    if where and where.startswith("s3://"):
        from appliance.backup.remote import listing

        rows = listing(app_context(), where)
    else:
        folder = Path(where) if where else _state_dir() / "backups"
        files = folder.glob("appliance-backup-*") if folder.is_dir() else []
        for path in files:
            info = read_info(path) or {}
            rows.append({"path": str(path), "bytes": path.stat().st_size, **info})
    rows.sort(key=lambda r: (r.get("created") or "", r["path"]), reverse=True)
    if as_json:
        click.echo(json.dumps(rows))
        return
    if not rows:
        click.echo(f"no backups in {where or _state_dir() / 'backups'}")
    for row in rows:
        locked = f" encrypted ({row['encrypted']})" if row.get("encrypted") else ""
        version = row.get("appliance_version", "?")
        click.echo(f"{row.get('created', '?'):22} {_mb(row['bytes']):>10}  v{version}{locked}  {row['path']}")


def _state_dir() -> Path:
    """The state directory from the global options, without loading (or creating) anything."""
    from appliance.context import default_state_dir

    root = click.get_current_context().find_root()
    chosen = (root.obj or {}).get("state_dir")
    return Path(chosen).resolve() if chosen else default_state_dir()


@backup_group.command("verify")
@click.argument("archive", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option("--passphrase-file", type=FILE, help="The passphrase of an encrypted archive.")
@click.option("--identity", type=FILE, help="The private key an archive was encrypted to.")
def verify_cmd(archive: Path, passphrase_file: Path | None, identity: Path | None) -> None:
    """Read ARCHIVE whole and check every member against its manifest; exits 2 naming the first
    bad member. Writes nothing."""
    from appliance.backup.read import scan

    manifest = scan(archive, _secret(passphrase_file, identity=identity))
    click.echo(
        f"{archive}: ok, {len(manifest.members)} members ({_mb(manifest.total_bytes)}) match the manifest; "
        f"appliance {manifest.appliance_version}, {manifest.created}, MLflow {manifest.mlflow_version} "
        f"(schema {manifest.mlflow_schema})"
    )


@backup_group.command("keygen")
@click.argument("private_key", type=FILE)
def keygen_cmd(private_key: Path) -> None:
    """Write a key pair for encrypted backups: PRIVATE_KEY (0600, keep it off this machine) and
    PRIVATE_KEY.pub (give it to `appliance backup --recipient`)."""
    public = generate_keypair(private_key)
    click.echo(f"private key: {private_key} (0600; restore needs it: --identity)\npublic key: {public}")


@click.command("restore")
@click.argument("archive")
@click.option("--state-dir", "state_dir", type=click.Path(path_type=Path, file_okay=False))
@click.option(
    "--runtime", type=click.Choice(["local", "podman", "docker"]), help="Run it on another runtime."
)
@click.option("--passphrase-file", type=FILE, help="The passphrase of an encrypted archive.")
@click.option("--identity", type=FILE, help="The private key an archive was encrypted to.")
@click.option("--yes", is_flag=True, help="Replace a state directory that holds data without asking.")
@click.option("--json", "as_json", is_flag=True)
def restore_cmd(
    archive: str,
    state_dir: Path | None,
    runtime: str | None,
    passphrase_file: Path | None,
    identity: Path | None,
    yes: bool,
    as_json: bool,
) -> None:
    """Restore ARCHIVE (a file or s3://...) into the state directory. The whole archive is checked
    before anything is touched; a directory with data is replaced only after a yes, and only while
    its stack is down. Then `appliance --answers STATE/appliance.yaml up`."""
    from appliance.backup.restore import restore

    secret = _secret(passphrase_file, identity=identity)
    target = state_dir or _state_dir()
    with tempfile.TemporaryDirectory(prefix="appliance-restore-dl-") as tmp:
        path = Path(archive)
        if archive.startswith("s3://"):
            from appliance.backup.remote import download

            path = download(app_context(), archive, Path(tmp))
        elif not path.is_file():
            raise ApplianceError(f"no archive at {archive}", fix="`appliance backup list` shows the archives")

        def confirm(question: str) -> bool:
            return yes or (os.isatty(0) and click.confirm(question, default=False))

        result = restore(path, target, secret, runtime, confirm, _Parts(expected=6))
    summary = {
        "state_dir": str(result.state_dir),
        "answers": str(result.answers),
        "members": len(result.manifest.members),
        "seconds": round(result.seconds, 2),
        "from_version": result.manifest.appliance_version,
    }
    if as_json:
        click.echo(json.dumps(summary))
    else:
        click.echo(
            f"restored {len(result.manifest.members)} files into {result.state_dir} "
            f"in {result.seconds:.1f}s\n"
            f"next: appliance --answers {result.answers} up"
        )
