"""The serving service with replicas: N model servers behind one balancer, on one host.

``python -m appliance.workloads.serving.supervisor [options] -- SERVE ARGS``. With
``--max-replicas 1`` it simply becomes the model server (exec, nothing in between). Above 1 it

- reserves a pair of loopback ports (REST, gRPC) for each of the ``--max-replicas`` slots: bound,
  never listening, so a connection to a slot with no replica is refused, and no other program
  takes the port between two replicas;
- runs an nginx balancer on the service's REST and gRPC ports whose upstreams list every slot,
  written once and never reloaded (balancer.py says why nginx and why no reload);
- starts a replica in a free slot, ``python -m appliance.workloads.serving SERVE ARGS`` on that
  slot's ports: nginx sends it requests as soon as it listens, which it does once its models are
  loaded; it counts as ready when its ``/v2/health/ready`` passes;
- drains one without a failed request: SIGUSR1 makes it stop listening without resetting a
  connection the kernel already completed (drain.py); nginx retries the refused connections on
  another replica and closes its kept-alive ones within ``keepalive_time``/``keepalive_timeout``
  (seconds); once none is open (nothing can be in flight) it gets SIGTERM;
- replaces a replica that exits on its own by a new one in the same slot. A request inside the
  process when it died is lost with it: nginx replays a REST request elsewhere; a gRPC call,
  whose body nginx streams unbuffered, gets UNAVAILABLE. Connections to the dead slot are refused
  and retried elsewhere;
- serves, on the metrics port, ``/metrics`` (every replica's series with a ``replica`` label, the
  drift PSI over all traffic, and the monotonic totals the autoscaler reads; aggregate.py) and
  ``/replicas`` (GET: state; PUT ``{"replicas": N}``: the count, with the admin token).

Scaling thus never touches nginx: an earlier design rewrote the upstreams and reloaded nginx on
every change, and a reload closes idle client keep-alive connections, so a client sending on one
at that instant saw a failed request. Measured with the replicas test's load (2 REST + 2 gRPC
clients, 3 -> 1 -> 2 replicas; benchmarks/README.md): no failed request and none sent again.

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
import socket
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.procnet import ESTABLISHED, SYN_RECV, tcp_sockets
from appliance.runtimes.handover import HANDOVER_ENV
from appliance.workloads.serving.aggregate import Aggregator
from appliance.workloads.serving.balancer import KEEPALIVE_IDLE_S, Balancer
from appliance.workloads.serving.config import read_tokens
from appliance.workloads.serving.limits import ServerLimits
from appliance.workloads.serving.replica_metrics import REPLICA_ENV

log = logging.getLogger("appliance.serving.supervisor")
READY_TIMEOUT_S = 600.0
"""How long a replica may take from start to ready (model download, session build, warm-up)."""
DRAIN_TIMEOUT_S = 60.0
"""Longest a draining replica waits for nginx to close its connections before it is stopped."""
RESTART_BACKOFF_S = 5.0


@dataclass
class Replica:
    """One model-server process and where it listens."""

    slot: int
    proc: asyncio.subprocess.Process
    http_port: int = 0
    grpc_port: int = 0
    metrics_port: int = 0
    state: str = "starting"  # starting, listening (nginx may send it requests), ready, draining
    started: float = field(default_factory=time.time)

    def as_dict(self) -> dict[str, Any]:
        return {
            "slot": self.slot,
            "pid": self.proc.pid,
            "state": self.state,
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
        """Slot -> its replica (a draining one keeps its slot until it exited)."""
        self._reserved = [(reserve_port(), reserve_port()) for _ in range(self.max)]
        self.slots = [(r.getsockname()[1], g.getsockname()[1]) for r, g in self._reserved]
        limits = replica_limits(serve_args)
        idle_s = min(KEEPALIVE_IDLE_S, limits.idle_timeout_s / 2)
        self.balancer = Balancer(
            args.run_dir, args.host, args.http_port, args.grpc_port, self.slots, idle_s, limits.max_body_bytes
        )
        self.aggregator = Aggregator(self)
        self.decision: dict[str, Any] | None = None
        self.replaced = 0
        self._changed = asyncio.Event()
        self._spawning: set[int] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False

    # replicas ----------------------------------------------------------------------------------
    def ready(self) -> list[Replica]:
        """Replicas that passed their readiness check and are not leaving."""
        return [r for r in self.replicas.values() if r.state == "ready"]

    def serving(self) -> list[Replica]:
        return self.ready()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda _t: self._changed.set())

    async def _start(self, slot: int) -> None:
        http, grpc = self.slots[slot]
        argv = [
            sys.executable, "-m", "appliance.workloads.serving", *self.serve_args,
            "--host", "127.0.0.1", "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", "0",
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if k != HANDOVER_ENV}  # the service's ports are nginx's
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdout=asyncio.subprocess.PIPE, env={**env, REPLICA_ENV: "1"}
            )
        finally:
            self._spawning.discard(slot)
        replica = Replica(slot, proc)
        self.replicas[slot] = replica
        asyncio.get_running_loop().create_task(self._watch(replica))
        try:
            ports = await asyncio.wait_for(self._ready_line(proc), READY_TIMEOUT_S)
            if (ports["http_port"], ports["grpc_port"]) != (http, grpc):
                raise ValueError(f"listens on {ports['http_port']}/{ports['grpc_port']}, not {http}/{grpc}")
            replica.http_port, replica.grpc_port = http, grpc
            replica.metrics_port = ports["metrics_port"]
            if replica.state == "starting":
                replica.state = "listening"
            await self._wait_ready(replica)
        except (TimeoutError, OSError, ValueError, KeyError) as err:
            log.error("replica %d did not become ready: %s; stopping it", slot, err)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            return
        if proc.returncode is not None or self._stopping or replica.state != "listening":
            return
        replica.state = "ready"
        log.info("replica %d (pid %d) ready on %d/%d", slot, proc.pid, http, grpc)

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
                    asyncio.get_running_loop().create_task(_discard_output(proc))
                    return data

    async def _wait_ready(self, replica: Replica) -> None:
        """Until ``/v2/health/ready`` answers 200 (a model still waiting for its alias: not yet)."""
        url = f"http://127.0.0.1:{replica.http_port}/v2/health/ready"
        while replica.proc.returncode is None and replica.state == "listening":
            if await asyncio.to_thread(_http_ok, url):
                return
            await asyncio.sleep(0.2)
        if replica.proc.returncode is not None:
            raise ValueError(f"exited with {replica.proc.returncode}")

    async def _watch(self, replica: Replica) -> None:
        """A replica that exits without being asked: its slot is freed and a new one started."""
        code = await replica.proc.wait()
        if self.replicas.get(replica.slot) is not replica or replica.state == "draining" or self._stopping:
            return
        log.warning("replica %d (pid %d) exited with %s: replacing it", replica.slot, replica.proc.pid, code)
        del self.replicas[replica.slot]
        self.aggregator.retire(replica)
        self.replaced += 1
        if replica.state != "ready":  # it failed to start (a broken model?): do not spin
            await asyncio.sleep(RESTART_BACKOFF_S)
        self._changed.set()

    async def _drain(self, replica: Replica) -> None:
        """Stop listening, wait until nginx closed its connections to it, then stop it."""
        with contextlib.suppress(ProcessLookupError):
            replica.proc.send_signal(signal.SIGUSR1)  # its handler is in place once it listens
        ports = (replica.http_port, replica.grpc_port)
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        await asyncio.sleep(0.05)
        while time.monotonic() < deadline and replica.proc.returncode is None:
            if not await asyncio.to_thread(open_connections, ports):
                break
            await asyncio.sleep(0.1)
        else:
            if replica.proc.returncode is None:
                log.warning("replica %d still had connections after %.0f s", replica.slot, DRAIN_TIMEOUT_S)
        self.aggregator.retire(replica)
        with contextlib.suppress(ProcessLookupError):
            replica.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(replica.proc.wait(), 30)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                replica.proc.kill()
            await replica.proc.wait()
        if self.replicas.get(replica.slot) is replica:
            del self.replicas[replica.slot]
        log.info("replica %d (pid %d) drained and stopped", replica.slot, replica.proc.pid)

    async def reconcile(self) -> None:
        """Start or drain replicas until the count matches ``desired``; runs until stopped."""
        while not self._stopping:
            self._changed.clear()
            live = [r for r in self.replicas.values() if r.state != "draining"]
            if len(live) + len(self._spawning) < self.desired:
                free = [s for s in range(self.max) if s not in self.replicas and s not in self._spawning]
                for slot in free[: self.desired - len(live) - len(self._spawning)]:
                    self._spawning.add(slot)  # taken until its process is in self.replicas
                    self._spawn(self._start(slot))
                # too few free slots: draining replicas still hold theirs, their exit wakes us
            elif len(live) > self.desired:
                # the newest first, and those not ready yet before those serving
                order = sorted(live, key=lambda r: (r.state == "ready", -r.started))
                for replica in order[: len(live) - self.desired]:
                    if replica.state == "starting":  # not listening yet: no request can be there
                        _kill(replica)
                        self.replicas.pop(replica.slot, None)
                    else:
                        replica.state = "draining"
                        self._spawn(self._drain(replica))
            await self._changed.wait()

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
            "ready": len(self.ready()),
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
            for pair in self._reserved:
                for sock in pair:
                    sock.close()

    def ports(self) -> dict[str, int]:
        return {
            "http_port": self.args.http_port,
            "grpc_port": self.args.grpc_port,
            "metrics_port": self.args.metrics_port,
        }


async def _discard_output(proc: asyncio.subprocess.Process) -> None:
    assert proc.stdout is not None
    while await proc.stdout.read(65536):
        pass


def _kill(replica: Replica) -> None:
    """Stop a replica still loading its models (SIGTERM: should it listen by now, it finishes
    what it was sent as any server being stopped does)."""
    replica.state = "draining"
    with contextlib.suppress(ProcessLookupError):
        replica.proc.terminate()


def reserve_port() -> socket.socket:
    """A loopback port held for a replica slot: bound with SO_REUSEADDR and never listening, so
    connections to it are refused until a replica (binding it with SO_REUSEADDR, as asyncio
    does) listens there, and refused again once it stopped."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def open_connections(ports: tuple[int, ...]) -> int:
    """TCP connections open (or being opened) to ``ports`` on this host."""
    return sum(1 for s in tcp_sockets() if s.state in (ESTABLISHED, SYN_RECV) and s.port in ports)


def replica_limits(serve_args: list[str]) -> ServerLimits:
    """The replicas' limits from their ``--limits-json``/``--limit`` arguments (the defaults where
    these do not parse: the replicas say what is wrong with them when they start). nginx closes an
    idle upstream connection before a replica does (``idle_timeout_s``: a replica closing one as
    nginx sends a gRPC call on it fails that call) and refuses a body well past theirs."""
    limits_json = None
    pairs: list[str] = []
    for i, arg in enumerate(serve_args[:-1]):
        if arg == "--limits-json":
            limits_json = serve_args[i + 1]
        elif arg == "--limit":
            pairs.append(serve_args[i + 1])
    try:
        base = ServerLimits.model_validate_json(limits_json) if limits_json else None
        return ServerLimits.from_pairs(tuple(pairs), base)
    except ValueError:
        return ServerLimits()


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
    served = _serve_params(serve_args)
    refusal = _open_to_the_network(args.host, served)
    if refusal:
        p.error(refusal)
    if args.max_replicas > 1 and served.get("allow_client_shm"):
        p.error(
            "--allow-client-shm needs --max-replicas 1: a shared-memory region is registered with one "
            "replica and unknown to the others behind the balancer (serving.allow_client_shm)"
        )
    return args, serve_args


def _serve_params(serve_args: list[str]) -> dict[str, Any]:
    """The model servers' arguments as their own parser reads them (``--allow-client-shm``,
    ``=true``, ``false``, ...; tokens from flags or the environment), which alone decides them."""
    from appliance.cli.serve_cmd import serve_cmd

    return dict(serve_cmd.make_context("serve", list(serve_args), resilient_parsing=True).params)


def _open_to_the_network(host: str, served: dict[str, Any]) -> str | None:
    """The model server's own rule (``open_to_the_network``) for this address: with replicas the
    balancer binds ``host`` and the replicas loopback, so they would not refuse it themselves."""
    from appliance.cli.serve_cmd import open_to_the_network

    has_token = bool(served.get("token") or served.get("token_file"))
    return open_to_the_network(host, has_token, bool(served.get("no_auth")))


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
