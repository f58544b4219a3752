"""The extended tier (tests/conftest.py: EXTENDED) names real modules and tests: an entry left
behind by a renamed module or test would quietly put it back into CI's run and past its time
limit."""

from __future__ import annotations

import re
from types import SimpleNamespace
from typing import Any

import pytest

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


def test_a_module_a_runtime_or_one_test_can_be_extended_and_nothing_else_is(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    edge = "integration/test_edge_follows_registry.py"
    followed = "test_edge_follows_the_champion_serves_through_an_outage_and_catches_up"
    lab = "integration/test_lab_stack.py"
    offline = "integration/test_bundle_offline_podman.py"
    tiers = {f"{edge}::{followed}": "one test", f"{lab}[docker]": "one runtime", offline: "a module"}
    monkeypatch.setattr("tests.conftest.EXTENDED", tiers)
    assert extended_reason(_item(edge, followed)) == "one test"
    assert extended_reason(_item(edge, "test_an_edge_stack_named_after_the_central_registry")) is None
    assert extended_reason(_item(lab, "test_up_brings_every_service_to_healthy", "docker")) == "one runtime"
    assert extended_reason(_item(lab, "test_up_brings_every_service_to_healthy", "local")) is None
    assert extended_reason(_item(offline, "test_anything")) == "a module"
    assert extended_reason(_item("integration/test_cluster_lifecycle.py", "test_anything")) is None


def test_the_cluster_lifecycle_and_the_edge_outage_stay_in_cis_tier() -> None:
    """What the extended cluster modules build on (EXTENDED's reasons) is proven in CI's run."""
    edge = "integration/test_edge_follows_registry.py"
    followed = "test_edge_follows_the_champion_serves_through_an_outage_and_catches_up"
    assert extended_reason(_item(edge, followed)) is None
    for module in ("test_cluster_lifecycle.py", "test_cluster_two_hosts.py", "test_bundle_offline.py"):
        assert extended_reason(_item(f"integration/{module}", "test_anything")) is None
    assert extended_reason(_item("integration/test_cluster_registry.py", "test_anything")) is not None
