#!/opt/s3/bin/python
"""minio-init's job (`mc mb --ignore-existing`) for the S3 stand-in: create the buckets, on
the server and with the credentials of mc's alias in the environment (MC_HOST_minio)."""

import os
import sys
from urllib.parse import unquote, urlsplit

import boto3

alias = urlsplit(os.environ["MC_HOST_minio"])  # noqa: SIM112 (mc's own name)
client = boto3.client(
    "s3",
    endpoint_url=f"{alias.scheme}://{alias.hostname}:{alias.port}",
    aws_access_key_id=unquote(alias.username or ""),
    aws_secret_access_key=unquote(alias.password or ""),
    region_name="us-east-1",
)
existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
# docker-compose.yml's command, as mc takes it: mb --ignore-existing minio/mlflow minio/dvc
for bucket in [arg for arg in sys.argv[1:] if arg != "mb" and not arg.startswith("-")]:
    name = bucket.removeprefix("minio/")  # mc's alias/bucket
    if name not in existing:
        client.create_bucket(Bucket=name)
    print(f"bucket {name}: ready")
