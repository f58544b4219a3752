"""The local runtime: services as host processes supervised by supervisord.

Each service is one supervisord program file (``STATE/supervisor/programs/NAME.conf``) whose first
line records the config hash it was written for, plus a 0600 environment file the launcher reads.
Files are written atomically before supervisord is told about them, so an interrupted apply leaves
either the old program or a file that ``observe`` reports as incomplete (hash None) and the next
``up`` creates again. One-shot jobs run to completion here and leave a done-marker with their hash.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
import xmlrpc.client
from pathlib import Path

from appliance.errors import ApplianceError
from appliance.runtimes import handover, reloads
from appliance.runtimes.atomic_files import write_atomic
from appliance.runtimes.base import ObservedService, ProcState
from appliance.runtimes.procscan import MARKER_VAR, pids_with_marker, terminate
from appliance.runtimes.supervisor_rpc import Supervisor
from appliance.stack import RenderedService, config_dir
from appliance.upgrade.releases import this_python

HASH_PREFIX = "; appliance-config-hash: "
STATES: dict[str, ProcState] = {
    "RUNNING": "running",
    "STARTING": "starting",
    "BACKOFF": "starting",
    "STOPPED": "stopped",
    "STOPPING": "stopped",
    "EXITED": "exited",
    "FATAL": "failed",
    "UNKNOWN": "failed",
}
STANDBY = "-standby"
"""Marker suffix of a standby model server (its launcher-free start is not the service's own)."""
STANDBY_READY_S = 300.0
AUTORESTART = {"always": "true", "on-failure": "unexpected", "no": "false"}


class LocalRuntime:
    """Host processes under one supervisord per state directory."""

    name = "local"

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.sup = Supervisor(state_dir)
        self.run_dir = state_dir / "run"
        self.marker_prefix = hashlib.sha1(str(state_dir).encode()).hexdigest()[:12] + "/"

    # -- files -------------------------------------------------------------------------------
    def _program_file(self, name: str) -> Path:
        return self.sup.programs / f"{name}.conf"

    def _env_file(self, name: str) -> Path:
        return self.run_dir / f"{name}.env.json"

    def _oneshot_file(self, name: str) -> Path:
        return self.run_dir / f"{name}.done"

    def _log(self, name: str) -> Path:
        return self.state_dir / "logs" / f"{name}.log"

    def _handover_file(self, name: str) -> Path:
        return self.run_dir / f"{name}.handover.sock"

    def _service_env(self, svc: RenderedService) -> dict[str, str]:
        env = svc.env | {MARKER_VAR: self.marker_prefix + svc.name}
        if handover.applies(svc.name, svc.command):
            env[handover.HANDOVER_ENV] = str(self._handover_file(svc.name))
        return env

    def _write_files(self, svc: RenderedService) -> None:
        for volume in svc.volumes:
            (self.state_dir / volume).mkdir(parents=True, exist_ok=True)
        folder = config_dir(self.state_dir, svc.name)
        for file_name, text in svc.files.items():
            write_atomic(folder / file_name, text)
        write_atomic(self._env_file(svc.name), json.dumps(self._service_env(svc)))

    def _program_text(self, svc: RenderedService) -> str:
        command = [str(this_python()), "-m", "appliance.runtimes.launcher", "--env-file"]
        command += [str(self._env_file(svc.name)), "--", *svc.command]
        lines = [
            f"{HASH_PREFIX}{svc.config_hash}",
            f"[program:{svc.name}]",
            "command=" + shlex.join(command).replace("%", "%%"),
            f"directory={self.state_dir}",
            "autostart=false",
            f"autorestart={AUTORESTART[svc.restart]}",
            "startsecs=1",
            "startretries=5",
            "stopasgroup=true",
            "killasgroup=true",
            "stopwaitsecs=10",
            "redirect_stderr=true",
            f"stdout_logfile={self._log(svc.name)}",
            "stdout_logfile_maxbytes=20MB",
            "stdout_logfile_backups=2",
        ]
        return "\n".join(lines) + "\n"

    # -- Runtime interface ---------------------------------------------------------------------
    def ensure_ready(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.sup.ensure_running()

    def observe(self) -> dict[str, ObservedService]:
        seen: dict[str, ObservedService] = {}
        for marker in sorted(self.run_dir.glob("*.done")) if self.run_dir.exists() else []:
            name = marker.name.removesuffix(".done")
            seen[name] = ObservedService(name, marker.read_text().strip(), "done", ref="oneshot")
        files = sorted(self.sup.programs.glob("*.conf")) if self.sup.programs.exists() else []
        if not files:
            return seen
        alive = self.sup.alive()
        infos = {i["name"]: i for i in self._rpc_all()} if alive else {}
        for path in files:
            name = path.stem
            first = path.read_text().split("\n", 1)[0]
            config_hash = first.removeprefix(HASH_PREFIX) if first.startswith(HASH_PREFIX) else None
            info = infos.get(name)
            if info is None:
                # supervisord down: the program file is the record. Up but unaware of it: an apply
                # was interrupted between writing the file and adding the program.
                seen[name] = ObservedService(name, config_hash if not alive else None, "stopped", ref=name)
                continue
            state = STATES.get(info["statename"], "failed")
            seen[name] = ObservedService(
                name,
                config_hash,
                state,
                pid=info["pid"] or None,
                ref=name,
                started_at=float(info["start"]) if state in ("running", "starting") else None,
            )
        return seen

    def _rpc_all(self) -> list[dict]:
        if not self.sup.alive():
            return []
        result: list[dict] = self.sup.proxy().getAllProcessInfo()
        return result

    def create(self, service: RenderedService) -> None:
        if service.oneshot:
            self._run_oneshot(service)
            return
        holder = self._hold_sockets(service)
        standby = self._start_standby(service, holder) if holder is not None else None
        if holder is not None and standby is None and holder.given.is_set():
            holder = self._hold_sockets(service)  # the failed standby had them: from the old one again
        self._forget(service.name)
        self._write_files(service)
        write_atomic(self._program_file(service.name), self._program_text(service), 0o644)
        proxy = self.sup.proxy()
        proxy.reloadConfig()
        proxy.addProcessGroup(service.name)
        self.start(service)
        if standby is not None:
            self._await_takeover(service.name, standby)

    def start(self, service: RenderedService) -> None:
        if service.oneshot:
            self._run_oneshot(service)
            return
        # its files as rendered now: reload files may have changed while it was stopped
        self._write_files(service)
        try:
            self.sup.proxy().startProcess(service.name, False)
        except xmlrpc.client.Fault as fault:
            if "ALREADY_STARTED" not in fault.faultString:
                raise
            return  # a running process has not read what was just written: no record
        reloads.remember(self.state_dir, service)

    def reload(self, service: RenderedService) -> None:
        reloads.reload_in_place(
            service,
            self.state_dir,
            lambda: self._write_files(service),
            lambda: self.sup.proxy().signalProcess(service.name, reloads.SIGNAL.removeprefix("SIG")),
            lambda: self.log_tail(service.name),
        )

    def _hold_sockets(self, service: RenderedService) -> handover.Holder | None:
        """Before a running model server is replaced, keep its listening sockets open for its
        successor (handover.py), so that clients wait for the new one instead of being refused."""
        if not handover.applies(service.name, service.command):
            return None
        ports = [service.ports[p] for p in handover.TAKES_OVER[service.name] if service.ports.get(p, 0) > 0]
        marker = self.marker_prefix + service.name
        pids = pids_with_marker(marker, exact=True) + pids_with_marker(marker + STANDBY, exact=True)
        if not ports or not pids or not self.sup.alive():
            return None
        path = self._handover_file(service.name)
        try:  # lent by a server of this release or later, else taken (any release: needs ptrace rights)
            sockets = handover.receive(str(path), None, ports) or handover.take(pids, ports)
        except handover.HandoverUnavailableError as err:
            print(f"{service.name}: its ports close while it restarts ({err})", file=sys.stderr, flush=True)
            return None
        if not sockets:
            return None
        self.run_dir.mkdir(parents=True, exist_ok=True)
        return handover.Holder(path, sockets)

    def _start_standby(self, service: RenderedService, holder: handover.Holder) -> subprocess.Popen | None:
        """The new server, once, outside supervisord: it loads its models while the old one still
        serves, takes the held sockets and answers beside it; then the old one is stopped and the
        supervised successor takes the sockets from the standby once *its* models are loaded, so
        no request waits for a model to load. None (and the held sockets alone bridge the
        restart) when the standby does not get ready."""
        marker = self.marker_prefix + service.name + STANDBY
        env = (
            os.environ
            | self._service_env(service)
            | {MARKER_VAR: marker, handover.OFFER_ENV: str(holder.path)}
        )
        log = self._log(service.name)
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            proc = subprocess.Popen(
                service.command,
                env=env,
                cwd=self.state_dir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + STANDBY_READY_S
        while time.monotonic() < deadline and proc.poll() is None:
            if handover.offered_again(holder):
                return proc
            time.sleep(0.05)
        print(
            f"{service.name}: no standby server (it did not get ready): requests wait for the new one",
            file=sys.stderr,
            flush=True,
        )
        terminate([proc.pid])
        proc.wait()
        return None

    def _await_takeover(self, name: str, standby: subprocess.Popen) -> None:
        """Wait for the standby to hand its sockets to the supervised server and exit; end it if
        the supervised one fails first (its health check then fails the apply as usual)."""
        deadline = time.monotonic() + STANDBY_READY_S
        while standby.poll() is None and time.monotonic() < deadline:
            seen = self.observe().get(name)
            if seen is not None and seen.state in ("failed", "exited", "stopped"):
                break
            time.sleep(0.1)
        if standby.poll() is None:
            terminate([standby.pid])
        standby.wait()

    def stop(self, name: str) -> None:
        if self.sup.alive():
            try:
                self.sup.proxy().stopProcess(name, True)
            except xmlrpc.client.Fault as fault:
                if not any(code in fault.faultString for code in ("NOT_RUNNING", "BAD_NAME")):
                    raise
        terminate(pids_with_marker(self.marker_prefix + name, exact=True))

    def _forget(self, name: str) -> None:
        """Stop a program and remove its group from supervisord (files stay)."""
        if not self.sup.alive():
            return
        self.stop(name)
        try:
            self.sup.proxy().removeProcessGroup(name)
        except xmlrpc.client.Fault as fault:
            if "BAD_NAME" not in fault.faultString:
                raise

    def remove(self, name: str) -> None:
        self._forget(name)
        for path in (self._program_file(name), self._env_file(name), self._oneshot_file(name)):
            path.unlink(missing_ok=True)

    def log_file(self, name: str) -> str | None:
        return str(self._log(name))

    def log_tail(self, name: str, lines: int = 20) -> str:
        path = self._log(name)
        if not path.exists():
            return ""
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 16384))
            text = fh.read().decode(errors="replace")
        return "\n".join("    " + line for line in text.splitlines()[-lines:])

    def shutdown(self) -> None:
        self.sup.shutdown()
        terminate(pids_with_marker(self.marker_prefix))

    def purge(self) -> None:
        """Nothing to do: a local stack keeps all its data in the state directory."""

    # -- one-shot jobs ---------------------------------------------------------------------------
    def _run_oneshot(self, svc: RenderedService, timeout: float = 300) -> None:
        self._write_files(svc)
        log = self._log(svc.name)
        log.parent.mkdir(parents=True, exist_ok=True)
        env = os.environ | self._service_env(svc)
        started = time.monotonic()
        with log.open("a") as out:
            proc = subprocess.run(
                svc.command, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=timeout, check=False
            )
        if proc.returncode != 0:
            raise ApplianceError(
                f"job {svc.name!r} failed with exit code {proc.returncode} "
                f"after {time.monotonic() - started:.1f}s:\n{self.log_tail(svc.name)}",
                fix=f"read {log}, correct the cause, then run `appliance up` again",
            )
        write_atomic(self._oneshot_file(svc.name), svc.config_hash, 0o644)
