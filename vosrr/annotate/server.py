"""The annotation page's HTTP side: a Starlette app over one ``Session``, served by uvicorn on loopback.

Security, all in ``_Guard`` and the routes:

- bound to 127.0.0.1 only; the Host header must name ``127.0.0.1`` or ``localhost`` (DNS rebinding);
- every request carries the session's random token (``?token=`` or the ``X-Vosrr-Token`` header), else 403;
- no path ever comes from the page: frames, masks and strokes are addressed by frame number, static files by a
  fixed list of names; request bodies are bounded (``MAX_BODY``) and strokes are checked (``parse_strokes``);
- the page loads nothing from elsewhere (a strict Content-Security-Policy) and sends no referrer.

Routes (``{i}`` is a frame number): ``GET /`` the page; ``GET /static/{name}``; ``GET /api/status``;
``GET /api/frame/{i}`` (JPEG); ``GET /api/mask/{i}``, ``GET /api/strokes/{i}`` (RGBA PNGs, 404 if none);
``POST /api/strokes/{i}`` (JSON strokes), ``POST /api/strokes/{i}/undo``, ``DELETE /api/strokes/{i}``;
``POST /api/propagate``, ``/api/export``, ``/api/stop``; ``GET /api/events`` (server-sent events).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import socket
import threading
from collections.abc import AsyncIterator, Callable
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

import cv2
import numpy as np
import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vosrr.annotate.session import BusyError, Event, Session
from vosrr.annotate.strokes import BACKGROUND_COLOUR, StrokeError, colour_labels, parse_strokes

__all__ = ["MAX_BODY", "Hub", "make_app", "make_server", "new_token"]

MAX_BODY = 1 << 20
"""largest request body accepted (bytes): strokes are JSON point lists, far smaller"""
STATIC = {"app.js": "text/javascript", "style.css": "text/css"}
_HOSTS = ("127.0.0.1", "localhost")
_HEADERS = [
    (b"content-security-policy", b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
     b"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
]  # fmt: skip


def new_token() -> str:
    """A fresh random token (URL-safe, 192 bits)."""
    return secrets.token_urlsafe(24)


class _Guard:
    """ASGI middleware: loopback Host, the token, a declared body size, and the security headers on every answer."""

    def __init__(self, app: ASGIApp, token: str, max_body: int) -> None:
        self.app, self.token, self.max_body = app, token, max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "").rsplit(":", 1)[0] if headers.get("host", "").count(":") <= 1 else ""
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        given = headers.get("x-vosrr-token") or (query.get("token") or [""])[0]
        if host not in _HOSTS:
            await _plain(403, "forbidden: the page is served to 127.0.0.1 or localhost only")(scope, receive, send)
            return
        if not secrets.compare_digest(given.encode(), self.token.encode()):
            await _plain(403, "forbidden: open the URL that vosrr annotate printed (it holds the token)")(
                scope, receive, send
            )
            return
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            await _plain(413, f"request body over {self.max_body} bytes")(scope, receive, send)
            return

        async def secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *_HEADERS]
            await send(message)

        await self.app(scope, receive, secured)


class _TooLargeError(Exception):
    """A request body over the limit (one sent in chunks, without a Content-Length that says so)."""


async def _body(request: Request, limit: int) -> bytes:
    """The request's body, refused (``_TooLargeError``) as soon as it passes ``limit`` bytes."""
    parts, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLargeError(f"request body over {limit} bytes")
        parts.append(chunk)
    return b"".join(parts)


def _plain(status: int, text: str) -> Response:
    return PlainTextResponse(text, status_code=status, headers={k.decode(): v.decode() for k, v in _HEADERS})


class Hub:
    """Fans events out from worker threads to every open event stream (bounded queues, oldest dropped)."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.queues: set[asyncio.Queue[Event]] = set()
        self.closing = threading.Event()

    def publish(self, event: Event) -> None:
        """Thread-safe: hand ``event`` to every stream."""
        loop = self.loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(self._put, event)

    def _put(self, event: Event) -> None:
        for queue in list(self.queues):
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(event)


def _png(rgba: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return data.tobytes()


def make_app(session: Session, token: str, *, hub: Hub | None = None, max_body: int = MAX_BODY) -> ASGIApp:
    """The page's ASGI app for ``session``; every request needs ``token``."""
    hub = hub or Hub()
    session.notify = hub.publish
    page = resources.files("vosrr.annotate").joinpath("static", "index.html").read_text()
    page = page.replace("%%TOKEN%%", token)

    def frame_number(request: Request) -> int:
        index = int(request.path_params["index"])
        if index >= len(session.source):
            raise IndexError(index)
        return index

    async def index(request: Request) -> Response:
        return Response(page, media_type="text/html; charset=utf-8", headers={"cache-control": "no-store"})

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC:
            return PlainTextResponse("not found", status_code=404)
        body = resources.files("vosrr.annotate").joinpath("static", name).read_bytes()
        return Response(body, media_type=STATIC[name], headers={"cache-control": "no-store"})

    async def status(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(session.status))

    async def frame(request: Request) -> Response:
        index = frame_number(request)

        def encode() -> bytes:
            image = cv2.cvtColor(session.source[index], cv2.COLOR_RGB2BGR)
            ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 92])
            if not ok:
                raise RuntimeError("JPEG encoding failed")
            return data.tobytes()

        return Response(await run_in_threadpool(encode), media_type="image/jpeg", headers={"cache-control": "no-store"})

    async def mask(request: Request) -> Response:
        labels = await run_in_threadpool(session.mask, frame_number(request))
        if labels is None:
            return PlainTextResponse("no mask for this frame yet", status_code=404)
        body = await run_in_threadpool(lambda: _png(colour_labels(labels)))
        return Response(body, media_type="image/png", headers={"cache-control": "no-store"})

    async def strokes(request: Request) -> Response:
        layer = await run_in_threadpool(session.layer, frame_number(request))
        if layer is None:
            return PlainTextResponse("no strokes on this frame", status_code=404)
        body = await run_in_threadpool(lambda: _png(colour_labels(layer, 230, BACKGROUND_COLOUR)))
        return Response(body, media_type="image/png", headers={"cache-control": "no-store"})

    async def paint(request: Request) -> Response:
        index = frame_number(request)
        try:
            payload = json.loads(await _body(request, max_body))
        except (ValueError, UnicodeDecodeError):
            return JSONResponse({"error": "the body is not JSON"}, status_code=400)
        items = parse_strokes(payload, session.source.size)
        return JSONResponse(await run_in_threadpool(session.paint, index, items))

    async def undo(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(session.undo, frame_number(request)))

    async def clear(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(session.clear, frame_number(request)))

    def job(start: Callable[[], None]) -> Callable[[Request], Any]:
        async def handler(request: Request) -> Response:
            await run_in_threadpool(start)
            return JSONResponse({"job": session.job})

        return handler

    async def events(request: Request) -> Response:
        queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=512)
        hub.queues.add(queue)
        first = await run_in_threadpool(session.status)

        async def stream() -> AsyncIterator[str]:
            try:
                yield f"data: {json.dumps({'type': 'info', **first})}\n\n"
                while not hub.closing.is_set():
                    try:
                        event = await asyncio.wait_for(queue.get(), 0.5)
                    except asyncio.TimeoutError:
                        yield ": keep-alive\n\n"
                        continue
                    yield f"data: {json.dumps(event)}\n\n"
            finally:
                hub.queues.discard(queue)

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"cache-control": "no-store"})

    async def refuse(request: Request, error: Exception) -> Response:
        if isinstance(error, IndexError):
            return JSONResponse({"error": str(error) or "no such frame"}, status_code=404)
        if isinstance(error, _TooLargeError):
            return JSONResponse({"error": str(error)}, status_code=413)
        if isinstance(error, BusyError):
            return JSONResponse({"error": str(error)}, status_code=409)
        return JSONResponse({"error": str(error)}, status_code=422)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        hub.loop = asyncio.get_running_loop()
        try:
            yield
        finally:
            hub.closing.set()
            await run_in_threadpool(session.stop)

    app = Starlette(
        routes=[
            Route("/", index),
            Route("/static/{name}", static),
            Route("/api/status", status),
            Route("/api/frame/{index:int}", frame),
            Route("/api/mask/{index:int}", mask),
            Route("/api/strokes/{index:int}", strokes, methods=["GET"]),
            Route("/api/strokes/{index:int}", paint, methods=["POST"]),
            Route("/api/strokes/{index:int}", clear, methods=["DELETE"]),
            Route("/api/strokes/{index:int}/undo", undo, methods=["POST"]),
            Route("/api/propagate", job(session.propagate), methods=["POST"]),
            Route("/api/export", job(session.export), methods=["POST"]),
            Route("/api/stop", job(session.stop), methods=["POST"]),
            Route("/api/events", events),
        ],
        exception_handlers={IndexError: refuse, BusyError: refuse, StrokeError: refuse, _TooLargeError: refuse},
        lifespan=lifespan,
    )
    return _Guard(app, token, max_body)


class _Server(uvicorn.Server):
    """uvicorn's server, ending the event streams first when asked to stop (so Ctrl-C does not wait on them)."""

    def __init__(self, config: uvicorn.Config, hub: Hub) -> None:
        super().__init__(config)
        self.hub = hub

    def handle_exit(self, sig: int, frame: object) -> None:
        self.hub.closing.set()
        super().handle_exit(sig, frame)  # type: ignore[arg-type]


def make_server(session: Session, port: int = 0, token: str | None = None) -> tuple[_Server, socket.socket, str]:
    """A uvicorn server for ``session`` on 127.0.0.1 (``port`` 0: a free one) -> ``(server, socket, url)``.

    Run it with ``server.run(sockets=[socket])``; ``server.should_exit = True`` (or Ctrl-C) stops it.
    """
    token = token or new_token()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", port))
        sock.listen(128)  # connections wait in the backlog from now on, before the server's loop runs
    except OSError:
        sock.close()
        raise
    hub = Hub()
    app = make_app(session, token, hub=hub)
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=3, lifespan="on")
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/?token={token}"
    return _Server(config, hub), sock, url
