"""One-shot job: create the stack's buckets on its S3 endpoint, checking before it creates.

Run again at any time: existing buckets are left alone. ``--check`` exits 0 only when every bucket
exists, which is the job's health check (``--endpoint URL``: the store as the checker reaches it,
the host for a job that ran in a container). Reads only the data-connection environment (the store's
admin key: the only one allowed to create buckets). A store that is unreachable or refuses the
key gets one line naming the endpoint and the fix, not a traceback.
"""

from __future__ import annotations

import os
import sys

from appliance.dataconn.client import client_from_env
from appliance.dataconn.errors import StoreAccessError, StoreUnreachableError


def main(argv: list[str]) -> int:
    from botocore.exceptions import BotoCoreError, ClientError

    wanted = [b for b in os.environ.get("APPLIANCE_BUCKETS", "").split(",") if b]
    env = dict(os.environ)
    if "--endpoint" in argv:  # the health check, run from the host: the store as the host reaches it
        env["AWS_S3_ENDPOINT"] = argv[argv.index("--endpoint") + 1]
    endpoint = env.get("AWS_S3_ENDPOINT", "(AWS)")
    client = client_from_env(env)
    try:
        existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
        missing = [b for b in wanted if b not in existing]
        if "--check" in argv:
            if missing:
                print(f"missing buckets: {', '.join(missing)}", file=sys.stderr)
            return 1 if missing else 0
        for bucket in missing:
            client.create_bucket(Bucket=bucket)
            print(f"created bucket {bucket}")
    except ClientError as err:
        code = err.response.get("Error", {}).get("Code", "")
        error: Exception = StoreAccessError(endpoint, f"{code or 'error'}: {err}", code)
        print(f"error: {error}", file=sys.stderr)
        return 1
    except BotoCoreError as err:
        error = StoreUnreachableError(endpoint, str(err))
        print(f"error: {error}", file=sys.stderr)
        return 1
    for bucket in wanted:
        if bucket not in missing:
            print(f"bucket {bucket} already exists")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
