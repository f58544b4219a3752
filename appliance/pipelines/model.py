"""The pipeline file format: a named list of steps, checked by pydantic before anything runs.

Every model forbids unknown keys so that a misspelt key is reported (with a "did you mean")
instead of silently ignored, and each field's docstring documents the format (see
docs/pipelines.md). Cross-step rules (unknown references, duplicate names) live in the loader,
which sees the whole file at once.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from appliance.names import RULE, name_problem

NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]*$"
"""Step and output names (pipeline, model and dataset names follow ``appliance.names``)."""
DATASET_PARAMETER = "dataset"
"""A parameter of this name is a dataset name and follows ``appliance.names`` too."""
_RELATIVE = re.compile(r"^(?!/)(?!.*(^|/)\.\.(/|$)).+$")

BuiltinName = Literal["ingest"]
BUILTIN_OUTPUTS: dict[str, dict[str, str]] = {
    "ingest": {"dataset_key": "dataset_key.txt", "dataset_uri": "dataset_uri.txt"},
}
"""Outputs a built-in step always writes, on top of the ones a pipeline declares."""
BUILTIN_ARGS: dict[str, tuple[str, ...]] = {"ingest": ("dataset", "refresh")}
"""The options each built-in step takes (``args``); any other key is refused."""
REFRESH_CHOICES = ("auto", "true", "false")
"""``ingest``'s ``refresh``: re-run a database dataset's saved query first (``auto``: when it has
one), see appliance.dataconn.dbimport."""
TRAINER_RUN = ("-m", "appliance.workloads.trainer", "run")
"""The built-in trainer's whole lifecycle in one run: the one command a step may spread over the
cluster's train workers (``hosts``, ``nproc_per_node``), since its ranks share one MLflow run and
rank 0 alone registers."""


class Strict(BaseModel):
    """Base of every pipeline-file section: immutable, no unknown keys, docstrings as descriptions."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


def _check_relative(paths: list[str]) -> list[str]:
    for path in paths:
        if not _RELATIVE.match(path):
            raise ValueError(f"{path!r} must be a path relative to the run's workdir, without '..'")
    return paths


def action_problems(step: Mapping[str, Any]) -> list[str]:
    """What is wrong with a step's choice of action; works on raw YAML too, so the loader can
    report it alongside unknown keys (pydantic skips model validators once a field fails)."""
    chosen = [k for k in ("run", "notebook", "builtin") if step.get(k) is not None]
    if len(chosen) != 1:
        found = ", ".join(chosen) if chosen else "none"
        return [f"a step needs exactly one of run, notebook or builtin (found: {found})"]
    args = step.get("args")
    if step.get("builtin") == "ingest" and not (isinstance(args, dict) and "dataset" in args):
        return ["builtin ingest needs args.dataset (the dataset name under datasets/)"]
    builtin = step.get("builtin")
    if isinstance(builtin, str) and builtin in BUILTIN_ARGS and isinstance(args, dict):
        unknown = sorted(str(k) for k in args if k not in BUILTIN_ARGS[builtin])
        if unknown:
            takes = ", ".join(BUILTIN_ARGS[builtin])
            return [f"builtin {builtin} takes args {takes}, not {', '.join(unknown)}"]
        refresh = args.get("refresh")
        templated = isinstance(refresh, str) and "{" in refresh  # checked once resolved
        if refresh is not None and not templated and str(refresh).lower() not in REFRESH_CHOICES:
            return [f"args.refresh {refresh!r} must be one of {', '.join(REFRESH_CHOICES)}"]
    if step.get("builtin") == "ingest" and isinstance(args, dict):
        dataset = args["dataset"]
        if not (isinstance(dataset, str) and "{" in dataset):  # placeholders are checked once resolved
            problem = name_problem(dataset)
            if problem:
                return [f"args.dataset {dataset!r} {problem}: a dataset name must be {RULE}"]
    return spread_problems(step)


def spread_problems(step: Mapping[str, Any]) -> list[str]:
    """A step asking for more than one host or process must run the built-in trainer's ``run``
    (``{python} -m appliance.workloads.trainer run ...``): only it trains under torchrun."""
    hosts, nproc = step.get("hosts", 1), step.get("nproc_per_node", 1)
    if not (isinstance(hosts, int) and isinstance(nproc, int)) or (hosts, nproc) == (1, 1):
        return []  # their own types and bounds are the fields' checks
    run = step.get("run")
    argv = [str(a) for a in run] if isinstance(run, list) else []
    spots = [i for i in range(len(argv)) if tuple(argv[i : i + len(TRAINER_RUN)]) == TRAINER_RUN]
    if spots == [1]:
        return []
    return [
        f"hosts: {hosts}, nproc_per_node: {nproc} need the built-in trainer's run as the step's command "
        '(run: ["{python}", "-m", "appliance.workloads.trainer", "run", "--dataset", ...]); '
        "any other step runs in one process: set hosts: 1 and nproc_per_node: 1"
    ]


def _check_name(value: str, what: str) -> str:
    problem = name_problem(value)
    if problem:
        raise ValueError(f"{what} {value!r} {problem}: it must be {RULE}")
    return value


class Step(Strict):
    """One unit of work, run as its own subprocess with its own MLflow child run and log."""

    name: str = Field(pattern=NAME_PATTERN)
    """Unique name of the step (letters, digits, ``-``, ``_``); shown in progress and logs."""
    run: list[str] | None = Field(None, min_length=1)
    """Command and arguments, e.g. ``["{python}", "-m", "appliance.workloads.trainer", "train"]``.
    Placeholders: ``{params.NAME}``, ``{steps.STEP.outputs.NAME}``, ``{workdir}``, ``{run_id}``,
    ``{model}``, ``{pipeline}``, ``{python}``, ``{state_dir}``; ``{{`` and ``}}`` are literal braces."""
    notebook: str | None = None
    """A Jupyter notebook run headless with papermill; ``args`` become its parameters. Relative
    paths are resolved from the pipeline file's folder."""
    builtin: BuiltinName | None = None
    """A step that ships with the appliance: ``ingest`` picks the newest object under
    ``datasets/<args.dataset>/`` through the data connection and writes its key to the workdir;
    with ``args.refresh`` ``true`` (or ``auto`` and the dataset came from ``appliance data
    import``) it first re-runs the dataset's saved database query as a new version."""
    args: dict[str, str] = Field(default_factory=dict)
    """Named arguments: notebook parameters, or the built-in step's options (templated)."""
    inputs: list[str] = Field(default_factory=list)
    """Files (relative to the workdir) that must exist before the step starts."""
    outputs: dict[str, str] = Field(default_factory=dict)
    """Files the step writes, by name (relative to the workdir); ``FILE#KEY`` names one top-level
    key of a JSON file. Later steps read the value with ``{steps.STEP.outputs.NAME}``. An output
    named ``version`` becomes the run's produced model version, one named ``decision`` its outcome
    (``promoted`` counts in ``appliance_model_promotions_total``)."""
    env: dict[str, str] = Field(default_factory=dict)
    """Extra environment variables for this step (templated), on top of the data connection."""
    retries: int = Field(0, ge=0, le=10)
    """How many times to run the step again after a failure or a timeout."""
    retry_delay_seconds: float = Field(0, ge=0, le=3600)
    """Pause between attempts."""
    timeout_seconds: float = Field(3600, gt=0, le=7 * 24 * 3600)
    """Wall-clock limit of one attempt; the step's whole process group is killed past it."""
    hosts: int = Field(1, ge=1, le=256)
    """Train workers the step runs on: more than 1 (or ``nproc_per_node`` more than 1) runs the
    built-in trainer's ``run`` under torchrun on the first ``hosts`` of the cluster's
    ``train_workers`` group, launched from the control host as ``appliance cluster train`` does.
    Rank 0's summary is written to ``STEP.json`` in the workdir (``outputs: {version:
    "train.json#version"}`` passes the registered version on). Only a cluster takes it."""
    nproc_per_node: int = Field(1, ge=1, le=64)
    """Processes per host for such a step (torchrun's ``--nproc-per-node``)."""
    when: str | None = None
    """Run the step only if this holds, else skip it: ``"LEFT == RIGHT"``, ``"LEFT != RIGHT"`` or
    a single value that is true unless empty, ``false``, ``0`` or ``no`` (after templating)."""

    @model_validator(mode="after")
    def _one_action(self) -> Step:
        problems = action_problems(self.model_dump())
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def all_outputs(self) -> dict[str, str]:
        """Declared outputs plus the ones a built-in step always writes."""
        return {**BUILTIN_OUTPUTS.get(self.builtin or "", {}), **self.outputs}

    @field_validator("inputs")
    @classmethod
    def _inputs_relative(cls, value: list[str]) -> list[str]:
        return _check_relative(value)

    @field_validator("outputs")
    @classmethod
    def _outputs_relative(cls, value: dict[str, str]) -> dict[str, str]:
        _check_relative([spec.split("#", 1)[0] for spec in value.values()])
        for key in value:
            if not re.match(NAME_PATTERN, key):
                raise ValueError(f"output name {key!r} must be letters, digits, '-' or '_'")
        return value


class Pipeline(Strict):
    """A pipeline file: what to run, for which model, with which parameters."""

    name: str
    """Name used by ``appliance pipeline run NAME`` and ``POST /pipelines/NAME/run``."""
    description: str = ""
    """One line shown in listings."""
    model: str
    """Registered model the pipeline works on (default; ``--model`` or an alert's ``model``
    label overrides it). Only one run per model at a time."""
    experiment: str | None = None
    """MLflow experiment of the pipeline's runs; the model name when absent."""
    parameters: dict[str, str | int | float | bool] = Field(default_factory=dict)
    """Parameters and their defaults; ``--param NAME=VALUE`` overrides one, unknown names are refused."""
    env: dict[str, str] = Field(default_factory=dict)
    """Environment variables for every step (templated)."""
    steps: list[Step] = Field(min_length=1)
    """The steps, run in this order; the first failure stops the run."""

    @field_validator("name")
    @classmethod
    def _pipeline_name(cls, value: str) -> str:
        return _check_name(value, "pipeline name")

    @field_validator("model")
    @classmethod
    def _model_name(cls, value: str) -> str:
        return _check_name(value, "model name")

    @field_validator("parameters")
    @classmethod
    def _dataset_name(cls, value: dict[str, str | int | float | bool]) -> dict[str, str | int | float | bool]:
        if DATASET_PARAMETER in value:
            _check_name(str(value[DATASET_PARAMETER]), "dataset name")
        return value
