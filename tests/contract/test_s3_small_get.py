"""The S3 driver's lean whole-object GET (``s3_small``): what the shared contract cannot show.

The contract suite runs every ``get`` of moto and SeaweedFS through it; neither server checks
signatures nor fails on demand, so the signature, the error mapping and the retry of a dropped
answer are checked here against a scripted endpoint.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime
from urllib.parse import urlsplit

import botocore.auth
import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from pydantic import SecretStr

from az_agent.drivers.errors import (
    CorruptObject,
    Misconfigured,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from az_agent.drivers.storage.base import SHA256_METADATA_KEY
from az_agent.drivers.storage.config import CloudStorageSettings, S3Settings, StorageSecrets
from az_agent.drivers.storage.factory import open_object_store
from az_agent.drivers.storage.s3_small import sign_get
from tests.contract.test_s3_specific import (
    SECRET,
    CannedS3,
    Reply,
    Request,
    _canned_store,
    _error,
)

BODY = b'{"seq": 7}'
HEADERS = {
    "ETag": '"v7"',
    "Last-Modified": "Sun, 22 Nov 2026 03:00:00 GMT",
    f"x-amz-meta-{SHA256_METADATA_KEY}": hashlib.sha256(BODY).hexdigest(),
}


def _expected_signature(request: Request, secret: str) -> str:
    """SigV4 of a bodiless request, computed from the AWS specification, not by botocore."""
    algorithm, fields = request.headers["authorization"].split(" ", 1)
    assert algorithm == "AWS4-HMAC-SHA256"
    parts = dict(field.strip().split("=", 1) for field in fields.split(","))
    scope = parts["Credential"].split("/", 1)[1]
    signed = parts["SignedHeaders"].split(";")
    canonical = "\n".join(
        [
            request.method,
            urlsplit(request.target).path,
            urlsplit(request.target).query,
            *(f"{name}:{request.headers[name].strip()}" for name in signed),
            "",
            ";".join(signed),
            request.headers["x-amz-content-sha256"],
        ]
    )
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    to_sign = "\n".join(["AWS4-HMAC-SHA256", request.headers["x-amz-date"], scope, digest])
    key = f"AWS4{secret}".encode()
    for element in scope.split("/"):
        key = hmac.new(key, element.encode(), hashlib.sha256).digest()
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


async def test_get_is_one_signed_request() -> None:
    canned = CannedS3(lambda _: Reply(200, HEADERS, BODY))
    async with canned as url:
        store = await _canned_store(url)
        try:
            data, info = await store.get("zone/log/00000000000000000007.json")
        finally:
            await store.close()
    assert (data, info.size, info.version) == (BODY, len(BODY), '"v7"')
    assert info.sha256 == HEADERS[f"x-amz-meta-{SHA256_METADATA_KEY}"]
    assert info.modified is not None
    assert info.modified.isoformat() == "2026-11-22T03:00:00+00:00"
    [request] = canned.requests
    assert (request.method, request.target) == ("GET", "/canned/zone/log/00000000000000000007.json")
    assert {"host", "x-amz-date", "x-amz-content-sha256"} <= set(request.headers)
    assert request.headers["authorization"].endswith(_expected_signature(request, SECRET))
    assert "Credential=AKIDCANNED/" in request.headers["authorization"]
    assert "/us-east-1/s3/aws4_request" in request.headers["authorization"]


async def test_a_key_is_percent_encoded_as_botocore_does() -> None:
    canned = CannedS3(lambda _: Reply(200, HEADERS, BODY))
    async with canned as url:
        store = await _canned_store(url)
        try:
            await store.get("a=b/c+d@e,f:g.h_i-j")
        finally:
            await store.close()
    [request] = canned.requests
    assert request.target == "/canned/a%3Db/c%2Bd%40e%2Cf%3Ag.h_i-j"
    assert request.headers["authorization"].endswith(_expected_signature(request, SECRET))


async def test_a_prefixed_store_reads_through_the_lean_get() -> None:
    """The factory's store (prefixed) reaches it too: a dropped answer is read again whole."""
    answers = iter([Reply(200, HEADERS, BODY, cut_after=3), Reply(200, HEADERS, BODY)])
    canned = CannedS3(lambda _: next(answers))
    async with canned as url:
        settings = CloudStorageSettings(
            type="s3", prefix="team/dr", s3=S3Settings(bucket="canned", endpoint=url)
        )
        secrets = StorageSecrets(access_key=SecretStr("AKIDCANNED"), secret_key=SecretStr(SECRET))
        async with await open_object_store(settings, secrets) as store:
            data, info = await store.get("k")
    assert (data, info.key) == (BODY, "k")
    assert [r.headers.get("range") for r in canned.requests] == [None, None]
    assert [r.target for r in canned.requests] == ["/canned/team/dr/k"] * 2


async def test_a_dropped_answer_is_read_again_whole() -> None:
    """A small object is fetched again from the start (the streamed reader would resume)."""
    answers = iter([Reply(200, HEADERS, BODY, cut_after=3), Reply(200, HEADERS, BODY)])
    canned = CannedS3(lambda _: next(answers))
    async with canned as url:
        store = await _canned_store(url)
        try:
            assert (await store.get("k"))[0] == BODY
        finally:
            await store.close()
    assert [r.headers.get("range") for r in canned.requests] == [None, None]


async def test_a_body_that_disagrees_with_its_checksum_is_refused() -> None:
    canned = CannedS3(lambda _: Reply(200, HEADERS, b'{"seq": 8}'))
    async with canned as url:
        store = await _canned_store(url)
        try:
            with pytest.raises(CorruptObject):
                await store.get("k")
        finally:
            await store.close()


@pytest.mark.parametrize(
    ("reply", "expected", "requests"),
    [
        (_error(404, "NoSuchKey"), NotFound, 1),
        (Reply(404), NotFound, 1),  # no body: the status decides, as botocore's parser does
        (_error(404, "NoSuchBucket"), Misconfigured, 1),
        (_error(500, "InternalError"), Unavailable, 3),  # retried by our policy
        (Reply(503), Unavailable, 3),
        # refusals go once more through the full client (region redirects stay botocore's)
        (_error(403, "AccessDenied"), PermissionDenied, 2),
        (_error(403, "InvalidAccessKeyId"), Misconfigured, 2),
    ],
)
async def test_get_maps_answers_as_the_full_client(
    reply: Reply, expected: type[Exception], requests: int
) -> None:
    canned = CannedS3(lambda _: reply)
    async with canned as url:
        store = await _canned_store(url)
        try:
            with pytest.raises(expected) as caught:
                await store.get("k")
        finally:
            await store.close()
    assert len(canned.requests) == requests
    assert SECRET not in str(caught.value)


@pytest.mark.parametrize("token", [None, "FQoGZXIvYXdzEXAMPLETOKEN=="])
@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8333/bucket/a%3Db/c.json", "https://bucket.s3.eu-west-3.amazonaws.com/k"],
)
def test_the_signature_is_botocores(
    url: str, token: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = datetime(2026, 12, 5, 23, 59, 58, tzinfo=UTC)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: now.replace(tzinfo=None))
    credentials = Credentials("AKIDEXAMPLE", SECRET, token).get_frozen_credentials()
    host = botocore.auth._host_from_url(url)
    request = AWSRequest("GET", url)
    S3SigV4Auth(credentials, "s3", "eu-west-3").add_auth(request)
    ours = sign_get(url, host, credentials, ("eu-west-3", "s3"), now)
    assert ours["Authorization"] == request.headers["Authorization"]
    assert ours["x-amz-date"] == request.headers["X-Amz-Date"]
    assert ours.get("x-amz-security-token") == request.headers.get("X-Amz-Security-Token")
