"""``python -m appliance.workloads.trainer run|validate|train|evaluate|export|register|promote``.

Reads only the environment (the data connection and ``MLFLOW_TRACKING_URI``), so the stack, a
pipeline runner or a person can start it without the CLI. The last stdout line is a JSON
summary; a failure prints one ``error:`` line with its fix on stderr and exits non-zero.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from appliance.errors import ApplianceError
from appliance.workloads.trainer.workdir import STEPS, Options


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dataset", help="dataset name (datasets/<name>/ in the data connection)")
    common.add_argument(
        "--dataset-key",
        "--key",
        dest="dataset_key",
        help="a specific file of the dataset (default: the newest)",
    )
    common.add_argument(
        "--model-name", "--model", dest="model_name", help="registered model name (default: the dataset name)"
    )
    common.add_argument("--target", help="target column (default: 'target', else the last column)")
    common.add_argument("--task", choices=["auto", "classification", "regression"], default="auto")
    common.add_argument(
        "--model-kind",
        choices=["auto", "mlp", "cnn"],
        default="auto",
        help="auto: a CNN for an image dataset (pixel_ROW_COL columns), else the MLP",
    )
    common.add_argument("--epochs", type=int, default=60, help="maximum epochs (early stopping)")
    common.add_argument("--seed", type=int, default=42)
    common.add_argument("--batch-size", type=int, default=32)
    common.add_argument("--lr", type=float, default=1e-3)
    common.add_argument("--patience", type=int, default=10, help="epochs without validation improvement")
    common.add_argument("--promote-margin", type=float, default=0.0, help="challenger must win by more")
    common.add_argument("--metric", help="ranking metric: accuracy or f1 (classification), rmse (regression)")
    common.add_argument(
        "--script",
        type=Path,
        help="train with your own script (.py) or notebook (.ipynb) instead of the built-in model "
        "(it must leave user_model/; docs/training.md)",
    )
    common.add_argument(
        "--from-user-model",
        action="store_true",
        help="evaluate/export the model your code left in user_model/ (after --script or a notebook step)",
    )
    common.add_argument("--workdir", type=Path, help="folder for step results (required for single steps)")
    top = argparse.ArgumentParser(prog="python -m appliance.workloads.trainer", description=__doc__)
    sub = top.add_subparsers(dest="command", required=True)
    sub.add_parser("run", parents=[common], help="the whole lifecycle in one MLflow run")
    for step in STEPS:
        sub.add_parser(step, parents=[common], help=f"the {step} step alone (results in --workdir)")
    return top


def options(args: argparse.Namespace) -> Options:
    return Options(
        workdir=args.workdir or Path(),
        dataset=args.dataset,
        dataset_key=args.dataset_key,
        model_name=args.model_name,
        target=args.target,
        task=args.task,
        epochs=args.epochs,
        seed=args.seed,
        batch_size=args.batch_size,
        lr=args.lr,
        patience=args.patience,
        promote_margin=args.promote_margin,
        metric=args.metric,
        model_kind=args.model_kind,
        script=args.script,
        from_user_model=args.from_user_model or args.script is not None,
    )


def check_args(args: argparse.Namespace, top: argparse.ArgumentParser) -> None:
    if args.command == "run" and not args.dataset:
        top.error("run needs --dataset NAME (see `appliance data ls`)")
    if args.command != "run" and args.workdir is None:
        top.error(f"{args.command} needs --workdir DIR (the same folder for every step)")
    if args.command == "validate" and not args.dataset:
        top.error("validate needs --dataset NAME (see `appliance data ls`)")
    if args.epochs < 1 or args.batch_size < 1 or args.patience < 1:
        top.error("--epochs, --batch-size and --patience must be at least 1")


def main(argv: list[str] | None = None) -> int:
    top = parser()
    args = top.parse_args(argv)
    check_args(args, top)
    from appliance.workloads.trainer import lifecycle

    try:
        opts = options(args)
        summary = lifecycle.run(opts) if args.command == "run" else lifecycle.run_step(args.command, opts)
    except ApplianceError as err:
        fix = f" (fix: {err.fix})" if err.fix else ""
        print(f"error: {err.message}{fix}", file=sys.stderr, flush=True)
        return err.exit_code
    print(json.dumps(summary, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
