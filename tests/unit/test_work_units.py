"""How the run is spread over workers (tests/conftest.py ``work_unit_of``), checked rather than
written down: every module that starts cluster hosts runs in the cluster unit, beside the other
service tests, and every other service test stays in the one unit that keeps their order (they
share image tags and the engines' daemons)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import TESTS_DIR, work_unit_of

CLUSTER_HELPERS = {"tests.integration._cluster_hosts", "tests.integration._cluster_lab"}


def _imported(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_modules_that_start_cluster_hosts_are_the_cluster_unit_and_no_other_is() -> None:
    modules = sorted((TESTS_DIR / "integration").glob("test_*.py")) + sorted(
        (TESTS_DIR / "e2e").glob("test_*.py")
    )
    assert len(modules) > 20
    cluster = {p.name for p in modules if _imported(p) & CLUSTER_HELPERS}
    # the detection finds the labs at least: lifecycle, two hosts, serving gateway, storage, registry
    assert {
        f"test_cluster_{lab}.py"
        for lab in ("lifecycle", "two_hosts", "serving_gateway", "storage", "registry")
    } <= cluster, cluster
    units = {p.name: work_unit_of(p) for p in modules}
    assert {name for name, unit in units.items() if unit == "cluster"} == cluster
    assert {unit for name, unit in units.items() if name not in cluster} == {"services"}


def test_each_unit_test_file_is_a_unit_of_its_own() -> None:
    files = sorted((TESTS_DIR / "unit").glob("test_*.py"))
    units = {work_unit_of(p) for p in files}
    assert len(units) == len(files) and "services" not in units and "cluster" not in units
