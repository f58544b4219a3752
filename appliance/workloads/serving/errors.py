"""Errors an inference request can meet, each carrying its HTTP status and gRPC code.

The protocol front ends (REST and gRPC) share one request pipeline; raising one of these anywhere
in it gives the client the right status on either protocol with a message naming what was wrong,
so bad input never turns into a 500.
"""

from __future__ import annotations

import grpc


class InferenceError(Exception):
    """Base: a request the server refuses, with the message the client sees."""

    http_status = 500
    grpc_code = grpc.StatusCode.INTERNAL
    outcome = "server_error"

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)


class BadRequest(InferenceError):
    """The request itself is wrong: malformed JSON, wrong input name, shape or datatype."""

    http_status = 400
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    outcome = "client_error"


class NotFound(InferenceError):
    """Unknown model, version or route."""

    http_status = 404
    grpc_code = grpc.StatusCode.NOT_FOUND
    outcome = "client_error"


class MethodNotAllowed(InferenceError):
    """A known route called with the wrong HTTP method."""

    http_status = 405
    grpc_code = grpc.StatusCode.UNIMPLEMENTED
    outcome = "client_error"


class PayloadTooLarge(InferenceError):
    """The body is larger than the server accepts (``--limit max_body_bytes=N``)."""

    http_status = 413
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    outcome = "client_error"


class Unauthorized(InferenceError):
    """No bearer token, or not the right one."""

    http_status = 401
    grpc_code = grpc.StatusCode.UNAUTHENTICATED
    outcome = "unauthorized"


class Forbidden(InferenceError):
    """A valid credential for something else: the inference token on the admin API, or a load
    from a source the server was not started with."""

    http_status = 403
    grpc_code = grpc.StatusCode.PERMISSION_DENIED
    outcome = "unauthorized"


class Unavailable(InferenceError):
    """The model exists but is not loaded (unloaded, or its load failed)."""

    http_status = 503
    grpc_code = grpc.StatusCode.UNAVAILABLE
    outcome = "server_error"
