"""The emulator's HTTP server: routing on the raw path, authentication, fault injection and the request log.

Emulator-only endpoints (never faulted nor logged) live under ``/_emu/``:
``GET|DELETE /_emu/requests``, ``GET|POST|DELETE /_emu/faults``, ``POST /_emu/users`` (``scopes``, ``expires_at``
and ``app`` make an OAuth token), ``POST /_emu/credit`` ``{namespace, usd}``,
``GET /_emu/spaces/{ns}/{name}/ledger``, ``GET /_emu/health``; Jobs: ``GET /_emu/jobs[/{ns}]/ledger``,
``GET|POST|DELETE /_emu/job-faults``, ``POST /_emu/jobs/stop``, ``POST /_emu/jobs/config``.

Hub endpoints: see ``_route``/``_repo_route`` below and the package README.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import traceback
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

from tests.fakehub.auth import User, Users
from tests.fakehub.faults import Fault, FaultBook, JobFault
from tests.fakehub.hub_routes import INVALID_CREDENTIALS, TYPE_BY_PLURAL, HubRoutes
from tests.fakehub.jobs import JobHost
from tests.fakehub.jobs_routes import JobRoutes
from tests.fakehub.messages import HttpError, Request, Response
from tests.fakehub.space_host import SpaceHost
from tests.fakehub.space_routes import SpaceRoutes
from tests.fakehub.spaces import SpaceNotFound
from tests.fakehub.storage import Storage, StoreError


class Emulator:
    """A Hub + Space emulator bound to ``host:port`` (0 = a free port), storing everything under ``root``."""

    def __init__(
        self,
        root: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        users: Iterable[User] = (),
        tree_page_size: int = 1000,
        switch_delay_s: float = 1.0,
    ) -> None:
        self.root = Path(root)
        self.storage = Storage(self.root)
        self.users = Users()
        for user in users:
            self.users.add(user)
        self.faults = FaultBook()
        self._server = ThreadingHTTPServer((host, port), _Handler)
        self._server.daemon_threads = True
        self._server.emulator = self  # type: ignore[attr-defined]
        self.url = f"http://{host}:{self._server.server_address[1]}"
        self.spaces = SpaceHost(self.root, self.url, self._user_id, switch_delay_s)
        self.hub = HubRoutes(self.storage, self.spaces, tree_page_size)
        self.space_routes = SpaceRoutes(self.hub, self.spaces)
        self.jobs = JobHost(self.root, self.url)
        self.job_routes = JobRoutes(self.hub, self.jobs)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def _user_id(self, name: str) -> str:
        user = self.users.by_name(name)
        return user.id if user else "0" * 24

    def start(self) -> Emulator:
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._server.serve_forever(poll_interval=0.1)

    def stop(self) -> None:
        self.spaces.close()
        self.jobs.close()
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()

    # ------------------------------------------------------------------ dispatch
    def dispatch(self, req: Request) -> Response:
        """Answer one request, applying injected faults and recording it in the request log."""
        if req.raw_path.startswith("/_emu/"):
            return self._safely(self._emu, req)
        fault = self.faults.take(req.method, req.raw_path)
        if fault is not None and fault.delay_s > 0:
            time.sleep(fault.delay_s)
        if fault is not None and fault.status is not None and not fault.land_then_fail:
            response = _fault_response(fault)
        else:
            response = self._safely(self._route, req)
            if fault is not None and fault.status is not None:
                response = _fault_response(fault)
        self.faults.record(
            req.method, req.raw_path, response.status, "&".join(f"{k}={v[0]}" for k, v in req.query.items())
        )
        return response

    @staticmethod
    def _safely(handler, req: Request) -> Response:
        try:
            return handler(req)
        except HttpError as e:
            return e.response()
        except StoreError as e:
            return HttpError(e.status, e.code, e.message).response()
        except SpaceNotFound:
            return HttpError(404, "RepoNotFound", "Repository not found").response()
        except Exception as e:  # a bug in the emulator: answer 500 and show it in the test output
            traceback.print_exc()
            return HttpError(500, None, f"Emulator error: {e!r}").response()

    def _authenticate(self, req: Request) -> None:
        auth = req.headers.get("authorization", "")
        if not auth:
            return
        token = auth.removeprefix("Bearer ").strip()
        req.user = self.users.by_token(token)
        if req.user is None:
            raise HttpError(401, None, INVALID_CREDENTIALS)
        if req.user.expired():  # wording assumed: the Hub's answer to an expired OAuth token is not documented
            raise HttpError(401, None, f"{INVALID_CREDENTIALS}: the token has expired")

    def _route(self, req: Request) -> Response:
        self._authenticate(req)
        seg, m = req.segments, req.method
        hub = self.hub
        if seg[:1] == ["api"]:
            api = seg[1:]
            if api == ["whoami-v2"] and m == "GET":
                return hub.whoami(req)
            if api == ["repos", "create"] and m == "POST":
                return hub.create_repo(req)
            if api == ["repos", "delete"] and m == "DELETE":
                return hub.delete_repo(req)
            if api == ["validate-yaml"] and m == "POST":
                return hub.validate_yaml(req)
            if api == ["spaces", "hardware"] and m == "GET":
                return self.space_routes.hardware_list(req)
            if api[:1] == ["jobs"] and len(api) >= 2:
                return self.job_routes.handle(req, api[1:])
            if len(api) >= 3 and api[0] in TYPE_BY_PLURAL:
                return self._repo_route(req, TYPE_BY_PLURAL[api[0]], f"{api[1]}/{api[2]}", api[3:])
        # Downloads: /[datasets/|spaces/]{ns}/{name}/resolve/{rev}/{path}
        repo_type, web = "model", seg
        if seg[:1] in (["datasets"], ["spaces"]) and len(seg) > 3 and seg[3] == "resolve":
            repo_type, web = TYPE_BY_PLURAL[seg[0]], seg[1:]
        if len(web) >= 5 and web[2] == "resolve" and m in ("GET", "HEAD"):
            return hub.resolve_file(req, repo_type, f"{web[0]}/{web[1]}", web[3], "/".join(web[4:]))
        raise HttpError(404, None, f"No route for {m} {req.raw_path}")

    def _repo_route(self, req: Request, repo_type: str, repo_id: str, rest: list[str]) -> Response:
        hub, m = self.hub, req.method
        action = rest[0] if rest else None
        if action is None and m == "GET":
            return hub.repo_info(req, repo_type, repo_id)
        if action == "revision" and len(rest) >= 2 and m == "GET":
            return hub.repo_info(req, repo_type, repo_id, "/".join(rest[1:]))
        if action == "tree" and len(rest) >= 2 and m == "GET":
            return hub.tree(req, repo_type, repo_id, rest[1], "/".join(rest[2:]))
        if action == "paths-info" and len(rest) == 2 and m == "POST":
            return hub.paths_info(req, repo_type, repo_id, rest[1])
        if action == "preupload" and len(rest) == 2 and m == "POST":
            return hub.preupload(req, repo_type, repo_id, rest[1])
        if action == "commit" and len(rest) == 2 and m == "POST":
            return hub.commit(req, repo_type, repo_id, rest[1])
        if action == "super-squash" and len(rest) >= 2 and m == "POST":
            return hub.super_squash(req, repo_type, repo_id, "/".join(rest[1:]))
        if action == "commits" and len(rest) == 2 and m == "GET":
            return hub.list_commits(req, repo_type, repo_id, rest[1])
        if action == "branch" and len(rest) >= 2 and m in ("POST", "DELETE"):
            return hub.branch(req, repo_type, repo_id, "/".join(rest[1:]))
        if action == "refs" and m == "GET":
            return hub.refs(req, repo_type, repo_id)
        if action == "settings" and m == "PUT":
            return hub.update_settings(req, repo_type, repo_id)
        if repo_type == "space" and action is not None:
            return self.space_routes.handle(req, repo_id, action, rest[1:])
        raise HttpError(404, None, f"No route for {m} {req.raw_path}")

    # ------------------------------------------------------------------ /_emu/
    def _emu(self, req: Request) -> Response:
        seg, m = req.segments[1:], req.method
        if seg == ["health"]:
            return Response.json({"ok": True})
        if seg == ["requests"]:
            if m == "DELETE":
                self.faults.clear_requests()
                return Response.json({})
            return Response.json([r.to_json() for r in self.faults.requests(req.arg("method"), req.arg("path_regex"))])
        if seg == ["faults"]:
            if m == "DELETE":
                self.faults.clear()
                return Response.json({})
            if m == "POST":
                self.faults.add(fault_from_json(req.json()))
            return Response.json([f.__dict__ for f in self.faults.pending()])
        if seg == ["users"] and m == "POST":
            body = req.json()
            scopes = body.get("scopes")
            self.users.add(
                User(
                    body["name"],
                    body["token"],
                    body.get("role", "write"),
                    tuple(body.get("orgs", ())),
                    body.get("oauth", False) or scopes is not None,
                    None if scopes is None else frozenset(scopes),
                    body.get("expires_at"),
                    body.get("app"),
                )
            )
            return Response.json({})
        if seg == ["credit"] and m == "POST":
            body = req.json()
            self.jobs.credit.grant(body["namespace"], body.get("usd"), self.jobs.cost_usd(body["namespace"]))
            return Response.json({"left": self.jobs.credit_left(body["namespace"])})
        if len(seg) == 4 and seg[0] == "spaces" and seg[3] == "ledger":
            return Response.json(self.spaces.ledger(f"{seg[1]}/{seg[2]}"))
        if seg[:1] == ["jobs"] or seg == ["job-faults"]:
            return self._emu_jobs(req, seg)
        raise HttpError(404, None, f"No emulator route for {m} {req.raw_path}")

    def _emu_jobs(self, req: Request, seg: list[str]) -> Response:
        jobs, m = self.jobs, req.method
        if seg == ["job-faults"]:
            if m == "DELETE":
                jobs.faults.clear()
            elif m == "POST":
                body = req.json()
                try:
                    jobs.faults.add(JobFault(**body))
                except (TypeError, ValueError) as e:
                    raise HttpError(400, None, f"Invalid job fault: {e}") from e
            return Response.json([f.__dict__ for f in jobs.faults.pending()])
        if seg == ["jobs", "ledger"] and m == "GET":
            return Response.json(jobs.ledger())
        if len(seg) == 3 and seg[2] == "ledger" and m == "GET":
            return Response.json(jobs.ledger(seg[1]))
        if seg == ["jobs", "stop"] and m == "POST":
            return Response.json({"stopped": jobs.stop_all("stopped by the emulator")})
        if seg == ["jobs", "config"] and m == "POST":
            body = req.json()
            if "scheduling_s" in body:
                jobs.scheduling_s = float(body["scheduling_s"])
            if "stop_grace_s" in body:
                jobs.stop_grace_s = float(body["stop_grace_s"])
            if "image_root" in body:
                jobs.image_root = Path(body["image_root"])
            return Response.json({})
        raise HttpError(404, None, f"No emulator route for {m} {req.raw_path}")


def fault_from_json(d: dict) -> Fault:
    """A fault from ``POST /_emu/faults`` JSON (same fields as :class:`Fault`, plus ``retry_after``)."""
    headers = dict(d.get("headers") or {})
    if d.get("retry_after") is not None:
        headers["Retry-After"] = str(d["retry_after"])
    return Fault(
        method=d.get("method", "*"),
        path_regex=d["path_regex"],
        status=d.get("status"),
        count=int(d.get("count", 1)),
        delay_s=float(d.get("delay_s", 0.0)),
        land_then_fail=bool(d.get("land_then_fail", False)),
        body=d.get("body"),
        headers=headers,
        probability=float(d.get("probability", 1.0)),
    )


def _fault_response(fault: Fault) -> Response:
    assert fault.status is not None
    if fault.body is None:
        body = json.dumps({"error": f"Injected fault: HTTP {fault.status}"}).encode()
        content_type = "application/json"
    else:
        body = fault.body.encode()
        try:
            json.loads(fault.body)
            content_type = "application/json"
        except ValueError:
            content_type = "text/plain"
    return Response(fault.status, {"Content-Type": content_type, **fault.headers}, body)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fakehub/1"

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in two writes: without this, Nagle + delayed ACK add ~40 ms per request.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args) -> None:  # quiet: the request log is kept in memory
        pass

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _serve(self) -> None:
        emulator: Emulator = self.server.emulator  # type: ignore[attr-defined]
        raw_path, _, query = self.path.partition("?")
        req = Request(
            method=self.command,
            raw_path=raw_path,
            query=parse_qs(query, keep_blank_values=True),
            headers={k.lower(): v for k, v in self.headers.items()},
            body=self._read_body(),
            base_url=f"http://{self.headers.get('Host') or emulator.url.removeprefix('http://')}",
        )
        response = emulator.dispatch(req)
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        if response.stream is not None:
            self._send_stream(response)
            return
        if self.command == "HEAD" and response.head_length is not None:
            length = response.head_length
        elif response.body_file is not None:
            length = response.body_file[2]
        else:
            length = len(response.body)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        if self.command == "HEAD":
            return
        if response.body_file is None:
            self.wfile.write(response.body)
            return
        path, offset, count = response.body_file
        if count:
            with open(path, "rb") as f:  # sendfile: the kernel copies, holes of a sparse file read as zeros
                self.connection.sendfile(f, offset, count)

    def _send_stream(self, response: Response) -> None:
        """Send ``response.stream`` chunked, each piece as soon as it is produced; stop if the client leaves."""
        assert response.stream is not None
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for piece in response.stream:
                if piece:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                    self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            close = getattr(response.stream, "close", None)
            if close is not None:
                close()

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _serve
