"""Making a bundle: save the profile's images, add the wheelhouse and stacks, hash, then tar.

The tar is written beside its final name and renamed at the end, so an interrupted create never
leaves a file that looks like a bundle. ``manifest.json`` goes first so ``inspect`` reads little,
its signature (``manifest.sig``, ``appliance.bundle.signing``) second.
"""

from __future__ import annotations

import re
import shutil
import tarfile
import time
from pathlib import Path

from appliance import __version__
from appliance.bundle.manifest import MANIFEST, SIGNATURE, BundleError, Manifest, sha256_stream
from appliance.bundle.signing import sign, signing_key
from appliance.bundle.store import STORE_DIR
from appliance.context import AppContext
from appliance.images.build import image_labels, save_image, stale_code
from appliance.images.code_digest import running_code_digest, wheel_code_digest
from appliance.images.wheelhouse import find_project_wheel
from appliance.render import selected
from appliance.stack import STACKS_DIR, load_stack


def profile_images(ctx: AppContext) -> dict[str, str]:
    """Service -> image for every service the answers' profile selects (overrides applied)."""
    images: dict[str, str] = {}
    for name, spec in selected(ctx, load_stack()).items():
        image = ctx.answers.images.get(name) or spec.image
        if image:
            images[name] = image
    return images


def archive_name(tag: str) -> str:
    return "images/" + re.sub(r"[^A-Za-z0-9_.-]+", "_", tag) + ".tar"


def create_bundle(
    out: Path,
    profile: str,
    images: dict[str, str],
    engine: str = "podman",
    wheelhouse: Path | None = None,
    stacks_dir: Path = STACKS_DIR,
    key_file: Path | None = None,
    store_wheels: list[Path] | None = None,
    debs: bool = False,
) -> Manifest:
    """Write the bundle to ``out``, its manifest signed with ``key_file`` (default: this user's
    own signing key, made on first use), and return the manifest. ``store_wheels``
    (``appliance.bundle.store``) go under ``store/``; ``debs``: the cluster roles' Debian packages
    and their closure under ``debs/`` (``appliance.bundle.debs``)."""
    key = signing_key(key_file)
    labels = {tag: image_labels(engine, tag) for tag in sorted(set(images.values()))}
    missing = [tag for tag, found in labels.items() if found is None]
    if missing:
        raise BundleError(
            f"{len(missing)} image(s) of profile {profile!r} are not in {engine}'s store: "
            + ", ".join(missing),
            fix="build them (`appliance images build`), or point images.<service> in the answers file "
            "at images you have",
        )
    if wheelhouse is not None and not any(wheelhouse.glob("*.whl")):
        raise BundleError(
            f"{wheelhouse} holds no wheels", fix="run `appliance images build` first or omit it"
        )
    _refuse_stale_code(labels, wheelhouse)
    staging = out.with_name(out.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        archives = {tag: archive_name(tag) for tag in sorted(set(images.values()))}
        for tag, rel in archives.items():
            save_image(engine, tag, staging / rel)
        if wheelhouse is not None:
            shutil.copytree(wheelhouse, staging / "wheelhouse", copy_function=_link_or_copy)
        shutil.copytree(stacks_dir, staging / "stacks", ignore=shutil.ignore_patterns("__pycache__"))
        if debs:
            from appliance.bundle.debs import DEBS_DIR, download

            download(staging / DEBS_DIR)
        for wheel in store_wheels or []:
            (staging / STORE_DIR).mkdir(exist_ok=True)
            _link_or_copy(str(wheel), str(staging / STORE_DIR / wheel.name))
        files = sorted(p for p in staging.rglob("*") if p.is_file())
        manifest = Manifest(
            profile=profile,
            appliance_version=__version__,
            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            images=dict(sorted(images.items())),
            archives=archives,
        )
        for path in files:
            rel = path.relative_to(staging).as_posix()
            with path.open("rb") as fh:
                manifest.files[rel] = sha256_stream(fh)
            manifest.sizes[rel] = path.stat().st_size
        manifest_bytes = manifest.to_json().encode()
        (staging / MANIFEST).write_bytes(manifest_bytes)
        (staging / SIGNATURE).write_bytes(sign(manifest_bytes, key))
        partial = out.with_name(out.name + ".partial")
        with tarfile.open(partial, "w") as tar:
            tar.add(staging / MANIFEST, arcname=MANIFEST)
            tar.add(staging / SIGNATURE, arcname=SIGNATURE)
            for path in files:
                tar.add(path, arcname=path.relative_to(staging).as_posix())
        partial.replace(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def _refuse_stale_code(labels: dict[str, dict[str, str] | None], wheelhouse: Path | None) -> None:
    """The bundle's appliance images must hold the code of the appliance it installs: its
    wheelhouse's project wheel, or without one (or one with no project wheel) this appliance."""
    wheel = find_project_wheel(wheelhouse) if wheelhouse is not None else None
    expected = wheel_code_digest(wheel) if wheel is not None else running_code_digest()
    stale = [s for tag, found in labels.items() if found and (s := stale_code(tag, found, expected))]
    if stale:
        raise BundleError(
            f"{len(stale)} image(s) hold other appliance code than the bundle installs: "
            + "; ".join(map(str, stale)),
            fix="rebuild them from the same checkout: " + ", ".join(f"`{s.rebuild}`" for s in stale),
        )


def _link_or_copy(src: str, dst: str) -> None:
    try:
        Path(dst).hardlink_to(src)
    except OSError:
        shutil.copy2(src, dst)
