"""The upgrade's change list, its journal (state machine) and the checks built on them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.errors import ApplianceError
from appliance.upgrade import journal as jr
from appliance.upgrade.changes import Change, Facts, diff, images_of, needs_migration
from appliance.upgrade.releases import ReleaseInputError, get, source_version
from appliance.upgrade.run import unhealthy

BEFORE = Facts(
    "0.1.0",
    {"mlflow": "3.1.0", "onnxruntime": "1.20.1", "six": "1.16.0"},
    {"mlflow": "localhost/appliance-mlflow:latest", "prometheus": "quay.io/p:v2.53.2@sha256:aa"},
    "aaa111",
)


def test_diff_lists_each_component_that_changes_and_nothing_else() -> None:
    after = Facts(
        "0.2.0",
        {"mlflow": "3.2.0", "onnxruntime": "1.20.1", "protobuf": "5.0"},
        {"mlflow": "localhost/appliance-mlflow:latest", "prometheus": "quay.io/p:v3.0.0@sha256:bb"},
        "bbb222",
    )
    changes = diff(BEFORE, after)
    assert changes == [
        Change("appliance", "appliance", "0.1.0", "0.2.0"),
        Change("package", "mlflow", "3.1.0", "3.2.0"),
        Change("package", "protobuf", None, "5.0"),
        Change("package", "six", "1.16.0", None),
        Change("image", "prometheus", "quay.io/p:v2.53.2@sha256:aa", "quay.io/p:v3.0.0@sha256:bb"),
        Change("mlflow-schema", "tracking database", "aaa111", "bbb222"),
    ]
    assert needs_migration(changes)
    assert "3.1.0 -> 3.2.0" in changes[1].line()
    assert "(none) -> 5.0" in changes[2].line()


def test_same_packages_need_no_migration_and_the_database_revision_wins() -> None:
    after = Facts("0.2.0", BEFORE.packages, BEFORE.images, BEFORE.mlflow_schema)
    assert diff(BEFORE, after) == [Change("appliance", "appliance", "0.1.0", "0.2.0")]
    # a database behind its own MLflow's head (never migrated) is migrated by the upgrade
    changes = diff(BEFORE, after, database_schema="older0")
    assert changes[-1] == Change("mlflow-schema", "tracking database", "older0", "aaa111")
    assert not needs_migration(diff(BEFORE, after, database_schema="aaa111"))


def test_images_come_from_the_releases_own_stack_file(tmp_path: Path) -> None:
    stack = tmp_path / "services.yaml"
    stack.write_text("services:\n  a: {image: 'x/a:1@sha256:00'}\n  b: {command: [true]}\n")
    assert images_of(stack) == {"a": "x/a:1@sha256:00"}
    project = images_of(Path(__file__).parents[2] / "stacks" / "services.yaml")
    assert "@sha256:" in project["prometheus"]


def test_journal_moves_only_along_the_state_machine(tmp_path: Path) -> None:
    j = jr.start(tmp_path, "0.1.0", "0.2.0")
    assert j.phase == "backing-up"
    with pytest.raises(ApplianceError, match="from backing-up to done"):
        j.move(tmp_path, "done")
    j.move(tmp_path, "applying")
    j.move(tmp_path, "done")
    loaded = jr.load(tmp_path)
    assert loaded is not None and loaded.phase == "done"
    assert [h[0] for h in loaded.history] == ["backing-up", "applying", "done"]
    assert (tmp_path / jr.JOURNAL).stat().st_mode & 0o777 == 0o600
    # a finished upgrade can be rolled back by hand, once
    loaded.move(tmp_path, "rolling-back", "asked")
    loaded.move(tmp_path, "rolled-back")
    with pytest.raises(ApplianceError):
        loaded.move(tmp_path, "rolling-back")


@pytest.mark.parametrize("phase", ["applying", "rolling-back", "rollback-failed"])
def test_an_interrupted_upgrade_stops_the_next_up_and_names_the_way_out(
    tmp_path: Path, phase: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    jr.save(tmp_path, jr.Journal("0.1.0", "0.2.0", phase=phase, error="mlflow did not start"))  # type: ignore[arg-type]
    monkeypatch.delenv(jr.STEP_ENV, raising=False)
    with pytest.raises(jr.UpgradeInProgressError) as caught:
        jr.check_before_up(tmp_path)
    text = str(caught.value)
    assert "0.1.0 to 0.2.0" in text and phase in text and "mlflow did not start" in text
    assert "appliance rollback" in text
    with pytest.raises(jr.UpgradeInProgressError):
        jr.start(tmp_path, "0.1.0", "0.2.0")
    # the upgrade's own steps pass
    monkeypatch.setenv(jr.STEP_ENV, "1")
    jr.check_before_up(tmp_path)


def test_an_interrupted_backup_changed_nothing_and_is_dropped(tmp_path: Path) -> None:
    jr.start(tmp_path, "0.1.0", "0.2.0")
    jr.require_settled(tmp_path)
    loaded = jr.load(tmp_path)
    assert loaded is not None and loaded.phase == "aborted"
    jr.start(tmp_path, "0.1.0", "0.2.0")  # a new upgrade may start


def test_an_unreadable_journal_is_named(tmp_path: Path) -> None:
    (tmp_path / jr.JOURNAL).write_text("{not json")
    with pytest.raises(ApplianceError, match=r"upgrade\.json is unreadable"):
        jr.require_settled(tmp_path)
    (tmp_path / jr.JOURNAL).write_text(json.dumps({"phase": "sideways"}))
    with pytest.raises(ApplianceError, match="no known upgrade phase"):
        jr.require_settled(tmp_path)


def test_unhealthy_lists_services_that_are_neither_healthy_nor_finished_jobs() -> None:
    status = {
        "services": {
            "mlflow": {"health": "healthy", "state": "running"},
            "buckets": {"health": "stopped", "state": "done"},
            "controller": {"health": "unhealthy", "state": "running", "detail": "connection refused"},
        }
    }
    assert unhealthy(json.dumps(status)) == ["controller (unhealthy: connection refused)"]


def test_release_versions_and_sources_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ReleaseInputError, match="not a release version"):
        get(tmp_path, "../../etc")
    with pytest.raises(ReleaseInputError, match="not installed"):
        get(tmp_path, "9.9.9")
    with pytest.raises(ReleaseInputError, match="no appliance package"):
        source_version(tmp_path)
    (tmp_path / "appliance").mkdir()
    (tmp_path / "appliance" / "__init__.py").write_text('"""x"""\n\n__version__ = "1.2.3"\n')
    assert source_version(tmp_path) == "1.2.3"


def test_the_stack_runs_from_the_active_release_only_when_it_is_this_version(tmp_path: Path) -> None:
    from appliance import __version__
    from appliance.upgrade import releases

    def fake(version: str) -> releases.Release:
        root = releases.releases_dir(tmp_path) / version
        (root / "venv" / "bin").mkdir(parents=True)
        (root / "venv" / "bin" / "python").write_text("")
        (root / releases.RELEASE_FILE).write_text(json.dumps({"version": version}))
        return releases.Release(version, root)

    assert releases.running_python(tmp_path) == releases.this_python()  # no release: as before
    older, this = fake("0.0.1"), fake(__version__)
    releases.activate(tmp_path, older)
    assert releases.active(tmp_path) == older
    assert releases.running_python(tmp_path) == releases.this_python()
    releases.activate(tmp_path, this)
    assert releases.running_python(tmp_path) == this.python
    assert set(releases.installed(tmp_path)) == {"0.0.1", __version__}


def test_a_bundle_that_is_no_release_is_refused_before_anything_is_installed(tmp_path: Path) -> None:
    import io
    import tarfile

    from appliance.upgrade.releases import install_bundle, releases_dir

    state = tmp_path / "state"
    escaping = tmp_path / "escaping.tar.gz"
    with tarfile.open(escaping, "w:gz") as tar:
        info = tarfile.TarInfo("../../outside.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    with pytest.raises(ReleaseInputError, match="not a readable release tarball"):
        install_bundle(state, escaping)
    not_ours = tmp_path / "other.tar.gz"
    with tarfile.open(not_ours, "w:gz") as tar:
        info = tarfile.TarInfo("project/README.md")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    with pytest.raises(ReleaseInputError, match="no appliance package"):
        install_bundle(state, not_ours)
    with pytest.raises(ReleaseInputError, match="no bundle at"):
        install_bundle(state, tmp_path / "missing.tar.gz")
    assert not (tmp_path / "outside.txt").exists()
    assert not releases_dir(state).exists() or not any(releases_dir(state).iterdir())


def test_container_stacks_are_sent_to_their_images(tmp_path: Path) -> None:
    from appliance.answers import Answers
    from appliance.context import AppContext
    from appliance.upgrade.releases import Release
    from appliance.upgrade.run import plan_upgrade

    ctx = AppContext.create(Answers(runtime="podman"), None, tmp_path)
    with pytest.raises(ApplianceError, match="runs on podman") as caught:
        plan_upgrade(ctx, Release("9.9.9", tmp_path / "nowhere"))
    assert "appliance up --bundle" in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_a_running_upgrade_holds_off_another_and_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(jr.STEP_ENV, raising=False)
    with jr.hold(tmp_path):
        journal = jr.start(tmp_path, "0.1.0", "0.2.0")
        # another process (here another descriptor) finds it running, not interrupted
        with pytest.raises(jr.UpgradeInProgressError, match="is running"):
            jr.check_before_up(tmp_path)
        with pytest.raises(jr.UpgradeInProgressError, match="is running"), jr.hold(tmp_path):
            pass
        loaded = jr.load(tmp_path)
        assert loaded is not None and loaded.phase == "backing-up"
        journal.move(tmp_path, "applying")
        journal.move(tmp_path, "done")
    jr.check_before_up(tmp_path)


RENDER_HASHES = """
import json, sys
from pathlib import Path
from appliance.answers import Answers
from appliance.context import AppContext
from appliance.engine import Engine
answers = Answers.model_validate({"components": {"serving": True, "controller": True}})
engine = Engine(AppContext.create(answers, None, Path(sys.argv[1])))
print(json.dumps({name: svc.config_hash for name, svc in engine.desired.items()}))
"""


def test_the_stack_renders_alike_whichever_name_started_the_interpreter(tmp_path: Path) -> None:
    """``appliance`` runs the virtualenv's bin/python3, ``python -m appliance`` and the tests its
    bin/python: a stack brought up by one and planned by the other must show no change (it showed
    every Python service as "config changed", their commands naming the interpreter)."""
    import subprocess
    import sys

    bin_dir = Path(sys.executable).parent
    names = [n for n in ("python", "python3", f"python3.{sys.version_info.minor}") if (bin_dir / n).exists()]
    assert len(names) >= 2, f"one name only for this interpreter in {bin_dir}: {names}"
    hashes = {
        name: json.loads(
            subprocess.run(
                [str(bin_dir / name), "-c", RENDER_HASHES, str(tmp_path / "state")],
                capture_output=True, text=True, check=True, timeout=120,
            ).stdout
        )
        for name in names
    }  # fmt: skip
    first = hashes[names[0]]
    assert {"mlflow", "serving", "controller"} <= set(first)
    assert all(found == first for found in hashes.values()), hashes
