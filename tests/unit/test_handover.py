"""The handover's decisions and its successor's fallback (real sockets, no server)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from appliance.runtimes import handover


def test_only_a_model_server_that_binds_its_own_ports_takes_them_over() -> None:
    assert handover.applies("serving", ["python", "-m", "x", "--max-replicas", "1", "--", "--a"])
    assert handover.applies("serving", ["python", "-m", "appliance.workloads.serving", "--http-port", "1"])
    assert not handover.applies("serving", ["python", "-m", "x", "--max-replicas", "3", "--"])  # nginx binds
    assert not handover.applies("mlflow", ["mlflow", "server"])


def test_without_a_holder_the_successor_binds_as_usual(tmp_path: Path) -> None:
    stale = tmp_path / "gone.sock"
    with socket.socket(socket.AF_UNIX) as sock:  # a socket file nobody listens on any more
        sock.bind(str(stale))
    assert handover.receive(str(stale), "127.0.0.1", [1234]) == {}
    assert handover.receive(str(tmp_path / "absent.sock"), "127.0.0.1", [1234]) == {}
    assert handover.receive(None, "127.0.0.1", [1234]) == {}


def test_a_held_socket_goes_once_and_only_where_it_listens(tmp_path: Path) -> None:
    listening = socket.create_server(("127.0.0.1", 0))
    port = listening.getsockname()[1]
    taken = handover.take([os.getpid()], [port])
    assert list(taken) == [port]
    path = tmp_path / "h.sock"
    holder = handover.Holder(path, taken)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert handover.receive(str(path), "10.1.2.3", [port]) == {}  # bound elsewhere: not used
    assert holder.given.wait(5) and holder.closed.wait(5) and not path.exists()
    listening.close()

    listening = socket.create_server(("127.0.0.1", 0))
    port = listening.getsockname()[1]
    holder = handover.Holder(path, handover.take([os.getpid()], [port]))
    listening.close()  # the old server closes its copy: the held one keeps the port listening
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass
    got = handover.receive(str(path), "127.0.0.1", [port, port + 1])
    assert list(got) == [port] and holder.given.wait(5)
    conn, _ = got[port].accept()  # the connection made while nobody accepted was kept for it
    conn.close()
    got[port].close()


def test_a_running_server_lends_its_sockets_to_each_asker_and_keeps_them(tmp_path: Path) -> None:
    listening = socket.create_server(("127.0.0.1", 0))
    port = listening.getsockname()[1]
    path = tmp_path / "lend.sock"
    lender = handover.Holder(path, {port: listening.dup()}, hold_s=None, keep=True)
    for _ in range(2):  # a failed upgrade's runtime asked once already: the next one gets them too
        got = handover.receive(str(path), None, [port])
        assert list(got) == [port] and got[port].getsockname()[1] == port
        got[port].close()
    assert lender.given.is_set() and not lender.closed.is_set() and path.exists()
    lender.close()
    listening.close()
