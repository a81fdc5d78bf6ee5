"""The checks in front of every route of the app's server, Gradio's own included: one ASGI middleware.

``guard_middleware`` goes into ``launch(app_kwargs={"middleware": [...]})``: Gradio adds its CORS and session
middlewares around it, so the signed ``session`` cookie is already decoded when a request reaches it, and no route
runs before it.

- **Local mode** has no sign-in: the person at the machine owns the app. A page elsewhere whose name is made to
  resolve to 127.0.0.1 (DNS rebinding) sends its own name as ``Host``, so only loopback names (``localhost``,
  ``127.0.0.1``, ``[::1]``, any port) and the names listed in ``LOCAL_EXPOSE_TO_NETWORK`` are served, on every route:
  the page, ``/config``, the queue, files and every handler.
- **Uploads** (``/gradio_api/upload`` needs no session in Gradio, 20 MB a file): refused from another site; on a
  Space refused without a signed-in allowed user, and capped per user (``UploadCap``: files and bytes held in
  Gradio's cache at once; a file counts until the cache sweep or a submission removes it). Gradio's
  screen-recording route, which this app does not use, is refused on a Space.
- **Events** whose inputs name a file by http(s) URL are refused: Gradio would download it into its cache, any size,
  for anyone, before the handler could check the caller. This app's page sends uploaded files' paths only.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Awaitable, Callable, Collection, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gradio.utils import get_upload_folder
from gradio_client.utils import is_http_url_like
from starlette.datastructures import Headers
from starlette.middleware import Middleware

from ui.auth import access_for, cross_site_problem, may_submit, session_profile

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
UPLOAD_ROUTE = "/gradio_api/upload"
RECORDING_ROUTE = "/gradio_api/process_recording"
#: the routes that run an event handler; Gradio prepares a file input (``{"path": ...}``) before the handler runs,
#: downloading an http(s) ``path`` into its cache with no size limit
EVENT_ROUTES = re.compile(r"/gradio_api/(queue/join|call/(v2/)?[^/]+|run/[^/]+|api/[^/]+)$")
MAX_EVENT_BODY = 8 * 1024**2  # an event's inputs are prompts, choices and the paths of uploaded files


@dataclass(frozen=True)
class UploadCap:
    """What one signed-in user may hold in Gradio's upload cache at once: a form of 100 photos with captions fits."""

    files: int = 300
    bytes: int = 1024**3

    def describe(self) -> str:
        return f"{self.files} files and {megabytes(self.bytes)}"


def megabytes(size: int) -> str:
    return f"{size / 1024**2:.0f} MB" if size >= 1024**2 else f"{size / 1024:.0f} kB"


def split_host(value: str) -> tuple[str, str | None]:
    """``(name, port)`` of a ``Host`` value: ``localhost:7860``, ``127.0.0.1``, ``[::1]:80``; lower-cased."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        if end == -1:
            return value, None
        rest = value[end + 1 :]
        return value[1:end], rest[1:] if rest.startswith(":") else None
    name, sep, port = value.rpartition(":")
    return (name, port) if sep else (value, None)


def host_allowed(host: str | None, extra: Collection[str] = ()) -> bool:
    """Whether local mode serves a request sent to ``host``: a loopback name, or one of ``extra`` (``name``: any
    port; ``name:port``: that port only)."""
    if not host:
        return False
    name, port = split_host(host)
    if name in LOOPBACK_NAMES:
        return True
    for allowed in extra:
        allowed_name, allowed_port = split_host(allowed)
        if name == allowed_name and allowed_port in (None, port):
            return True
    return False


@dataclass
class UploadLedger:
    """The files each user uploaded that are still in Gradio's cache: user -> {path: size in bytes}."""

    held: dict[str, dict[str, int]] = field(default_factory=dict)

    def usage(self, user: str) -> tuple[int, int]:
        """(files, bytes) ``user`` holds now; files gone (swept, or removed once submitted) no longer count."""
        mine = self.held.get(user, {})
        for path in [p for p in mine if not os.path.exists(p)]:
            del mine[path]
        return len(mine), sum(mine.values())

    def record(self, user: str, paths: list[str]) -> list[str]:
        """Count ``paths`` (an upload's files, in the cache) for ``user``; returns those not already counted."""
        mine = self.held.setdefault(user, {})
        new = [p for p in dict.fromkeys(paths) if p not in mine]
        for path in new:
            with contextlib.suppress(OSError):
                mine[path] = os.path.getsize(path)
            mine.setdefault(path, 0)
        return new

    def give_back(self, user: str, paths: list[str], upload_dir: Path) -> None:
        """Forget ``paths`` for ``user`` and delete those in ``upload_dir`` that no other user holds."""
        mine = self.held.get(user, {})
        for path in paths:
            mine.pop(path, None)
            held_elsewhere = any(path in other for other in self.held.values())
            if held_elsewhere or not Path(path).resolve().is_relative_to(upload_dir):
                continue
            Path(path).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                Path(path).parent.rmdir()


class HttpGuard:
    """The ASGI middleware (see the module's docstring). ``settings`` is None on the setup page of a bad variable:
    no Host rule (the page must reach its owner wherever it runs), no uploads."""

    def __init__(self, app: ASGIApp, settings: Any, cap: UploadCap | None = None) -> None:
        self.app = app
        self.settings = settings
        self.cap = cap or UploadCap()
        self.ledger = UploadLedger()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        s = self.settings
        if s is not None and s.local and not host_allowed(headers.get("host"), s.local_host_names):
            names = ", ".join(["localhost", "127.0.0.1", *s.local_host_names])
            host = headers.get("host", "")[:100]
            await refuse(scope, send, 403, f"This app answers only at {names} (not at Host {host!r}).")
            return
        path = scope.get("path", "").rstrip("/")
        if scope["type"] == "http" and path.endswith(RECORDING_ROUTE) and (s is None or not s.local):
            await refuse(scope, send, 403, "Screen recordings are not accepted by this app.")
            return
        if scope["type"] == "http" and path.endswith(UPLOAD_ROUTE):
            await self.upload(scope, receive, send, headers)
            return
        if scope["type"] == "http" and scope.get("method") == "POST" and EVENT_ROUTES.search(path):
            await self.event(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def event(self, scope: Scope, receive: Receive, send: Send) -> None:
        """An event's request, refused when a file input is an http(s) URL (read whole: it is small)."""
        body, more, first = bytearray(), True, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            body.extend(message.get("body", b""))
            more = message.get("more_body", False)
            if len(body) > MAX_EVENT_BODY:
                await refuse(scope, send, 413, "Request refused: an event's inputs are too large.")
                return
        with contextlib.suppress(ValueError, RecursionError):
            if names_a_url(json.loads(body)):
                await refuse(scope, send, 400, "Request refused: a file input must be an uploaded file, not a URL.")
                return

        async def replay() -> Message:
            nonlocal first
            if first:
                first = False
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def upload(self, scope: Scope, receive: Receive, send: Send, headers: Headers) -> None:
        """Gradio's upload route, behind the checks: same site; on a Space, a user who may submit (``may_submit``)
        within the cap."""
        s = self.settings
        problem = cross_site_problem(s, headers) if s is not None else "this app takes no uploads now"
        if problem:
            await refuse(scope, send, 403, f"Upload refused: {problem}.")
            return
        if s.local:
            await self.app(scope, receive, send)
            return
        access = access_for(s, session_profile(scope.get("session")))
        if access.user is None:
            await refuse(scope, send, 401, "Upload refused: sign in with Hugging Face first.")
            return
        if not may_submit(s, access):  # the owner, an allowed user; any signed-in visitor who pays their own way
            await refuse(scope, send, 403, f"Upload refused: {access.user} is not on this Space's allowed users.")
            return
        user = access.user
        length = headers.get("content-length", "")
        if not length.isdigit():
            await refuse(scope, send, 411, "Upload refused: an upload must state its size (Content-Length).")
            return
        files, size = self.ledger.usage(user)
        if files >= self.cap.files or size + int(length) > self.cap.bytes:
            await refuse(scope, send, 413, self.over_cap(files, size))
            return
        messages: list[Message] = []

        async def keep(message: Message) -> None:
            messages.append(message)

        await self.app(scope, receive, keep)  # small JSON (the files' paths); background moves are done on return
        start = next((m for m in messages if m["type"] == "http.response.start"), None)
        if start is not None and start["status"] == 200:
            body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
            with contextlib.suppress(ValueError):
                paths = [p for p in json.loads(body) if isinstance(p, str)]
                new = self.ledger.record(user, paths)
                files, size = self.ledger.usage(user)
                if files > self.cap.files or size > self.cap.bytes:
                    self.ledger.give_back(user, new, Path(get_upload_folder()).resolve())
                    await refuse(scope, send, 413, self.over_cap(*self.ledger.usage(user)))
                    return
        for message in messages:
            await send(message)

    def over_cap(self, files: int, size: int) -> str:
        return (f"Upload refused: you already hold {files} uploaded files ({megabytes(size)}); at most "
                f"{self.cap.describe()} at once. Submit them, or wait an hour for unused uploads to expire.")  # fmt: skip


def names_a_url(value: Any) -> bool:
    """Whether a JSON value holds a file (``{"path": ...}``) whose path is an http(s) URL."""
    if isinstance(value, dict):
        return is_http_url_like(value.get("path")) or any(names_a_url(v) for v in value.values())
    if isinstance(value, list):
        return any(names_a_url(v) for v in value)
    return False


async def refuse(scope: Scope, send: Send, status: int, text: str) -> None:
    """Answer ``status`` with ``text`` (plain text), or close a websocket, without running any route."""
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008, "reason": text[:120]})
        return
    body = text.encode()
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def guard_middleware(settings: Any, cap: UploadCap | None = None) -> Middleware:
    """The guard for ``launch(app_kwargs={"middleware": [guard_middleware(settings)]})``."""
    return Middleware(HttpGuard, settings=settings, cap=cap)
