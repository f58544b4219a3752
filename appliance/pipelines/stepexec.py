"""What a step runs and with which environment, after its placeholders are filled.

Three kinds of step end up as one argv: a command as written, a notebook run by papermill in a
subprocess (headless, parameters injected, executed copy kept in the workdir), or a built-in
step run as its own module. So every step gets the same timeout, retry, log and kill handling.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from appliance.pipelines import templating
from appliance.pipelines.model import Pipeline, Step

Resolve = Callable[[str], str]


def output_file(spec: str) -> str:
    """The file part of an output: ``registration.json#version`` -> ``registration.json``."""
    return spec.split("#", 1)[0]


def read_output(workdir: Path, spec: str) -> str | None:
    """An output's value: the file's stripped text, or one top-level key of a JSON file
    (``FILE#KEY``, so a step's JSON result needs no extra file); None when not written."""
    path = workdir / output_file(spec)
    if not path.is_file():
        return None
    text = path.read_text()
    if "#" not in spec:
        return text.strip()
    try:
        data = json.loads(text)
    except ValueError:
        return None
    value = data.get(spec.split("#", 1)[1]) if isinstance(data, dict) else None
    if value is None:
        return None
    return json.dumps(value) if isinstance(value, bool | dict | list) else str(value)


class StepFailure(Exception):
    """A step cannot start (missing notebook, missing input); the message says what is missing."""


def command_for(step: Step, source: Path, workdir: Path, resolve: Resolve) -> list[str]:
    """The argv that runs ``step`` (placeholders filled)."""
    args = {k: templating.render(v, resolve) for k, v in step.args.items()}
    if step.run is not None:
        argv = [templating.render(part, resolve) for part in step.run]
        return spread(step, argv, workdir, Path(resolve("state_dir"))) if spread_out(step) else argv
    if step.notebook is not None:
        notebook = Path(templating.render(step.notebook, resolve))
        if not notebook.is_absolute():
            notebook = source.parent / notebook
        if not notebook.is_file():
            raise StepFailure(f"notebook {notebook} not found (paths are relative to the pipeline file)")
        argv = [
            sys.executable,
            "-m",
            "papermill",
            str(notebook),
            str(workdir / f"{step.name}.ipynb"),
            "--cwd",
            str(workdir),
            "--log-output",
            "--no-progress-bar",
            "-k",
            "python3",
            "--language",
            "python",
        ]
        for key, value in args.items():
            argv += ["-p", key, value]
        return argv
    assert step.builtin == "ingest"
    argv = [sys.executable, "-m", "appliance.pipelines.ingest", "--dataset", args["dataset"]]
    argv += ["--workdir", str(workdir), "--state-dir", resolve("state_dir")]
    return argv + (["--refresh", args["refresh"].lower()] if "refresh" in args else [])


def spread_out(step: Step) -> bool:
    """Whether the step runs across the cluster's train workers (``hosts``/``nproc_per_node``)."""
    return (step.hosts, step.nproc_per_node) != (1, 1)


def spread(step: Step, argv: list[str], workdir: Path, state_dir: Path) -> list[str]:
    """The argv that runs the built-in trainer's ``run`` (``argv``, checked by the model) on
    ``step.hosts`` train workers: the cluster launcher (``appliance.cluster.train launch``, the
    one ``appliance cluster train`` uses) on this control host, with the launcher folder
    ``cluster up`` prepared here; rank 0's summary lands in ``STEP.json`` in the workdir."""
    from appliance.cluster.train import LAUNCHER_DIR, LAUNCHER_INVENTORY

    launcher = state_dir / LAUNCHER_DIR
    if not (launcher / LAUNCHER_INVENTORY).is_file():
        raise StepFailure(
            f"step {step.name!r} asks for {step.hosts} host(s) x {step.nproc_per_node} process(es), "
            f"but this appliance is not a cluster's control host ({launcher / LAUNCHER_INVENTORY} is "
            "missing; fix: run the pipeline on a cluster brought up with `appliance cluster up`, "
            "which prepares the first control host to launch jobs, or set hosts: 1 and "
            "nproc_per_node: 1)"
        )
    return [
        sys.executable,
        "-m",
        "appliance.cluster.train",
        "launch",
        "--launcher",
        str(launcher),
        "--hosts",
        str(step.hosts),
        "--nproc-per-node",
        str(step.nproc_per_node),
        "--timeout",
        str(int(step.timeout_seconds)),
        "--summary",
        str(workdir / f"{step.name}.json"),
        "--",
        *argv[4:],
    ]


def step_env(
    base: Mapping[str, str],
    pipeline: Pipeline,
    step: Step,
    resolve: Resolve,
    extra: Mapping[str, str],
    source_root: str,
) -> dict[str, str]:
    """This process's environment, the data connection, the pipeline's and step's env, then ``extra``."""
    env = {**os.environ, **base}
    env |= {k: templating.render(v, resolve) for k, v in pipeline.env.items()}
    env |= {k: templating.render(v, resolve) for k, v in step.env.items()}
    env |= dict(extra)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = source_root + (os.pathsep + path if path else "")
    return env
