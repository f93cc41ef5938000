"""A local directory as an object store: the embedded default, laptops and tests.

Each object is one file under the root holding a one-line JSON header (version token, SHA-256)
followed by the bytes. Writes go to a temporary file that is renamed into place, so readers see
the old or the new object, never half of one. Conditional writes hold an ``flock`` on a per-key
lock file while they compare and rename, which makes them safe between processes on one host
(not across hosts: NFS locking is not relied upon). Blocking file work runs in threads.
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

MAGIC = b"AZOBJ1 "
RESERVED_PREFIX = ".az-"
_WRITE_PART = 1 << 20


def _read_header(handle: BinaryIO, key: str) -> tuple[str, str]:
    line = handle.readline(4096)
    if not line.startswith(MAGIC) or not line.endswith(b"\n"):
        raise Misconfigured(f"{key}: not an az-agent object file (header missing)")
    header = json.loads(line[len(MAGIC) :])
    return str(header["version"]), str(header["sha256"])


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
        except OSError as exc:
            raise Misconfigured(f"file store: {self._root} is not writable: {exc}") from exc

    async def put(
        self, key: str, body: Body, *, if_none_match: bool = False, if_match: str | None = None
    ) -> ObjectInfo:
        check_conditions(if_none_match, if_match)
        path = self._path(key)
        await asyncio.to_thread(self._check_sync)
        version = uuid.uuid4().hex
        reader = PartReader(body, _WRITE_PART)
        digest = reader.digest
        tmp = self._tmp / f"{uuid.uuid4().hex}.part"
        try:
            data_file = await _open_file(tmp, "wb")
            try:
                # Placeholder header of fixed width, rewritten once the digest is known.
                header_len = len(self._header(version, "0" * 64))
                await asyncio.to_thread(data_file.write, b" " * header_len)
                while await reader.advance():
                    await asyncio.to_thread(data_file.write, reader.part)
                header = self._header(version, digest.hexdigest())
                await asyncio.to_thread(self._finish_temp, data_file, header)
            finally:
                await _cleanup(data_file.close)
            await asyncio.to_thread(self._commit, key, path, tmp, if_none_match, if_match)
        finally:
            await _cleanup(functools.partial(tmp.unlink, missing_ok=True))
        return ObjectInfo(key, digest.size, version, digest.hexdigest(), datetime.now(UTC))

    @staticmethod
    def _header(version: str, sha256: str) -> bytes:
        return MAGIC + json.dumps({"version": version, "sha256": sha256}).encode() + b"\n"

    @staticmethod
    def _finish_temp(handle: BinaryIO, header: bytes) -> None:
        handle.seek(0)
        handle.write(header)
        handle.flush()
        os.fsync(handle.fileno())

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
                return _read_header(handle, key)[0]
        except FileNotFoundError:
            return None

    def _commit(
        self, key: str, path: Path, tmp: Path, if_none_match: bool, if_match: str | None
    ) -> None:
        with self._key_lock(key):
            current = self._current_version(key, path)
            if if_none_match and current is not None:
                raise PreconditionFailed(f"{key}: already exists")
            if if_match is not None and current != if_match:
                raise PreconditionFailed(f"{key}: version is {current}, expected {if_match}")
            path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, path)

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

    @staticmethod
    def _info_from_handle(key: str, handle: BinaryIO) -> ObjectInfo:
        version, sha256 = _read_header(handle, key)
        stat = os.fstat(handle.fileno())
        size = stat.st_size - handle.tell()
        modified = datetime.fromtimestamp(stat.st_mtime, UTC)
        return ObjectInfo(key, size, version, sha256, modified)

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
        self._prune_empty_dirs(path.parent)

    def _prune_empty_dirs(self, directory: Path) -> None:
        while directory != self._root and directory.is_relative_to(self._root):
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
