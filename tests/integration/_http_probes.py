"""Raw HTTP/1.1 probes for what an HTTP client library hides: when a server answers a request
whose body has not all been sent."""

from __future__ import annotations

import socket
import ssl


def partial_upload(
    port: int, cafile: str | None, method: str, path: str, authorization: str, announced: int, sent: int
) -> int:
    """The status answered to a request announcing ``announced`` bytes of body of which only
    ``sent`` are sent (the rest never is: an answer must come before it). Over TLS when ``cafile``
    (the CA to trust) is given, plain HTTP otherwise."""
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {announced}\r\n"
    head += f"Authorization: {authorization}\r\n" if authorization else ""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as raw:
        conn = raw
        if cafile is not None:
            conn = ssl.create_default_context(cafile=cafile).wrap_socket(raw, server_hostname="127.0.0.1")
        with conn:
            try:
                conn.sendall(head.encode() + b"\r\n" + b"x" * sent)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server answered and closed before taking the rest: its answer is queued
            answer = conn.recv(4096).decode(errors="replace")  # a timeout here: the body was awaited
    return int(answer.split()[1])
