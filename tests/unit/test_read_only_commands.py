"""`plan`, `status` and `preflight` only look: on an empty state directory they create nothing
(no secret, no CA even with TLS on), on an existing one they change nothing, and `up` still
makes the real secrets after a plan rendered placeholders for them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from appliance.answers import Answers
from appliance.cli import main
from appliance.context import AppContext
from appliance.engine import Engine
from appliance.secrets_store import PLACEHOLDER, SecretStore, read_only
from appliance.tls import PENDING, certificate_names, ensure_certificates
from tests.conftest import free_ports

READ_ONLY = [
    ["plan"], ["plan", "--json"], ["status"], ["status", "--json"], ["preflight"], ["preflight", "--json"]
]  # fmt: skip


def tree(root: Path) -> dict[str, tuple[int, int, float]]:
    """Every path under ``root`` with its mode, size and modification time."""
    out = {}
    for path in [root, *root.rglob("*")]:
        st = path.lstat()
        out[str(path.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime)
    return out


def run(args: list[str]) -> int:
    try:
        main(args)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    return 0


@pytest.fixture(params=[False, True], ids=["plain", "tls"])
def answers(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    data = {"ports": free_ports(), "object_store": {"kind": "filesystem"}, "tls": {"enabled": request.param}}
    path = tmp_path / "appliance.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("command", READ_ONLY, ids=" ".join)
def test_a_read_only_command_on_an_empty_state_dir_creates_nothing(
    answers: Path, tmp_path: Path, command: list[str]
) -> None:
    state = tmp_path / "state"
    code = run(["--answers", str(answers), "--state-dir", str(state), *command])
    assert code in (0, 3), f"{command} exited {code}"  # preflight may fail on a busy host: still nothing
    assert not state.exists(), f"{' '.join(command)} created {sorted(tree(state))}"


def test_read_only_commands_leave_an_existing_state_dir_as_it_was(answers: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "secrets").mkdir(parents=True)
    SecretStore(state / "secrets").put("serving_token", "kept")
    os.chmod(state, 0o700)
    before = tree(state)
    for command in READ_ONLY:
        run(["--answers", str(answers), "--state-dir", str(state), *command])
    assert tree(state) == before


def test_plan_says_create_for_every_service_of_an_empty_state_dir(
    answers: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["--answers", str(answers), "--state-dir", str(tmp_path / "s"), "plan"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines and all(line.startswith("+ create") for line in lines)
    assert any(" serving " in line for line in lines)


def rendered_text(engine: Engine) -> str:
    """Everything the services would be given: commands, environments, config files."""
    parts = []
    for svc in engine.desired.values():
        parts += [*svc.command, *svc.env.values(), *svc.files.values()]
    return "\n".join(parts)


def test_up_after_a_plan_renders_the_real_secrets(tmp_path: Path) -> None:
    answers = Answers.model_validate({"ports": free_ports(), "object_store": {"kind": "filesystem"}})
    engine = Engine(AppContext.create(answers, None, tmp_path / "state"))
    assert engine.plan()
    with read_only():
        assert PLACEHOLDER in rendered_text(engine), "a plan shows secrets up has not made yet"
    assert not (tmp_path / "state").exists()
    assert PLACEHOLDER not in rendered_text(engine), "up must never apply the plan's placeholders"
    assert any((tmp_path / "state" / "secrets").iterdir())


def test_read_only_tls_shows_a_pending_certificate_and_makes_none(tmp_path: Path) -> None:
    store = SecretStore(tmp_path / "secrets")
    names = certificate_names("127.0.0.1", "127.0.0.1")
    with read_only():
        assert ensure_certificates(store, names).fingerprint == PENDING
    assert not store.root.exists()
    made = ensure_certificates(store, names)
    with read_only():
        assert ensure_certificates(store, names).fingerprint == made.fingerprint
        assert ensure_certificates(store, [*names, "new.example"]).fingerprint == PENDING
    assert ensure_certificates(store, names).fingerprint == made.fingerprint
