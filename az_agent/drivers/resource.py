"""The one base every driver capability shares: something to close, usable with ``async with``."""

from __future__ import annotations

import abc
from types import TracebackType
from typing import Self


class AsyncResource(abc.ABC):
    """Holds connections or processes until :meth:`close`; ``async with`` closes it on exit."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release what the resource holds; it cannot be used afterwards."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
