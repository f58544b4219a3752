"""Secrets generated at install and kept in the state directory, one file each, mode 0600.

There are no default passwords anywhere: a secret is created the first time something asks for it
and read back afterwards, so re-running ``up`` never rotates a credential under a running service.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path


class SecretStore:
    """A folder of secret files (``STATE/secrets/NAME``), created 0700 with files 0600."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, name: str) -> Path:
        if not name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"secret name {name!r} must be letters, digits, '-' or '_'")
        return self.root / name

    def get(self, name: str, nbytes: int = 24) -> str:
        """The secret called ``name``, generated (URL-safe random) on first use."""
        path = self._path(name)
        if path.exists():
            return path.read_text().strip()
        return self.put(name, secrets.token_urlsafe(nbytes))

    def put(self, name: str, value: str) -> str:
        """Store ``value`` as ``name`` (atomically, 0600) and return it."""
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        path = self._path(name)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(value)
        os.replace(tmp, path)
        return value

    def names(self) -> list[str]:
        """Names of the secrets generated so far."""
        if not self.root.exists():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_file() and not p.name.endswith(".tmp"))

    def __getattr__(self, name: str) -> str:
        # Lets stack templates say ``{secret.jupyter_token}``.
        if name.startswith("_"):
            raise AttributeError(name)
        return self.get(name)
