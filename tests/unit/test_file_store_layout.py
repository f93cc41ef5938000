"""The file store's layout: each object as its plain bytes, metadata in a sidecar that is
trusted only while it describes the very file read."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from az_agent.drivers.errors import PreconditionFailed
from az_agent.drivers.storage.file import FileObjectStore

KEY = "az1/postgres/configdb/dump-1.dump"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def test_an_object_is_its_plain_bytes_and_sidecars_are_not_listed(tmp_path: Path) -> None:
    store = FileObjectStore(tmp_path)
    info = await store.put(KEY, b"PGDMP plain")
    assert (tmp_path / KEY).read_bytes() == b"PGDMP plain"
    assert (tmp_path / ".az-meta" / KEY).exists()
    assert info.version == info.sha256 == _sha(b"PGDMP plain")
    assert [i.key async for i in store.list()] == [KEY]
    head = await store.head(KEY)
    assert (head.size, head.version, head.sha256) == (11, info.version, info.sha256)

    await store.delete(KEY)
    assert not (tmp_path / KEY).exists()
    assert not (tmp_path / ".az-meta" / "az1").exists(), "empty sidecar folders pruned"


async def test_a_sidecar_of_another_file_is_not_believed(tmp_path: Path) -> None:
    """A crash between the data's rename and the sidecar's leaves the old sidecar: what is
    reported (and compared by if_match) is the digest of the bytes actually there."""
    store = FileObjectStore(tmp_path)
    old = await store.put("lease.json", b"epoch=1")
    replacement = tmp_path / "replacement"
    replacement.write_bytes(b"epoch=2")
    os.replace(replacement, tmp_path / "lease.json")  # the crash: no new sidecar
    head = await store.head("lease.json")
    assert head.sha256 == head.version == _sha(b"epoch=2")
    data, info = await store.get("lease.json")
    assert (data, info.version) == (b"epoch=2", _sha(b"epoch=2"))
    with pytest.raises(PreconditionFailed):
        await store.put("lease.json", b"epoch=3", if_match=old.version)
    await store.put("lease.json", b"epoch=3", if_match=head.version)
    assert (await store.get("lease.json"))[0] == b"epoch=3"
