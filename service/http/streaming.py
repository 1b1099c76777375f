"""Server-sent events and client disconnects.

A client that goes away must stop the work done for it: the engine aborts a generation only when the
core's iterator is closed, or the task awaiting the core is cancelled. These helpers make both happen.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

import anyio
from fastapi import Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from service.errors import ErrorCode, ServiceError
from service.http.error_handlers import ClientGone

T = TypeVar("T")
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy buffering of the stream


def sse_event(event: str | None, data: object) -> bytes:
    """One server-sent event: an optional ``event:`` line and one ``data:`` line of JSON (or the string
    itself, for OpenAI's ``[DONE]``)."""
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}\n\n".encode()


async def wait_for_disconnect(receive: Receive) -> None:
    """Return when the client disconnects. Only call this once the request body has been read: every
    message after the body is the disconnect (or the end of the response)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def close_quietly(iterator: object) -> None:
    """``aclose()`` an async iterator even while the current task is being cancelled."""
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        with anyio.CancelScope(shield=True):
            await aclose()


async def unless_disconnected(request: Request, awaitable: Awaitable[T]) -> T:
    """Await ``awaitable`` while watching the connection; if the client disconnects first the work is
    cancelled and :class:`ClientGone` raised."""
    work = asyncio.ensure_future(awaitable)
    watcher = asyncio.ensure_future(wait_for_disconnect(request.receive))
    try:
        await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not work.done():
            work.cancel()
            await asyncio.gather(work, return_exceptions=True)  # let the core unwind before we answer
    if work.cancelled():
        raise ClientGone()
    return work.result()


async def first_item(request: Request, iterator: AsyncIterator[T]) -> T:
    """The first item of a stream, awaited before the response starts so that errors the core raises up
    front (bad request, unknown model, overloaded) still get their own HTTP status. The iterator is closed
    when this fails."""

    async def next_item() -> T:
        return await anext(iterator)

    try:
        return await unless_disconnected(request, next_item())
    except StopAsyncIteration:
        await close_quietly(iterator)
        raise ServiceError(ErrorCode.INTERNAL, "the stream ended before it produced anything") from None
    except BaseException:
        await close_quietly(iterator)
        raise


class EventStreamResponse(StreamingResponse):
    """``text/event-stream`` that stops as soon as the client disconnects and always closes its body
    iterator, so the generator feeding it closes the core's iterator (and the engine aborts).

    Starlette watches for disconnects only on older ASGI spec versions and never closes the iterator
    itself; this does both on every server.
    """

    media_type = "text/event-stream"

    def __init__(self, content: AsyncIterator[bytes], status_code: int = 200,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(content, status_code=status_code, headers={**SSE_HEADERS, **(headers or {})})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as group:

                async def stream_then_stop() -> None:
                    try:
                        await self.stream_response(send)
                    except OSError:  # the transport is gone (ASGI spec 2.4 servers raise on send)
                        pass
                    group.cancel_scope.cancel()

                group.start_soon(stream_then_stop)
                await wait_for_disconnect(receive)
                group.cancel_scope.cancel()
        finally:
            await close_quietly(self.body_iterator)
