"""``python -m appliance.workloads.serving``: the same command and flags as ``appliance serve``."""

from __future__ import annotations

import sys

import click

from appliance.cli.serve_cmd import serve_cmd
from appliance.errors import ApplianceError


def main() -> None:
    try:
        serve_cmd.main(prog_name="python -m appliance.workloads.serving", standalone_mode=False)
    except ApplianceError as err:
        click.secho(f"error: {err}", fg="red", err=True)
        sys.exit(err.exit_code)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except click.exceptions.Abort:
        sys.exit(130)


if __name__ == "__main__":
    main()
