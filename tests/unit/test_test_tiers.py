"""The extended tier (tests/conftest.py: EXTENDED) names real modules and tests: an entry left
behind by a renamed module or test would quietly put it back into CI's run and past its time
limit."""

from __future__ import annotations

import re

from tests.conftest import EXTENDED, TESTS_DIR


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
