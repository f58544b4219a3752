"""A small client for supervisord: its config, its start, and its XML-RPC API over a unix socket.

The socket lives in the state directory with mode 0700 on its folder, so only the owner can drive
it; there is no TCP listener and no password to leak.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
import time
import xmlrpc.client
from pathlib import Path
from typing import Any

from appliance.errors import RuntimeUnavailableError

SUPERVISORD_CONF = """\
; Written by the MLOps Appliance. Programs are in programs/*.conf.
[unix_http_server]
file={sock}
chmod=0700

[supervisord]
logfile={dir}/supervisord.log
logfile_maxbytes=10MB
pidfile={dir}/supervisord.pid
childlogdir={logs}
directory={state}
nodaemon=false
silent=true

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{sock}

[include]
files = {dir}/programs/*.conf
"""


def socket_path(state_dir: Path) -> Path:
    """The socket path; under /tmp when the state path is too long for a unix socket."""
    path = state_dir / "supervisor" / "supervisor.sock"
    if len(str(path)) < 100:
        return path
    digest = hashlib.sha1(str(state_dir).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"appliance-{digest}.sock"


class Supervisor:
    """supervisord for one state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.dir = state_dir / "supervisor"
        self.programs = self.dir / "programs"
        self.conf = self.dir / "supervisord.conf"
        self.sock = socket_path(state_dir)

    def proxy(self) -> Any:
        from supervisor.xmlrpc import SupervisorTransport

        transport = SupervisorTransport(None, None, serverurl=f"unix://{self.sock}")
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport).supervisor

    def alive(self) -> bool:
        if not self.sock.exists():
            return False
        try:
            return bool(self.proxy().getState()["statecode"] == 1)
        except (OSError, xmlrpc.client.Error):
            return False

    def ensure_running(self) -> None:
        """Write the config and start supervisord unless it already answers."""
        self.programs.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o700)
        (self.state_dir / "logs").mkdir(exist_ok=True)
        text = SUPERVISORD_CONF.format(
            sock=self.sock, dir=self.dir, logs=self.state_dir / "logs", state=self.state_dir
        )
        if not self.conf.exists() or self.conf.read_text() != text:
            self.conf.write_text(text)
        if self.alive():
            return
        binary = Path(sys.executable).parent / "supervisord"
        exe = str(binary) if binary.exists() else shutil.which("supervisord")
        if not exe:
            raise RuntimeUnavailableError(
                "supervisord is not installed", fix="run `make up` (or pip install supervisor in the venv)"
            )
        self.sock.unlink(missing_ok=True)
        result = subprocess.run([exe, "-c", str(self.conf)], capture_output=True, text=True, check=False)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.alive():
                return
            time.sleep(0.1)
        raise RuntimeUnavailableError(
            f"supervisord did not start: {result.stderr.strip() or result.stdout.strip() or 'no output'}",
            fix=f"read {self.dir / 'supervisord.log'}",
        )

    def shutdown(self) -> None:
        """Stop supervisord (and so every program it runs) and wait until it is gone."""
        if not self.alive():
            return
        pid_file = self.dir / "supervisord.pid"
        try:
            self.proxy().shutdown()
        except (OSError, xmlrpc.client.Error):
            pass
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and pid_file.exists():
            time.sleep(0.1)
