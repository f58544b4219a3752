"""Placeholders are filled from parameters, outputs and run facts; conditions read the result."""

from __future__ import annotations

import pytest

from appliance.pipelines import templating

VALUES = {"params.dataset": "wine", "workdir": "/w", "run_id": "r1", "steps.ingest.outputs.key": "wine/a.csv"}


def resolve(name: str) -> str:
    if name not in VALUES:
        raise templating.TemplateError(f"unknown placeholder {{{name}}}")
    return VALUES[name]


def test_placeholders_are_filled_and_double_braces_are_literal() -> None:
    text = '{workdir}/{params.dataset}.csv --json {{"run": "{run_id}"}} { steps.ingest.outputs.key }'
    assert templating.render(text, resolve) == '/w/wine.csv --json {"run": "r1"} wine/a.csv'


def test_references_lists_every_placeholder_but_not_escaped_braces() -> None:
    assert list(templating.references("{{x}} {a} {{ {b.c} }}")) == ["a", "b.c"]


def test_an_unknown_placeholder_fails_at_render_time() -> None:
    with pytest.raises(templating.TemplateError, match=r"\{params.nope\}"):
        templating.render("{params.nope}", resolve)


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ("{params.dataset} == wine", True),
        ("{params.dataset} == iris", False),
        ("{params.dataset} != iris", True),
        ("{params.dataset}", True),
        ("false", False),
        ("0", False),
        ("No", False),
        ("yes", True),
    ],
)
def test_conditions(condition: str, expected: bool) -> None:
    assert templating.evaluate_condition(condition, resolve) is expected


def test_check_name_explains_what_is_wrong() -> None:
    params, outputs = {"dataset"}, {"ingest": {"dataset_key"}}
    assert templating.check_name("workdir", params, outputs) is None
    assert templating.check_name("params.dataset", params, outputs) is None
    assert templating.check_name("steps.ingest.outputs.dataset_key", params, outputs) is None
    assert "did you mean {params.dataset}?" in str(templating.check_name("params.datset", params, outputs))
    assert "not an earlier step" in str(templating.check_name("steps.train.outputs.x", params, outputs))
    assert "has no output 'key'" in str(templating.check_name("steps.ingest.outputs.key", params, outputs))
    assert "unknown placeholder {dataset}" in str(templating.check_name("dataset", params, outputs))
