"""The answers' list of models: the serving.model shorthand, duplicates, names and bindings, each
refused with the key, the line and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.answers_file import parse_answers, render_answers
from appliance.errors import InvalidInputError


def problems(text: str) -> str:
    with pytest.raises(InvalidInputError) as info:
        parse_answers(text, "appliance.yaml")
    return str(info.value)


def test_a_list_of_models_each_with_its_own_binding_and_settings() -> None:
    answers = parse_answers(
        "models:\n"
        "  - {name: breast_cancer, dataset: breast_cancer}\n"
        "  - name: wine\n"
        "    uri: models:/wine@challenger\n"
        "    dataset: wine\n"
        "    target: target\n"
        "    parameters: {epochs: 20}\n"
        "    drift_psi_threshold: 0.3\n"
        "    retrain_schedule: '0 4 * * *'\n",
        "appliance.yaml",
    )
    served = {m.name: m for m in answers.served_models()}
    assert served["breast_cancer"].served_uri == "models:/breast_cancer@champion"
    assert served["wine"].served_uri == "models:/wine@challenger" and served["wine"].parameters == {
        "epochs": 20
    }
    assert served["wine"].drift_psi_threshold == 0.3 and served["breast_cancer"].drift_psi_threshold is None


def test_the_shorthand_is_one_model_bound_to_its_own_dataset_and_the_default_is_the_demo() -> None:
    one = parse_answers("serving: {model: 'models:/wine@champion'}\n", "a.yaml").served_models()
    assert [(m.name, m.served_uri, m.dataset) for m in one] == [("wine", "models:/wine@champion", "wine")]
    default = parse_answers("", "a.yaml").served_models()
    assert [(m.name, m.dataset) for m in default] == [("breast_cancer", "breast_cancer")]
    # A file or S3 URI (the edge profile: no registry) names the model but binds no dataset.
    edge = parse_answers("serving: {model: s3://models/iris/model.onnx}\n", "a.yaml").served_models()
    assert [(m.name, m.dataset) for m in edge] == [("iris", None)]


def test_the_rendered_defaults_read_back_with_the_models_list() -> None:
    text = render_answers(parse_answers("", "a.yaml"))
    assert "models: []" in text and "model: null" in text
    assert parse_answers(text, "a.yaml").served_models()[0].name == "breast_cancer"


@pytest.mark.parametrize(
    ("text", "wanted"),
    [
        (
            "serving: {model: 'models:/a@champion'}\nmodels: [{name: b, dataset: b}]\n",
            "serving.model (models:/a@champion) and models are both set: move it into models",
        ),
        (
            "models:\n  - {name: wine, dataset: wine}\n  - {name: wine, dataset: wine_v2}\n",
            "models.0 and models.1 are both named 'wine': give each model its own name",
        ),
        ("models: [{name: ../etc, dataset: x}]\n", "models.0.name"),
        ("models: [{name: a, dataset: 'a/b'}]\n", "dataset 'a/b' holds characters other than"),
        ("models: [{name: a, parameters: {dataset: b}}]\n", "set the model's own `dataset:` key instead"),
        ("models: [{name: a, retrain_schedule: 'every night'}]\n", "retrain_schedule"),
        ("models: [{name: a, drift_min_rows: 0}]\n", "models.0.drift_min_rows"),
        ("models: [{name: a, datset: b}]\n", "did you mean 'dataset'?"),
    ],
)
def test_bad_model_entries_are_refused_naming_the_key_and_the_fix(text: str, wanted: str) -> None:
    assert wanted in problems(text)


def test_preflight_warns_of_a_binding_to_a_dataset_the_filesystem_store_lacks(tmp_path: Path) -> None:
    from appliance.context import AppContext
    from appliance.preflight import _model_datasets
    from appliance.render import render_stack

    answers = parse_answers(
        "object_store: {kind: filesystem}\n"
        "models: [{name: a, dataset: breast_cancer}, {name: b, dataset: wine_typo},\n"
        "         {name: c, uri: /m.onnx}]\n",
        "a.yaml",
    )
    ctx = AppContext(answers, tmp_path / "state")
    desired = render_stack(ctx)
    assert _model_datasets(ctx, desired) == []  # a fresh store: `make up` seeds after `up`
    (tmp_path / "state" / "data" / "datasets" / "breast_cancer").mkdir(parents=True)
    checks = _model_datasets(ctx, desired)
    assert [(c.name, c.status) for c in checks] == [("dataset of model b", "warn")]
    assert "'b' is bound to dataset 'wine_typo'" in checks[0].detail and "breast_cancer" in checks[0].detail
    assert "models[].dataset" in checks[0].fix
