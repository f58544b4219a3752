"""Errors of the data connection, each saying what is wrong and how to fix it.

They subclass :class:`appliance.errors.ApplianceError`, so the CLI and the workloads print them as
one message plus a fix and exit non-zero without knowing which store was behind them.
"""

from __future__ import annotations

from appliance.errors import ApplianceError


class DataConnectionError(ApplianceError):
    """Base of every data-connection problem."""


class ConnectionConfigError(DataConnectionError):
    """The data-connection environment is missing or inconsistent."""

    exit_code = 2

    def __init__(self, detail: str) -> None:
        super().__init__(
            f"data connection is not configured: {detail}",
            fix="run through `appliance` (it injects the connection) or export the variables listed in "
            "docs/interfaces.md (APPLIANCE_DATA_KIND, AWS_S3_ENDPOINT, ... or APPLIANCE_DATA_ROOT)",
        )


class StoreUnreachableError(DataConnectionError):
    """The object store endpoint does not answer."""

    def __init__(self, endpoint: str, cause: str) -> None:
        super().__init__(
            f"cannot reach the object store at {endpoint}: {cause}",
            fix="start the stack with `appliance up` or correct AWS_S3_ENDPOINT / object_store.endpoint",
        )


KEY_CODES = (
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidClientTokenId",
    "AuthorizationHeaderMalformed",
)
"""S3 error codes that mean the keys themselves are wrong (not merely lacking a permission)."""
FULL_CODES = ("EntityTooLarge", "InsufficientStorage", "XMinioStorageFull")
"""S3 error codes of a store that has no room for the object."""
SERVER_CODES = ("InternalError", "ServiceUnavailable", "SlowDown", "500", "503")
"""S3 error codes of a store that failed on its side: nothing the caller's keys or names can fix."""


class StoreAccessError(DataConnectionError):
    """The object store answered but refused the credentials or the request."""

    def __init__(self, location: str, cause: str, code: str = "") -> None:
        if code in KEY_CODES:
            fix = (
                "the store does not know these keys: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY "
                "(the stack's are in `appliance secrets`; an external store's come from object_store)"
            )
        elif code in ("AccessDenied", "403"):
            fix = (
                "these keys may not do this here: each workload's key reaches only its own buckets "
                "(docs/security.md); use the key of a workload allowed to, or widen the external "
                "store's policy"
            )
        elif code == "InvalidBucketName":
            fix = (
                "bucket names are 3-63 lowercase letters, digits, dots and hyphens: "
                "correct object_store.*_bucket"
            )
        elif code in FULL_CODES:
            fix = "free space on the store's disk (or raise its quota), then run the command again"
        elif code in SERVER_CODES:
            fix = (
                "the store failed inside (one that has just restarted answers so until it knows "
                "where its volumes are): run the command again; if it persists, read the store's "
                "log (`appliance logs seaweedfs`)"
            )
        else:
            fix = "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (`appliance secrets`) and the bucket name"
        super().__init__(f"the object store refused access to {location}: {cause}", fix=fix)


class DatasetNotFoundError(DataConnectionError):
    """No CSV or Parquet file exists under the dataset's prefix."""

    exit_code = 2

    def __init__(self, name: str, location: str, available: list[str]) -> None:
        known = ", ".join(available) if available else "none"
        super().__init__(
            f"dataset {name!r} not found under {location} (available: {known})",
            fix=f"seed it with `appliance data seed --dataset {name}` or upload a .csv/.parquet file "
            f"under datasets/{name}/",
        )


class DatasetFormatError(DataConnectionError):
    """A dataset file exists but cannot be parsed as CSV or Parquet."""

    exit_code = 2

    def __init__(self, uri: str, cause: str) -> None:
        super().__init__(
            f"dataset file {uri} cannot be read: {cause}",
            fix="upload a valid CSV (header row, comma separated) or Parquet file",
        )
