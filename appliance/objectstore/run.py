"""Runs ``weed server`` and stops it quickly, with its data on disk.

Measured: ``weed server`` (master, volume server, filer and S3 gateway in one process) takes
15-25 s to exit after SIGTERM (the filer's gRPC graceful stop waits for the S3 gateway's own
metadata subscription, then the volume server waits out its pre-stop heartbeats), so every
``down`` would wait for the supervisor's kill. Nothing it holds needs that wait: the volume
server writes each needle and the filer its leveldb journal with write(2) before answering, so
an acknowledged object is in the kernel's page cache and survives the process. This wrapper
forwards SIGTERM/SIGINT, gives the store ``--grace`` seconds, kills it, then ``sync()``s so the
data are on disk, not only in the page cache, when ``down`` returns. SIGHUP is passed on as
it comes: it has the store read ``security.toml``'s HTTP guard again (a cluster's hosts joining or
leaving) without a restart.

Usage: ``python -m appliance.objectstore.run [--grace S] -- weed [-config_dir ...] server ...``
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from types import FrameType

GRACE_SECONDS = 3.0
PR_SET_PDEATHSIG = 1
"""prctl(2) option: the signal a process gets when its parent dies (Linux)."""


def _in_child() -> None:
    """In the child: SIGKILL when this wrapper dies, so a ``kill -9`` of the wrapper (or of the
    supervisor's process group) never leaves an orphaned store holding the ports and the data; and
    SIGHUP unblocked, which the wrapper blocks while it starts the store."""
    import ctypes

    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})


def stop(proc: subprocess.Popen[bytes], grace: float) -> int:
    """SIGTERM, then SIGKILL after ``grace`` seconds; sync either way. The store's exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if proc.poll() is None:
            proc.kill()
    code = proc.wait()
    os.sync()
    return code


def forward(proc: subprocess.Popen[bytes], signum: int) -> None:
    """``signum`` to the store while it runs (SIGHUP: ``weed`` reloads its white list)."""
    if proc.poll() is None:
        proc.send_signal(signum)


def main(argv: list[str]) -> int:
    if "--" not in argv:
        print("usage: python -m appliance.objectstore.run [--grace S] -- weed ...", file=sys.stderr)
        return 2
    split = argv.index("--")
    parser = argparse.ArgumentParser(prog="appliance.objectstore.run")
    parser.add_argument("--grace", type=float, default=GRACE_SECONDS)
    args = parser.parse_args(argv[:split])
    command = argv[split + 1 :]
    if not command:
        print("no command after --", file=sys.stderr)
        return 2
    stopping: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.append(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # blocked until the handler is set: SIGHUP's default action would end the wrapper, and a reload
    # that comes first is passed on once the store runs
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    proc = subprocess.Popen(command, preexec_fn=_in_child)
    signal.signal(signal.SIGHUP, lambda signum, frame: forward(proc, signum))
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
    while not stopping and proc.poll() is None:
        time.sleep(0.1)
    if stopping:
        stop(proc, args.grace)
        return 0
    return proc.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
