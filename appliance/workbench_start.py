"""Starts the workbench with the worked notebooks in its work folder, then becomes JupyterLab.

The example notebooks ship in the project (images/workbench/notebooks, installed as the wheel's
``share/mlops-appliance/images/workbench/notebooks``). Each one missing from ``--examples`` is
copied there before JupyterLab starts; one already there is left alone, since it may hold the
user's edits. So a new install, a local-runtime workbench and an upgrade that brings a new
example all show them, on every runtime, with this one rule.

Usage: ``python -m appliance.workbench_start --examples DIR -- jupyter lab ...``
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path


def notebooks_dir() -> Path:
    """The checkout's notebooks (source tree, editable install), else the wheel's copy."""
    checkout = Path(__file__).resolve().parent.parent / "images" / "workbench" / "notebooks"
    if checkout.is_dir():
        return checkout
    return Path(sys.prefix) / "share" / "mlops-appliance" / "images" / "workbench" / "notebooks"


def seed_examples(target: Path, source: Path | None = None) -> list[str]:
    """Copy each example notebook missing from ``target``; the names copied."""
    source = source or notebooks_dir()
    target.mkdir(parents=True, exist_ok=True)
    copied = []
    for notebook in sorted(source.glob("*.ipynb")):
        destination = target / notebook.name
        if not destination.exists():
            shutil.copyfile(notebook, destination)
            copied.append(notebook.name)
    return copied


def main(argv: list[str]) -> int:
    if "--" not in argv or argv.index("--") == len(argv) - 1:
        print("usage: python -m appliance.workbench_start --examples DIR -- COMMAND ...", file=sys.stderr)
        return 2
    split = argv.index("--")
    parser = argparse.ArgumentParser(prog="appliance.workbench_start")
    parser.add_argument("--examples", type=Path, required=True, help="folder the notebooks go to")
    args = parser.parse_args(argv[:split])
    command = argv[split + 1 :]
    try:
        copied = seed_examples(args.examples)
    except OSError as err:  # a read-only or full work folder: the workbench still starts
        print(f"warning: example notebooks not copied into {args.examples}: {err}", file=sys.stderr)
    else:
        if copied:
            print(f"copied example notebooks into {args.examples}: {', '.join(copied)}", flush=True)
    sys.stdout.flush()
    os.execvp(command[0], command)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
