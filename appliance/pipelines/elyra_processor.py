"""Elyra's side of the appliance runtime: the processor and the runtime schema it registers.

Loaded by Elyra inside the workbench's Jupyter server through the entry points
``elyra.pipeline.processors`` and ``metadata.schemas_providers`` (pyproject.toml); nothing else
imports this module, so the rest of the appliance never needs Elyra. The work itself is in
``appliance.pipelines.elyra_runtime``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import elyra.metadata
from elyra.metadata.manager import MetadataManager
from elyra.metadata.schema import SchemasProvider
from elyra.pipeline.processor import PipelineProcessor, PipelineProcessorResponse
from elyra.pipeline.runtime_type import RuntimeProcessorType

from appliance.errors import ApplianceError
from appliance.pipelines import elyra_runtime


class ApplianceResponse(PipelineProcessorResponse):
    """What the editor's dialog shows after Run: the run id and where to follow it."""

    _type = RuntimeProcessorType.get_instance_by_name(elyra_runtime.RUNTIME_TYPE)
    _name = elyra_runtime.RUNTIME_NAME

    def __init__(self, answer: dict[str, Any], endpoint: str) -> None:
        super().__init__()
        self.answer, self.endpoint = answer, endpoint

    def to_json(self) -> dict[str, Any]:
        run_id = self.answer.get("run_id")
        return {
            "platform": self.type,
            "run_id": run_id,
            "model": self.answer.get("model"),
            "run_url": f"{self.endpoint.rstrip('/')}/runs/{run_id}",
            "object_storage_url": None,
            "object_storage_path": None,
            "git_url": None,
        }


class ApplianceProcessor(PipelineProcessor):
    """Runs a drawing on the appliance's controller (see ``elyra_runtime``)."""

    _type = RuntimeProcessorType.get_instance_by_name(elyra_runtime.RUNTIME_TYPE)
    _name = elyra_runtime.RUNTIME_NAME

    def __init__(self, root_dir: str | None = None, **kwargs: Any) -> None:
        super().__init__(root_dir=root_dir, **kwargs)

    def process(self, pipeline: Any) -> PipelineProcessorResponse:
        config = MetadataManager(schemaspace="runtimes").get(pipeline.runtime_config)
        endpoint = str(config.metadata.get("api_endpoint") or "")
        submitted = [op.filename for op in pipeline.operations.values() if hasattr(op, "filename")]
        name = Path(pipeline.source or "").stem
        try:
            answer = elyra_runtime.run_drawing(
                Path(self.root_dir or "."), pipeline.source or "", submitted, name, endpoint
            )
        except ApplianceError as err:
            raise ValueError(str(err)) from err  # Elyra shows a ValueError's text in its dialog
        self.log.info("pipeline %s: run %s started on %s", name, answer.get("run_id"), endpoint)
        return ApplianceResponse(answer, endpoint)

    def export(
        self, pipeline: Any, pipeline_export_format: Any, pipeline_export_path: Any, overwrite: Any
    ) -> Any:
        raise ValueError("export with `appliance pipeline export FILE.pipeline -o FILE.yaml`")


class ApplianceSchemas(SchemasProvider):
    """Adds the appliance's runtime schema to Elyra's ``runtimes`` schemaspace, and Elyra's own
    ``runtime-image`` schema, which Elyra 4.1.0 ships with ``\\.`` escapes that its JSON loader
    refuses (so its runtime-images list, where nodes pick an image, stays empty without this)."""

    def get_schemas(self) -> list[dict[str, Any]]:
        return [elyra_runtime.schema(), _elyra_schema("runtime-image.json")]


def _elyra_schema(name: str) -> dict[str, Any]:
    text = (Path(elyra.metadata.__file__).parent / "schemas" / name).read_text()
    schema: dict[str, Any] = json.loads(re.sub(r'\\(?=[^"\\/bfnrtu])', "", text))
    return schema
