"""The appliance as a runtime of Elyra's pipeline editor: its configuration, and what Run does.

Pressing Run in the editor sends the drawing to the Jupyter server; Elyra hands it to the
processor registered for the runtime (``appliance.pipelines.elyra_processor``, the only module
that imports Elyra). The processor is thin; the work is here, importable without Elyra:

1. ``find_drawing``: the saved ``.pipeline`` file that was submitted (Elyra saves before it
   submits and sends only the file's base name, so the file is the one under the server's root
   with that name whose nodes name the same files);
2. ``publish``: convert it (``appliance.pipelines.elyra``: refused with every problem, naming the
   nodes, before anything is copied), then copy it and the files its nodes run into the folder
   the controller reads pipelines from (``STATE/pipelines``), so the controller runs, schedules
   and retrains from that snapshot on any runtime, even where it cannot see the workbench's files;
3. ``submit``: ``POST /pipelines/NAME/run`` to the controller with its webhook token, read from
   the secret file the workbench's environment names (the token is never in a notebook or in the
   runtime configuration).

Elyra's runtime types are a closed list; the appliance's runtime uses the ``ARGO`` member, which
no processor of Elyra 4.1 claims (the editor shows the configuration's display name).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx

from appliance.errors import ApplianceError
from appliance.images.catalog import CATALOG
from appliance.names import check_name
from appliance.pipelines.elyra import convert

RUNTIME_NAME = "appliance"
"""Processor name, runtime schema name and configuration name (all three must agree)."""
RUNTIME_TYPE = "ARGO"
SCHEMASPACE_ID = "130b8e00-de7c-4b32-b553-b4a52824a3b5"
"""Elyra's ``runtimes`` schemaspace."""
URL_VAR = "APPLIANCE_CONTROLLER_URL"
TOKEN_FILE_VAR = "APPLIANCE_CONTROLLER_TOKEN_FILE"
PIPELINES_DIR_VAR = "APPLIANCE_PIPELINES_DIR"
SUBMIT_TIMEOUT_S = 30.0
MAX_SEARCH = 2000
"""Files looked at when finding the submitted drawing under the server's root."""


def schema() -> dict[str, Any]:
    """Elyra's JSON schema of the appliance's runtime configurations."""
    return {
        "$schema": "https://raw.githubusercontent.com/elyra-ai/elyra/main/elyra/metadata/schemas/meta-schema.json",
        "$id": "https://mlops-appliance.local/schemas/elyra-runtime-appliance.json",
        "title": "MLOps Appliance",
        "name": RUNTIME_NAME,
        "schemaspace": "runtimes",
        "schemaspace_id": SCHEMASPACE_ID,
        "metadata_class_name": "elyra.pipeline.runtimes_metadata.RuntimesMetadata",
        "runtime_type": RUNTIME_TYPE,
        "uihints": {"title": "MLOps Appliance runtimes", "icon": "elyra:runtimes"},
        "properties": {
            "schema_name": {"title": "Schema Name", "type": "string", "const": RUNTIME_NAME},
            "display_name": {"title": "Display Name", "type": "string", "minLength": 1},
            "metadata": {
                "description": "Additional data specific to this metadata",
                "type": "object",
                "properties": {
                    "runtime_type": {
                        "title": "Runtime Type",
                        "type": "string",
                        "const": RUNTIME_TYPE,
                        "uihints": {"hidden": True},
                    },
                    "description": {"title": "Description", "type": "string"},
                    "api_endpoint": {
                        "title": "Controller URL",
                        "description": "The appliance's controller; runs start with its webhook token.",
                        "type": "string",
                        "format": "uri",
                        "uihints": {"category": "Appliance"},
                    },
                    "tags": {
                        "title": "Tags",
                        "type": "array",
                        "uniqueItems": True,
                        "items": {"type": "string"},
                    },
                },
                "required": ["api_endpoint"],
            },
        },
        "required": ["schema_name", "display_name", "metadata"],
    }


def runtime_config(ctx: Any, services: Any) -> str:
    """Config generator (``config_files`` of the workbench): the runtime configuration Elyra lists
    under Run, pointing at the controller as the workbench reaches it."""
    workbench = services.get("workbench")
    endpoint = workbench.env.get(URL_VAR, "") if workbench is not None else ""
    document = {
        "display_name": "MLOps Appliance",
        "schema_name": RUNTIME_NAME,
        "metadata": {
            "runtime_type": RUNTIME_TYPE,
            "description": "Runs the pipeline on this appliance's pipeline runner (the controller)",
            "api_endpoint": endpoint,
        },
    }
    return json.dumps(document, indent=2) + "\n"


def runtime_image_config(ctx: Any, services: Any) -> str:
    """Config generator: the image Elyra offers for every node (it wants one for any runtime but
    its local one), the image the controller runs steps in, which the converter accepts."""
    controller = services.get("controller")
    image = getattr(controller, "image", None) or CATALOG["controller"].tag()
    document = {
        "display_name": "MLOps Appliance (the controller's environment)",
        "schema_name": "runtime-image",
        "metadata": {
            "description": "Steps run in the appliance's own environment, where the controller runs",
            "image_name": image,
            "pull_policy": "IfNotPresent",
        },
    }
    return json.dumps(document, indent=2) + "\n"


def _node_files(document: Any, folder: Path) -> set[str]:
    """Resolved paths of the files a drawing's nodes run (nodes are relative to ``folder``)."""
    files = set()
    for pipeline in document.get("pipelines", []) if isinstance(document, dict) else []:
        for node in pipeline.get("nodes", []) if isinstance(pipeline, dict) else []:
            params = (node.get("app_data") or {}).get("component_parameters") or {}
            if params.get("filename"):
                files.add(os.path.normpath(folder / str(params["filename"])))
    return files


def find_drawing(root: Path, basename: str, submitted: Iterable[str]) -> Path:
    """The saved drawing Elyra submitted: named ``basename`` under ``root``, whose nodes run the
    ``submitted`` files (paths relative to ``root``, as Elyra sends them)."""
    if Path(basename).name != basename or not basename.endswith(".pipeline"):
        raise ApplianceError(
            f"{basename!r} is not a .pipeline file name", fix="save the pipeline, then run it"
        )
    wanted = {os.path.normpath(root / f) for f in submitted}
    matches = []
    for count, path in enumerate(root.rglob(basename)):
        if count > MAX_SEARCH:
            break
        if any(part.startswith(".") for part in path.relative_to(root).parts[:-1]):
            continue
        try:
            document = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if _node_files(document, path.parent) == wanted:
            matches.append(path)
    if len(matches) != 1:
        why = "no saved file" if not matches else f"{len(matches)} saved files"
        raise ApplianceError(
            f"{why} named {basename} under {root} has the nodes that were submitted",
            fix="save the pipeline (File > Save), then press Run again",
        )
    return matches[0]


def publish(drawing: Path, name: str, pipelines_dir: Path) -> Path:
    """Check the drawing, then copy it and its nodes' files to ``pipelines_dir/NAME.pipeline``
    and ``pipelines_dir/NAME.files/``. Nothing is written when the drawing is refused, and the
    published pair is replaced whole (files first, the ``.pipeline`` last, each by a rename)."""
    check_name(name, "pipeline name")
    document = json.loads(drawing.read_text())
    convert(document, drawing.with_name(f"{name}.pipeline"))  # refuses before anything is copied
    pipelines_dir.mkdir(parents=True, exist_ok=True)
    files_dir = pipelines_dir / f"{name}.files"
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=pipelines_dir))
    try:
        for index, node in enumerate(_nodes(document)):
            params = node["app_data"]["component_parameters"]
            source = drawing.parent / str(params["filename"])
            copied = f"{index:02d}-{source.name}"
            shutil.copy2(source, staging / copied)
            params["filename"] = f"{files_dir.name}/{copied}"
        old = pipelines_dir / f".{name}.files.old"
        shutil.rmtree(old, ignore_errors=True)
        if files_dir.exists():
            files_dir.rename(old)
        staging.rename(files_dir)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    target = pipelines_dir / f"{name}.pipeline"
    partial = pipelines_dir / f".{name}.pipeline.partial"
    partial.write_text(json.dumps(document, indent=2))
    partial.replace(target)
    return target


def _nodes(document: dict[str, Any]) -> list[dict[str, Any]]:
    primary = next(
        (p for p in document["pipelines"] if p.get("id") == document.get("primary_pipeline")),
        document["pipelines"][0],
    )
    return [n for n in primary.get("nodes", []) if n.get("type") == "execution_node"]


def submit(endpoint: str, token_file: Path, name: str) -> dict[str, Any]:
    """Start pipeline ``name`` on the controller; its answer (``status``, ``run_id``, ``model``)."""
    if not endpoint:
        raise ApplianceError(
            "the runtime configuration has no controller URL",
            fix=f"set Controller URL in the runtime configuration, or {URL_VAR} in the workbench",
        )
    try:
        token = token_file.read_text().strip()
    except OSError as err:
        raise ApplianceError(
            f"cannot read the controller's token from {token_file}: {err.strerror}",
            fix=f"run `appliance up` (it generates the token), or set {TOKEN_FILE_VAR}",
        ) from err
    url = f"{endpoint.rstrip('/')}/pipelines/{name}/run"
    try:
        answer = httpx.post(url, headers={"Authorization": f"Bearer {token}"}, timeout=SUBMIT_TIMEOUT_S)
    except httpx.HTTPError as err:
        raise ApplianceError(
            f"the controller at {endpoint} did not answer: {err}", fix="check `appliance status controller`"
        ) from err
    try:
        body = answer.json()
    except ValueError:
        body = {"error": answer.text[:200]}
    if answer.status_code == 409:
        raise ApplianceError(
            f"not started: {body.get('status')} ({body.get('detail')})",
            fix="wait for the model's current run to finish, then press Run again",
        )
    if answer.status_code != 202:
        raise ApplianceError(
            f"the controller refused the run ({answer.status_code}): {body.get('error')}",
            fix=body.get("fix") or "read the controller's log: appliance logs controller",
        )
    return dict(body)


def run_drawing(
    root: Path, basename: str, submitted: Iterable[str], name: str, endpoint: str
) -> dict[str, Any]:
    """What Run does: find, publish, submit. Locations come from the workbench's environment."""
    pipelines_dir = os.environ.get(PIPELINES_DIR_VAR)
    token_file = os.environ.get(TOKEN_FILE_VAR)
    if not pipelines_dir or not token_file:
        raise ApplianceError(
            f"the workbench does not know where the controller's pipelines and token are "
            f"({PIPELINES_DIR_VAR}, {TOKEN_FILE_VAR} unset)",
            fix="start the workbench with `appliance up`, which sets them",
        )
    drawing = find_drawing(root, basename, submitted)
    publish(drawing, name, Path(pipelines_dir))
    return submit(endpoint or os.environ.get(URL_VAR, ""), Path(token_file), name)
