"""Elyra's ``.pipeline`` files (drawn in the workbench) as appliance pipelines.

A drawn pipeline runs on the appliance's own runner, so it must turn into the same ``Pipeline``
model a YAML file does: after that, runs, records, locks, MLflow logging, schedules and drift
alerts treat both alike. This module is that conversion and nothing else. It reads the file as
Elyra 4.1 saves it (pipeline-flow schema 3.0, Elyra pipeline version 8) and maps:

- notebook nodes to ``notebook:`` steps and Python script nodes to ``run: [{python}, FILE]``;
- the links between nodes to the order of the steps (a topological order; a cycle is refused),
  and every ancestor's declared outputs to a step's ``inputs``;
- ``outputs`` (file names; ``FILE#KEY`` names one key of a JSON file, e.g. the trainer's
  ``registration.json#version``) to named outputs;
- environment variables (the pipeline's defaults and each node's) to ``env``, except a few
  reserved ``APPLIANCE_*`` names that carry what Elyra's editor has no field for: the model
  (``APPLIANCE_MODEL``), experiment, and each node's timeout, retries and retry delay;
- pipeline parameters to ``parameters``; a node's chosen parameters become papermill
  parameters (notebooks) or environment variables (scripts).

What Elyra allows and the runner cannot honour (another runtime image, resources it does not
enforce, Kubernetes secrets, volumes, tolerations, labels, annotations, files to copy along,
more GPUs than the host has, R scripts, custom components, super nodes) is refused before
anything runs, every problem at once, each naming its node and property.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from appliance.errors import InvalidInputError, Problem
from appliance.images.catalog import CATALOG, FLAVORS
from appliance.pipelines.model import Pipeline

ELYRA_PIPELINE_VERSION = 8
"""The pipeline version Elyra 4.1 writes (``PIPELINE_CURRENT_VERSION``); others are refused."""
NOTEBOOK_OP = "execute-notebook-node"
PYTHON_OP = "execute-python-node"

MODEL_VAR = "APPLIANCE_MODEL"
EXPERIMENT_VAR = "APPLIANCE_EXPERIMENT"
STEP_VARS = {
    "APPLIANCE_TIMEOUT_SECONDS": "timeout_seconds",
    "APPLIANCE_RETRIES": "retries",
    "APPLIANCE_RETRY_DELAY_SECONDS": "retry_delay_seconds",
}
"""Reserved node environment variables and the step fields they set (a pipeline default applies
to every node that does not set its own)."""
RESERVED = {MODEL_VAR, EXPERIMENT_VAR, *STEP_VARS}

UNSUPPORTED_LISTS = {
    "kubernetes_secrets": "the appliance has no Kubernetes secrets: put the value in a secret file "
    "and read it from the node",
    "mounted_volumes": "the appliance mounts no volumes into a step: read the data through the data "
    "connection (datasets/) or from an earlier node's outputs",
    "kubernetes_tolerations": "steps run on this machine, not on Kubernetes nodes",
    "kubernetes_pod_annotations": "steps are processes on this machine, not Kubernetes pods",
    "kubernetes_pod_labels": "steps are processes on this machine, not Kubernetes pods",
    "dependencies": "the runner starts each step in the run's work folder and copies no files into "
    "it: have an earlier node write them as outputs, or read them from the data connection",
}
"""Node properties that must be empty, and why (the reason is part of the refusal)."""
UNSUPPORTED_RESOURCES = ("cpu", "cpu_limit", "memory", "memory_limit")


def appliance_images() -> set[str]:
    """Images a node may name as its runtime image: the ones steps really run in (the controller
    runs them; the workbench image is where they were written), in every flavour."""
    tags = set()
    for name in ("controller", "workbench"):
        spec = CATALOG[name]
        for flavor in FLAVORS:
            if flavor == "cpu" or spec.gpu_requirements is not None:
                tags.add(spec.tag(flavor))
    return tags


def gpu_count() -> int:
    """NVIDIA devices on this host (what a step started here can use)."""
    return len(list(Path("/dev").glob("nvidia[0-9]*")))


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _env_list(value: Any) -> dict[str, str]:
    """Elyra's ``env_vars``: ``[{"env_var": NAME, "value": V}]`` (older files: ``"NAME=V"``)."""
    out: dict[str, str] = {}
    for item in value if isinstance(value, list) else []:
        if isinstance(item, dict) and item.get("env_var"):
            out[str(item["env_var"]).strip()] = "" if item.get("value") is None else str(item["value"])
        elif isinstance(item, str) and "=" in item:
            key, _, val = item.partition("=")
            out[key.strip()] = val
    return out


def _set(value: Any) -> bool:
    """Whether an optional Elyra property was filled in (empty strings, lists and None are not)."""
    if isinstance(value, dict):
        return any(_set(v) for v in value.values() if v not in ("G", "Gi"))
    return value not in (None, "", [], {}, 0)


def step_name(label: str, taken: set[str]) -> str:
    """A step name from a node's label (``load data.ipynb`` -> ``load-data``), unique in the file."""
    base = re.sub(r"\.(ipynb|py)$", "", label.strip())
    base = re.sub(r"[^A-Za-z0-9_-]+", "-", base).strip("-_") or "step"
    if not base[0].isalpha():
        base = f"step-{base}"
    return _unique(base, taken, "-")


def output_name(spec: str, taken: set[str]) -> str:
    """The name of an output: the key of ``FILE#KEY``, else the file's stem (made a valid name)."""
    file, _, key = spec.partition("#")
    base = key or Path(file).stem
    base = re.sub(r"[^A-Za-z0-9_-]+", "_", base).strip("_") or "output"
    if not base[0].isalpha():
        base = f"o_{base}"
    return _unique(base, taken, "_")


def _unique(base: str, taken: set[str], sep: str) -> str:
    """``base``, or ``base{sep}2``, ``base{sep}3``... whichever is not ``taken`` yet; taken from now."""
    name, n = base, 2
    while name in taken:
        name, n = f"{base}{sep}{n}", n + 1
    taken.add(name)
    return name


class _Node:
    """One execution node as read from the file."""

    def __init__(self, raw: dict[str, Any]) -> None:
        self.raw = raw
        self.id = str(raw.get("id", ""))
        app = _dict(raw.get("app_data"))
        self.params: dict[str, Any] = _dict(app.get("component_parameters"))
        ui = _dict(app.get("ui_data"))
        # Elyra keeps the label shown on the canvas in ui_data (app_data.label is often empty).
        self.label = str(ui.get("label") or app.get("label") or self.params.get("filename") or self.id)
        self.op = str(raw.get("op", ""))
        self.parents: list[str] = []
        for port in raw.get("inputs") or []:
            for link in port.get("links") or [] if isinstance(port, dict) else []:
                if isinstance(link, dict) and link.get("node_id_ref"):
                    self.parents.append(str(link["node_id_ref"]))

    @property
    def where(self) -> str:
        return f"node {self.label!r}"


def _order(nodes: dict[str, _Node], add: Any) -> list[_Node] | None:
    """Nodes in an order where every parent comes first (file order among independent nodes);
    None after reporting a cycle."""
    ordered: list[_Node] = []
    state: dict[str, str] = {}

    def visit(node: _Node, trail: list[str]) -> None:
        if state.get(node.id) == "done":
            return
        if state.get(node.id) == "visiting":
            cycle = [*trail[trail.index(node.id) :], node.id]
            names = " -> ".join(nodes[i].label for i in cycle)
            add(
                node.where,
                f"is part of a cycle ({names})",
                "remove one of the links so the nodes form a chain",
            )
            raise _CycleError
        state[node.id] = "visiting"
        for parent in node.parents:
            if parent in nodes:
                visit(nodes[parent], [*trail, node.id])
        state[node.id] = "done"
        ordered.append(node)

    for node in nodes.values():
        try:
            visit(node, [])
        except _CycleError:
            return None
    return ordered


class _CycleError(Exception):
    pass


def convert(data: Any, source: Path) -> Pipeline:
    """The ``Pipeline`` a ``.pipeline`` document describes; InvalidInputError lists every problem.

    ``source`` is the file's path: node file names are relative to its folder, as Elyra saves them,
    and its stem is the pipeline's name (so ``NAME.pipeline`` runs as ``NAME`` like ``NAME.yaml``).
    """
    problems: list[Problem] = []

    def add(where: str, message: str, hint: str | None = None) -> None:
        problems.append(Problem(where, message, None, hint))

    def fail() -> InvalidInputError:
        return InvalidInputError(str(source), problems)

    primary = _primary(data, add)
    if primary is None:
        raise fail()
    app = _dict(primary.get("app_data"))
    props = _dict(app.get("properties"))
    defaults = _dict(props.get("pipeline_defaults"))
    version = app.get("version")
    if version != ELYRA_PIPELINE_VERSION:
        add(
            "pipeline",
            f"Elyra pipeline version {version!r}; this appliance reads version {ELYRA_PIPELINE_VERSION}",
            "open the file in the workbench's pipeline editor (Elyra 4.1) and save it to migrate it",
        )
    pipeline_env = _env_list(defaults.get("env_vars"))
    _check_properties("pipeline defaults", defaults, add)
    model = pipeline_env.pop(MODEL_VAR, "").strip()
    if not model:
        add(
            "pipeline defaults",
            f"no {MODEL_VAR} environment variable: the pipeline does not say which model it works on",
            f"Pipeline Properties > Environment Variables: add {MODEL_VAR} = the registered model's name",
        )
    experiment = pipeline_env.pop(EXPERIMENT_VAR, "").strip() or None
    step_defaults = {k: pipeline_env.pop(k) for k in list(pipeline_env) if k in STEP_VARS}
    parameters = _parameters(props.get("pipeline_parameters"), add)

    nodes: dict[str, _Node] = {}
    for raw in primary.get("nodes") or []:
        if not isinstance(raw, dict):
            continue
        node = _Node(raw)
        if raw.get("type") == "super_node":
            add(node.where, "is a super node", "expand it (right-click > Expand Supernode) and save")
            continue
        if raw.get("type") != "execution_node":
            continue  # binding nodes and the like carry no work
        if node.op not in (NOTEBOOK_OP, PYTHON_OP):
            add(
                node.where,
                f"op {node.op!r}: the appliance runs notebook and Python script nodes only",
                "replace it with a notebook or a Python script that does the same work",
            )
            continue
        nodes[node.id] = node
    for node in nodes.values():
        for parent in node.parents:
            if parent not in nodes:
                add(node.where, f"is linked to node id {parent!r}, which is not a notebook or script node")
    if not nodes and not problems:
        add("pipeline", "has no nodes", "drag a notebook or a Python script onto the canvas")
    ordered = _order(nodes, add)
    if ordered is None:  # still check every node, so one edit fixes everything
        ordered = list(nodes.values())

    steps: list[dict[str, Any]] = []
    taken: set[str] = set()
    names: dict[str, str] = {}
    written: dict[str, list[str]] = {}
    for node in ordered:
        step = _step(node, source, step_defaults, parameters, taken, add)
        names[node.id] = step["name"]
        ancestors = _ancestors(node, nodes)
        inputs = sorted({f.split("#", 1)[0] for a in ancestors for f in written.get(a, [])})
        if inputs:
            step["inputs"] = inputs
        written[node.id] = list(step.get("outputs", {}).values())
        steps.append(step)
    if problems:
        raise fail()

    document = {
        "name": source.stem,
        "description": str(props.get("description") or ""),
        "model": model,
        "parameters": parameters,
        "env": pipeline_env,
        "steps": steps,
    }
    if experiment:
        document["experiment"] = experiment
    return _validate(document, source, {v: nodes[k].label for k, v in names.items()})


def _primary(data: Any, add: Any) -> dict[str, Any] | None:
    if not isinstance(data, dict) or not isinstance(data.get("pipelines"), list) or not data["pipelines"]:
        add("", "not an Elyra pipeline: no 'pipelines' list", "save the pipeline from the pipeline editor")
        return None
    pipelines = [p for p in data["pipelines"] if isinstance(p, dict)]
    primary_id = data.get("primary_pipeline")
    primary = next((p for p in pipelines if p.get("id") == primary_id), pipelines[0] if pipelines else None)
    if primary is None:
        add("", "no primary pipeline in the file")
    return primary


def _parameters(value: Any, add: Any) -> dict[str, str | int | float | bool]:
    """Elyra's pipeline parameters (``[{name, default_value: {type, value}}]``) as defaults."""
    out: dict[str, str | int | float | bool] = {}
    for item in value if isinstance(value, list) else []:
        if not isinstance(item, dict) or not item.get("name"):
            continue
        default = item.get("default_value")
        raw = default.get("value") if isinstance(default, dict) else default
        if raw is None or raw == "":
            if item.get("required"):
                add(
                    f"pipeline parameter {item['name']!r}",
                    "is required but has no default value",
                    "give it a default value in Pipeline Properties",
                )
            raw = ""
        out[str(item["name"])] = raw if isinstance(raw, str | int | float | bool) else str(raw)
    return out


def _check_properties(where: str, params: Mapping[str, Any], add: Any) -> None:
    """Refuse what the runner cannot honour, each naming ``where`` and the property."""
    image = params.get("runtime_image")
    allowed = appliance_images()
    if image and image not in allowed:
        add(
            where,
            f"runtime_image {image!r}: steps run in the appliance's own environment, not in another image",
            f"clear Runtime Image, or choose one of {', '.join(sorted(allowed))}",
        )
    for key, why in UNSUPPORTED_LISTS.items():
        if _set(params.get(key)):
            add(where, f"{key} is set: {why}", f"clear {key} in the node's properties")
    for key in UNSUPPORTED_RESOURCES:
        if _set(params.get(key)):
            add(
                where,
                f"{key} {params[key]!r}: the appliance does not reserve or limit a step's CPU or memory",
                f"clear {key}",
            )
    if _set(params.get("kubernetes_shared_mem_size")):
        add(
            where,
            "kubernetes_shared_mem_size is set: steps are not containers with their own /dev/shm",
            "clear Shared Memory Size",
        )
    gpu = params.get("gpu")
    if _set(gpu):
        try:
            wanted = int(str(gpu))
        except (TypeError, ValueError):
            wanted = -1
        have = gpu_count()
        if wanted < 0 or wanted > have:
            add(
                where,
                f"gpu {gpu!r}: this host has {have} GPU(s), and a step sees all of them",
                f"set GPU to a number from 0 to {have}",
            )


def _step(
    node: _Node,
    source: Path,
    defaults: Mapping[str, str],
    parameters: Mapping[str, Any],
    taken: set[str],
    add: Any,
) -> dict[str, Any]:
    params = node.params
    _check_properties(node.where, params, add)
    step: dict[str, Any] = {"name": step_name(node.label, taken)}
    filename = str(params.get("filename") or "")
    path = source.parent / filename
    if not filename:
        add(node.where, "has no filename", "choose the notebook or script in the node's properties")
    elif not path.is_file():
        add(
            node.where,
            f"filename {filename!r} not found ({path})",
            "fix the path (relative to the .pipeline file)",
        )
    elif node.op == NOTEBOOK_OP and path.suffix != ".ipynb":
        add(node.where, f"filename {filename!r} is not a notebook (.ipynb)")
    elif node.op == PYTHON_OP and path.suffix != ".py":
        add(node.where, f"filename {filename!r} is not a Python script (.py)")
    env = {**_env_list(params.get("env_vars"))}
    settings = {**defaults, **{k: env.pop(k) for k in list(env) if k in STEP_VARS}}
    for key in [k for k in env if k in RESERVED]:
        add(
            node.where,
            f"env_vars {key} belongs to the pipeline, not a node",
            "move it to Pipeline Properties",
        )
        env.pop(key)
    chosen = [str(p) for p in params.get("pipeline_parameters") or [] if isinstance(p, str)]
    for name in chosen:
        if name not in parameters:
            add(node.where, f"pipeline_parameters names {name!r}, which is not a pipeline parameter")
    if node.op == NOTEBOOK_OP:
        step["notebook"] = filename
        if chosen:
            step["args"] = {name: f"{{params.{name}}}" for name in chosen}
    else:
        step["run"] = ["{python}", str(path.resolve())]
        env |= {name: f"{{params.{name}}}" for name in chosen}
    if env:
        step["env"] = env
    for var, field in STEP_VARS.items():
        if var in settings:
            try:
                step[field] = int(settings[var]) if field == "retries" else float(settings[var])
            except ValueError:
                add(node.where, f"env_vars {var} {settings[var]!r} is not a number")
    outputs: dict[str, str] = {}
    names: set[str] = set()
    for spec in params.get("outputs") or []:
        if isinstance(spec, str) and spec.strip():
            outputs[output_name(spec.strip(), names)] = spec.strip()
    if outputs:
        step["outputs"] = outputs
    return step


def _ancestors(node: _Node, nodes: Mapping[str, _Node]) -> set[str]:
    seen: set[str] = set()
    stack = [p for p in node.parents if p in nodes]
    while stack:
        current = stack.pop()
        if current not in seen:
            seen.add(current)
            stack.extend(p for p in nodes[current].parents if p in nodes)
    return seen


def _validate(document: dict[str, Any], source: Path, labels: Mapping[str, str]) -> Pipeline:
    """The runner's own checks (pydantic and the loader's cross-checks), reported per node."""
    from appliance.pipelines.loader import _pydantic_problem, cross_check

    problems: list[Problem] = []
    pipeline: Pipeline | None = None
    try:
        pipeline = Pipeline.model_validate(document)
    except ValidationError as err:
        problems.extend(_pydantic_problem(dict(e), {}) for e in err.errors())
    problems.extend(cross_check(document, {}))
    if problems or pipeline is None:
        steps = document["steps"]

        def where(path: str) -> str:
            match = re.match(r"steps\.(\d+)(\.(.*))?$", path)
            if not match or int(match.group(1)) >= len(steps):
                return path
            label = labels.get(steps[int(match.group(1))]["name"], "?")
            return f"node {label!r}" + (f": {match.group(3)}" if match.group(3) else "")

        unique = {(where(p.path), p.message): p for p in problems}
        raise InvalidInputError(str(source), [Problem(w, m, None, p.hint) for (w, m), p in unique.items()])
    return pipeline


def load_elyra(path: Path) -> Pipeline:
    """Read, check and convert one ``.pipeline`` file."""
    if not path.is_file():
        raise InvalidInputError(str(path), [Problem("", "file not found")])
    try:
        data = json.loads(path.read_text())
    except ValueError as err:
        raise InvalidInputError(str(path), [Problem("", f"not valid JSON: {err}")]) from err
    return convert(data, path)


def to_yaml_document(pipeline: Pipeline, source: Path, target: Path) -> dict[str, Any]:
    """The pipeline as the YAML form's mapping, for ``appliance pipeline export``: defaults left
    out, notebook paths made relative to the folder the YAML is written to (where the runner
    looks them up)."""
    import os

    document = pipeline.model_dump(exclude_defaults=True)
    for step in document["steps"]:
        if "notebook" in step:
            notebook = (source.parent / step["notebook"]).resolve()
            step["notebook"] = os.path.relpath(notebook, target.resolve().parent)
    return document


def export_text(source: Path, target: Path | None) -> str:
    """``appliance pipeline export``: the YAML form of a drawing (checked first, so a drawing the
    runner would refuse exports nothing), with a header naming where it came from."""
    import yaml

    if source.suffix != ".pipeline":
        raise InvalidInputError(
            str(source),
            [Problem("", "not a .pipeline file", None, "give the file saved by the pipeline editor")],
        )
    pipeline = load_elyra(source)
    document = to_yaml_document(pipeline, source, target or source.with_suffix(".yaml"))
    header = f"# Exported from {source.name} (drawn in the workbench); runs as pipeline {pipeline.name!r}.\n"
    return header + yaml.safe_dump(document, sort_keys=False, allow_unicode=True)
