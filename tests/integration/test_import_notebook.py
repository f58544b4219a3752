"""The workbench's worked notebook (images/workbench/notebooks/import_your_model.ipynb), executed
cell by cell in a real kernel against a real ``mlflow server`` and a filesystem data connection,
with the environment the workbench gives its kernels: both models it trains end up registered,
imported and champion.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration._lifecycle_fixtures import REPO, Services, answers, cli, services

pytestmark = pytest.mark.integration
__all__ = ["services"]  # the module-scoped fixture, imported to be used here

NOTEBOOK = REPO / "images" / "workbench" / "notebooks" / "import_your_model.ipynb"


def test_the_import_notebook_runs_end_to_end(
    services: Services, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nbformat
    from mlflow import MlflowClient
    from nbclient import NotebookClient

    ans = answers(tmp_path / "appliance.yaml", services, "filesystem")
    state = tmp_path / "state"
    seeded = cli(ans, state, "data", "seed", "--dataset", "breast_cancer")
    assert seeded.returncode == 0, seeded.stderr
    # What the workbench's kernels find in their environment (the data connection, MLflow).
    for key, value in {
        "APPLIANCE_DATA_KIND": "filesystem",
        "APPLIANCE_DATA_ROOT": str(state / "data"),
        "MLFLOW_TRACKING_URI": services.mlflow_uri,
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        "PYTHONPATH": str(REPO),
    }.items():
        monkeypatch.setenv(key, value)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    params = next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", []))
    assert 'DATASET = "breast_cancer"' in params.source
    # Stated requirements: inferring them costs ~10 s per model and proves nothing here.
    params.source += '\nPIP_REQUIREMENTS = ["scikit-learn", "xgboost"]'
    NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()

    printed = "\n".join(
        out.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
    )
    assert "breast_cancer: 569 rows, 30 features" in printed
    assert (
        "==> breast_cancer_sklearn v1: promoted" in printed
        and "==> breast_cancer_xgboost v1: promoted" in printed
    )
    assert "parity" in printed and "register" in printed
    client = MlflowClient(tracking_uri=services.mlflow_uri)
    for name, framework in (("breast_cancer_sklearn", "sklearn"), ("breast_cancer_xgboost", "xgboost")):
        assert client.get_registered_model(name).aliases == {"champion": "1"}
        tags = client.get_model_version(name, "1").tags
        assert tags["appliance.framework"] == framework and tags["appliance.dataset"] == "breast_cancer"
        assert float(tags["appliance.test_accuracy"]) > 0.9
