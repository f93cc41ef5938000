"""A lean ``GetObject`` for the small objects the agent reads one after another (log entries,
the lease, the primary record): a replay of 10,000 log entries is 10,000 GETs, and through
aiobotocore's full pipeline (event hooks, endpoint rules, user agent, the response parser's
date and header handling) each cost over a millisecond of client CPU, more than the server's.

Only what varies per request is done per request. The URL prefix is resolved once by botocore
itself (a presigned URL: same endpoint rules and addressing style); each request is signed as
botocore's S3 SigV4 signer signs it (a test holds the two equal) with the client's own
credentials (refreshed as the client would), and sent through the client's own aiohttp session
(same pool, TLS and CA settings, proxy and timeouts). A not-found or a server error is parsed
by botocore's parser into the ``ClientError`` the full path would raise; any other refusal (a
redirect, a bad signature, a denial: never the steady state) is retried once through the full
client, so region redirects and error details stay botocore's.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import hashlib
import hmac
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from botocore import exceptions as boto
from botocore.auth import EMPTY_SHA256_HASH, SIGV4_TIMESTAMP, _host_from_url
from botocore.parsers import create_parser
from botocore.utils import percent_encode
from yarl import URL

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
        self._http = client._endpoint.http_session
        self._base: str | None = None
        self._host = ""
        self._proxy: str | None = None
        self._proxy_headers: dict[str, str] = {}
        self._parser = create_parser("rest-xml")
        self._shape = client.meta.service_model.operation_model("GetObject").output_shape

    async def get(self, key: str) -> tuple[bytes, ObjectInfo]:
        """The bytes and info of ``key``, unverified (the caller checks the SHA-256)."""
        if self._base is None:
            await self._resolve()
        assert self._base is not None
        url = self._base + percent_encode(key, safe="/~")
        status, headers, body = await self._send(url, await self._sign(url))
        if 200 <= status < 300:
            return body, _info(key, headers, body)
        if status not in _PARSED_HERE:
            return await self._full_get(key)
        answer = {"status_code": status, "headers": _lower(headers), "body": body}
        raise boto.ClientError(self._parser.parse(answer, self._shape), "GetObject")

    async def _resolve(self) -> None:
        """Where objects live, as botocore's endpoint rules and addressing style put them (a
        presigned URL: no request), the Host header its signer would sign, and the proxy its
        session would take for them."""
        params = {"Bucket": self._bucket, "Key": _PROBE_KEY}
        url: str = await self._client.generate_presigned_url("get_object", Params=params)
        parts = urlsplit(url)
        base = f"{parts.scheme}://{parts.netloc}{parts.path.removesuffix(_PROBE_KEY)}"
        self._host = _host_from_url(base)
        self._proxy = self._http._proxy_config.proxy_url_for(base)
        self._proxy_headers = self._http._proxy_config.proxy_headers_for(base)
        self._base = base

    async def _sign(self, url: str) -> dict[str, str]:
        """The headers of a GET of ``url`` signed with the client's credentials, refreshed as
        its own signer would."""
        credentials = self._client._request_signer._credentials
        if credentials is None:
            raise boto.NoCredentialsError()
        frozen = await credentials.get_frozen_credentials()
        meta = self._client.meta
        scope = (meta.region_name, meta.service_model.signing_name)
        return sign_get(url, self._host, frozen, scope, datetime.now(UTC))

    async def _send(
        self, url: str, headers: Mapping[str, str]
    ) -> tuple[int, Mapping[str, str], bytes]:
        """Through the client's own aiohttp session (its pool, TLS context, CA bundle and
        timeouts); a TLS failure raises botocore's ``SSLError`` as that session's ``send``
        does, the other aiohttp errors are the caller's to translate."""
        session = await self._http._get_session(self._proxy)
        sent = {**headers, "Accept-Encoding": "identity"}
        try:
            async with session.get(
                URL(url, encoded=True),
                headers=sent,
                proxy=self._proxy,
                proxy_headers=self._proxy_headers,
            ) as response:
                return response.status, response.headers, await response.read()
        except aiohttp.ClientSSLError as exc:
            raise boto.SSLError(endpoint_url=url, error=exc) from exc

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


def sign_get(
    url: str, host: str, credentials: Any, scope: tuple[str, str], now: datetime
) -> dict[str, str]:
    """The headers botocore's ``S3SigV4Auth`` gives a bodiless GET of ``url`` (``scope``:
    region and signing name) at ``now``, at a fraction of its cost: its generic headers
    (``email.message``), URL re-parsing and four HMACs a request to derive a key that changes
    once a day took about half the client CPU of a small GET. A test holds it to botocore's
    output, with and without a session token."""
    stamp = now.strftime(SIGV4_TIMESTAMP)
    headers = {"host": host, "x-amz-content-sha256": EMPTY_SHA256_HASH, "x-amz-date": stamp}
    if credentials.token:
        headers["x-amz-security-token"] = credentials.token
    names = ";".join(headers)  # already sorted
    canonical = "\n".join(
        ["GET", urlsplit(url).path, "", *(f"{k}:{v}" for k, v in headers.items()), "", names]
    )
    canonical += "\n" + EMPTY_SHA256_HASH
    region, service = scope
    credential_scope = f"{stamp[:8]}/{region}/{service}/aws4_request"
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    to_sign = f"AWS4-HMAC-SHA256\n{stamp}\n{credential_scope}\n{digest}"
    key = _signing_key(credentials.secret_key, stamp[:8], region, service)
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["Authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={credentials.access_key}/{credential_scope}, "
        f"SignedHeaders={names}, Signature={signature}"
    )
    return headers


@functools.lru_cache(maxsize=8)
def _signing_key(secret: str, day: str, region: str, service: str) -> bytes:
    key = f"AWS4{secret}".encode()
    for element in (day, region, service, "aws4_request"):
        key = hmac.new(key, element.encode(), hashlib.sha256).digest()
    return key


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    """Header names as botocore's parser expects them."""
    return {name.lower(): value for name, value in headers.items()}


def _info(key: str, headers: Mapping[str, str], body: bytes) -> ObjectInfo:
    """What botocore's parser would take from a ``GetObject`` answer's headers (any case)."""
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
