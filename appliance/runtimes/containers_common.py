"""What the podman and docker runtimes share: naming, labels, container specs and the verbs.

podman-py mirrors the Docker SDK (``client.containers/networks/volumes/images``), so one class does
the work and each runtime only says how to connect, how to attach a network alias and how to pass
a GPU. Ownership is by label, never by name: ``observe``, ``stop``, ``remove`` and ``shutdown`` only
ever see objects labelled with this state directory's stack hash, so nothing unlabelled is touched.

Addresses: ``render.py`` renders the container command with ``{bind}`` = ``0.0.0.0`` (a
container cannot listen on the host's bind address) and ``{host.NAME}`` = the service name on the
stack network, while each port is published on the host at ``bind_address:port`` -> the same
port inside. The engine's health probes keep working from the host unchanged. Config files, and
the secret files a service names, are mounted read-only (config files at the same path as on the
host, so ``{config}`` means the same thing to every runtime; secrets where the container's
command or files name them). Container state lives in volumes (``{state}`` = /var/lib/appliance).
"""

from __future__ import annotations

import hashlib
import re
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from appliance.answers import Answers
from appliance.context import CONTAINER_STATE_DIR
from appliance.errors import ApplianceError, RuntimeUnavailableError
from appliance.runtimes import reloads
from appliance.runtimes.atomic_files import write_atomic
from appliance.runtimes.base import ObservedService, ProcState
from appliance.stack import RenderedService, config_dir

PREFIX = "io.mlops-appliance."
STACK_LABEL, SERVICE_LABEL, HASH_LABEL = PREFIX + "stack", PREFIX + "service", PREFIX + "config-hash"
IMAGE_LABEL, ONESHOT_LABEL = PREFIX + "image", PREFIX + "oneshot"
STATES: dict[str, ProcState] = {
    "running": "running",
    "restarting": "starting",
    "created": "stopped",
    "configured": "stopped",
    "initialized": "stopped",
    "stopped": "stopped",
    "paused": "stopped",
    "exited": "exited",
    "removing": "stopped",
    "dead": "failed",
}
STOP_SECONDS = 10
ONESHOT_TIMEOUT = 600


def stack_hash(state_dir: Path) -> str:
    """The stack's identity on a host: the state directory, as the local runtime marks it."""
    return hashlib.sha1(str(state_dir.resolve()).encode()).hexdigest()[:12]


def parse_started(value: str | None) -> float | None:
    """Unix time from the engines' RFC 3339 timestamps (nanoseconds, ``Z`` or an offset)."""
    if not value or value.startswith("0001-"):
        return None
    match = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)?", value)
    if not match:
        return None
    fraction = float(match.group(2) or 0)
    zone = match.group(3) or "Z"
    stamp = datetime.fromisoformat(match.group(1) + ("+00:00" if zone == "Z" else zone))
    return stamp.timestamp() + fraction


def observed_from(attrs: dict[str, Any], labels: dict[str, str]) -> ObservedService:
    """One container as the planner sees it, from inspect data (docker) or a libpod list entry
    (podman: ``State`` is a word, ``Pid``/``ExitCode``/``StartedAt`` sit at the top level)."""
    raw = attrs.get("State") or {}
    state = raw if isinstance(raw, dict) else {**attrs, "Status": raw}
    mapped = STATES.get(str(state.get("Status", "")).lower(), "failed")
    if mapped == "exited" and labels.get(ONESHOT_LABEL) == "true":
        mapped = "done" if state.get("ExitCode") == 0 else "failed"
    started = state.get("StartedAt")
    return ObservedService(
        name=labels[SERVICE_LABEL],
        config_hash=labels.get(HASH_LABEL) or None,
        state=mapped,
        pid=state.get("Pid") or None,
        ref=attrs.get("Id"),
        started_at=(float(started) if isinstance(started, int | float) else parse_started(started))
        if mapped in ("running", "starting")
        else None,
    )


def restart_policy(restart: str, oneshot: bool) -> dict[str, Any]:
    if oneshot or restart == "no":
        return {"Name": "no"}
    if restart == "on-failure":
        return {"Name": "on-failure", "MaximumRetryCount": 5}
    return {"Name": "always"}


def host_has_gpu() -> bool:
    """An NVIDIA GPU is visible to this host."""
    return Path("/dev/nvidia0").exists() or Path("/proc/driver/nvidia/gpus").is_dir()


def wants_gpu(svc: RenderedService, answers: Answers) -> bool:
    """The service gets the GPU: it asks, the answers allow it for this service and one exists."""
    gpu = answers.gpu
    if not svc.gpu or gpu.mode == "off" or svc.name not in gpu.services:
        return False
    return gpu.mode == "on" or host_has_gpu()


class ContainerRuntime:
    """The Runtime protocol over a Docker-SDK-shaped client. Subclasses connect and add GPUs."""

    name = "containers"
    not_found: tuple[type[Exception], ...] = ()
    api_error: tuple[type[Exception], ...] = ()

    def __init__(self, state_dir: Path, answers: Answers) -> None:
        self.state_dir = state_dir
        self.answers = answers
        self.stack = stack_hash(state_dir)
        self.network = f"appliance-{self.stack}"
        self._client: Any = None

    # -- what subclasses provide ---------------------------------------------------------------
    def connect(self) -> Any:
        """A client whose daemon answers, or RuntimeUnavailableError."""
        raise NotImplementedError

    def network_options(self) -> dict[str, Any]:
        return {}

    def attach(self, kwargs: dict[str, Any], alias: str) -> None:
        """Put the container on the stack network under ``alias`` (adds create arguments)."""
        raise NotImplementedError

    def gpu_options(self) -> dict[str, Any]:
        raise NotImplementedError

    # -- helpers -------------------------------------------------------------------------------
    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = self.connect()
        return self._client

    def labels(self, **extra: str) -> dict[str, str]:
        return {STACK_LABEL: self.stack, **extra}

    def container_name(self, service: str) -> str:
        return f"appliance-{self.stack}-{service}"

    def _ours(self) -> list[Any]:
        return list(self.client.containers.list(all=True, filters={"label": f"{STACK_LABEL}={self.stack}"}))

    def _find(self, name: str) -> Any | None:
        for container in self._ours():
            if container.labels.get(SERVICE_LABEL) == name:
                return container
        return None

    def image_for(self, svc: RenderedService) -> str:
        image = self.answers.images.get(svc.name) or svc.image
        if not image:
            raise ApplianceError(
                f"service {svc.name!r} has no container image",
                fix=f"add images.{svc.name}: IMAGE to the answers file, or use runtime: local",
            )
        return image

    def _has(self, image: str) -> bool:
        try:
            self.client.images.get(image)
        except self.not_found:
            return False
        return True

    def _ensure_image(self, image: str) -> str:
        """The reference to run ``image`` by: itself, when the engine holds it or can pull it. A
        digest-pinned ``name:tag@sha256:...`` that the engine has not and cannot pull (offline)
        falls back to ``name:tag`` where that is present: an offline bundle carries it under that
        name (a docker-archive keeps tags, not registry digests), its sha256 checked at load."""
        if self._has(image):
            return image
        hint = "build it with `appliance images build`, or load an offline bundle"
        if image.startswith("localhost/"):
            raise ApplianceError(f"image {image} is not in {self.name}'s image store", fix=hint)
        error: Exception | None = None
        try:
            self.client.images.pull(image)
        except self.api_error as err:
            error = err
        # podman's pull can answer 200 with the failure in its stream: ask the store, not the reply
        if self._has(image):
            return image
        tagged = image.split("@", 1)[0]
        if tagged != image and self._has(tagged):
            return tagged
        raise ApplianceError(
            f"image {image} is not in {self.name}'s store and pulling it failed: {error or 'not stored'}",
            fix=f"{hint}, or point images.<service> in the answers file at a local image",
        ) from error

    def _ensure_network(self) -> None:
        found = self.client.networks.list(filters={"label": f"{STACK_LABEL}={self.stack}"})
        if not any(n.name == self.network for n in found):
            self.client.networks.create(self.network, labels=self.labels(), **self.network_options())

    def _volume(self, volume: str) -> str:
        name = f"appliance-{self.stack}-{volume}"
        try:
            self.client.volumes.get(name)
        except self.not_found:
            self.client.volumes.create(name, labels=self.labels())
        return name

    def secret_files(self, svc: RenderedService) -> dict[str, Path]:
        """Secret files the service's command, env or config files name, as container path ->
        host file (``STATE/secrets/NAME``). A name under the container state folder
        (``{state}/secrets/NAME`` in the stack file) or under the host's secrets folder (config
        files) is mounted read-only at that path; no other secret is."""
        root = self.state_dir / "secrets"
        texts = [*svc.container_command, *svc.env.values(), *svc.files.values()]
        found: dict[str, Path] = {}
        for prefix in (str(root), f"{CONTAINER_STATE_DIR}/secrets"):
            pattern = re.compile(re.escape(prefix) + r"/([\w.-]+)")
            for text in texts:
                for match in pattern.finditer(text):
                    if (root / match.group(1)).is_file():
                        found[match.group(0)] = root / match.group(1)
        return found

    def _write_config(self, svc: RenderedService) -> None:
        """Its config files, as rendered now; the container mounts their folder, so a file replaced
        here is the one it reads (on a start, or a reload)."""
        for file_name, text in svc.files.items():
            write_atomic(config_dir(self.state_dir, svc.name) / file_name, text)

    def _spec(self, svc: RenderedService, image: str) -> dict[str, Any]:
        self._write_config(svc)
        volumes = {self._volume(vol): {"bind": path, "mode": "rw"} for vol, path in svc.volumes.items()}
        if svc.files:
            folder = str(config_dir(self.state_dir, svc.name))
            volumes[folder] = {"bind": folder, "mode": "ro"}
        for inside, secret in self.secret_files(svc).items():
            volumes[str(secret)] = {"bind": inside, "mode": "ro"}
        for host_dir, inside in svc.host_dirs.items():  # host folders the service reads, read-only
            Path(host_dir).mkdir(parents=True, exist_ok=True)
            volumes[host_dir] = {"bind": inside, "mode": "ro"}
        bind = svc.publish_address
        argv = list(svc.container_command)
        kwargs: dict[str, Any] = {
            "image": image,
            # The command is the whole argv, whatever the image's ENTRYPOINT (the upstream
            # monitoring images set one, ours only a CMD): its first word replaces the entrypoint.
            "entrypoint": argv[:1],
            "command": argv[1:],
            "name": self.container_name(svc.name),
            "environment": dict(svc.env),
            "labels": self.labels(
                **{SERVICE_LABEL: svc.name, HASH_LABEL: svc.config_hash, IMAGE_LABEL: image},
                **({ONESHOT_LABEL: "true"} if svc.oneshot else {}),
            ),
            "ports": {f"{port}/tcp": (bind, port) for port in svc.ports.values()},
            "volumes": volumes,
            "restart_policy": restart_policy(svc.restart, svc.oneshot),
            "init": True,
            "detach": True,
        }
        limits = self.answers.resources
        if limits.memory_mb:
            kwargs["mem_limit"] = f"{limits.memory_mb}m"
        if limits.cpus:
            kwargs["nano_cpus"] = int(limits.cpus * 1e9)
        if svc.container_user:
            kwargs["user"] = svc.container_user
        if wants_gpu(svc, self.answers):
            kwargs.update(self.gpu_options())
        return kwargs

    # -- Runtime interface ---------------------------------------------------------------------
    def ensure_ready(self) -> None:
        self.client.ping()
        self._ensure_network()

    def observe(self) -> dict[str, ObservedService]:
        seen: dict[str, ObservedService] = {}
        for container in self._ours():
            labels = dict(container.labels)
            if SERVICE_LABEL not in labels:
                continue
            observed = observed_from(container.attrs, labels)
            wanted = self.answers.images.get(observed.name)
            if wanted and labels.get(IMAGE_LABEL) != wanted:
                observed = ObservedService(observed.name, None, observed.state, observed.pid, observed.ref)
            seen[observed.name] = observed
        return seen

    def create(self, service: RenderedService) -> None:
        self.remove(service.name)
        image = self._ensure_image(self.image_for(service))
        self._ensure_network()
        kwargs = self._spec(service, image)
        self.attach(kwargs, service.name)
        container = self.client.containers.create(**kwargs)
        container.start()
        if service.oneshot:
            self._wait_oneshot(service, container)
        reloads.remember(self.state_dir, service)

    def _wait_oneshot(self, svc: RenderedService, container: Any) -> None:
        started = time.monotonic()
        code = container.wait(timeout=ONESHOT_TIMEOUT)
        code = code.get("StatusCode", 1) if isinstance(code, dict) else int(code)
        if code != 0:
            raise ApplianceError(
                f"job {svc.name!r} failed with exit code {code} after {time.monotonic() - started:.1f}s:\n"
                f"{self.log_tail(svc.name)}",
                fix=f"read `appliance logs {svc.name}`, correct the cause, then run `appliance up` again",
            )

    def start(self, service: RenderedService) -> None:
        container = self._find(service.name)
        if container is None or service.oneshot:
            self.create(service)
            return
        self._write_config(service)  # reload files may have changed while it was stopped
        container.start()
        reloads.remember(self.state_dir, service)

    def reload(self, service: RenderedService) -> None:
        container = self._find(service.name)
        if container is None:
            raise ApplianceError(
                f"{service.name} has no container to reload", fix="run `appliance up` again to create it"
            )
        reloads.reload_in_place(
            service,
            self.state_dir,
            lambda: self._write_config(service),
            # the runtime's init process (init: True) passes the signal on to the service
            lambda: container.kill(signal=reloads.SIGNAL),
            lambda: self.log_tail(service.name),
        )

    def stop(self, name: str) -> None:
        container = self._find(name)
        if container is not None and observed_from(container.attrs, container.labels).running:
            container.stop(timeout=STOP_SECONDS)

    def remove(self, name: str) -> None:
        container = self._find(name)
        if container is not None:
            container.remove(force=True)

    def log_file(self, name: str) -> str | None:
        container = self._find(name)
        path = container and container.attrs.get("LogPath")
        return str(path) if path else f"{self.name} logs {self.container_name(name)}"

    def log_tail(self, name: str, lines: int = 20) -> str:
        container = self._find(name)
        if container is None:
            return ""
        raw = container.logs(tail=lines, stdout=True, stderr=True)
        data = raw if isinstance(raw, bytes) else b"".join(raw)
        return "\n".join("    " + line for line in data.decode(errors="replace").splitlines()[-lines:])

    def shutdown(self) -> None:
        """After ``down``: remove the stack's (stopped) containers and network; volumes keep data."""
        for container in self._ours():
            container.remove(force=True)
        for network in self.client.networks.list(filters={"label": f"{STACK_LABEL}={self.stack}"}):
            network.remove()

    def purge(self) -> None:
        """Remove everything of this stack, data volumes included (``appliance down --purge``)."""
        self.shutdown()
        for volume in self.client.volumes.list(filters={"label": f"{STACK_LABEL}={self.stack}"}):
            volume.remove(force=True)


def unavailable(runtime: str, where: str, err: Exception) -> RuntimeUnavailableError:
    return RuntimeUnavailableError(
        f"{runtime} does not answer at {where}: {err}",
        fix="run scripts/setup-containers.sh as root (installs and starts podman and dockerd), "
        "or choose runtime: local in the answers file",
    )
