"""Where a model server keeps the versions it downloads: one folder per process, gone with it.

A server following a registry alias or an S3 object serves from a downloaded copy, and keeps the
copy of the version it serves until the next one replaces it. Copies made straight in the temporary
folder outlived their server: every stop, restart, rolling update and replica the autoscaler
retired left one full model behind (measured: 152 copies in /tmp on a test machine in one day).
Now each process downloads into a folder of its own, ``TMP/appliance-serving-PID-*``, which it
removes when it exits; one killed without a chance to (SIGKILL, out of memory) leaves its folder to
the next server on the machine to start downloading, which removes the folders of processes that
are gone (owned by the same account, never through a symbolic link).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import threading
from pathlib import Path

PREFIX = "appliance-serving-"
_roots: dict[str, Path] = {}
"""The temporary folder in use -> this process's downloads folder in it."""
_lock = threading.Lock()


def new_download(prefix: str) -> Path:
    """An empty folder for one download, inside this process's downloads folder."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir=downloads_folder()))


def downloads_folder() -> Path:
    """This process's downloads folder, made (and those of processes gone swept) on first use."""
    base = tempfile.gettempdir()
    with _lock:
        root = _roots.get(base)
        if root is None or not root.is_dir():
            sweep(Path(base))
            root = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=base))
            if not _roots:
                atexit.register(remove_all)
            _roots[base] = root
        return root


def remove_all() -> None:
    """Remove this process's downloads folders (at exit: the sessions no longer need the files)."""
    with _lock:
        for root in _roots.values():
            shutil.rmtree(root, ignore_errors=True)
        _roots.clear()


def sweep(base: Path) -> list[Path]:
    """Remove the downloads folders in ``base`` of processes no longer running (or of an earlier
    process with this one's PID); returns them. Run before this process makes its own there."""
    removed = []
    for folder in base.glob(f"{PREFIX}*"):
        pid = folder.name.removeprefix(PREFIX).partition("-")[0]
        try:
            info = folder.lstat()
        except OSError:
            continue
        if not pid.isdigit() or folder.is_symlink() or info.st_uid != os.getuid():
            continue
        # this process's own PID: a folder of an earlier life (a container restarted gives its
        # processes the same PIDs), since this process makes its folder only after the sweep
        if int(pid) != os.getpid() and _running(int(pid)):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another account's process: running
        return True
    return True
