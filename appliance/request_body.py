"""Whether a request's head announces a body: the one rule of the gates that check a caller's login
before a body is read (``mlflow_gate`` for MLflow, ``workbench_gate`` for Jupyter)."""

from __future__ import annotations


def announces_body(content_length: str | None, transfer_encoding: str | None) -> bool:
    """A transfer coding (chunked: a length not told in advance) always announces a body, whatever
    length rides beside it; otherwise a length other than zero does. A length that is not a
    number counts as a body: it is not taken on trust."""
    if transfer_encoding is not None:
        return True
    return content_length is not None and content_length.strip() != "0"
