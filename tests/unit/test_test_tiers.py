"""The extended tier (tests/conftest.py: EXTENDED) names real modules: an entry left behind by a
renamed module would quietly put that module back into CI's run and past its time limit."""

from __future__ import annotations

import re

from tests.conftest import EXTENDED, TESTS_DIR


def test_every_extended_entry_names_a_test_module_here() -> None:
    for key in EXTENDED:
        path = re.sub(r"\[[^]]*\]$", "", key)
        assert (TESTS_DIR / path).is_file(), f"EXTENDED names {key}, but tests/{path} does not exist"


def test_every_entry_says_what_it_proves() -> None:
    assert all(len(reason.split()) >= 4 for reason in EXTENDED.values()), EXTENDED
