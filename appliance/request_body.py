"""What a request's head says of its body: the one rule of the gates that check a caller's login,
and bound a body, before it is read (``mlflow_gate`` for MLflow, ``workbench_gate`` for Jupyter).
Both take the head's ``Content-Length`` and ``Transfer-Encoding`` values, None when absent."""

from __future__ import annotations


def announces_body(content_length: str | None, transfer_encoding: str | None) -> bool:
    """A transfer coding (chunked: a length not told in advance) always announces a body, whatever
    length rides beside it; otherwise a length other than zero does. A length that is not a
    number counts as a body: it is not taken on trust."""
    if transfer_encoding is not None:
        return True
    return content_length is not None and content_length.strip() != "0"


def announced_length(content_length: str | None, transfer_encoding: str | None) -> int | None:
    """A body's announced length, None when it has none it can be held to: a transfer coding
    (which wins over a length beside it, as in ``announces_body``), or a length that is not a
    number."""
    length = (content_length or "").strip()
    if transfer_encoding is not None or not length.isdigit():
        return None
    return int(length)
