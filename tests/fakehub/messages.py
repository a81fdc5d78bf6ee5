"""Request and response values shared by the emulator's routes, independent of the HTTP server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs

from tests.fakehub.auth import User


@dataclass
class Request:
    """A parsed request. ``segments`` are the raw path's segments, each percent-decoded on its own."""

    method: str
    raw_path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    base_url: str
    user: User | None = None

    @property
    def segments(self) -> list[str]:
        from urllib.parse import unquote

        return [unquote(s) for s in self.raw_path.strip("/").split("/")] if self.raw_path.strip("/") else []

    def arg(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[0] if values else default

    def flag(self, name: str) -> bool:
        return (self.arg(name) or "").lower() in ("1", "true", "yes")

    def json(self) -> dict:
        if not self.body:
            return {}
        try:
            data = json.loads(self.body)
        except ValueError as e:
            raise HttpError(400, None, f"Invalid JSON body: {e}") from e
        return data if isinstance(data, dict) else {"_": data}

    def form(self) -> dict[str, list[str]]:
        if self.headers.get("content-type", "").startswith("application/json"):
            return {k: v if isinstance(v, list) else [v] for k, v in self.json().items()}
        return parse_qs(self.body.decode(), keep_blank_values=True)


@dataclass
class Response:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    # Size announced on HEAD (the body itself is not sent); None = len(body).
    head_length: int | None = None
    # A body streamed from disk instead of ``body``: (path, offset, length).
    body_file: tuple[Path, int, int] | None = None
    # A body of unknown length sent chunked as it is produced (server-sent events that follow a Job's logs).
    stream: Iterator[bytes] | None = None

    @classmethod
    def json(cls, data: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
        return cls(status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(data).encode())


class HttpError(Exception):
    """An error answered the Hub's way: JSON ``{"error": message}`` plus ``X-Error-Code``/``X-Error-Message``."""

    def __init__(
        self,
        status: int,
        code: str | None,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        extra: dict | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})

    def response(self) -> Response:
        headers = {"X-Error-Message": self.message, **self.headers}
        if self.code:
            headers["X-Error-Code"] = self.code
        return Response.json({"error": self.message, **self.extra}, self.status, headers)
