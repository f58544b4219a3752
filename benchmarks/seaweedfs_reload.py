"""What a host joining a cluster costs the object store's clients: a restart of SeaweedFS against
the reload a cluster now does (``security.toml``'s guard, ``docs/cluster.md``).

One ``weed server`` (master, volume server, filer and S3 gateway, as a cluster's control host
runs them when it holds the volumes too) started through the appliance's wrapper
(``python -m appliance.objectstore.run``) with a ``security.toml`` whose guard lists loopback.
A client asks the S3 gateway (``GET /``: any HTTP answer counts, a refused or reset connection
or a timeout fails) in a closed loop throughout, from one thread. Two changes of the guard's list
(an address added, as when a host joins) are applied in turn:

- **reload**: the file rewritten and SIGHUP to the wrapper (``systemctl reload``);
- **restart**: the file rewritten, the wrapper stopped (SIGTERM) and started again, as
  ``systemctl restart`` does, until the gateway answers again.

Reported for each: the requests that failed, and the longest time without an answer
(the outage). Each change is measured over ``--seconds`` after it (the restart's until the gateway
answers, if longer). Numbers compare only within one run.

    .venv/bin/python benchmarks/seaweedfs_reload.py
    .venv/bin/python benchmarks/seaweedfs_reload.py --seconds 10
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.conftest's free ports
from availability import Prober

from tests.conftest import free_ports

PAIRED = {"master": "seaweedfs_master", "volume": "seaweedfs_volume", "filer": "seaweedfs_filer", "s3": "s3"}
"""The ``weed server`` part each port is for, by its key in the answers' ports."""


def guard(folder: Path, addresses: list[str]) -> None:
    (folder / "security.toml").write_text(f'[guard]\nwhite_list = "{",".join(addresses)}"\n')


def start(folder: Path, ports: dict[str, int]) -> subprocess.Popen[bytes]:
    weed = shutil.which("weed", path=str(Path(sys.executable).parent)) or "weed"
    command = [
        sys.executable, "-m", "appliance.objectstore.run", "--",
        weed, f"-config_dir={folder}", "server", f"-dir={folder / 'data'}", "-ip=127.0.0.1",
        f"-master.port={ports['master']}", "-master.electionTimeout=1s", "-master.volumeSizeLimitMB=64",
        f"-volume.port={ports['volume']}", "-volume.max=0", "-volume.preStopSeconds=0",
        "-filer", f"-filer.port={ports['filer']}", "-s3", f"-s3.port={ports['s3']}",
    ]  # fmt: skip
    with open(folder / "weed.log", "ab") as log:  # the store's own, shown if it never answers
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)


def wait_answering(prober: Prober, after: float, folder: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(ok and t > after for t, ok in list(prober.events)[-50:]):
            return
        time.sleep(0.05)
    tail = (folder / "weed.log").read_text(errors="replace").splitlines()[-15:]
    raise SystemExit(
        f"the S3 gateway did not answer within {timeout:.0f} s; weed logged:\n" + "\n".join(tail)
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="measured after each change")
    args = parser.parse_args()
    free = free_ports()  # the stack's ports, each SeaweedFS one with its gRPC port free and distinct
    ports = {name: free[key] for name, key in PAIRED.items()}
    with tempfile.TemporaryDirectory(prefix="seaweedfs-reload-") as tmp:
        folder = Path(tmp)
        (folder / "data").mkdir()
        guard(folder, ["127.0.0.1", "@"])
        proc = start(folder, ports)
        prober = Prober(f"http://127.0.0.1:{ports['s3']}/")
        prober.start()
        try:
            wait_answering(prober, time.monotonic(), folder)
            time.sleep(2)  # the filer and gateway settle
            rows = []
            began = time.monotonic()
            guard(folder, ["127.0.0.1", "@", "10.0.0.2"])
            proc.send_signal(signal.SIGHUP)
            time.sleep(args.seconds)
            rows.append(("reload (SIGHUP)", *prober.since(began), proc.poll() is None))
            began = time.monotonic()
            guard(folder, ["127.0.0.1", "@", "10.0.0.2", "10.0.0.3"])
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
            proc = start(folder, ports)
            wait_answering(prober, time.monotonic(), folder)
            time.sleep(max(0.0, args.seconds - (time.monotonic() - began)))
            rows.append(("restart (SIGTERM, start)", *prober.since(began), proc.poll() is None))
        finally:
            prober.stopping.set()
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    print("| change | answered | failed | longest without an answer (s) | store running after |")
    print("| --- | ---: | ---: | ---: | --- |")
    for name, answered, failed, gap, running in rows:
        print(f"| {name} | {answered:,} | {failed:,} | {gap:.2f} | {'yes' if running else 'no'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
