"""S3 artifact store through boto3, with bounded retries and timeouts.

Retries follow botocore's "standard" mode (exponential backoff with jitter on 5xx, throttling and
connection errors), capped in attempts and per-call timeouts, so a store that answers 503 forever fails
within a bounded time with a clear error instead of hanging.
"""

from __future__ import annotations

import os
from pathlib import Path

from aimass.exceptions import NotFoundError, StorageError
from aimass.storage.base import ArtifactStore, check_key, split_uri

__all__ = ["S3Store", "s3_client"]


def s3_client(endpoint_url: str | None = None, max_attempts: int = 5, connect_timeout_s: float = 5, read_timeout_s: float = 30):
    import boto3
    from botocore.config import Config

    endpoint_url = endpoint_url or os.environ.get("AIMASS_S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    cfg = Config(retries={"max_attempts": max_attempts, "mode": "standard"}, connect_timeout=connect_timeout_s,
                 read_timeout=read_timeout_s, s3={"addressing_style": "path"} if endpoint_url else None)
    return boto3.client("s3", endpoint_url=endpoint_url, config=cfg,
                        region_name=os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1")


class S3Store(ArtifactStore):
    def __init__(self, root_uri: str, endpoint_url: str | None = None, max_attempts: int = 5, **_: object) -> None:
        scheme, rest = split_uri(root_uri)
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise StorageError("S3 URI has no bucket", got=root_uri, fix="Use s3://bucket/prefix.")
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.root_uri = f"s3://{bucket}" + (f"/{self.prefix}" if self.prefix else "")
        self.client = s3_client(endpoint_url, max_attempts=max_attempts)

    def _key(self, key: str) -> str:
        key = check_key(key)
        return f"{self.prefix}/{key}" if self.prefix and key else (self.prefix or key)

    def _wrap(self, exc: Exception, what: str, key: str) -> Exception:
        from botocore.exceptions import ClientError

        if isinstance(exc, ClientError):
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("404", "NoSuchKey", "NotFound"):
                return NotFoundError(f"S3 object not found: s3://{self.bucket}/{key}", fix="Check the key; the run that wrote it may have failed.")
            if code in ("NoSuchBucket",):
                return StorageError(f"S3 bucket {self.bucket!r} does not exist", fix="Create it or fix the artifact root.")
            if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                return StorageError(f"access denied to s3://{self.bucket}/{key} while trying to {what}", got=code,
                                    fix="Check the credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or the pod's role).")
        return StorageError(f"S3 {what} failed for s3://{self.bucket}/{key} after retries: {exc}", retryable=True,
                            fix="Check the endpoint and network; the step will be retried if its retry policy allows.")

    def put_bytes(self, key: str, data: bytes) -> str:
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)
        except Exception as e:
            raise self._wrap(e, "upload", key) from e
        return self.uri(key)

    def get_bytes(self, key: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except Exception as e:
            raise self._wrap(e, "download", key) from e

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return bool(self.list(key))
            raise self._wrap(e, "stat", key) from e
        except Exception as e:
            raise self._wrap(e, "stat", key) from e

    def list(self, prefix: str = "") -> list[str]:
        full = self._key(prefix)
        out: list[str] = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full)
            for page in pages:
                for obj in page.get("Contents", []):
                    k = obj["Key"]
                    out.append(k[len(self.prefix) + 1:] if self.prefix else k)
        except Exception as e:
            raise self._wrap(e, "list", prefix) from e
        return sorted(out)

    def put_file(self, local: str | Path, key: str) -> str:
        try:
            # upload_file switches to multipart for big files; an interrupted multipart upload leaves
            # no object behind, so nothing ever points at half an artifact.
            self.client.upload_file(str(local), self.bucket, self._key(key))
        except Exception as e:
            raise self._wrap(e, "upload", key) from e
        return self.uri(key)

    def get_file(self, key: str, local: str | Path) -> Path:
        dst = Path(local)
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.client.download_file(self.bucket, self._key(key), str(dst))
        except Exception as e:
            raise self._wrap(e, "download", key) from e
        return dst

    def delete(self, prefix: str) -> None:
        keys = self.list(prefix)
        for i in range(0, len(keys), 1000):
            batch = [{"Key": self._key(k)} for k in keys[i:i + 1000]]
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch})


def arrow_filesystem(endpoint_url: str | None = None):
    """A pyarrow S3 filesystem with the same endpoint and credentials as boto3 (for Ray Train storage)."""
    import boto3
    from pyarrow import fs

    endpoint_url = endpoint_url or os.environ.get("AIMASS_S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    creds = boto3.session.Session().get_credentials()
    kw = {}
    if creds is not None:
        frozen = creds.get_frozen_credentials()
        kw.update(access_key=frozen.access_key, secret_key=frozen.secret_key, session_token=frozen.token)
    if endpoint_url:
        scheme, _, host = endpoint_url.partition("://")
        kw.update(endpoint_override=host, scheme=scheme)
    return fs.S3FileSystem(region=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"), **kw)
