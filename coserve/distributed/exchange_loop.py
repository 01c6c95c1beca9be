"""One ingress replica's periodic exchange with a shared deployment (the dashboard feed's and the online
router's): a task that calls ``exchange`` every ``every_s`` seconds from the serving event loop until
stopped. It knows nothing of what is exchanged; a failed exchange is the caller's to count and retry."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable


class ExchangeLoop:
    """Calls ``exchange`` every ``every_s`` seconds once started; ``stop`` cancels and awaits the task."""

    def __init__(self, exchange: Callable[[], Awaitable[object]], every_s: float) -> None:
        self.exchange = exchange
        self.every_s = every_s
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None

    def start(self) -> None:
        """Start the task (from inside the serving event loop); a second start does nothing."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._forever())

    async def _forever(self) -> None:
        while True:
            await self.exchange()
            await asyncio.sleep(self.every_s)

    async def stop(self) -> None:
        """Cancel the task and wait for it to end (an exchange in flight is abandoned)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
            self._task = None
