"""Artifact stores against the real filesystem and a real S3 endpoint on loopback (moto server)."""

from __future__ import annotations

import time

import boto3
import pytest

from aimass.exceptions import InvalidRequestError, NotFoundError, StorageError
from aimass.storage import check_key, get_store
from tests.s3util import FaultyProxy, moto_s3


@pytest.fixture(autouse=True)
def _aws_env(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


@pytest.fixture(scope="module")
def s3_endpoint():
    with moto_s3() as url:
        boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="testing",
                     aws_secret_access_key="testing").create_bucket(Bucket="aimass")
        yield url


def roundtrip(store, tmp_path):
    store.put_bytes("runs/r1/state.json", b'{"a": 1}')
    assert store.get_bytes("runs/r1/state.json") == b'{"a": 1}'
    assert store.exists("runs/r1/state.json") and store.exists("runs/r1") and not store.exists("runs/r2")
    d = tmp_path / "dir"
    (d / "sub").mkdir(parents=True)
    (d / "a.txt").write_text("A")
    (d / "sub" / "b.txt").write_text("B")
    store.put_dir(d, "runs/r1/model")
    assert store.list("runs/r1/model") == ["runs/r1/model/a.txt", "runs/r1/model/sub/b.txt"]
    out = store.get_dir("runs/r1/model", tmp_path / "back")
    assert (out / "sub" / "b.txt").read_text() == "B"
    with pytest.raises(NotFoundError):
        store.get_bytes("runs/none")
    store.delete("runs/r1")
    assert store.list("runs/r1") == []


def test_local_store_roundtrip(tmp_path):
    roundtrip(get_store(str(tmp_path / "root")), tmp_path)


def test_s3_store_roundtrip(s3_endpoint, tmp_path):
    roundtrip(get_store("s3://aimass/prefix", endpoint_url=s3_endpoint), tmp_path)


@pytest.mark.parametrize("key", ["../x", "a/../../x", "/etc/passwd", "..%2fx", "%2e%2e/x", "%252e%252e%252fx", "a\\..\\..\\x", "a/\x00"])
def test_path_traversal_is_rejected_after_normalisation(key):
    with pytest.raises(InvalidRequestError, match="escapes"):
        check_key(key)


def test_unknown_scheme_lists_known_ones():
    with pytest.raises(InvalidRequestError, match="file, s3"):
        get_store("ftp://host/x")


def test_s3_recovers_after_two_503s(s3_endpoint):
    with FaultyProxy(s3_endpoint, fail_first=2) as proxy:
        store = get_store("s3://aimass/faulty", endpoint_url=proxy.url)
        store.put_bytes("k", b"v")
        assert proxy.failed == 2 and proxy.seen == 3
        assert store.get_bytes("k") == b"v"


def test_s3_failing_forever_fails_fast_and_clearly(s3_endpoint):
    with FaultyProxy(s3_endpoint, fail_first=-1) as proxy:
        store = get_store("s3://aimass/down", endpoint_url=proxy.url, max_attempts=3)
        t0 = time.monotonic()
        with pytest.raises(StorageError, match="after retries") as ei:
            store.put_bytes("k", b"v")
        assert time.monotonic() - t0 < 30
        assert ei.value.retryable
        assert 3 <= proxy.seen <= 4  # bounded: max_attempts tries (botocore may add one bucket probe)
