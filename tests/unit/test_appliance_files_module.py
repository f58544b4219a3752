"""The roles' one-call file writer (roles/appliance_common/library/appliance_files.py), run by real
Ansible on this machine: what changes is written and reported, what is the same is left alone,
check mode touches nothing, and a name that leaves its folder writes nothing at all."""

from __future__ import annotations

import grp
import json
import os
import pwd
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.unit.test_cluster_roles import ROLES, _env, _tool

USER = pwd.getpwuid(os.getuid()).pw_name
GROUP = grp.getgrgid(os.getgid()).gr_name
TEMPLATES = ROLES / "appliance_common/templates"


def _run(tmp_path: Path, args: dict[str, Any], *extra: str) -> tuple[int, dict[str, Any]]:
    """The module's exit code and its JSON result (ansible's one-line output)."""
    done = subprocess.run(
        [
            _tool("ansible"), "localhost", "-c", "local", "-i", "localhost,", "--one-line",
            "-e", f"ansible_python_interpreter={sys.executable}",
            "-M", str(ROLES / "appliance_common/library"), "-m", "appliance_files",
            "-a", json.dumps({"owner": USER, "group": GROUP} | args), *extra,
        ],
        env=_env(tmp_path), capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    line = next(line for line in done.stdout.splitlines() if line.startswith("localhost"))
    return done.returncode, json.loads(line.split("=>", 1)[1])


def test_files_are_written_once_with_their_mode_and_check_mode_writes_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "secrets"
    folder.mkdir()
    args = {"folder": str(folder), "files": {"token": "s3cret\n", "key": "k"}, "mode": "0600"}
    code, planned = _run(tmp_path, args, "--check")
    assert (
        code == 0
        and planned["changed"]
        and sorted(planned["changed_paths"])
        == [
            str(folder / "key"),
            str(folder / "token"),
        ]
    )
    assert list(folder.iterdir()) == []
    code, written = _run(tmp_path, args)
    assert code == 0 and written["changed"]
    assert (folder / "token").read_text() == "s3cret\n" and (folder / "key").stat().st_mode & 0o777 == 0o600
    code, again = _run(tmp_path, args)
    assert code == 0 and not again["changed"] and again["changed_paths"] == []
    inode = (folder / "key").stat().st_ino
    (folder / "key").chmod(0o644)
    code, mended = _run(tmp_path, args)
    assert mended["changed_paths"] == [str(folder / "key")]
    assert (folder / "key").stat().st_mode & 0o777 == 0o600 and (folder / "key").stat().st_ino == inode
    # each key's file name from `name`, and the changed keys reported as tags (a unit's name)
    named = args | {"files": {"mlflow": "r1\n", "serving": "r1\n"}, "name": "appliance-%s.release"}
    code, first = _run(tmp_path, named)
    assert code == 0 and sorted(first["changed_tags"]) == ["mlflow", "serving"]
    assert (folder / "appliance-serving.release").read_text() == "r1\n"
    code, second = _run(tmp_path, named | {"files": {"mlflow": "r1\n", "serving": "r2\n"}})
    assert code == 0 and second["changed_tags"] == ["serving"]
    assert second["changed_paths"] == [str(folder / "appliance-serving.release")]
    assert not list(folder.glob(".appliance-*"))  # no temporary file left behind


def test_each_unit_gets_its_folder_and_files_and_only_changed_units_are_reported(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "config"
    folder.mkdir()
    units = [
        {"name": "mlflow", "files": {"auth.ini": "[mlflow]\n"}},
        {"name": "exporter"},  # no files: its folder alone
        # as `appliance cluster` renders a unit's files
        {
            "name": "serving",
            "files": [{"key": "models.json", "value": "{}"}, {"key": "lim", "value": "[]"}],
        },
    ]
    args = {"folder": str(folder), "units": units, "mode": "0640"}
    code, planned = _run(tmp_path, args, "--check")
    assert code == 0 and planned["changed_tags"] == ["mlflow", "serving"] and list(folder.iterdir()) == []
    code, first = _run(tmp_path, args)
    assert code == 0 and first["changed_tags"] == ["mlflow", "serving"]
    assert sorted(p.name for p in folder.iterdir()) == ["exporter", "mlflow", "serving"]
    assert all(p.stat().st_mode & 0o777 == 0o750 for p in folder.iterdir())
    assert (folder / "serving/lim").read_text() == "[]"
    assert (folder / "mlflow/auth.ini").stat().st_mode & 0o777 == 0o640
    units[2]["files"][0]["value"] = '{"iris": 2}'  # type: ignore[index]
    code, second = _run(tmp_path, args)
    assert code == 0 and second["changed_tags"] == ["serving"] and second["reload_tags"] == []
    assert second["changed_paths"] == [str(folder / "serving/models.json")]


def test_a_unit_whose_changed_files_are_all_reload_files_is_reported_for_a_reload(tmp_path: Path) -> None:
    """A file rendered with ``reload`` is one its service reads again on a reload: its change alone
    tags the unit in ``reload_tags``; with any other file of the unit changed, or on its first
    writing (read at the start that follows), the unit is in ``changed_tags`` alone."""
    folder = tmp_path / "config"
    folder.mkdir()

    def store(guard: str, digest: str) -> list[dict[str, Any]]:
        files = [{"key": "security.toml", "value": guard, "reload": True}, {"key": "digest", "value": digest}]
        return [{"name": "seaweedfs", "files": files}, {"name": "other", "files": {"a": "1"}}]

    args = {"folder": str(folder), "mode": "0640"}
    code, first = _run(tmp_path, args | {"units": store("hosts a", "d1")})
    assert code == 0 and first["changed_tags"] == ["seaweedfs", "other"] and first["reload_tags"] == []
    code, planned = _run(tmp_path, args | {"units": store("hosts a,b", "d1")}, "--check")
    assert code == 0 and planned["changed_tags"] == [] and planned["reload_tags"] == ["seaweedfs"]
    assert (folder / "seaweedfs/security.toml").read_text() == "hosts a"  # check mode
    code, joined = _run(tmp_path, args | {"units": store("hosts a,b", "d1")})
    assert code == 0 and joined["changed"] and joined["changed_tags"] == []
    assert joined["reload_tags"] == ["seaweedfs"]
    assert (folder / "seaweedfs/security.toml").read_text() == "hosts a,b"
    code, both = _run(tmp_path, args | {"units": store("hosts b", "d2")})  # a certificate too: restart
    assert code == 0 and both["changed_tags"] == ["seaweedfs"] and both["reload_tags"] == []
    (folder / "seaweedfs/security.toml").unlink()
    code, again = _run(tmp_path, args | {"units": store("hosts b", "d2")})  # gone: written for a start
    assert code == 0 and again["changed_tags"] == ["seaweedfs"] and again["reload_tags"] == []


def test_a_name_outside_the_folder_or_an_unknown_owner_is_refused_and_nothing_is_written(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "secrets"
    folder.mkdir()
    unknown = {"folder": str(folder), "files": {"fine": "1"}, "owner": "no-such-account"}
    code, planned = _run(tmp_path, unknown, "--check")  # a fresh host's plan: the account comes first
    assert code == 0 and planned["changed_paths"] == [str(folder / "fine")]
    code, result = _run(tmp_path, unknown)
    assert code != 0 and "unknown owner or group" in result["msg"] and "no-such-account" in result["msg"]
    for bad in ("../escaped", "/etc/escaped"):
        code, result = _run(tmp_path, {"folder": str(folder), "files": {"fine": "1", bad: "2"}})
        assert code != 0 and "could not write the files" in result["msg"]
        assert "is not a name under" in result["msg"] and bad in result["msg"]
        assert list(folder.iterdir()) == [] and not (tmp_path / "escaped").exists()


def test_units_rendered_on_the_controller_are_what_the_template_module_writes(tmp_path: Path) -> None:
    """filter_plugins/appliance_rendered.py must write a host's unit files byte for byte as the
    template tasks did: any difference would restart every unit once after an upgrade."""
    unit = {"name": "mlflow", "command": ["/opt/v/bin/mlflow", "server", "--x", '1"%$'], "after": ["buckets"]}
    # a file it reads again on a reload: the unit file says how (ExecReload)
    unit["files"] = [{"key": "guard.toml", "value": "[guard]\n", "reload": True}]
    variables = tmp_path / "vars.json"
    common = {"appliance_common_user": "appliance", "appliance_common_group": "appliance"}
    common |= {"appliance_common_state_dir": "/var/lib/appliance"}
    variables.write_text(
        json.dumps({"item": unit | {"env": {"PW": 'a"b'}}, "units": [unit | {"env": {"PW": 'a"b'}}]} | common)
    )
    base = [
        _tool("ansible"), "localhost", "-c", "local", "-i", "localhost,", "-e", f"@{variables}",
        "-e", f"ansible_python_interpreter={sys.executable}",
    ]  # fmt: skip
    env = _env(tmp_path) | {"ANSIBLE_FILTER_PLUGINS": str(ROLES / "appliance_common/filter_plugins")}
    for template, extra in (("unit.service.j2", ", ".join(f"{k}={k}" for k in common)), ("unit.env.j2", "")):
        out = tmp_path / template
        written = subprocess.run(
            [*base, "-m", "ansible.builtin.template", "-a", f"src={TEMPLATES}/{template} dest={out}"],
            env=env, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert written.returncode == 0, written.stdout + written.stderr
        args = f"'{template}'" + (f", {extra}" if extra else "")
        show = f"msg={{{{ units | appliance_rendered({args}) }}}}"
        shown = subprocess.run(
            [*base, "--one-line", "-m", "ansible.builtin.debug", "-a", show],
            env=env, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert shown.returncode == 0, shown.stdout + shown.stderr
        rendered = json.loads(shown.stdout.split("=>", 1)[1])["msg"]
        assert rendered == {"mlflow": out.read_text()}
    service = (tmp_path / "unit.service.j2").read_text()
    assert "\nExecReload=/bin/kill -HUP $MAINPID\nNoNewPrivileges=yes\n" in service, service


def test_plans_diff_shows_a_units_change_and_hides_what_a_no_log_task_writes(tmp_path: Path) -> None:
    """``cluster plan`` runs ``--check --diff``: a unit file's change reads as copy's diff would,
    while the secrets task (no_log) shows none of its content."""
    units, secrets = tmp_path / "units", tmp_path / "secrets"
    units.mkdir()
    secrets.mkdir()
    (units / "appliance-mlflow.service").write_text("ExecStart=/opt/v/bin/mlflow server --workers 1\n")
    (units / "blob").write_bytes(b"\xff\x00old")
    playbook = tmp_path / "plan.yml"
    common = {"owner": USER, "group": GROUP}
    tasks = [
        {
            "name": "units",
            "appliance_files": common
            | {
                "folder": str(units),
                "name": "appliance-%s.service",
                "files": {"mlflow": "ExecStart=/opt/v/bin/mlflow server --workers 2\n", "serving": "New=1\n"},
            },
        },
        {"name": "blob", "appliance_files": common | {"folder": str(units), "files": {"blob": "text now\n"}}},
        {
            "name": "secrets",
            "appliance_files": common | {"folder": str(secrets), "files": {"token": "do-not-show-me-4711"}},
            "no_log": True,
        },
    ]
    playbook.write_text(yaml.safe_dump([{"hosts": "localhost", "gather_facts": False, "tasks": tasks}]))
    done = subprocess.run(
        [
            _tool("ansible-playbook"), "-c", "local", "-i", "localhost,", "--check", "--diff",
            "-e", f"ansible_python_interpreter={sys.executable}",
            "-M", str(ROLES / "appliance_common/library"), str(playbook),
        ],
        env=_env(tmp_path), capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "-ExecStart=/opt/v/bin/mlflow server --workers 1" in out
    assert "+ExecStart=/opt/v/bin/mlflow server --workers 2" in out
    assert f"--- before: {units / 'appliance-serving.service'} (no regular file)" in out and "+New=1" in out
    assert "(binary, 5 bytes, sha256 " in out and "+text now" in out
    assert "do-not-show-me-4711" not in out and "changed=3" in out
    assert (units / "appliance-mlflow.service").read_text().endswith("--workers 1\n")  # check mode
    assert list(secrets.iterdir()) == []
