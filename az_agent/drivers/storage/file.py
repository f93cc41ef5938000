"""A local directory as an object store: the embedded default, laptops and tests.

Each object is one file under the root holding exactly its bytes, so an operator can copy a
dump straight out of the bucket and give it to ``pg_restore``. Its metadata lives in a sidecar
under ``.az-meta/`` (same relative path): the SHA-256 and the identity (inode, size, mtime) of
the data file it describes. The version token is the SHA-256 (as S3's ETag is the MD5: identical
bytes keep their version, which the interface allows). A sidecar that does not describe the
data file a reader holds (a crash between the two renames, or a write racing the read) is
ignored and the digest computed from that file, so what a reader reports always belongs to the
bytes it reads.

Writes go to a temporary file that is renamed into place, so readers see the old or the new
object, never half of one. Conditional writes hold an ``flock`` on a per-key lock file while
they compare and rename, which makes them safe between processes on one host (not across hosts:
NFS locking is not relied upon). Blocking file work runs in threads.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import fcntl
import functools
import hashlib
import json
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from az_agent.drivers.errors import Misconfigured, NotFound, PreconditionFailed
from az_agent.drivers.storage.base import (
    DEFAULT_CHUNK_SIZE,
    Body,
    ObjectInfo,
    ObjectReader,
    ObjectStore,
    check_conditions,
)
from az_agent.drivers.storage.config import CloudStorageSettings, StorageSecrets
from az_agent.drivers.storage.keys import validate_key
from az_agent.drivers.storage.streams import PartReader

RESERVED_PREFIX = ".az-"
_WRITE_PART = 1 << 20
_HASH_PART = 1 << 20


def _identity(stat: os.stat_result) -> list[int]:
    """What ties a sidecar to one data file: a rename keeps it, a new write changes it."""
    return [stat.st_ino, stat.st_size, stat.st_mtime_ns]


def _sha256_of(handle: BinaryIO) -> str:
    digest = hashlib.sha256()
    handle.seek(0)
    while chunk := handle.read(_HASH_PART):
        digest.update(chunk)
    handle.seek(0)
    return digest.hexdigest()


def _write_durably(path: Path, data: bytes) -> None:
    with path.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


async def _open_file(path: Path, mode: str) -> BinaryIO:
    """``path.open(mode)`` in a thread, closing the handle if the caller is cancelled meanwhile
    (the thread cannot be interrupted, so without this the handle would leak)."""

    def open_binary() -> BinaryIO:
        return path.open(mode)  # type: ignore[return-value]

    opening = asyncio.ensure_future(asyncio.to_thread(open_binary))
    try:
        return await asyncio.shield(opening)
    except asyncio.CancelledError:
        opening.add_done_callback(_close_opened)
        raise


async def _cleanup(func: Callable[[], object]) -> None:
    """Run a cleanup step (close a handle, remove a temporary file) in a thread, to its end
    even if the caller is cancelled again meanwhile: a cancelled ``to_thread`` whose job has not
    started yet (every thread busy) would skip it and leak the handle. TaskGroups deliver such a
    second cancellation when a sibling fails while the group is being cancelled."""
    await asyncio.shield(asyncio.ensure_future(asyncio.to_thread(func)))


def _close_opened(opening: asyncio.Future[BinaryIO]) -> None:
    if not opening.cancelled() and opening.exception() is None:
        opening.result().close()


class _FileReader(ObjectReader):
    def __init__(self, handle: BinaryIO, info: ObjectInfo, chunk_size: int) -> None:
        self._handle = handle
        self.info = info
        self._chunk_size = chunk_size

    async def _raw_chunks(self) -> AsyncIterator[bytes]:
        while chunk := await asyncio.to_thread(self._handle.read, self._chunk_size):
            yield chunk


class FileObjectStore(ObjectStore):
    """Objects as files below ``root``; see the module docstring for the on-disk format."""

    def __init__(self, root: str | os.PathLike[str], *, create: bool = True) -> None:
        self._root = Path(root)
        self._create = create
        self._tmp = self._root / f"{RESERVED_PREFIX}tmp"
        self._locks = self._root / f"{RESERVED_PREFIX}locks"
        self._meta = self._root / f"{RESERVED_PREFIX}meta"

    def _path(self, key: str) -> Path:
        validate_key(key)
        if key.split("/", 1)[0].startswith(RESERVED_PREFIX):
            raise ValueError(f"key {key!r}: names starting with {RESERVED_PREFIX!r} are reserved")
        return self._root / key

    async def check(self) -> None:
        await asyncio.to_thread(self._check_sync)

    def _check_sync(self) -> None:
        if not self._root.exists():
            if not self._create:
                raise Misconfigured(f"file store: directory {self._root} does not exist")
            try:
                self._root.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise Misconfigured(f"file store: cannot create {self._root}: {exc}") from exc
        if not self._root.is_dir():
            raise Misconfigured(f"file store: {self._root} is not a directory")
        try:
            self._tmp.mkdir(exist_ok=True)
            self._locks.mkdir(exist_ok=True)
            self._meta.mkdir(exist_ok=True)
        except OSError as exc:
            raise Misconfigured(f"file store: {self._root} is not writable: {exc}") from exc

    async def put(
        self, key: str, body: Body, *, if_none_match: bool = False, if_match: str | None = None
    ) -> ObjectInfo:
        check_conditions(if_none_match, if_match)
        path = self._path(key)
        await asyncio.to_thread(self._check_sync)
        reader = PartReader(body, _WRITE_PART)
        digest = reader.digest
        tmp = self._tmp / f"{uuid.uuid4().hex}.part"
        tmp_meta = tmp.with_suffix(".meta")
        try:
            data_file = await _open_file(tmp, "wb")
            try:
                while await reader.advance():
                    await asyncio.to_thread(data_file.write, reader.part)
                await asyncio.to_thread(self._finish_temp, data_file)
            finally:
                await _cleanup(data_file.close)
            sha256 = digest.hexdigest()
            await asyncio.to_thread(self._write_sidecar, tmp_meta, tmp, sha256)
            commit = functools.partial(self._commit, key, path, tmp, tmp_meta)
            await asyncio.to_thread(commit, if_none_match, if_match)
        finally:
            await _cleanup(functools.partial(tmp.unlink, missing_ok=True))
            await _cleanup(functools.partial(tmp_meta.unlink, missing_ok=True))
        return ObjectInfo(key, digest.size, sha256, sha256, datetime.now(UTC))

    @staticmethod
    def _finish_temp(handle: BinaryIO) -> None:
        handle.flush()
        os.fsync(handle.fileno())

    @staticmethod
    def _write_sidecar(meta: Path, data: Path, sha256: str) -> None:
        """The sidecar of ``data`` (a rename keeps the identity it records)."""
        record = {"sha256": sha256, "identity": _identity(data.stat())}
        _write_durably(meta, json.dumps(record).encode())

    def _meta_path(self, key: str) -> Path:
        return self._meta / key

    def _sha256(self, key: str, handle: BinaryIO) -> str:
        """The SHA-256 of the open data file: its sidecar's when that describes this very file,
        else computed from it."""
        identity = _identity(os.fstat(handle.fileno()))
        try:
            record = json.loads(self._meta_path(key).read_bytes())
            if record["identity"] == identity:
                return str(record["sha256"])
        except (OSError, ValueError, KeyError, TypeError):
            pass  # no sidecar or a damaged one: the bytes themselves tell
        return _sha256_of(handle)

    @contextlib.contextmanager
    def _key_lock(self, key: str) -> Iterator[None]:
        name = hashlib.sha256(key.encode()).hexdigest()
        with (self._locks / name).open("a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def _current_version(self, key: str, path: Path) -> str | None:
        try:
            with path.open("rb") as handle:
                return self._sha256(key, handle)
        except FileNotFoundError:
            return None

    def _commit(
        self,
        key: str,
        path: Path,
        tmp: Path,
        tmp_meta: Path,
        if_none_match: bool,
        if_match: str | None,
    ) -> None:
        with self._key_lock(key):
            current = self._current_version(key, path)
            if if_none_match and current is not None:
                raise PreconditionFailed(f"{key}: already exists")
            if if_match is not None and current != if_match:
                raise PreconditionFailed(f"{key}: version is {current}, expected {if_match}")
            path.parent.mkdir(parents=True, exist_ok=True)
            meta = self._meta_path(key)
            meta.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, path)
            os.replace(tmp_meta, meta)  # a crash before this: readers hash the bytes instead

    @asynccontextmanager
    async def _open(self, key: str, chunk_size: int) -> AsyncIterator[ObjectReader]:
        path = self._path(key)
        try:
            handle = await _open_file(path, "rb")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            raise NotFound(key) from exc
        try:
            info = await asyncio.to_thread(self._info_from_handle, key, handle)
            yield _FileReader(handle, info, chunk_size)
        finally:
            await _cleanup(handle.close)

    def open(
        self, key: str, *, chunk_size: int = DEFAULT_CHUNK_SIZE
    ) -> AbstractAsyncContextManager[ObjectReader]:
        return self._open(key, chunk_size)

    def _info_from_handle(self, key: str, handle: BinaryIO) -> ObjectInfo:
        sha256 = self._sha256(key, handle)
        stat = os.fstat(handle.fileno())
        modified = datetime.fromtimestamp(stat.st_mtime, UTC)
        return ObjectInfo(key, stat.st_size, sha256, sha256, modified)

    def _head_sync(self, key: str) -> ObjectInfo:
        path = self._path(key)
        try:
            with path.open("rb") as handle:
                return self._info_from_handle(key, handle)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            raise NotFound(key) from exc

    async def head(self, key: str) -> ObjectInfo:
        return await asyncio.to_thread(self._head_sync, key)

    def _keys_under(self, prefix: str) -> builtins.list[str]:
        start_dir = self._root / prefix.rsplit("/", 1)[0] if "/" in prefix else self._root
        keys: builtins.list[str] = []
        for dirpath, dirnames, filenames in os.walk(start_dir):
            rel_dir = os.path.relpath(dirpath, self._root)
            dirnames[:] = [d for d in dirnames if not d.startswith(RESERVED_PREFIX)]
            for name in filenames:
                key = name if rel_dir == "." else f"{rel_dir}/{name}"
                if key.startswith(prefix):
                    keys.append(key.replace(os.sep, "/"))
        keys.sort()
        return keys

    async def list(self, prefix: str = "", *, page_size: int = 1000) -> AsyncIterator[ObjectInfo]:
        keys = await asyncio.to_thread(self._keys_under, prefix)
        for start in range(0, len(keys), page_size):
            page = await asyncio.to_thread(self._heads, keys[start : start + page_size])
            for info in page:
                yield info

    def _heads(self, keys: builtins.list[str]) -> builtins.list[ObjectInfo]:
        infos = []
        for key in keys:
            try:
                infos.append(self._head_sync(key))
            except NotFound:
                continue  # deleted between listing and reading: not listed, as on S3
        return infos

    async def delete(self, key: str, *, if_match: str | None = None) -> None:
        path = self._path(key)
        await asyncio.to_thread(self._delete_sync, key, path, if_match)

    def _delete_sync(self, key: str, path: Path, if_match: str | None) -> None:
        if not self._locks.exists():
            self._check_sync()
        with self._key_lock(key):
            if if_match is not None:
                current = self._current_version(key, path)
                if current != if_match:
                    raise PreconditionFailed(f"{key}: version is {current}, expected {if_match}")
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            meta = self._meta_path(key)
            with contextlib.suppress(FileNotFoundError):
                meta.unlink()
        self._prune_empty_dirs(path.parent, self._root)
        self._prune_empty_dirs(meta.parent, self._meta)

    @staticmethod
    def _prune_empty_dirs(directory: Path, top: Path) -> None:
        while directory != top and directory.is_relative_to(top):
            try:
                directory.rmdir()
            except OSError:
                return
            directory = directory.parent

    async def close(self) -> None:
        return None


async def connect(settings: CloudStorageSettings, secrets: StorageSecrets | None) -> ObjectStore:
    """Factory hook: the ``file`` backend needs no credentials."""
    del secrets
    return FileObjectStore(settings.file.path)
