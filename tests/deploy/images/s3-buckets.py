#!/opt/s3/bin/python
"""minio-init's job (`mc mb --ignore-existing`) for the S3 stand-in: create the buckets."""

import os
import sys

import boto3

client = boto3.client(
    "s3",
    endpoint_url=os.environ.get("S3_ENDPOINT_URL", "http://minio:9000"),
    aws_access_key_id=os.environ["MINIO_ROOT_USER"],
    aws_secret_access_key=os.environ["MINIO_ROOT_PASSWORD"],
    region_name="us-east-1",
)
existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
for bucket in sys.argv[1:]:
    if bucket not in existing:
        client.create_bucket(Bucket=bucket)
    print(f"bucket {bucket}: ready")
