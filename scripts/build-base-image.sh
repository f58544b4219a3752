#!/usr/bin/env bash
# Build the appliance's Debian base image locally with debootstrap, because no container registry
# may be reachable. Every Containerfile in images/ takes it as ARG BASE_IMAGE; users with a
# registry can pass debian:bookworm-slim instead and the Containerfiles install the same packages.
#
#   scripts/build-base-image.sh [--runtime podman|docker|all] [--tag NAME] [--force]
#
# The image holds Debian bookworm (minbase) plus python3, python3-venv and ca-certificates, so
# that images built from it install Python wheels from a wheelhouse without any network.
set -euo pipefail

TAG=localhost/appliance-base:bookworm
RUNTIMES=all
FORCE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --runtime) RUNTIMES=$2; shift 2 ;;
    --tag) TAG=$2; shift 2 ;;
    --force) FORCE=1; shift ;;
    *) echo "unknown option $1 (use --runtime podman|docker|all, --tag NAME, --force)" >&2; exit 2 ;;
  esac
done
MIRROR=${DEBIAN_MIRROR:-$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
INCLUDE=python3,python3-venv,ca-certificates

have() { # have RUNTIME: the runtime's CLI exists and its daemon (docker) answers
  case "$1" in
    podman) command -v podman >/dev/null ;;
    docker) command -v docker >/dev/null && docker info >/dev/null 2>&1 ;;
  esac
}
present() { "$1" image inspect "$TAG" >/dev/null 2>&1; }

targets=()
for rt in podman docker; do
  if [ "$RUNTIMES" = all ] || [ "$RUNTIMES" = "$rt" ]; then
    if have "$rt" && { [ "$FORCE" = 1 ] || ! present "$rt"; }; then targets+=("$rt"); fi
  fi
done
if [ "${#targets[@]}" = 0 ]; then
  echo "==> $TAG already present (or no runtime to import into); --force rebuilds"
  exit 0
fi

ROOT=$(mktemp -d /var/tmp/appliance-base.XXXXXX)
trap 'rm -rf "$ROOT"' EXIT
echo "==> debootstrap bookworm from $MIRROR into $ROOT"
debootstrap --variant=minbase --include="$INCLUDE" bookworm "$ROOT" "$MIRROR" >"$ROOT.log" 2>&1 \
  || { tail -20 "$ROOT.log" >&2; exit 1; }
rm -f "$ROOT.log"
# Smaller and reproducible-ish: no apt lists, caches, logs or docs in the image.
rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/*.bin "$ROOT"/var/cache/apt/archives/*.deb \
  "$ROOT"/var/log/* "$ROOT"/usr/share/doc/* "$ROOT"/usr/share/man/* "$ROOT"/usr/share/locale/*
cp /etc/apt/sources.list.d/debian.sources "$ROOT/etc/apt/sources.list.d/" 2>/dev/null || true
for rt in "${targets[@]}"; do
  echo "==> importing into $rt as $TAG"
  tar -C "$ROOT" -c . | "$rt" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' - "$TAG" >/dev/null
done
echo "==> $TAG built"
