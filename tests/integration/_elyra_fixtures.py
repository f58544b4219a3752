"""``.pipeline`` documents built the way Elyra 4.1's pipeline editor saves them.

The layout (pipeline-flow schema 3.0, Elyra pipeline version 8, the canvas label in
``app_data.ui_data.label``, every generic property saved even when empty, links on the input
port) follows the files Elyra's own test suite keeps under ``elyra/tests/pipeline/resources``.
Tests build their drawings with ``drawing()`` and change one property to test a refusal.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

NOTEBOOK_SVG = "/static/elyra/notebook.svg"
PYTHON_SVG = "/static/elyra/python.svg"


def _port(kind: str, links: list[dict[str, str]] | None = None) -> dict[str, Any]:
    port: dict[str, Any] = {
        "id": "inPort" if kind == "in" else "outPort",
        "app_data": {
            "ui_data": {
                "cardinality": {"min": 0, "max": -1},
                "label": "Input Port" if kind == "in" else "Output Port",
            }
        },
    }
    if links:
        port["links"] = links
    return port


def node(
    node_id: str,
    filename: str,
    parents: tuple[str, ...] = (),
    outputs: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    x: int = 100,
    y: int = 100,
    label: str | None = None,
    **properties: Any,
) -> dict[str, Any]:
    """One generic node: a notebook (``.ipynb``) or a Python script (``.py``)."""
    notebook = filename.endswith(".ipynb")
    params: dict[str, Any] = {
        "dependencies": [],
        "include_subdirectories": False,
        "outputs": list(outputs),
        "env_vars": [{"env_var": k, "value": v} for k, v in (env or {}).items()],
        "kubernetes_pod_annotations": [],
        "kubernetes_pod_labels": [],
        "kubernetes_secrets": [],
        "kubernetes_shared_mem_size": {},
        "kubernetes_tolerations": [],
        "mounted_volumes": [],
        "filename": filename,
        **properties,
    }
    links = [{"id": f"{p}-{node_id}", "node_id_ref": p, "port_id_ref": "outPort"} for p in parents]
    return {
        "id": node_id,
        "type": "execution_node",
        "op": "execute-notebook-node" if notebook else "execute-python-node",
        "app_data": {
            "component_parameters": params,
            "label": "",
            "ui_data": {
                "label": label or Path(filename).name,
                "image": NOTEBOOK_SVG if notebook else PYTHON_SVG,
                "x_pos": x,
                "y_pos": y,
                "description": "Run notebook file" if notebook else "Run Python script",
            },
        },
        "inputs": [_port("in", links)],
        "outputs": [_port("out")],
    }


APPLIANCE_IMAGE = "localhost/appliance-controller:latest"
"""The runtime image the appliance's runtime-images entry offers (Elyra wants one per node)."""


def drawing(
    name: str,
    nodes: list[dict[str, Any]],
    env: dict[str, str] | None = None,
    parameters: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A whole ``.pipeline`` document; ``env`` is the pipeline's default environment and
    ``parameters`` its pipeline parameters (string defaults)."""
    return {
        "doc_type": "pipeline",
        "version": "3.0",
        "json_schema": "http://api.dataplatform.ibm.com/schemas/common-pipeline/pipeline-flow/"
        "pipeline-flow-v3-schema.json",
        "id": "elyra-auto-generated-pipeline",
        "primary_pipeline": "primary",
        "pipelines": [
            {
                "id": "primary",
                "nodes": nodes,
                "app_data": {
                    "ui_data": {"comments": []},
                    "version": 8,
                    "properties": {
                        "pipeline_defaults": {
                            "kubernetes_pod_annotations": [],
                            "kubernetes_shared_mem_size": {},
                            "kubernetes_tolerations": [],
                            "kubernetes_pod_labels": [],
                            "mounted_volumes": [],
                            "env_vars": [{"env_var": k, "value": v} for k, v in (env or {}).items()],
                            "kubernetes_secrets": [],
                            "runtime_image": APPLIANCE_IMAGE,
                        },
                        "name": name,
                        "runtime": "Generic",
                        "pipeline_parameters": [
                            {
                                "name": k,
                                "description": "",
                                "default_value": {"type": "String", "value": v},
                                "required": False,
                            }
                            for k, v in (parameters or {}).items()
                        ],
                    },
                },
                "runtime_ref": "",
            }
        ],
        "schemas": [],
    }


def notebook_file(path: Path, source: str) -> Path:
    """A one-cell notebook (nbformat 4) holding ``source``, with a ``parameters`` cell before it."""
    cells = [
        {"cell_type": "code", "metadata": {"tags": ["parameters"]}, "source": "", "outputs": [],
         "execution_count": None},
        {"cell_type": "code", "metadata": {}, "source": source, "outputs": [], "execution_count": None},
    ]  # fmt: skip
    path.write_text(
        json.dumps(
            {
                "cells": cells,
                "metadata": {
                    "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                    "language_info": {"name": "python"},
                },
                "nbformat": 4,
                "nbformat_minor": 5,
            }
        )
    )
    return path


TRAIN_NOTEBOOK = (
    "import json, os\n"
    "key = open('dataset_key.txt').read().strip()\n"
    "json.dump({'version': '3', 'trained_on': key, 'step': os.environ['APPLIANCE_STEP']},"
    " open('registration.json', 'w'))\n"
)
"""The drawn retrain's training notebook: reads what the script wrote, writes a version."""
PREPARE_SCRIPT = (
    "import os, pathlib\n"
    "pathlib.Path('dataset_key.txt').write_text('datasets/' + os.environ['DATASET'] + '/latest.csv')\n"
)
"""The drawn retrain's first node: a Python script that writes the file the notebook reads."""


def retrain_drawing(folder: Path, name: str = "drawn", model: str = "drawn-model") -> Path:
    """A two-node drawing (script -> notebook) with its files, saved as ``folder/NAME.pipeline``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "prepare.py").write_text(PREPARE_SCRIPT)
    notebook_file(folder / "train.ipynb", TRAIN_NOTEBOOK)
    doc = drawing(
        name,
        [
            node(
                "n-prepare",
                "prepare.py",
                outputs=("dataset_key.txt",),
                env={"STAGE": "prepare"},
                x=80,
                y=120,
            ),
            node(
                "n-train",
                "train.ipynb",
                parents=("n-prepare",),
                outputs=("registration.json#version",),
                env={"APPLIANCE_TIMEOUT_SECONDS": "300", "APPLIANCE_RETRIES": "1"},
                x=360,
                y=120,
            ),
        ],
        env={"APPLIANCE_MODEL": model, "DATASET": "iris"},
    )
    path = folder / f"{name}.pipeline"
    path.write_text(json.dumps(doc, indent=2))
    return path
