"""``coserve serve``'s second Ctrl-C: cut what runs, close the decision log, exit 130 in one line.

uvicorn answers a Ctrl-C during the drain with its "force exit": it stops waiting for the running
requests and skips the app's shutdown, so the process ends with the event loop cancelling every
task, and each cancelled request and the app's lifespan print a traceback. Here the running
requests are instead cancelled as the drain deadline cancels them (each is logged ``503``: a cut
stream ends without ``[DONE]``, a request whose answer had not begun gets 503 ``draining``) and
the app's shutdown runs as after a drain (the engine closed, the decision log flushed and closed);
the cancellations uvicorn then reports are the ones asked for and are not printed. The process
exits 130 as after one Ctrl-C.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

__all__ = ["cut_and_close"]


class _NoCancellations(logging.Filter):
    """Drops uvicorn's report of a request cancelled on purpose ("Exception in ASGI application")."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], asyncio.CancelledError))


async def cut_and_close(server: Any) -> None:
    """Cancel the uvicorn ``server``'s running requests and run the app's shutdown (its lifespan)."""
    logging.getLogger("uvicorn.error").addFilter(_NoCancellations())
    for task in list(server.server_state.tasks):
        task.cancel(msg="second interrupt")
    await server.lifespan.shutdown()  # waits for the cut requests' rows (coserve.server.app), then closes
