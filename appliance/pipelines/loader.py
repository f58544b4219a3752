"""Reading a pipeline file: every problem at once, with key path, line and a hint.

pydantic checks each section; this module adds what needs the whole file (duplicate step names,
placeholders that name unknown parameters or later steps, inputs no earlier step writes, a
``promote`` step that is not last) and runs those checks even when pydantic already failed, so
one edit-and-retry fixes everything. Line numbers come from the composed YAML nodes through the
answers file's own index.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from appliance.answers_file import _line_index
from appliance.errors import ApplianceError, InvalidInputError, Problem
from appliance.names import check_name
from appliance.pipelines import templating
from appliance.pipelines.model import BUILTIN_OUTPUTS, Pipeline, Step, action_problems

PROMOTE_STEP = "promote"
DRAWN_SUFFIX = ".pipeline"
"""Pipelines drawn in the workbench (Elyra), converted by ``appliance.pipelines.elyra``."""
TEMPLATED_LISTS = ("run", "inputs")
TEMPLATED_MAPS = ("args", "env")


def _owner(path: tuple[str, ...]) -> type[BaseModel] | None:
    """The model owning the mapping at ``path``: the pipeline, or a step inside ``steps``."""
    if not path:
        return Pipeline
    if len(path) == 2 and path[0] == "steps":
        return Step
    return None


def _line_for(loc: tuple[str, ...], lines: dict[tuple[str, ...], int]) -> int | None:
    for depth in range(len(loc), -1, -1):
        if loc[:depth] in lines:
            return lines[loc[:depth]]
    return None


def _pydantic_problem(err: dict[str, Any], lines: dict[tuple[str, ...], int]) -> Problem:
    loc = tuple(str(p) for p in err["loc"])
    line = _line_for(loc, lines)
    if err["type"] == "extra_forbidden":
        owner = _owner(loc[:-1])
        known = list(owner.model_fields) if owner else []
        close = difflib.get_close_matches(loc[-1], known, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}?" if close else f"known keys here: {', '.join(known)}"
        return Problem(".".join(loc), f"unknown key {loc[-1]!r}", line, hint)
    message = err["msg"].removeprefix("Value error, ")
    if err["type"] != "missing" and not isinstance(err.get("input"), dict | list):
        message = f"{message} (got {err.get('input')!r})"
    return Problem(".".join(loc), message, line)


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        yield from (v for v in value if isinstance(v, str))
    elif isinstance(value, dict):
        yield from (v for v in value.values() if isinstance(v, str))


def _step_outputs(step: dict[str, Any]) -> dict[str, str]:
    declared = step.get("outputs")
    builtin = step.get("builtin")
    out = dict(BUILTIN_OUTPUTS.get(builtin, {})) if isinstance(builtin, str) else {}
    if isinstance(declared, dict):
        out |= {str(k): str(v) for k, v in declared.items()}
    return out


def cross_check(data: dict[str, Any], lines: dict[tuple[str, ...], int]) -> list[Problem]:
    """Problems that need the whole file: names, references between steps, step order."""
    problems: list[Problem] = []

    def add(loc: tuple[str, ...], message: str, hint: str | None = None) -> None:
        problems.append(Problem(".".join(loc), message, _line_for(loc, lines), hint))

    params = data.get("parameters")
    param_names = {str(k) for k in params} if isinstance(params, dict) else set()
    raw_steps = data.get("steps")
    steps: list[Any] = raw_steps if isinstance(raw_steps, list) else []
    for text in _strings(data.get("env")):
        for ref in templating.references(text):
            reason = templating.check_name(ref, param_names, {})
            if reason:
                add(("env",), reason)
    seen: dict[str, int] = {}
    earlier: dict[str, set[str]] = {}
    files_written: set[str] = set()
    for index, step in enumerate(steps):
        here = ("steps", str(index))
        if not isinstance(step, dict):
            continue
        for message in action_problems(step):
            add(here, message)
        name = step.get("name")
        if isinstance(name, str):
            if name in seen:
                add(
                    (*here, "name"),
                    f"duplicate step name {name!r} (also steps.{seen[name]})",
                    "give every step its own name",
                )
            seen.setdefault(name, index)
        fields = [*TEMPLATED_LISTS, *TEMPLATED_MAPS, "when"]
        for field in fields:
            for text in _strings(step.get(field)):
                for ref in templating.references(text):
                    reason = templating.check_name(ref, param_names, earlier)
                    if reason:
                        add((*here, field), reason)
        for i, path in enumerate(step.get("inputs") or []):
            if isinstance(path, str) and not templating.TOKEN.search(path) and path not in files_written:
                add(
                    (*here, "inputs", str(i)),
                    f"input {path!r} is not an output of any earlier step",
                    "declare it under an earlier step's outputs, or fix the file name",
                )
        outputs = _step_outputs(step)
        files_written.update(spec.split("#", 1)[0] for spec in outputs.values())
        if isinstance(name, str):
            earlier[name] = set(outputs)
        if name == PROMOTE_STEP and index != len(steps) - 1:
            add(
                (*here, "name"),
                "the promote step must be the last step",
                "move it to the end so that a failed step never moves the champion alias",
            )
    return problems


def parse_pipeline(text: str, source: str) -> Pipeline:
    """Validate a pipeline given as YAML text; raise InvalidInputError listing every problem."""
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        raise InvalidInputError(
            source, [Problem("", f"not valid YAML: {err}", mark.line + 1 if mark else None)]
        ) from err
    if not isinstance(data, dict):
        raise InvalidInputError(
            source, [Problem("", "the file must hold a mapping with name, model and steps", 1)]
        )
    lines: dict[tuple[str, ...], int] = {}
    if node is not None:
        _line_index(node, (), lines)
    problems: list[Problem] = []
    pipeline: Pipeline | None = None
    try:
        pipeline = Pipeline.model_validate(data)
    except ValidationError as err:
        problems.extend(_pydantic_problem(dict(e), lines) for e in err.errors())
    problems.extend(cross_check(data, lines))
    if problems or pipeline is None:
        unique = {(p.path, p.message): p for p in reversed(problems)}  # a rule checked twice shows once
        problems = sorted(unique.values(), key=lambda p: (p.line or 0, p.path))
        raise InvalidInputError(source, problems)
    return pipeline


def load_pipeline(path: Path) -> Pipeline:
    """Read and validate one pipeline file."""
    if path.suffix == DRAWN_SUFFIX:  # drawn in the workbench's pipeline editor (Elyra)
        from appliance.pipelines.elyra import load_elyra

        return load_elyra(path)
    if not path.is_file():
        raise InvalidInputError(str(path), [Problem("", "file not found")])
    return parse_pipeline(path.read_text(), str(path))


def builtin_pipelines_dir() -> Path:
    """The pipelines shipped with the appliance (``stacks/pipelines`` beside the package)."""
    return Path(__file__).resolve().parents[2] / "stacks" / "pipelines"


def user_pipelines_dir(state_dir: Path) -> Path:
    """Where a user's own pipelines live (``STATE/pipelines``), searched before the built-ins."""
    return state_dir / "pipelines"


def search_dirs(extra: Path | list[Path] | None) -> list[Path]:
    """Where ``pipeline run NAME`` and the controller look, first match wins: the given folders
    (``STATE/pipelines`` in the stack), then the built-ins. The one search path for both: the
    folders are listed again at every run, so a file added after ``up`` is used."""
    given = extra if isinstance(extra, list) else [extra] if extra is not None else []
    return [*given, builtin_pipelines_dir()]


def available(dirs: list[Path]) -> dict[str, Path]:
    """Pipeline names found in ``dirs`` (file stem -> path), earlier folders winning."""
    found: dict[str, Path] = {}
    for folder in reversed(dirs):
        if folder.is_dir():
            for pattern in ("*" + DRAWN_SUFFIX, "*.y*ml"):  # NAME.yaml wins over NAME.pipeline
                for path in sorted(folder.glob(pattern)):
                    found[path.stem] = path
    return found


def find_pipeline(name_or_path: str, dirs: list[Path]) -> Path:
    """A pipeline file from a name (looked up in ``dirs``) or a path to a YAML file."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml", DRAWN_SUFFIX) and candidate.is_file():
        return candidate
    check_name(name_or_path, "pipeline name")
    known = available(dirs)
    if name_or_path in known:
        return known[name_or_path]
    close = difflib.get_close_matches(name_or_path, list(known), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise ApplianceError(
        f"no pipeline named {name_or_path!r} in {', '.join(str(d) for d in dirs)}",
        fix=f"{hint}known pipelines: {', '.join(sorted(known)) or '(none)'}; "
        "or give a path to a .yaml or .pipeline file",
    )
