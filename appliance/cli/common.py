"""Helpers shared by the command modules: building the AppContext from the global options."""

from __future__ import annotations

from pathlib import Path

import click

from appliance.answers_file import DEFAULT_NAME, load_answers
from appliance.context import AppContext


def app_context(ctx: click.Context | None = None) -> AppContext:
    """The AppContext for this invocation (answers loaded and validated once, then cached).

    Command modules call ``app_context()`` inside a click command; it reads the global
    ``--answers`` / ``--state-dir`` options from the root context.
    """
    ctx = ctx or click.get_current_context()
    root = ctx.find_root()
    root.ensure_object(dict)
    obj = root.obj
    if "app" not in obj:
        path: Path | None = obj.get("answers_path")
        if path is None and Path(DEFAULT_NAME).exists():
            path = Path(DEFAULT_NAME)
        answers = load_answers(path)
        obj["app"] = AppContext.create(answers, path, obj.get("state_dir"))
    app: AppContext = obj["app"]
    return app
