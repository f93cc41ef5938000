"""``moto_server`` with S3's conditional writes made atomic, as real S3 makes them.

moto 5 checks ``If-None-Match`` / ``If-Match`` and then writes, without a lock between the two
(``S3Response.put_object``, ``delete_object``, ``copy_object`` and the POST that completes a
multipart upload). Two racing create-only PUTs then both win whenever a thread switch falls
between check and write: rare, but on a loaded machine the contract's race test saw it. Real
S3 decides each conditional write atomically, so these handlers run one at a time here. Reads,
part uploads and everything else stay concurrent.

    python -m tests.servers.moto_atomic -H 127.0.0.1 -p PORT   # moto_server's arguments
"""

from __future__ import annotations

import functools
import sys
import threading
from collections.abc import Callable
from typing import Any

from moto.s3.responses import S3Response
from moto.server import main

SERIALISED = ("put_object", "delete_object", "copy_object", "_key_response_post")
"""The handlers that check a condition and then write."""

_lock = threading.Lock()


def _serialised(handler: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(handler)
    def locked(*args: Any, **kwargs: Any) -> Any:
        with _lock:
            return handler(*args, **kwargs)

    return locked


def make_atomic() -> None:
    """Wrap the conditional writers; an error if moto renamed one (never a silent no-op)."""
    for name in SERIALISED:
        handler = getattr(S3Response, name, None)
        if handler is None:
            raise RuntimeError(f"moto's S3Response has no {name}: update {__name__}")
        if not getattr(handler, "__wrapped__", None):
            setattr(S3Response, name, _serialised(handler))


if __name__ == "__main__":
    make_atomic()
    main(sys.argv[1:])
