"""Building, listing, saving and loading the appliance's images.

Builds run the ``podman build`` CLI (buildah's ``RUN --mount`` keeps the wheelhouse out of every
layer, and its output is the progress a user wants to see). Docker gets the same image through
``podman save | docker load``: one build, identical bytes, and the docker daemon needs no
BuildKit. Archives are docker-archive tarballs, which both engines load.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from appliance.errors import ApplianceError
from appliance.images.catalog import BASE_TAG, CATALOG, LABEL, Flavor, ImageSpec
from appliance.images.code_digest import running_code_digest, wheel_code_digest
from appliance.images.wheelhouse import (
    PROJECT_WHEEL_GLOB,
    add_wheels_for_python,
    ensure_no_deps_wheels,
    ensure_wheelhouse,
    metadata_headers,
    project_wheel,
)

ENGINES = ("podman", "docker")


def cache_dir() -> Path:
    """Where build contexts and the wheelhouse live between builds."""
    root = os.environ.get("APPLIANCE_CACHE_DIR") or os.environ.get("XDG_CACHE_HOME")
    return Path(root or Path.home() / ".cache") / "mlops-appliance" / "build"


def _run(cmd: list[str], what: str, stdin: int | None = None, timeout: float = 3600) -> str:
    if shutil.which(cmd[0]) is None:
        raise ApplianceError(
            f"{what} needs `{cmd[0]}`, which is not installed",
            fix="run scripts/setup-containers.sh as root",
        )
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=stdin, check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise ApplianceError(f"{what} failed ({' '.join(cmd[:3])} exited {proc.returncode}):\n{tail}")
    return proc.stdout


def engine_ready(engine: str) -> bool:
    """The engine's CLI exists and (docker) its daemon answers."""
    if shutil.which(engine) is None:
        return False
    return subprocess.run([engine, "info"], capture_output=True, check=False, timeout=60).returncode == 0


def image_present(engine: str, tag: str) -> bool:
    return subprocess.run([engine, "image", "inspect", tag], capture_output=True, check=False).returncode == 0


@dataclass(frozen=True)
class Built:
    """One image build's outcome."""

    name: str
    tag: str
    seconds: float
    size_bytes: int


def image_size(engine: str, tag: str) -> int:
    out = _run([engine, "image", "inspect", "--format", "{{.Size}}", tag], f"inspecting {tag}")
    return int(out.strip() or 0)


def build_image(
    spec: ImageSpec,
    flavor: Flavor = "cpu",
    base: str = BASE_TAG,
    wheelhouse: Path | None = None,
    offline: bool = False,
    engines: tuple[str, ...] = ENGINES,
) -> Built:
    """Build ``spec`` with podman, then hand it to the other engines that run here. An image with a
    ``parent`` is built on the parent's image, which is built first when missing or stale."""
    requirements = spec.requirements_for(flavor)
    if not image_present("podman", base):
        raise ApplianceError(
            f"base image {base} is missing from podman",
            fix="run scripts/build-base-image.sh (debootstrap, no registry needed) or pass --base IMAGE",
        )
    if spec.parent is not None:
        parent = CATALOG[spec.parent]
        parent_tag = parent.tag(flavor)
        if (image_labels("podman", parent_tag) or {}).get(RECIPE_LABEL) != recipe_digest(parent, flavor):
            build_image(parent, flavor, base, wheelhouse, offline, engines=("podman",))
        base = parent_tag
    context = cache_dir() / "context"
    house = wheelhouse or context / "wheelhouse"
    ensure_wheelhouse(house, requirements, offline=offline)
    ensure_no_deps_wheels(house, spec.no_deps, offline=offline)
    if requirements:
        add_wheels_for_python(house, base_python(base), offline=offline)
    if wheelhouse is not None:  # the build context must hold the wheelhouse under that name
        context = house.parent
        if house.name != "wheelhouse":
            raise ApplianceError(f"{house} must be a folder named 'wheelhouse'", fix="rename it")
    tag = spec.tag(flavor)
    started = time.monotonic()
    cmd = ["podman", "build", "-q", "-f", str(spec.containerfile), "-t", tag]
    cmd += ["--build-arg", f"BASE_IMAGE={base}", "--build-arg", f"REQUIREMENTS={' '.join(requirements)}"]
    cmd += ["--build-arg", f"NO_DEPS={' '.join(spec.no_deps)}"]
    cmd += ["--build-arg", f"WHEELHOUSE_DIGEST={wheelhouse_digest(house)}"]
    cmd += ["--label", f"{LABEL}={spec.name}", "--label", f"{LABEL}.flavor={flavor}"]
    cmd += ["--label", f"{RECIPE_LABEL}={recipe_digest(spec, flavor)}"]
    if spec.carries_project:
        code = wheel_code_digest(project_wheel(house))
        cmd += ["--build-arg", f"CODE_DIGEST={code}", "--label", f"{CODE_LABEL}={code}"]
    cmd.append(str(context))
    _run(cmd, f"building {tag}")
    for engine in engines:
        if engine != "podman" and engine_ready(engine):
            transfer(tag, engine)
    return Built(spec.name, tag, time.monotonic() - started, image_size("podman", tag))


RECIPE_LABEL = f"{LABEL}.recipe"
"""Digest of what an image is built from besides the wheels (Containerfile, requirements, flavour)."""


def recipe_digest(spec: ImageSpec, flavor: Flavor = "cpu") -> str:
    """Changes when the Containerfile or the requirements change (the parent's included), so a
    stale image can be told."""
    digest = hashlib.sha256(spec.containerfile.read_bytes())
    digest.update("\0".join((flavor, *spec.requirements_for(flavor), *spec.no_deps)).encode())
    if spec.parent is not None:  # a rebuilt parent makes its children stale too
        digest.update(recipe_digest(CATALOG[spec.parent], flavor).encode())
    return digest.hexdigest()[:16]


CODE_LABEL = f"{LABEL}.code"
"""Digest of the appliance code an image holds (``code_digest``), on images that carry it."""


def image_labels(engine: str, tag: str) -> dict[str, str] | None:
    """Every label of ``tag`` in ``engine``'s store; None when the store does not hold it."""
    proc = subprocess.run(
        [engine, "image", "inspect", "--format", "{{json .Config.Labels}}", tag],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        return None
    labels = json.loads(proc.stdout.strip() or "null") or {}
    return {str(k): str(v) for k, v in labels.items()}


@dataclass(frozen=True)
class StaleCode:
    """An appliance image holding other appliance code than the one expected."""

    tag: str
    held: str | None
    """The image's ``CODE_LABEL``; None when it was built before images were labelled."""
    expected: str
    rebuild: str
    """The command that builds it again from the expected code."""

    def __str__(self) -> str:
        if self.held is None:
            return (
                f"{self.tag} was built before images named the appliance code they hold: it may hold "
                f"older code than this appliance's ({self.expected})"
            )
        return f"{self.tag} holds appliance code {self.held}, not this appliance's {self.expected}"


def _code_carrier(labels: dict[str, str]) -> ImageSpec | None:
    """The catalog image ``labels`` name, when it installs the appliance (whose code is compared)."""
    spec = CATALOG.get(labels.get(LABEL, ""))
    return spec if spec is not None and spec.carries_project else None


def stale_code(tag: str, labels: dict[str, str], expected: str) -> StaleCode | None:
    """Whether an image whose ``labels`` say it carries the appliance holds code ``expected``.
    Images that carry no appliance code (the monitoring, gateway and object-store stand-ins, an
    upstream image named in the answers) have nothing to compare and pass."""
    spec = _code_carrier(labels)
    if spec is None or labels.get(CODE_LABEL) == expected:
        return None
    flavor = " --flavor gpu" if labels.get(f"{LABEL}.flavor") == "gpu" else ""
    return StaleCode(tag, labels.get(CODE_LABEL), expected, f"appliance images build {spec.name}{flavor}")


def code_state(tag: str, labels: dict[str, str]) -> str:
    """``current`` (the image holds this appliance's code), ``stale`` (other code, or none named:
    preflight refuses it) or ``-`` (the image carries no appliance code)."""
    if _code_carrier(labels) is None:
        return "-"
    return "stale" if stale_code(tag, labels, running_code_digest()) else "current"


def base_python(base: str) -> str:
    """The Python version of the base image's ``python3`` (what the image's pip installs for)."""
    code = "import platform; print(platform.python_version())"
    return _run(
        ["podman", "run", "--rm", base, "python3", "-c", code], f"asking {base} for its Python"
    ).strip()


def wheelhouse_digest(house: Path) -> str:
    """Digest of what the dependency layer installs: every other wheel's name and bytes, and the
    project wheel's requirements. The wheelhouse is bind-mounted into the build, which the layer
    cache does not see; passed as a build argument, a changed wheel rebuilds the layer. The
    project's code is left out: it goes into a layer of its own (``CODE_DIGEST``), so a change
    to it reinstalls one wheel rather than torch and the rest."""
    digest = hashlib.sha256()
    for wheel in sorted(house.glob("*.whl")):
        digest.update(wheel.name.encode() + b"\0")
        if wheel.match(PROJECT_WHEEL_GLOB):
            digest.update(_requirement_lines(wheel))
            continue
        with wheel.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def _requirement_lines(wheel: Path) -> bytes:
    """The ``Requires-Dist``/``Provides-Extra`` headers of a wheel's METADATA (its description,
    the README, would rebuild the dependencies for a changed sentence)."""
    wanted = ("Requires-Dist:", "Provides-Extra:")
    return "\n".join(line for line in metadata_headers(wheel) if line.startswith(wanted)).encode()


def transfer(tag: str, engine: str) -> None:
    """Copy an image from podman's store into ``engine``'s."""
    save = subprocess.Popen(["podman", "save", "--format", "docker-archive", tag], stdout=subprocess.PIPE)
    assert save.stdout is not None
    try:
        _run([engine, "load"], f"loading {tag} into {engine}", stdin=save.stdout.fileno())
    finally:
        save.stdout.close()
        if save.wait() != 0:
            raise ApplianceError(f"podman save {tag} failed", fix=f"check `podman image inspect {tag}`")


def save_image(engine: str, tag: str, archive: Path) -> None:
    """Write ``tag`` as a docker-archive tarball. A digest-pinned ``name:tag@sha256:...`` is saved
    under ``name:tag``: the format names images by tag only, and one saved by its digest would load
    with no name at all (the runtime falls back to ``name:tag`` when offline)."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    tagged = tag.split("@", 1)[0]
    if tagged != tag:
        _run([engine, "tag", tag, tagged], f"naming {tag} {tagged}")
        tag = tagged
    if engine == "podman":
        _run(["podman", "save", "--format", "docker-archive", "-o", str(archive), tag], f"saving {tag}")
    else:
        _run([engine, "save", "-o", str(archive), tag], f"saving {tag}")


def load_image(engine: str, archive: Path) -> None:
    _run([engine, "load", "-i", str(archive)], f"loading {archive.name} into {engine}")


def list_images(engine: str = "podman") -> list[dict[str, object]]:
    """Appliance images in ``engine``'s store: name, flavour, tag, size, created, and whether
    the appliance code they hold is this appliance's (``code_state``)."""
    out = _run([engine, "images", "--filter", f"label={LABEL}", "--format", "json"], "listing images")
    rows: list[dict[str, object]] = []
    for item in _json_lines(out):
        tags = item.get("Names") or [f"{item.get('Repository')}:{item.get('Tag')}"]
        if tags[0] in ("None:None", "<none>:<none>"):
            continue  # untagged: a build's intermediate or an image a rebuild replaced
        labels = item.get("Labels")
        if not isinstance(labels, dict):  # docker's list leaves labels out: ask inspect
            out = _run([engine, "image", "inspect", "--format", "{{json .Config.Labels}}", tags[0]], "labels")
            labels = json.loads(out or "{}") or {}
        rows.append(
            {
                "name": labels.get(LABEL, "?"),
                "flavor": labels.get(f"{LABEL}.flavor", "cpu"),
                "tag": tags[0],
                # podman gives bytes; docker's list gives text ("1.06GB"), so ask inspect
                "size_bytes": size
                if isinstance(size := item.get("Size"), int)
                else image_size(engine, tags[0]),
                "created": item.get("CreatedAt") or item.get("Created"),
                "code": code_state(tags[0], labels),
            }
        )
    return sorted(rows, key=lambda r: str(r["tag"]))


def short_ref(ref: str, digits: int = 12) -> str:
    """A reference short enough for a table: a digest cut to ``digits`` hex digits."""
    name, at, digest = ref.partition("@")
    algorithm, _, value = digest.partition(":")
    return f"{name}@{algorithm}:{value[:digits]}" if at else ref


def upstream_images(engine: str = "podman") -> list[dict[str, object]]:
    """The images the stack file names that the appliance does not build (pinned by tag and
    digest): service, reference, and whether ``engine`` holds that exact image."""
    from appliance.stack import load_stack

    rows: list[dict[str, object]] = []
    for service, spec in load_stack().items():
        if not spec.image or spec.image.startswith("localhost/"):
            continue
        present = image_present(engine, spec.image)
        size = image_size(engine, spec.image) if present else None
        rows.append(
            {"name": service, "flavor": "upstream", "tag": spec.image, "size_bytes": size, "present": present}
        )
    return rows


def _json_lines(text: str) -> list[dict]:
    text = text.strip()
    if not text:
        return []
    if text.startswith("["):
        data: list[dict] = json.loads(text)
        return data
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def known_names() -> list[str]:
    return sorted(CATALOG)
