"""The serving service with replicas: N model servers behind one balancer, on one host.

``python -m appliance.workloads.serving.supervisor [options] -- SERVE ARGS``. With
``--max-replicas 1`` it simply becomes the model server (exec, nothing in between). Above 1 it

- runs an nginx balancer on the service's REST and gRPC ports (balancer.py says why nginx);
- starts replicas, each ``python -m appliance.workloads.serving SERVE ARGS`` on loopback ports of
  its own (port 0: the replica's ready line says which), and adds one to the balancer only once
  its ``/v2/health/ready`` passes;
- removes one drained: out of the balancer first (nginx lets the requests it holds finish), then
  until the replica reports nothing in flight, then SIGTERM (the server finishes what it still has);
- replaces a replica that exits on its own by a new one on the same ports, so the balancer's
  config does not change: until the new one listens, nginx's connections there are refused and it
  retries them on another replica (and marks that one failed for 2 s). Not reloading nginx matters:
  a reload closes idle client keep-alive connections, and a client sending on one at that instant
  sees it closed. (A request inside the process when it died is lost with it: nginx replays a REST
  request elsewhere; a gRPC call, whose body nginx streams unbuffered, gets UNAVAILABLE.)
  Deliberate scaling does reload nginx, with that small window;
- serves, on the metrics port, ``/metrics`` (every replica's series with a ``replica`` label, the
  drift PSI over all traffic, and the monotonic totals the autoscaler reads; aggregate.py) and
  ``/replicas`` (GET: state; PUT ``{"replicas": N}``: the count, with the admin token).

Hot reload needs nothing here: each replica polls its model's source and swaps versions without
failing a request, as a single server does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.workloads.serving.aggregate import Aggregator
from appliance.workloads.serving.balancer import Balancer
from appliance.workloads.serving.config import read_tokens
from appliance.workloads.serving.replica_metrics import REPLICA_ENV

log = logging.getLogger("appliance.serving.supervisor")
READY_TIMEOUT_S = 600.0
"""How long a replica may take from start to ready (model download, session build, warm-up)."""
DRAIN_TIMEOUT_S = 60.0
RESTART_BACKOFF_S = 5.0


@dataclass
class Replica:
    """One model-server process and where it listens."""

    slot: int
    proc: asyncio.subprocess.Process
    http_port: int = 0
    grpc_port: int = 0
    metrics_port: int = 0
    state: str = "starting"  # starting, ready, draining
    routed: bool = False
    """In the balancer's running config (a reload has finished since it became ready)."""
    started: float = field(default_factory=time.time)

    def as_dict(self) -> dict[str, Any]:
        return {
            "slot": self.slot,
            "pid": self.proc.pid,
            "state": self.state if self.state != "ready" or self.routed else "joining",
            "http_port": self.http_port,
            "grpc_port": self.grpc_port,
            "metrics_port": self.metrics_port,
            "started": self.started,
        }


class Supervisor:
    """Replicas, the balancer and the admin endpoint of one serving service."""

    def __init__(self, args: argparse.Namespace, serve_args: list[str]) -> None:
        self.args = args
        self.serve_args = serve_args
        self.min, self.max = args.min_replicas, args.max_replicas
        self.desired = args.replicas if args.replicas is not None else self.min
        self.admin_tokens = read_tokens(None, args.admin_token_file, env="APPLIANCE_SERVING_ADMIN_TOKEN")
        self.replicas: dict[int, Replica] = {}
        self.balancer = Balancer(args.run_dir, args.host, args.http_port, args.grpc_port)
        self.aggregator = Aggregator(self)
        self.decision: dict[str, Any] | None = None
        self.replaced = 0
        self._changed = asyncio.Event()
        self._spawning: set[int] = set()
        self._reuse: dict[int, tuple[int, int]] = {}
        """Slot -> ports of a replica that died while serving: its replacement listens there, and
        they stay in the balancer meanwhile (nginx retries the refused connections elsewhere)."""
        self._stopping = False
        self._lock = asyncio.Lock()  # one balancer change at a time

    # replicas ----------------------------------------------------------------------------------
    def ready(self) -> list[Replica]:
        """Replicas that pass their readiness check (the balancer's members)."""
        return [r for r in self.replicas.values() if r.state == "ready"]

    def serving(self) -> list[Replica]:
        """Ready replicas the running balancer already sends requests to."""
        return [r for r in self.replicas.values() if r.state == "ready" and r.routed]

    async def _start(self, slot: int) -> None:
        http, grpc = self._reuse.get(slot, (0, 0))
        argv = [
            sys.executable, "-m", "appliance.workloads.serving", *self.serve_args,
            "--host", "127.0.0.1", "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", "0",
        ]  # fmt: skip
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdout=asyncio.subprocess.PIPE, env={**os.environ, REPLICA_ENV: "1"}
            )
        finally:
            self._spawning.discard(slot)
        replica = Replica(slot, proc)
        self.replicas[slot] = replica
        asyncio.get_running_loop().create_task(self._watch(replica))
        try:
            ports = await asyncio.wait_for(self._ready_line(proc), READY_TIMEOUT_S)
            replica.http_port, replica.grpc_port = ports["http_port"], ports["grpc_port"]
            replica.metrics_port = ports["metrics_port"]
            await self._wait_ready(replica)
        except (TimeoutError, OSError, ValueError, KeyError) as err:
            log.error("replica %d did not become ready: %s; stopping it", slot, err)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            if self._reuse.pop(slot, None) is not None:  # its ports leave the balancer after all
                async with self._lock:
                    await self._route()
            return
        if proc.returncode is not None or self._stopping:
            return
        async with self._lock:
            replica.state = "ready"
            self._reuse.pop(slot, None)
            await self._route()  # unchanged (no reload) when it took over a dead replica's ports
            replica.routed = True
        log.info("replica %d (pid %d) ready on %d/%d", slot, proc.pid, replica.http_port, replica.grpc_port)

    @staticmethod
    async def _ready_line(proc: asyncio.subprocess.Process) -> dict[str, Any]:
        assert proc.stdout is not None
        while True:
            line = await proc.stdout.readline()
            if not line:
                raise ValueError(f"exited with {await proc.wait()} before its ready line")
            with contextlib.suppress(ValueError):
                data = json.loads(line)
                if isinstance(data, dict) and data.get("event") == "ready":
                    # keep reading stdout so that the replica never blocks on a full pipe
                    asyncio.get_running_loop().create_task(_drain(proc))
                    return data

    async def _wait_ready(self, replica: Replica) -> None:
        """Until ``/v2/health/ready`` answers 200 (a model still waiting for its alias: not yet)."""
        url = f"http://127.0.0.1:{replica.http_port}/v2/health/ready"
        while replica.proc.returncode is None:
            if await asyncio.to_thread(_http_ok, url):
                return
            await asyncio.sleep(0.2)
        raise ValueError(f"exited with {replica.proc.returncode}")

    async def _watch(self, replica: Replica) -> None:
        """A replica that exits without being asked: out of the balancer now, a new one started."""
        code = await replica.proc.wait()
        if self.replicas.get(replica.slot) is not replica:
            return
        if replica.state == "draining" or self._stopping:
            return
        log.warning("replica %d (pid %d) exited with %s: replacing it", replica.slot, replica.proc.pid, code)
        was_ready = replica.state == "ready"
        if was_ready:  # its replacement takes its ports: the balancer's config stays as it is
            self._reuse[replica.slot] = (replica.http_port, replica.grpc_port)
        del self.replicas[replica.slot]
        self.aggregator.retire(replica)
        self.replaced += 1
        if not was_ready:  # it failed to start (a broken model?): do not spin
            await asyncio.sleep(RESTART_BACKOFF_S)
        self._changed.set()

    async def _route(self) -> None:
        members = sorted([*((r.http_port, r.grpc_port) for r in self.ready()), *self._reuse.values()])
        await self.balancer.set_members(members)

    async def _drain(self, replica: Replica) -> None:
        """Out of the balancer, its requests finished, then stopped."""
        async with self._lock:
            replica.state = "draining"
            await self._route()  # returns once nginx's old workers finished their requests
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while time.monotonic() < deadline and replica.proc.returncode is None:
            in_flight = await asyncio.to_thread(self.aggregator.in_flight, replica)
            if not in_flight:
                break
            await asyncio.sleep(0.05)
        self.aggregator.retire(replica)
        with contextlib.suppress(ProcessLookupError):
            replica.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(replica.proc.wait(), 30)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                replica.proc.kill()
        self.replicas.pop(replica.slot, None)
        log.info("replica %d (pid %d) drained and stopped", replica.slot, replica.proc.pid)

    async def reconcile(self) -> None:
        """Start or drain replicas until the count matches ``desired``; runs until stopped."""
        starting: set[asyncio.Task[None]] = set()
        while not self._stopping:
            self._changed.clear()
            live = [r for r in self.replicas.values() if r.state != "draining"]
            spare = sorted(s for s in self._reuse if s not in self._spawning and s not in self.replicas)
            excess = len(live) + len(self._spawning) + len(spare) - self.desired
            if spare and excess > 0:  # fewer wanted now: dead replicas' ports are not taken over
                for slot in spare[:excess]:
                    self._reuse.pop(slot)
                async with self._lock:
                    await self._route()
                continue
            if len(live) + len(self._spawning) < self.desired:
                for _ in range(self.desired - len(live) - len(self._spawning)):
                    taken = set(self.replicas) | self._spawning
                    free = [s for s in spare if s not in taken]
                    slot = free[0] if free else next(i for i in range(len(taken) + 1) if i not in taken)
                    self._spawning.add(slot)  # taken until its process is in self.replicas
                    task = asyncio.get_running_loop().create_task(self._start(slot))
                    starting.add(task)
                    task.add_done_callback(starting.discard)
                    task.add_done_callback(self._started)
            elif len(live) > self.desired:
                # the newest first, and those not ready yet before those serving
                order = sorted(live, key=lambda r: (r.state == "ready", -r.started))
                for replica in order[: len(live) - self.desired]:
                    if replica.state == "ready":
                        await self._drain(replica)
                    else:  # never routed to: nothing to drain
                        _kill(replica)
                        self.replicas.pop(replica.slot, None)
                continue
            await self._changed.wait()

    def _started(self, _task: asyncio.Task[None]) -> None:
        self._changed.set()

    def set_desired(self, count: int, decision: dict[str, Any] | None) -> None:
        if not self.min <= count <= self.max:
            raise ValueError(
                f"replicas must be between serving.min_replicas ({self.min}) and "
                f"serving.max_replicas ({self.max}), got {count}"
            )
        if decision is not None:
            self.decision = decision
        if count != self.desired:
            why = f" ({decision.get('reason')})" if decision else ""
            log.info("replicas %d -> %d%s", self.desired, count, why)
        self.desired = count
        self._changed.set()

    def status(self) -> dict[str, Any]:
        return {
            "desired": self.desired,
            "min_replicas": self.min,
            "max_replicas": self.max,
            "ready": len(self.serving()),
            "replaced": self.replaced,
            "replicas": [r.as_dict() for r in sorted(self.replicas.values(), key=lambda r: r.slot)],
            "decision": self.decision,
        }

    # lifecycle ---------------------------------------------------------------------------------
    async def run(self) -> None:
        await self.balancer.start()
        from appliance.workloads.serving.admin_http import AdminServer

        admin = AdminServer(self)
        await admin.start(self.args.host, self.args.metrics_port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        worker = loop.create_task(self.reconcile())
        print(json.dumps({"event": "ready", "supervisor": True, **self.ports()}), flush=True)
        try:
            await stop.wait()
        finally:
            self._stopping = True
            worker.cancel()
            await self.balancer.stop()  # stop taking requests; nginx finishes what it holds
            for replica in list(self.replicas.values()):
                with contextlib.suppress(ProcessLookupError):
                    replica.proc.send_signal(signal.SIGTERM)
            for replica in list(self.replicas.values()):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(replica.proc.wait(), 30)
            admin.close()

    def ports(self) -> dict[str, int]:
        return {
            "http_port": self.args.http_port,
            "grpc_port": self.args.grpc_port,
            "metrics_port": self.args.metrics_port,
        }


async def _drain(proc: asyncio.subprocess.Process) -> None:
    assert proc.stdout is not None
    while await proc.stdout.read(65536):
        pass


def _kill(replica: Replica) -> None:
    replica.state = "draining"
    with contextlib.suppress(ProcessLookupError):
        replica.proc.kill()


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    if "--" in argv:
        i = argv.index("--")
        own, serve_args = argv[:i], argv[i + 1 :]
    else:
        own, serve_args = argv, []
    p = argparse.ArgumentParser(prog="python -m appliance.workloads.serving.supervisor", description=__doc__)
    p.add_argument("--min-replicas", type=int, default=1)
    p.add_argument("--max-replicas", type=int, default=1)
    p.add_argument("--replicas", type=int, help="replicas to start with (default: --min-replicas)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--http-port", type=int, default=8080)
    p.add_argument("--grpc-port", type=int, default=8081)
    p.add_argument("--metrics-port", type=int, default=8082)
    p.add_argument("--admin-token-file", type=Path, help="token for PUT /replicas (and GET)")
    p.add_argument("--run-dir", type=Path, help="balancer config and pid (default: a temp dir)")
    args = p.parse_args(own)
    if args.min_replicas < 1 or args.max_replicas < args.min_replicas:
        p.error(
            f"--min-replicas ({args.min_replicas}) must be at least 1 and at most --max-replicas "
            f"({args.max_replicas}) (serving.min_replicas / serving.max_replicas)"
        )
    if args.replicas is not None and not args.min_replicas <= args.replicas <= args.max_replicas:
        p.error(f"--replicas {args.replicas} is outside {args.min_replicas}..{args.max_replicas}")
    return args, serve_args


def main(argv: list[str] | None = None) -> None:
    args, serve_args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.max_replicas == 1:  # one server: no balancer, no supervisor in between
        own = ["--host", args.host, "--http-port", str(args.http_port), "--grpc-port", str(args.grpc_port)]
        own += ["--metrics-port", str(args.metrics_port)]
        if args.admin_token_file is not None and "--admin-token-file" not in serve_args:
            own += ["--admin-token-file", str(args.admin_token_file)]
        os.execv(sys.executable, [sys.executable, "-m", "appliance.workloads.serving", *serve_args, *own])
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.run_dir is None:
        import tempfile

        args.run_dir = Path(tempfile.mkdtemp(prefix="appliance-serving-"))
    args.run_dir = args.run_dir.resolve()
    try:
        asyncio.run(Supervisor(args, serve_args).run())
    except (RuntimeError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
