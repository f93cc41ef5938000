"""A lean ``GetObject`` for the small objects the agent reads one after another (log entries,
the lease, the primary record): a replay of 10,000 log entries is 10,000 GETs, and through
aiobotocore's full pipeline (event hooks, endpoint rules, user agent, the response parser's
date and header handling) each cost over a millisecond of client CPU, more than the server's.

Only what varies per request is done per request. The URL prefix and the signing scope are
resolved once by botocore itself (a presigned URL: same endpoint rules and addressing style),
each request is signed by botocore's SigV4 signer with the client's own credentials (refreshed
as the client would), and sent through the client's own HTTP session (same pool, TLS and CA
settings, proxies and timeouts), so transport errors are the ones botocore raises. A not-found
or a server error is parsed by botocore's parser into the ``ClientError`` the full path would
raise; any other refusal (a redirect, a bad signature, a denial: never the steady state) is
retried once through the full client, so region redirects and error details stay botocore's.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from botocore import exceptions as boto
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.parsers import create_parser
from botocore.utils import percent_encode

from az_agent.drivers.storage.base import (
    HASH_IN_THREAD_BYTES,
    SHA256_METADATA_KEY,
    ObjectInfo,
    verify_digest,
)

_PROBE_KEY = "probe"
_METADATA_HEADER = f"x-amz-meta-{SHA256_METADATA_KEY}"
_PARSED_HERE = frozenset({404, 429, 500, 502, 503, 504})
"""Error answers turned into a ``ClientError`` here; others go through the full client."""


class SmallObjectGetter:
    """Whole-object GETs of one bucket through an aiobotocore S3 client's signer and session.

    :meth:`get` raises what the client would (``ClientError``, botocore's transport errors),
    for the caller to translate and retry as for any other request.
    """

    def __init__(self, client: Any, bucket: str) -> None:
        self._client = client
        self._bucket = bucket
        self._base: str | None = None
        self._scope: tuple[str, str] = ("", "")
        self._parser = create_parser("rest-xml")
        self._shape = client.meta.service_model.operation_model("GetObject").output_shape

    async def get(self, key: str) -> tuple[bytes, ObjectInfo]:
        """The bytes and info of ``key``, unverified (the caller checks the SHA-256)."""
        if self._base is None:
            await self._resolve()
        assert self._base is not None
        request = AWSRequest("GET", self._base + percent_encode(key, safe="/~"))
        await self._sign(request)
        response = await self._client._endpoint.http_session.send(request.prepare())
        body: bytes = await response.content
        status: int = response.status_code
        if 200 <= status < 300:
            return body, _info(key, response.headers, body)
        if status not in _PARSED_HERE:
            return await self._full_get(key)
        answer = {"status_code": status, "headers": response.headers, "body": body}
        raise boto.ClientError(self._parser.parse(answer, self._shape), "GetObject")

    async def _resolve(self) -> None:
        """Where objects live, as botocore's endpoint rules and addressing style put them (a
        presigned URL: no request), and the client's region and signing name."""
        params = {"Bucket": self._bucket, "Key": _PROBE_KEY}
        url: str = await self._client.generate_presigned_url("get_object", Params=params)
        parts = urlsplit(url)
        path = parts.path.removesuffix(_PROBE_KEY)
        self._scope = (self._client.meta.region_name, self._client.meta.service_model.signing_name)
        self._base = f"{parts.scheme}://{parts.netloc}{path}"

    async def _sign(self, request: AWSRequest) -> None:
        """Signed with the client's credentials, refreshed as its own signer would."""
        credentials = self._client._request_signer._credentials
        if credentials is None:
            raise boto.NoCredentialsError()
        frozen = await credentials.get_frozen_credentials()
        region, service = self._scope
        S3SigV4Auth(frozen, service, region).add_auth(request)

    async def _full_get(self, key: str) -> tuple[bytes, ObjectInfo]:
        reply = await self._client.get_object(Bucket=self._bucket, Key=key)
        async with reply["Body"] as stream:
            body: bytes = await stream.read()
        metadata: dict[str, str] = reply.get("Metadata") or {}
        info = ObjectInfo(
            key,
            reply["ContentLength"],
            reply["ETag"],
            metadata.get(SHA256_METADATA_KEY),
            reply.get("LastModified"),
        )
        return body, info


def _info(key: str, headers: dict[str, str], body: bytes) -> ObjectInfo:
    """What botocore's parser would take from a ``GetObject`` answer's headers."""
    length = headers.get("content-length")
    modified: datetime | None = None
    if stamp := headers.get("last-modified"):
        modified = email.utils.parsedate_to_datetime(stamp)
    return ObjectInfo(
        key,
        int(length) if length is not None else len(body),
        headers["etag"],
        headers.get(_METADATA_HEADER),
        modified,
    )


async def verify_whole(data: bytes, info: ObjectInfo) -> None:
    """Raise ``CorruptObject`` unless ``data`` is what was recorded, as every read checks;
    a large object is hashed in a thread, off the event loop."""
    if len(data) >= HASH_IN_THREAD_BYTES:
        digest = await asyncio.to_thread(lambda: hashlib.sha256(data).hexdigest())
    else:
        digest = hashlib.sha256(data).hexdigest()
    verify_digest(info, digest, len(data))
