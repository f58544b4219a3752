"""Preflight for the container runtimes: the engine answers, every image is at hand, and GPUs
can reach containers when a service will get one.

``appliance.preflight.run_preflight`` calls :func:`container_checks` instead of its host-binary
and supervisord checks when the answers choose podman or docker. Checks only read the host.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

from appliance.context import AppContext
from appliance.images.build import engine_ready, image_labels, stale_code
from appliance.images.code_digest import running_code_digest
from appliance.preflight import Check
from appliance.runtimes.containers_common import wants_gpu
from appliance.stack import RenderedService

CDI_DIRS = (Path("/etc/cdi"), Path("/var/run/cdi"))
CDI_FIX = "install nvidia-container-toolkit, then `nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml`"
DOCKER_GPU_FIX = (
    "install nvidia-container-toolkit, run `nvidia-ctk runtime configure --runtime=docker`, restart dockerd"
)


def cdi_has_nvidia(dirs: tuple[Path, ...] = CDI_DIRS) -> bool:
    """A CDI spec names the ``nvidia.com/gpu`` device kind (what ``--device nvidia.com/gpu=all`` needs)."""
    for folder in dirs:
        for spec in sorted(folder.glob("*.y*ml")) + sorted(folder.glob("*.json")) if folder.is_dir() else []:
            if "nvidia.com/gpu" in spec.read_text(errors="replace"):
                return True
    return False


def docker_has_nvidia() -> bool:
    """dockerd knows the nvidia runtime, or the toolkit's hook is installed (device requests)."""
    if shutil.which("nvidia-container-runtime-hook") or shutil.which("nvidia-container-cli"):
        return True
    proc = subprocess.run(
        ["docker", "info", "--format", "{{json .Runtimes}}"], capture_output=True, text=True, check=False
    )
    try:
        return "nvidia" in json.loads(proc.stdout or "{}")
    except ValueError:
        return False


def gpu_check(engine: str, needed: list[str]) -> Check:
    """Whether the services in ``needed`` can get a GPU under ``engine``."""
    if not needed:
        return Check("container gpu", "pass", "no service gets a GPU")
    ok = cdi_has_nvidia() if engine == "podman" else docker_has_nvidia()
    if ok:
        return Check("container gpu", "pass", f"{engine} can pass the GPU to {', '.join(needed)}")
    how = "no CDI spec for nvidia.com/gpu" if engine == "podman" else "dockerd has no NVIDIA runtime"
    fix = CDI_FIX if engine == "podman" else DOCKER_GPU_FIX
    return Check("container gpu", "fail", f"{', '.join(needed)} want the GPU but {how}", fix)


def image_code_check(service: str, image: str, labels: dict[str, str]) -> Check:
    """An appliance image must hold this appliance's code: the engine renders each service's
    configuration and command for its own version, and an image from an older checkout or release
    may lack what they name (a module, a flag, a config key)."""
    stale = stale_code(image, labels, running_code_digest())
    if stale is None:
        return Check(f"image {service}", "pass", image)
    return Check(
        f"image {service}",
        "fail",
        str(stale),
        f"`{stale.rebuild}` builds it from this appliance, or load the offline bundle of this "
        "appliance's version (`appliance bundle load FILE`)",
    )


def container_checks(ctx: AppContext, desired: Mapping[str, RenderedService]) -> list[Check]:
    """Engine reachable, images present, GPU passthrough possible."""
    engine = ctx.answers.runtime
    if not engine_ready(engine):
        return [
            Check(
                "runtime",
                "fail",
                f"{engine} is not installed or its daemon does not answer",
                "run scripts/setup-containers.sh as root, or choose runtime: local",
            )
        ]
    checks = [Check("runtime", "pass", f"{engine} answers")]
    for name, svc in sorted(desired.items()):
        image = ctx.answers.images.get(name) or svc.image
        if not image:
            checks.append(Check(f"image {name}", "fail", f"{name} has no image", f"set images.{name}"))
        elif (labels := image_labels(engine, image)) is not None:
            checks.append(image_code_check(name, image, labels))
        else:
            local = image.startswith("localhost/")
            checks.append(
                Check(
                    f"image {name}",
                    "fail" if local else "warn",
                    f"{image} is not in {engine}'s store" + ("" if local else "; up will try to pull it"),
                    "`appliance images build`, `appliance bundle load FILE`, or set images."
                    f"{name} in the answers file",
                )
            )
    checks.append(gpu_check(engine, sorted(n for n, s in desired.items() if wants_gpu(s, ctx.answers))))
    return checks
