"""Command-line parsing of the server: model/name pairing, tokens, and a light CLI import."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from appliance.workloads.serving.config import parse_model_args, read_tokens


def test_models_pair_with_names_or_inline_names() -> None:
    assert parse_model_args(("/m/a",), ()) == ((None, "/m/a"),)
    assert parse_model_args(("/m/a", "models:/x@champion"), ("a", "b")) == (
        ("a", "/m/a"),
        ("b", "models:/x@champion"),
    )
    assert parse_model_args(("clf=s3://bucket/k",), ()) == (("clf", "s3://bucket/k"),)
    with pytest.raises(ValueError, match="one --name per --model"):
        parse_model_args(("/a", "/b"), ("x",))
    with pytest.raises(ValueError, match="unique"):
        parse_model_args(("x=/a", "x=/b"), ())


def test_tokens_from_value_env_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("APPLIANCE_SERVING_TOKEN", raising=False)
    assert read_tokens(None, None) == frozenset()
    f = tmp_path / "tok"
    f.write_text("# comment\nfirst\n\nsecond\n")
    assert read_tokens(" given ", f) == {"given", "first", "second"}
    monkeypatch.setenv("APPLIANCE_SERVING_TOKEN", "from-env")
    assert read_tokens(None, None) == {"from-env"}


def test_cli_module_imports_the_server_only_inside_the_command() -> None:
    import appliance.cli.serve_cmd as mod

    tree = ast.parse(Path(mod.__file__).read_text())
    top = {
        alias.name if isinstance(node, ast.Import) else node.module
        for node in tree.body
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    # config: the provider names for --execution-provider, a module of dataclasses
    assert top <= {
        "__future__",
        "pathlib",
        "click",
        "appliance.errors",
        "appliance.workloads.serving.config",
    }, top
    heavy = "{'onnxruntime', 'numpy', 'grpc'}"
    code = f"import sys, appliance.cli.serve_cmd; print(sorted({heavy} & set(sys.modules)))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]", loaded


def test_bad_flags_are_usage_errors() -> None:
    from appliance.cli.serve_cmd import serve_cmd

    result = CliRunner().invoke(serve_cmd, ["--model", "/a", "--model", "/b", "--name", "x"])
    assert result.exit_code == 2 and "one --name per --model" in result.output
    result = CliRunner().invoke(serve_cmd, ["--model", "/a", "--http-port", "70000"])
    assert result.exit_code == 2
    result = CliRunner().invoke(serve_cmd, [])
    assert result.exit_code == 2 and "--model" in result.output


def test_admin_tokens_read_their_own_env(monkeypatch: pytest.MonkeyPatch) -> None:
    from appliance.workloads.serving.config import ADMIN_TOKEN_ENV

    monkeypatch.setenv("APPLIANCE_SERVING_TOKEN", "inference")
    monkeypatch.setenv(ADMIN_TOKEN_ENV, "admin")
    assert read_tokens(None, None, ADMIN_TOKEN_ENV) == {"admin"}
    assert read_tokens(None, None) == {"inference"}
