"""Command-line parsing of the server: model/name pairing, tokens, and a light CLI import."""

from __future__ import annotations

import ast
import subprocess
import sys
import types
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


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "::", "[::]", "edge-box.example"])
def test_a_server_open_to_the_network_without_a_token_refuses_to_start(
    host: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Beyond loopback with no token every route (load and unload too) would be open: the
    server and the supervisor (whose balancer binds the address) refuse, naming the fixes;
    ``--no-auth`` or a token lets it start, and loopback needs neither."""
    from appliance.cli import serve_cmd as cmd
    from appliance.workloads.serving import supervisor

    monkeypatch.delenv("APPLIANCE_SERVING_TOKEN", raising=False)
    monkeypatch.delenv("APPLIANCE_SERVING_TOKEN_FILE", raising=False)
    started: list[object] = []  # the server itself stays out: its gRPC stubs, a port taken
    monkeypatch.setitem(
        sys.modules, "appliance.workloads.serving.server", types.SimpleNamespace(run=started.append)
    )
    refused = CliRunner().invoke(cmd.serve_cmd, ["--model", str(tmp_path), "--host", host])
    assert refused.exit_code == 2 and not started
    assert "no token is set" in refused.output and "--token-file" in refused.output, refused.output
    assert "--no-auth" in refused.output
    with pytest.raises(SystemExit) as exited:
        supervisor.parse_args(["--host", host, "--max-replicas", "2", "--", "--model", str(tmp_path)])
    assert exited.value.code == 2

    token = tmp_path / "token"
    token.write_text("a-token\n")
    for allowed in (["--no-auth"], ["--token-file", str(token)], ["--token", "t"]):
        result = CliRunner().invoke(cmd.serve_cmd, ["--model", str(tmp_path), "--host", host, *allowed])
        assert result.exit_code == 0, result.output
        supervisor.parse_args(["--host", host, "--max-replicas", "2", "--", "--model", "/m", *allowed])
    monkeypatch.setenv("APPLIANCE_SERVING_TOKEN_FILE", str(token))  # the stack's way: the env
    supervisor.parse_args(["--host", host, "--max-replicas", "2", "--", "--model", "/m"])
    assert len(started) == 3


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_serves_without_a_token(host: str) -> None:
    from appliance.cli.serve_cmd import open_to_the_network

    assert open_to_the_network(host, has_token=False, no_auth=False) is None
