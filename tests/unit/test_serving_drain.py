"""Leaving the balancer without a failed request: the balancer's config lists every replica slot
once (never reloaded), a draining server's listener stops taking connections without resetting the
ones the kernel completed, and a slot with no server refuses."""

from __future__ import annotations

import asyncio
import socket
from unittest import mock

import pytest

from appliance.workloads.serving.balancer import render
from appliance.workloads.serving.drain import accept_queue, refuse_new_connections, stop_listening
from appliance.workloads.serving.supervisor import open_connections, replica_limits, reserve_port


def test_every_slot_is_listed_once_as_primary_and_once_as_backup() -> None:
    conf = render("127.0.0.1", 8080, 8081, [5001, 5002, 5003], [6001, 6002, 6003], idle_s=0.5)
    for port in (5001, 5002, 5003, 6001, 6002, 6003):
        assert conf.count(f"server 127.0.0.1:{port} max_fails=1 fail_timeout=1s;") == 1
        assert conf.count(f"server 127.0.0.1:{port} backup max_fails=0;") == 1
    assert conf.count("keepalive_time 1000ms;") == 2 and conf.count("keepalive_timeout 500ms;") == 2
    assert " down;" not in conf
    with pytest.raises(ValueError, match="one REST and one gRPC port per replica slot"):
        render("127.0.0.1", 8080, 8081, [5001], [])


def test_nginx_closes_idle_connections_before_the_replicas_do() -> None:
    assert replica_limits([]).idle_timeout_s == 120.0
    args = ["--model", "m=/x", "--limits-json", '{"idle_timeout_s": 3}', "--limit", "max_connections=9"]
    assert replica_limits(args).idle_timeout_s == 3.0
    assert replica_limits(["--limit", "idle_timeout_s=1.5"]).idle_timeout_s == 1.5
    assert replica_limits(["--limit", "nonsense"]).idle_timeout_s == 120.0  # the replicas report it


def _connect(port: int, timeout: float) -> str:
    with socket.socket() as s:
        s.settimeout(timeout)
        try:
            s.connect(("127.0.0.1", port))
        except ConnectionRefusedError:
            return "refused"
        except TimeoutError:
            return "timeout"
        return "connected"


def test_nginx_runs_one_worker_per_core_the_service_may_use() -> None:
    with mock.patch("os.sched_getaffinity", return_value={0, 1, 2}):  # taskset -c 0-2 on any host
        assert "worker_processes 3;" in render("127.0.0.1", 8080, 8081, [18080], [18081])
    assert "worker_processes 2;" in render("127.0.0.1", 8080, 8081, [18080], [18081], workers=2)
    assert "auto" not in render("127.0.0.1", 8080, 8081, [18080], [18081])


def test_a_filtered_listener_keeps_what_it_queued_and_takes_nothing_new() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        early = socket.create_connection(("127.0.0.1", port))  # completed, not accepted yet
        assert accept_queue(listener) == 1
        refuse_new_connections(listener)
        assert _connect(port, 0.3) == "timeout"  # the SYN is dropped: no new connection queued
        assert accept_queue(listener) == 1
        conn, _ = listener.accept()  # the early one is still there, whole
        early.sendall(b"x")
        assert conn.recv(1) == b"x"
        conn.close()
        early.close()


def test_stop_listening_then_the_reserved_slot_refuses() -> None:
    reserved = reserve_port()
    port = reserved.getsockname()[1]
    assert _connect(port, 1) == "refused"  # a slot with no replica

    async def scenario() -> list[str]:
        accepted: list[asyncio.Transport] = []

        class Keep(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                accepted.append(transport)  # type: ignore[arg-type]

        server = await asyncio.get_running_loop().create_server(Keep, "127.0.0.1", port)  # SO_REUSEADDR
        seen = [await asyncio.to_thread(_connect, port, 1)]
        held = socket.create_connection(("127.0.0.1", port))
        await asyncio.sleep(0.05)
        await stop_listening([server])
        seen.append(await asyncio.to_thread(_connect, port, 3))
        seen.append(f"open {open_connections((port,))}")  # the held one is still served
        held.close()
        for t in accepted:
            t.close()
        return seen

    try:
        assert asyncio.run(scenario()) == ["connected", "refused", "open 1"]
    finally:
        reserved.close()


def test_the_balancer_refuses_a_body_a_little_past_the_replicas_limit_before_holding_it() -> None:
    from appliance.workloads.serving import balancer

    limits = replica_limits(["--limit", "max_body_bytes=2048", "--model", "m.onnx"])
    assert limits.max_body_bytes == 2048
    conf = balancer.render("127.0.0.1", 8080, 8081, [18080], [18081], max_body_bytes=limits.max_body_bytes)
    assert f"client_max_body_size {2048 + 64 * 1024};" in conf
    assert "client_max_body_size 0;" in balancer.render("127.0.0.1", 8080, 8081, [18080], [18081])
