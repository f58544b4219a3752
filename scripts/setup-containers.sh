#!/usr/bin/env bash
# Make this host able to run the appliance's container runtimes, the same way on a fresh machine:
# podman (REST API socket for podman-py) and docker (dockerd for the Docker SDK).
# Idempotent: packages already there are kept, running daemons are left alone. Run as root.
#
# Why the containers.conf below: the process may lack CAP_SYS_RESOURCE, so podman's default
# rlimits are refused; crun rejects a hybrid cgroup layout while runc works with cgroup v1.
set -euo pipefail

PODMAN_SOCK=/run/podman/podman.sock
PODMAN_PID=/run/podman/appliance-service.pid
DOCKER_SOCK=/var/run/docker.sock
LOG_DIR=/var/log/appliance-containers

if [ "$(id -u)" != 0 ]; then
  echo "setup-containers.sh must run as root (it installs packages and starts daemons)" >&2
  exit 1
fi

# netavark + aardvark-dns: podman networks with DNS between containers (CNI has none by default).
packages=(podman runc fuse-overlayfs uidmap debootstrap catatonit netavark aardvark-dns docker.io tini iptables)
missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "==> installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

mkdir -p /etc/containers "$LOG_DIR"
nofile=$(ulimit -Hn)
nproc=$(cat /proc/sys/kernel/pid_max)
conf=$(cat <<CONF
[containers]
default_ulimits = ["nofile=${nofile}:${nofile}", "nproc=${nproc}:${nproc}"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
[network]
network_backend = "netavark"
CONF
)
if [ ! -f /etc/containers/containers.conf ] || [ "$(cat /etc/containers/containers.conf)" != "$conf" ]; then
  echo "==> writing /etc/containers/containers.conf"
  printf '%s\n' "$conf" >/etc/containers/containers.conf
  # A podman service started under the old configuration keeps it: restart the one we started.
  if [ -f "$PODMAN_PID" ] && kill -0 "$(cat "$PODMAN_PID")" 2>/dev/null; then
    kill "$(cat "$PODMAN_PID")" && sleep 1
  fi
fi

# docker-init is what `--init` runs under dockerd; Debian ships it as tini.
if [ ! -e /usr/bin/docker-init ] && [ -x /usr/bin/tini-static ]; then
  ln -s /usr/bin/tini-static /usr/bin/docker-init
fi

wait_for() { # wait_for WHAT SECONDS COMMAND...
  local what=$1 seconds=$2
  shift 2
  for _ in $(seq "$((seconds * 2))"); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  echo "$what did not answer within ${seconds}s; see $LOG_DIR" >&2
  return 1
}

podman_ok() { curl -sf --unix-socket "$PODMAN_SOCK" http://d/v4.0.0/libpod/_ping; }
docker_ok() { curl -sf --unix-socket "$DOCKER_SOCK" http://d/_ping; }

if ! podman_ok >/dev/null 2>&1; then
  echo "==> starting podman system service on $PODMAN_SOCK"
  mkdir -p "$(dirname "$PODMAN_SOCK")"
  rm -f "$PODMAN_SOCK"
  # From /: conmon starts in the service's working directory, and a service left in a folder
  # deleted since (a removed checkout) fails every container start ("Failed to get working
  # directory", "write child: broken pipe").
  (cd / && exec setsid nohup podman system service --time=0 "unix://$PODMAN_SOCK" >>"$LOG_DIR/podman.log" 2>&1 </dev/null) &
  echo $! >"$PODMAN_PID"
fi
if ! docker_ok >/dev/null 2>&1; then
  echo "==> starting dockerd"
  (cd / && exec setsid nohup /usr/sbin/dockerd >>"$LOG_DIR/dockerd.log" 2>&1 </dev/null) &
fi
wait_for "podman API ($PODMAN_SOCK)" 60 podman_ok
wait_for "dockerd ($DOCKER_SOCK)" 90 docker_ok
echo "==> podman $(podman --version | awk '{print $3}') and dockerd answer"
