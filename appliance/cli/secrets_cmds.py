"""``appliance secrets``: where the generated credentials are, and their values on request."""

from __future__ import annotations

import click

from appliance.cli.common import app_context


@click.group("secrets")
def secrets_group() -> None:
    """Generated credentials (stored mode 0600 in the state directory)."""


@click.command("show")
@click.argument("name", required=False)
def show_cmd(name: str | None) -> None:
    """List the secrets, or print one value (``appliance secrets show jupyter_token``)."""
    store = app_context().secrets
    if name:
        if name not in store.names():
            raise click.BadParameter(f"no secret {name!r}; known: {', '.join(store.names()) or 'none yet'}")
        click.echo(store.get(name))
        return
    for secret in store.names():
        click.echo(f"{secret:<28} {store.root / secret}")


secrets_group.add_command(show_cmd)
