"""``appliance images``: build the appliance's container images and list what is built.

Builds need the local base image (``scripts/build-base-image.sh``) and a wheelhouse, which is
prepared from the package index on first use or taken from an offline bundle with ``--wheelhouse``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import cast

import click

from appliance.images.build import ENGINES, build_image, list_images, short_ref, upstream_images
from appliance.images.catalog import BASE_TAG, CATALOG, FLAVORS, Flavor, get_image, gpu_images


@click.group("images")
def images_group() -> None:
    """Container images of the stack (podman and docker)."""


@click.command("build")
@click.argument("names", nargs=-1)
@click.option("--flavor", type=click.Choice(FLAVORS), default="cpu", show_default=True)
@click.option("--base", default=BASE_TAG, show_default=True, help="Base image (ARG BASE_IMAGE).")
@click.option(
    "--wheelhouse",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    help="Install only from this folder (e.g. an unpacked bundle's wheelhouse/); no index is used.",
)
def build_cmd(names: tuple[str, ...], flavor: str, base: str, wheelhouse: Path | None) -> None:
    """Build NAMES (default: every image that has the flavour) and hand them to docker too."""
    chosen_flavor = cast(Flavor, flavor)
    chosen = [get_image(n) for n in names] or [
        spec for spec in CATALOG.values() if flavor == "cpu" or spec.name in gpu_images()
    ]
    for spec in chosen:
        click.echo(f"building {spec.tag(chosen_flavor)} ...")
        built = build_image(spec, chosen_flavor, base, wheelhouse, offline=wheelhouse is not None)
        click.echo(f"  {built.tag}: {built.size_bytes / 2**20:.0f} MiB in {built.seconds:.0f}s")


@click.command("list")
@click.option("--engine", type=click.Choice(ENGINES), default="podman", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_cmd(engine: str, as_json: bool) -> None:
    """Appliance images present in ENGINE's store (with ``current`` or ``stale``: whether the
    appliance code an image holds is this appliance's), then the upstream images the stack names
    (pinned by tag and digest; an ``images.<service>`` override in the answers file replaces one)."""
    rows = list_images(engine)
    upstream = upstream_images(engine)
    if as_json:
        click.echo(json.dumps(rows + upstream, indent=2))
        return
    if not rows:
        click.echo("no appliance images yet: run `appliance images build`")
    for row in rows:
        size = f"{float(str(row['size_bytes'] or 0)) / 2**20:.0f} MiB"
        line = f"{row['name']!s:<18} {row['flavor']!s:<4} {row['tag']!s:<48} {size:>9}  {row['code']}"
        click.echo(line)
    if any(row["code"] == "stale" for row in rows):
        click.echo(
            "stale: holds other appliance code than this one; `appliance images build NAME` rebuilds it"
        )
    for row in upstream:
        size = f"{float(str(row['size_bytes'])) / 2**20:.0f} MiB" if row["present"] else "absent"
        click.echo(f"{row['name']!s:<18} {'up':<4} {short_ref(str(row['tag'])):<70} {size:>9}")


images_group.add_command(build_cmd)
images_group.add_command(list_cmd)
