"""``appliance bundle``: make, check, read and load offline bundles.

``create`` runs on a connected machine that has the images and signs the manifest with this
user's key; ``verify``, ``inspect`` and ``load`` need no network at all (the air-gapped side), so
they never touch an index or a registry. ``key`` prints where the public key is, ``trust`` makes
another machine accept bundles signed with it (``appliance.bundle.signing``).
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

import click

from appliance.bundle.create import create_bundle, profile_images
from appliance.bundle.load import load_bundle
from appliance.bundle.manifest import BundleError, read_manifest, trusted_manifest
from appliance.bundle.store import store_wheels
from appliance.cli.common import app_context
from appliance.images.build import ENGINES, cache_dir

BUNDLE = click.Path(path_type=Path, exists=True)


@click.group("bundle")
def bundle_group() -> None:
    """Offline bundles: images, wheelhouse and stacks with a sha256 manifest."""


@click.command("create")
@click.option(
    "--profile", type=click.Choice(["lab", "edge", "custom"]), help="Default: the answers' profile."
)
@click.option("-o", "--output", "out", type=click.Path(path_type=Path, dir_okay=False), required=True)
@click.option("--engine", type=click.Choice(ENGINES), default="podman", show_default=True)
@click.option(
    "--wheelhouse",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    help="Wheelhouse to include (default: the one image builds used, when present; for an answers "
    "file with a cluster section, the wheels every host may install, resolved into the cache).",
)
@click.option("--no-wheelhouse", is_flag=True, help="Images and stacks only.")
@click.option(
    "--debs/--no-debs",
    default=None,
    help="The cluster hosts' Debian packages and their closure, downloaded by this Debian 12 "
    "machine's apt (default: on when the answers have a cluster section).",
)
@click.option(
    "--signing-key",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="Ed25519 private key (PEM) to sign with (default: your own, made on first use).",
)
def create_cmd(
    profile: str | None,
    out: Path,
    engine: str,
    wheelhouse: Path | None,
    no_wheelhouse: bool,
    debs: bool | None,
    signing_key: Path | None,
) -> None:
    """Write a signed bundle of every image PROFILE runs (answers' image overrides applied)."""
    ctx = app_context()
    if profile:
        answers = ctx.answers.model_copy(update={"profile": profile})
        ctx = dataclasses.replace(ctx, answers=answers)
    cluster = ctx.answers.cluster is not None
    default_house = cache_dir() / "context" / "wheelhouse"
    if no_wheelhouse or wheelhouse is not None:
        house = None if no_wheelhouse else wheelhouse
    elif cluster:
        house = cluster_wheelhouse()
    else:
        house = default_house if default_house.is_dir() else None
    images = profile_images(ctx)
    if cluster:
        # The cluster's hosts run the services as systemd units from the virtualenv, not images;
        # what they cannot fetch offline is their Debian packages.
        images = {}
        click.echo("cluster answers: no images (the hosts run no containers)", err=True)
    with_debs = cluster if debs is None else debs
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="appliance-bundle-store-") as tmp:
        wheels = store_wheels(ctx, house, Path(tmp))  # the local runtime's SeaweedFS, when chosen
        manifest = create_bundle(
            out,
            ctx.answers.profile,
            images,
            engine,
            house,
            key_file=signing_key,
            store_wheels=wheels,
            debs=with_debs,
        )
    size = out.stat().st_size / 2**20
    click.echo(
        f"{out}: {len(manifest.archives)} image(s), {len(manifest.files)} files, {size:.0f} MiB "
        f"in {time.monotonic() - started:.0f}s"
    )


def cluster_wheelhouse() -> Path:
    """The wheels every cluster host may install, resolved into the cache: from the folder alone
    when an earlier bundle left them there, else from the package index."""
    from appliance.cluster.requirements import every_no_deps, every_requirement, resolve_wheelhouse

    wanted, alone = every_requirement(), every_no_deps()
    click.echo(
        f"resolving the cluster hosts' wheels ({', '.join(wanted + alone)}): minutes the first time", err=True
    )
    return resolve_wheelhouse(cache_dir() / "cluster" / "wheelhouse", wanted, alone)


@click.command("verify")
@click.argument("bundle", type=BUNDLE)
def verify_cmd(bundle: Path) -> None:
    """Check BUNDLE's signature (a key you trust) and every file against its manifest; name what
    is unsigned, untrusted, tampered, missing or extra."""
    manifest, signer = trusted_manifest(bundle)
    whose = "your own key" if signer.own else f"trusted key {signer.key_id}"
    click.echo(
        f"{bundle}: intact ({len(manifest.files)} files, profile {manifest.profile}), signed by {whose}"
    )


@click.command("inspect")
@click.argument("bundle", type=BUNDLE)
@click.option("--json", "as_json", is_flag=True, help="The whole manifest.")
def inspect_cmd(bundle: Path, as_json: bool) -> None:
    """What BUNDLE holds (reads the manifest only; use verify to check the files)."""
    manifest = read_manifest(bundle)
    if as_json:
        click.echo(manifest.to_json())
        return
    wheels = [f for f in manifest.files if f.startswith("wheelhouse/")]
    click.echo(
        f"profile {manifest.profile}, appliance {manifest.appliance_version}, created {manifest.created}"
    )
    for tag, rel in manifest.archives.items():
        users = sorted(s for s, t in manifest.images.items() if t == tag)
        click.echo(f"  image {tag:<48} {manifest.sizes.get(rel, 0) / 2**20:7.0f} MiB  ({', '.join(users)})")
    stacks = [f for f in manifest.files if f.startswith("stacks/")]
    store = [f.split("/", 1)[1] for f in manifest.files if f.startswith("store/")]
    click.echo(f"  wheelhouse: {len(wheels)} wheels; stacks: {len(stacks)} files")
    debs = [f for f in manifest.files if f.startswith("debs/") and f.endswith(".deb")]
    if debs:
        click.echo(f"  debs (cluster hosts): {len(debs)} packages")
    if store:
        click.echo(f"  object store (local runtime): {', '.join(store)}")
    click.echo(f"  total {sum(manifest.sizes.values()) / 2**20:.0f} MiB")


@click.command("load")
@click.argument("bundle", type=BUNDLE)
@click.option("--engine", type=click.Choice(ENGINES), help="Default: the answers' runtime.")
def load_cmd(bundle: Path, engine: str | None) -> None:
    """Verify BUNDLE, then load its images (no network needed); `appliance up` follows."""
    chosen = engine or app_context().answers.runtime
    if chosen not in ENGINES:
        raise BundleError(
            f"runtime {chosen!r} runs no containers", fix="pass --engine podman|docker or set runtime: podman"
        )
    _, done = load_bundle(bundle, chosen)
    if done.loaded:
        click.echo(f"loaded {len(done.loaded)} image(s) into {chosen}: {', '.join(done.loaded)}")
    if done.skipped:
        click.echo(f"already in {chosen} (same image ID, not loaded again): {', '.join(done.skipped)}")


@click.command("key")
def key_cmd() -> None:
    """Print the path of your bundle-signing public key (made on first use): copy it to the
    machines that install your bundles and run `appliance bundle trust FILE` there."""
    from appliance.bundle.signing import key_id, public_key_file, signing_key

    path = public_key_file()
    click.echo(f"{path}  (key {key_id(signing_key().public_key())})")


@click.command("trust")
@click.argument("public_key", type=click.Path(path_type=Path, dir_okay=False, exists=True))
def trust_cmd(public_key: Path) -> None:
    """Accept bundles signed by the key in PUBLIC_KEY (another machine's bundle-signing.pub)."""
    from appliance.bundle.signing import config_dir, trust

    ident = trust(public_key)
    click.echo(f"trusted key {ident} (kept in {config_dir()})")


for command in (create_cmd, verify_cmd, inspect_cmd, load_cmd, key_cmd, trust_cmd):
    bundle_group.add_command(command)
