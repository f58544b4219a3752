"""The kernel's TCP tables read back: a socket this test opens shows with its port and state."""

from __future__ import annotations

import os
import socket

from appliance.procnet import ESTABLISHED, LISTEN, tcp_sockets


def test_a_listener_and_its_connection_are_listed() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        inode = os.fstat(server.fileno()).st_ino
        listed = [s for s in tcp_sockets() if s.port == port]
        assert [(s.state, s.inode) for s in listed] == [(LISTEN, inode)]
        with socket.create_connection(("127.0.0.1", port)):
            accepted, _ = server.accept()
            with accepted:
                states = sorted(s.state for s in tcp_sockets() if s.port == port)
                assert states == sorted([LISTEN, ESTABLISHED])


def test_an_unreadable_table_is_skipped() -> None:
    assert list(tcp_sockets(("/nonexistent/tcp",))) == []
