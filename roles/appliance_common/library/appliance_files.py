#!/usr/bin/python
"""Write many small files on a host in one module call.

Why: ``ansible.builtin.copy`` in a loop costs one SSH round trip and one module run per file, about
half a second each on a busy host. A host's secrets and its units' config files are a few dozen
small files, so an unchanged cluster's ``up`` spent most of its time checking them one by one.
This writes them all in one call, with what ``copy`` guarantees for each: the content, owner, group
and mode made exact, a changed file replaced atomically (a temporary file in the same folder,
renamed over it), check mode reporting what would change without touching anything, and diff mode
(``plan`` runs with ``--check --diff``) giving each changed file's before and after as copy does;
a task that sets no_log (secrets) has Ansible hide them.
"""

from __future__ import annotations

import grp
import hashlib
import os
import pwd
import stat
import tempfile
from typing import Any

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: appliance_files
short_description: Write many small files (content, owner, group, mode) in one call
options:
  folder:
    description: The folder every file is written under (it must exist).
    type: path
    required: true
  files:
    description: Key -> content; each written to folder/(name % key), tagged with its key.
    type: dict
  name:
    description: The file name for a key of files ('%s': the key itself).
    type: str
    default: '%s'
  units:
    description: >-
      Rendered units; each one's folder folder/NAME/ is made (folder_mode) and its files (name ->
      content, or a list of {key, value}) written there, tagged NAME. A file of the list with
      reload true is one its service reads again on a reload: its change tags NAME in reload_tags,
      not changed_tags.
    type: list
    elements: dict
  owner: {type: str, default: root}
  group: {type: str, default: root}
  mode: {description: Each file's mode, an octal string such as '0640'., type: str, default: '0600'}
  folder_mode: {description: Each unit's folder's mode., type: str, default: '0750'}
"""

RETURN = r"""
changed_paths:
  description: The files written or whose owner or mode was set.
  type: list
changed_tags:
  description: The tags of those files, each once (a key of files, a unit's name).
  type: list
reload_tags:
  description: >-
    The units whose changed files are all ones their service reloads (reload true), each once: a
    reload, not a restart, applies them.
  type: list
diff:
  description: In diff mode, each changed file's before and after (text; a binary file is named).
  type: list
"""

DIFF_LIMIT = 104448
"""The largest file whose content a diff shows, as Ansible's own (``MAX_FILE_SIZE_FOR_DIFF``)."""


def _entries(params: dict[str, Any]) -> tuple[list[str], list[tuple[str, bytes, str, bool]]]:
    """Each unit's folder, and (path, content, tag, reload) for each file asked for (reload: its
    service reads it again on a reload); a unit name that is not one path component, or a path
    leaving the folder, raises ValueError."""
    folder = os.path.normpath(params["folder"])
    if not os.path.isabs(folder):
        raise ValueError(f"folder must be an absolute path, got {folder!r}")
    relative = [
        (params["name"] % key, value, str(key), False) for key, value in (params["files"] or {}).items()
    ]
    folders = []
    for unit in params["units"] or []:
        name = str(unit.get("name") or "")
        if not name or name in (".", "..") or "/" in name:
            raise ValueError(f"unit name {name!r} is not a folder name")
        folders.append(os.path.join(folder, name))
        files = unit.get("files") or {}
        if isinstance(files, list):  # as `appliance cluster` renders them: [{key, value, reload?}, ...]
            relative += [(f"{name}/{e['key']}", e["value"], name, bool(e.get("reload"))) for e in files]
        else:
            relative += [(f"{name}/{key}", value, name, False) for key, value in files.items()]
    entries = []
    for path, content, tag, reload in relative:
        dest = os.path.normpath(os.path.join(folder, path))
        if os.path.isabs(path) or not dest.startswith(folder + os.sep):
            raise ValueError(f"{path!r} is not a name under {folder}")
        entries.append((dest, str(content).encode(), tag, reload))
    return folders, entries


def _owner(params: dict[str, Any], check_mode: bool) -> tuple[int, int, int, int]:
    """The uid, gid, the files' mode and the folders' mode; an unknown account or a bad mode raises
    ValueError. In check mode an account not made yet (a fresh host's plan) is -1: every file
    counts as changed, as it will be."""
    try:
        uid = pwd.getpwnam(params["owner"]).pw_uid
        gid = grp.getgrnam(params["group"]).gr_gid
    except KeyError as err:
        if not check_mode:
            raise ValueError(f"unknown owner or group {err}") from err
        uid = gid = -1
    modes = []
    for key in ("mode", "folder_mode"):
        try:
            modes.append(int(params[key], 8))
        except ValueError as err:
            raise ValueError(f"{key} must be an octal string such as '0640', got {params[key]!r}") from err
    return uid, gid, modes[0], modes[1]


def _ensure_folder(path: str, uid: int, gid: int, mode: int, check_mode: bool) -> bool:
    """``path`` a folder with this owner and mode; whether it was (or would be) changed."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        if not check_mode:
            os.mkdir(path, mode)
            os.chown(path, uid, gid)
            os.chmod(path, mode)
        return True
    if (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (uid, gid, mode):
        return False
    if not check_mode:
        os.chown(path, uid, gid)
        os.chmod(path, mode)
    return True


def _current(dest: str) -> tuple[bytes | None, int, int, int]:
    """The file's content, uid, gid and mode now (None content: no regular file there)."""
    try:
        st = os.lstat(dest)
    except FileNotFoundError:
        return None, -1, -1, -1
    if not stat.S_ISREG(st.st_mode):  # a symlink or a folder is replaced, never followed
        return None, -1, -1, -1
    with open(dest, "rb") as handle:
        return handle.read(), st.st_uid, st.st_gid, st.st_mode & 0o7777


def _replace(dest: str, content: bytes, uid: int, gid: int, mode: int) -> None:
    """Write ``content`` beside ``dest`` and rename it over: a reader sees the old file or the new."""
    fd, temp = tempfile.mkstemp(prefix=".appliance-", dir=os.path.dirname(dest))
    try:
        os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, dest)
    except BaseException:
        if os.path.exists(temp):
            os.unlink(temp)
        raise


def _diff(dest: str, now: bytes | None, content: bytes) -> dict[str, str]:
    """What Ansible's diff callback prints for one file: its text before and after, or a line saying
    why not (binary, larger than DIFF_LIMIT, with a digest of each side); a mode or owner change
    alone shows equal texts."""
    texts = []
    for data in (now or b"", content):
        digest = hashlib.sha256(data).hexdigest()[:16]  # two different contents never read the same
        if len(data) > DIFF_LIMIT:
            texts.append(f"({len(data)} bytes, sha256 {digest}..., larger than the diff shows)\n")
            continue
        try:
            texts.append(data.decode())
        except UnicodeDecodeError:
            texts.append(f"(binary, {len(data)} bytes, sha256 {digest}...)\n")
    before_header = dest if now is not None else f"{dest} (no regular file)"
    return {"before_header": before_header, "after_header": dest, "before": texts[0], "after": texts[1]}


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "folder": {"type": "path", "required": True},
            # A task writing secrets sets no_log (the module's arguments and result stay out of the
            # logs); no_log here would mask every name equal to some content in the result too.
            "files": {"type": "dict"},
            "name": {"type": "str", "default": "%s"},
            "units": {"type": "list", "elements": "dict"},
            "owner": {"type": "str", "default": "root"},
            "group": {"type": "str", "default": "root"},
            "mode": {"type": "str", "default": "0600"},
            "folder_mode": {"type": "str", "default": "0750"},
        },
        required_one_of=[("files", "units")],
        supports_check_mode=True,
    )
    changed_paths: list[str] = []
    changed_tags: list[str] = []
    reload_tags: list[str] = []
    diffs: list[dict[str, str]] = []
    try:
        uid, gid, mode, folder_mode = _owner(module.params, module.check_mode)
        folders, entries = _entries(module.params)
        for path in folders:
            if _ensure_folder(path, uid, gid, folder_mode, module.check_mode):
                changed_paths.append(path)
        for dest, content, tag, reload in entries:
            now, now_uid, now_gid, now_mode = _current(dest)
            if now == content and (now_uid, now_gid, now_mode) == (uid, gid, mode):
                continue
            changed_paths.append(dest)
            # a new file (nothing there yet) is read at the start that follows, never by a reload
            tags = reload_tags if reload and now is not None else changed_tags
            if tag and tag not in tags:
                tags.append(tag)
            if module._diff:
                diffs.append(_diff(dest, now, content))
            if module.check_mode:
                continue
            if now == content:
                os.chown(dest, uid, gid)
                os.chmod(dest, mode)
            else:
                _replace(dest, content, uid, gid, mode)
    except (OSError, ValueError) as err:
        module.fail_json(msg=f"could not write the files: {err}", changed_paths=changed_paths)
    reload_only = [tag for tag in reload_tags if tag not in changed_tags]  # a restart reads them too
    result: dict[str, Any] = {
        "changed_paths": changed_paths,
        "changed_tags": changed_tags,
        "reload_tags": reload_only,
    }
    if module._diff:
        result["diff"] = diffs
    module.exit_json(changed=bool(changed_paths), **result)


if __name__ == "__main__":
    main()
