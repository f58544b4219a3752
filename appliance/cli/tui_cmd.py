"""``appliance tui``: the install wizard; ``appliance tui status``: the live status dashboard.

The wizard starts from the global ``--answers`` file when one is given (so a saved file can be
edited), writes to ``--answers-out`` (default: that same file, else ``./appliance.yaml``) and
records the state directory in it, so ``appliance --answers FILE up`` reproduces the install
with no other option. Textual is imported only here, never by the engine.
"""

from __future__ import annotations

from pathlib import Path

import click

from appliance.answers_file import DEFAULT_NAME, load_answers
from appliance.context import AppContext


@click.command("tui")
@click.argument("view", required=False, type=click.Choice(["wizard", "status"]), default="wizard")
@click.option(
    "--answers-out",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Where the wizard writes the answers file (default: --answers, else ./appliance.yaml).",
)
@click.option(
    "--refresh",
    type=click.FloatRange(min=0.5),
    default=5.0,
    show_default=True,
    help="Dashboard refresh interval in seconds.",
)
@click.pass_context
def tui_cmd(ctx: click.Context, view: str, answers_out: Path | None, refresh: float) -> None:
    """Terminal wizard that writes an answers file and installs it (or `status`: the dashboard)."""
    from tui.app import ApplianceApp
    from tui.state import WizardState

    root = ctx.find_root()
    root.ensure_object(dict)
    answers_path: Path | None = root.obj.get("answers_path")
    if answers_path is None and Path(DEFAULT_NAME).exists():
        answers_path = Path(DEFAULT_NAME)
    if view == "wizard" and answers_path is not None and not answers_path.exists():
        answers_path = None  # a new file to write, not one to start from
        answers_out = answers_out or root.obj.get("answers_path")
    answers = load_answers(answers_path)
    app_ctx = AppContext.create(answers, answers_path, root.obj.get("state_dir"))
    out = (answers_out or answers_path or Path(DEFAULT_NAME)).expanduser().resolve()
    state = WizardState(initial=answers, answers_out=out, state_dir=app_ctx.state_dir)
    ApplianceApp(state, mode="status" if view == "status" else "wizard", refresh_seconds=refresh).run()
