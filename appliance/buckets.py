"""One-shot job: create the stack's buckets on its S3 endpoint, checking before it creates.

Run again at any time: existing buckets are left alone. ``--check`` exits 0 only when every bucket
exists, which is the job's health check. Reads only the data-connection environment.
"""

from __future__ import annotations

import os
import sys


def _client():
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=os.environ["AWS_S3_ENDPOINT"],
        aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
        region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
        config=Config(connect_timeout=3, read_timeout=10, retries={"max_attempts": 2}),
    )


def main(argv: list[str]) -> int:
    wanted = [b for b in os.environ.get("APPLIANCE_BUCKETS", "").split(",") if b]
    client = _client()
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    missing = [b for b in wanted if b not in existing]
    if "--check" in argv:
        if missing:
            print(f"missing buckets: {', '.join(missing)}", file=sys.stderr)
        return 1 if missing else 0
    for bucket in missing:
        client.create_bucket(Bucket=bucket)
        print(f"created bucket {bucket}")
    for bucket in wanted:
        if bucket not in missing:
            print(f"bucket {bucket} already exists")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
