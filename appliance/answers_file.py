"""Reading and writing ``appliance.yaml``: every problem at once, with key path, line and a hint.

Validation goes through pydantic, but the messages are ours: each error is mapped back to the
line it came from (the YAML is composed into nodes that keep their marks) and an unknown key gets
a "did you mean" from the model's own field names.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from appliance.answers import Answers
from appliance.errors import InvalidInputError, Problem

DEFAULT_NAME = "appliance.yaml"


def _line_index(node: yaml.Node, prefix: tuple[str, ...], out: dict[tuple[str, ...], int]) -> None:
    """Record the 1-based line of every key path in a composed YAML tree."""
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            path = (*prefix, str(key_node.value))
            out[path] = key_node.start_mark.line + 1
            _line_index(value_node, path, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            path = (*prefix, str(i))
            out[path] = item.start_mark.line + 1
            _line_index(item, path, out)


def _model_at(model: type[BaseModel], path: tuple[str, ...]) -> type[BaseModel] | None:
    """The pydantic model that owns the mapping at ``path`` (for suggestions)."""
    current: type[BaseModel] = model
    parts = list(path)
    while parts:
        field = current.model_fields.get(parts.pop(0))
        annotation = getattr(field, "annotation", None)
        if get_origin(annotation) is list and parts and parts[0].isdigit():
            parts.pop(0)  # an item of a list of sections (``models.0``): its item type owns it
            annotation = get_args(annotation)[0]
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        current = annotation
    return current


def _problem(err: dict[str, Any], lines: dict[tuple[str, ...], int]) -> Problem:
    loc = tuple(str(p) for p in err["loc"])
    path = ".".join(loc)
    line = None
    for depth in range(len(loc), -1, -1):
        if loc[:depth] in lines:
            line = lines[loc[:depth]]
            break
    hint = None
    if err["type"] == "extra_forbidden":
        owner = _model_at(Answers, loc[:-1])
        known = list(owner.model_fields) if owner else []
        close = difflib.get_close_matches(loc[-1], known, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}?" if close else f"known keys here: {', '.join(known)}"
        message = f"unknown key {loc[-1]!r}"
    else:
        message = err["msg"].removeprefix("Value error, ")
        if "input" in err and err["type"] not in ("missing",) and not isinstance(err["input"], dict):
            message = f"{message} (got {err['input']!r})"
    return Problem(path=path, message=message, line=line, hint=hint)


def parse_answers(text: str, source: str = DEFAULT_NAME) -> Answers:
    """Validate answers given as YAML text; raise InvalidInputError listing every problem."""
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = mark.line + 1 if mark else None
        raise InvalidInputError(source, [Problem("", f"not valid YAML: {err}", line)]) from err
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InvalidInputError(source, [Problem("", "the file must hold a mapping of keys", 1)])
    lines: dict[tuple[str, ...], int] = {}
    if node is not None:
        _line_index(node, (), lines)
    try:
        return Answers.model_validate(data)
    except ValidationError as err:
        problems = [_problem(dict(e), lines) for e in err.errors()]
        raise InvalidInputError(source, problems) from err


def load_answers(path: Path | None) -> Answers:
    """Load the answers file, or the defaults when none is given."""
    if path is None:
        return Answers()
    if not path.exists():
        raise InvalidInputError(str(path), [Problem("", "file not found (create one with `appliance init`)")])
    return parse_answers(path.read_text(), str(path))


def _comment(text: str | None, indent: str) -> list[str]:
    if not text:
        return []
    return [f"{indent}# {line.strip()}".rstrip() for line in text.strip().splitlines()]


def _plain(value: object) -> object:
    """JSON for what ``json`` does not know: a model in a list (``cluster.hosts``) as its fields."""
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else str(value)


def _render(model: BaseModel, indent: str = "") -> list[str]:
    out: list[str] = []
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        out.extend(_comment(field.description, indent))
        if isinstance(value, BaseModel):
            out.append(f"{indent}{name}:")
            out.extend(_render(value, indent + "  "))
        else:
            dumped = json.loads(json.dumps(value, default=_plain))
            rendered = yaml.safe_dump({name: dumped}, default_flow_style=True, width=1000).strip()
            out.append(f"{indent}{rendered.removeprefix('{').removesuffix('}')}")
    return out


def render_answers(answers: Answers) -> str:
    """The answers as a commented YAML document (every field with its docstring above it)."""
    head = [
        "# MLOps Appliance answers file. Apply with: appliance up --answers appliance.yaml",
        "# Every key is optional; the values below are what they mean when absent.",
    ]
    text = "\n".join([*head, *_render(answers)]) + "\n"
    parse_answers(text, "<rendered>")  # never write a file we would refuse to read
    return text


def answers_schema() -> dict[str, Any]:
    """The JSON schema of the answers file (committed as schemas/answers.schema.json)."""
    schema = Answers.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "MLOps Appliance answers file"
    return schema
