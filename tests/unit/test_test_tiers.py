"""The extended tier (tests/conftest.py: EXTENDED) names real modules and tests: an entry left
behind by a renamed module or test would quietly put it back into CI's run and past its time
limit."""

from __future__ import annotations

import re
from types import SimpleNamespace
from typing import Any

from tests.conftest import EXTENDED, TESTS_DIR, extended_reason


def test_every_extended_entry_names_a_test_module_here() -> None:
    for key in EXTENDED:
        path, _, test = re.sub(r"\[[^]]*\]$", "", key).partition("::")
        assert (TESTS_DIR / path).is_file(), f"EXTENDED names {key}, but tests/{path} does not exist"
        if test:  # one test of the module: it must still be there under that name
            source = (TESTS_DIR / path).read_text()
            assert re.search(rf"^(async )?def {re.escape(test)}\(", source, re.M), (
                f"no {test} in tests/{path}"
            )


def test_every_entry_says_what_it_proves() -> None:
    assert all(len(reason.split()) >= 4 for reason in EXTENDED.values()), EXTENDED


def _item(path: str, test: str, param: str | None = None) -> Any:
    """What extended_reason reads of a collected test: its file, its function's name, its
    parameters' id."""
    callspec = SimpleNamespace(id=param) if param else None
    name = f"{test}[{param}]" if param else test
    return SimpleNamespace(path=TESTS_DIR / path, name=name, originalname=test, callspec=callspec)


def test_a_module_a_runtime_or_one_test_can_be_extended_and_nothing_else_is() -> None:
    edge = "integration/test_edge_follows_registry.py"
    followed = "test_edge_follows_the_champion_serves_through_an_outage_and_catches_up"
    assert extended_reason(_item(edge, followed)) is not None
    assert extended_reason(_item(edge, "test_an_edge_stack_named_after_the_central_registry")) is None
    lab = "integration/test_lab_stack.py"
    assert extended_reason(_item(lab, "test_up_brings_every_service_to_healthy", "docker")) is not None
    assert extended_reason(_item(lab, "test_up_brings_every_service_to_healthy", "podman")) is not None
    assert extended_reason(_item(lab, "test_up_brings_every_service_to_healthy", "local")) is None
    assert extended_reason(_item("integration/test_bundle_offline_podman.py", "test_anything")) is not None
    assert extended_reason(_item("integration/test_cluster_registry.py", "test_anything")) is None
