"""The appliance code an image holds: its digest (the same for a checkout, a wheel of it and an
installation), the dependency layer's digest that leaves that code out, and the verdict on an
image's labels that preflight and ``bundle create`` act on."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from appliance.images.build import CODE_LABEL, RECIPE_LABEL, StaleCode, stale_code, wheelhouse_digest
from appliance.images.catalog import CATALOG, LABEL
from appliance.images.code_digest import is_code, tree_code_digest, wheel_code_digest

FILES = {
    "__init__.py": b'"""pkg"""\n',
    "engine.py": b"def up():\n    return 1\n",
    "stack/services.yaml": b"serving: {}\n",
    "workloads/serving/proto_gen/v2.proto": b'syntax = "proto3";\n',
}


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    package = root / "appliance"
    for rel, data in files.items():
        path = package / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return package


def write_wheel(path: Path, files: dict[str, bytes], metadata: str = "Requires-Dist: numpy\n") -> Path:
    """A wheel-shaped zip: the package's files in reverse order, and dist-info beside them."""
    with zipfile.ZipFile(path, "w") as archive:
        for rel, data in sorted(files.items(), reverse=True):
            archive.writestr(f"appliance/{rel}", data)
        archive.writestr(
            "mlops_appliance-0.2.0.dist-info/METADATA",
            f"Metadata-Version: 2.1\nName: mlops-appliance\n{metadata}\nA README that changes.\n",
        )
        archive.writestr("mlops_appliance-0.2.0.dist-info/RECORD", "whatever")
    return path


def test_a_checkout_and_its_wheel_have_the_same_digest(tmp_path: Path) -> None:
    package = write_tree(tmp_path / "checkout", FILES)
    # what the wheel leaves out, or an installation adds, does not count
    (package / "__pycache__").mkdir()
    (package / "__pycache__" / "engine.cpython-311.pyc").write_bytes(b"\x00compiled")
    (package / "workloads/serving/proto_gen/v2_pb2.pyi").write_text("stub")
    (package / "notes.txt").write_text("scratch")
    wheel = write_wheel(tmp_path / "mlops_appliance-0.2.0-py3-none-any.whl", FILES)
    assert tree_code_digest(package) == wheel_code_digest(wheel)
    assert len(tree_code_digest(package)) == 16


@pytest.mark.parametrize(
    "change",
    [
        {"engine.py": b"def up():\n    return 2\n"},  # one byte of code
        {"stack/services.yaml": b"serving: {replicas: 2}\n"},  # package data
        {"gate.py": b"x = 1\n"},  # a new module
    ],
    ids=["code", "data", "new-module"],
)
def test_any_change_of_code_changes_the_digest(tmp_path: Path, change: dict[str, bytes]) -> None:
    before = tree_code_digest(write_tree(tmp_path / "a", FILES))
    after = tree_code_digest(write_tree(tmp_path / "b", {**FILES, **change}))
    assert before != after


def test_a_renamed_module_changes_the_digest(tmp_path: Path) -> None:
    renamed = {("engine2.py" if k == "engine.py" else k): v for k, v in FILES.items()}
    assert tree_code_digest(write_tree(tmp_path / "a", FILES)) != tree_code_digest(
        write_tree(tmp_path / "b", renamed)
    )


def test_what_counts_as_code() -> None:
    assert is_code("appliance/monitoring/write_gate.py")
    assert is_code("appliance/workloads/serving/proto_gen/grpc_predict_v2.proto")
    assert not is_code("appliance/workloads/serving/proto_gen/grpc_predict_v2_pb2.pyi")
    assert not is_code("appliance/__pycache__/engine.cpython-311.py")
    assert not is_code("tui/app.py")
    assert not is_code("mlops_appliance-0.2.0.dist-info/METADATA.json")


def test_the_dependency_layer_ignores_the_projects_code_but_not_its_requirements(tmp_path: Path) -> None:
    house = tmp_path / "wheelhouse"
    house.mkdir()
    (house / "numpy-2.0-cp311-none-any.whl").write_bytes(b"numpy bytes")
    project = house / "mlops_appliance-0.2.0-py3-none-any.whl"
    write_wheel(project, FILES)
    first = wheelhouse_digest(house)

    write_wheel(project, {**FILES, "engine.py": b"changed"})  # new code, same requirements
    assert wheelhouse_digest(house) == first
    write_wheel(project, FILES, metadata="Requires-Dist: numpy\nRequires-Dist: httpx\n")
    assert wheelhouse_digest(house) != first  # a new dependency reinstalls the layer
    write_wheel(project, FILES)
    (house / "numpy-2.0-cp311-none-any.whl").write_bytes(b"other numpy bytes")
    assert wheelhouse_digest(house) != first


def labels(name: str, code: str | None, flavor: str = "cpu") -> dict[str, str]:
    out = {LABEL: name, f"{LABEL}.flavor": flavor, RECIPE_LABEL: "r"}
    if code is not None:
        out[CODE_LABEL] = code
    return out


def test_an_image_holding_this_code_passes_and_one_holding_other_code_does_not() -> None:
    tag = "localhost/appliance-serving:latest"
    assert stale_code(tag, labels("serving", "aaaa"), "aaaa") is None
    stale = stale_code(tag, labels("serving", "bbbb"), "aaaa")
    assert stale == StaleCode(tag, "bbbb", "aaaa", "appliance images build serving")
    assert "holds appliance code bbbb, not this appliance's aaaa" in str(stale)


def test_an_unlabelled_image_is_stale_and_the_fix_names_its_flavour() -> None:
    stale = stale_code("localhost/appliance-controller-gpu:latest", labels("controller", None, "gpu"), "aaaa")
    assert stale is not None and stale.held is None
    assert stale.rebuild == "appliance images build controller --flavor gpu"
    assert "built before images named the appliance code" in str(stale)


@pytest.mark.parametrize("name", ["prometheus-debian", "nginx-debian", "seaweedfs-pypi", "not-ours", ""])
def test_images_without_appliance_code_have_nothing_to_compare(name: str) -> None:
    assert stale_code("some/image:1", labels(name, None), "aaaa") is None


def test_every_image_installing_the_project_carries_its_code() -> None:
    carrying = sorted(name for name, spec in CATALOG.items() if spec.carries_project)
    assert carrying == ["controller", "mlflow", "serving", "trainer", "workbench"]
    for name in carrying:  # and its Containerfile installs the code in a layer of its own
        text = CATALOG[name].containerfile.read_text()
        assert "ARG CODE_DIGEST" in text
        layer = text.split("ARG CODE_DIGEST", 1)[1]
        assert "--no-deps --force-reinstall /wheelhouse/mlops_appliance-*.whl" in layer
