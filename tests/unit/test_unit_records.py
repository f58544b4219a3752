"""The records of what each unit's service read (appliance/cluster/unit_records.py, the units
machinery's ``appliance_applied`` filter): each part changes with what it digests and nothing else,
so a record that differs says whether the unit restarts or only reloads, and none gives back a value
it digests."""

from __future__ import annotations

from typing import Any

from appliance.cluster.unit_records import reloaded_record
from appliance.cluster.unit_records import unit_records as applied
from tests.unit.test_cluster_roles import role_filters

SECRET = "pw-0b5c9e1f27d84a6e"
RELEASE = "a" * 64
GUARD = "[guard]\nwhite_list = 'a'\n"


def _units(**changes: Any) -> list[dict[str, Any]]:
    store = {
        "name": "store",
        "command": ["/opt/venv/bin/weed", "server"],
        "files": [
            {"key": "security.toml", "value": changes.get("guard", GUARD), "reload": True},
            {"key": "security.toml.sha256", "value": changes.get("keys", "k1")},
            *changes.get("more_files", []),
        ],
    }
    db_files = [{"key": "pg.conf", "value": "port = 1\n"}]
    db = {"name": "db", "command": ["/usr/lib/postgresql/bin/postgres"], "files": db_files}
    return [store, db]


def _records(units: list[dict[str, Any]] | None = None, **rendered: Any) -> dict[str, str]:
    environments = {"store": f'PW="{rendered.get("secret", SECRET)}"\n', "db": ""}
    unit_files = {"store": rendered.get("store_unit", "ExecStart=weed\n"), "db": "ExecStart=postgres\n"}
    return applied(units or _units(), environments, unit_files, ["store"], rendered.get("release", RELEASE))


def _parts(line: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in line.split())


def _changed_parts(before: dict[str, str], after: dict[str, str]) -> dict[str, list[str]]:
    """Per record that differs, the parts that do."""
    found: dict[str, list[str]] = {}
    for key in sorted(set(before) | set(after)):
        old, new = _parts(before.get(key, "")), _parts(after.get(key, ""))
        parts = [p for p in sorted(set(old) | set(new)) if old.get(p) != new.get(p)]
        if parts:
            found[key] = parts
    return found


def test_each_unit_gets_a_start_record_and_one_with_reload_files_a_reload_record_too() -> None:
    records = _records()
    assert sorted(records) == ["db.applied", "store.applied", "store.reloaded"]
    assert all(line.endswith("\n") and line.count("\n") == 1 for line in records.values())
    assert list(_parts(records["store.applied"])) == ["unit", "environment", "files", "virtualenv"]
    assert _parts(records["store.applied"])["virtualenv"] == RELEASE[:16]
    assert _parts(records["db.applied"])["virtualenv"] == "-"  # not run from the virtualenv
    assert _records() == records  # the same rendering, the same records


def test_a_change_moves_only_the_part_that_digests_it() -> None:
    base = _records()
    assert _changed_parts(base, _records(secret="other")) == {"store.applied": ["environment"]}
    assert _changed_parts(base, _records(store_unit="ExecStart=weed -v\n")) == {"store.applied": ["unit"]}
    assert _changed_parts(base, _records(_units(keys="k2"))) == {"store.applied": ["files"]}
    assert _changed_parts(base, _records(release="b" * 64)) == {"store.applied": ["virtualenv"]}


def test_a_reload_file_changes_only_the_reload_record_unless_it_is_new() -> None:
    base = _records()
    assert _changed_parts(base, _records(_units(guard="[guard]\nwhite_list = 'a,b'\n"))) == {
        "store.reloaded": ["files"]
    }
    # a new reload file is read at the next start only: the start record moves with it
    extra = [{"key": "more.toml", "value": "x", "reload": True}]
    changed = _changed_parts(base, _records(_units(more_files=extra)))
    assert set(changed) == {"store.applied", "store.reloaded"}


def test_no_record_gives_back_a_value() -> None:
    records = _records()
    for line in records.values():
        assert SECRET not in line and "white_list" not in line and "k1" not in line, line


def test_the_filter_the_units_machinery_calls_is_the_one_worked_out_here() -> None:
    assert role_filters("appliance_common", "appliance_applied")["appliance_applied"] is applied
    store = _units()[0]
    assert _records()["store.reloaded"] == reloaded_record(store)
    assert reloaded_record(_units()[1]) is None
