"""Space API routes: runtime, hardware, sleeptime, pause, restart, dev-mode, secrets, variables and logs."""

from __future__ import annotations

import json
import time

from tests.fakehub.hub_routes import HubRoutes
from tests.fakehub.messages import HttpError, Request, Response
from tests.fakehub.space_host import SpaceHost
from tests.fakehub.spaces import SPACE_HARDWARE, SpaceState, _now_iso

# The real Hub refuses OAuth-type tokens on these (huggingface_hub issue #4972); pause works with them.
OAUTH_REFUSED = ("hardware", "restart", "sleeptime")
HARDWARE_LIST = [
    {"name": "cpu-basic", "prettyName": "CPU basic", "cpu": "2 vCPU", "ram": "16 GB", "unitCostMicroUSD": 0, "unitCostUSD": 0, "unitLabel": "hour"},
    {"name": "cpu-upgrade", "prettyName": "CPU upgrade", "cpu": "8 vCPU", "ram": "32 GB", "unitCostMicroUSD": 8333, "unitCostUSD": 0.03, "unitLabel": "hour"},
    {"name": "t4-small", "prettyName": "Nvidia T4 - small", "cpu": "4 vCPU", "ram": "15 GB", "unitCostMicroUSD": 111111, "unitCostUSD": 0.4, "unitLabel": "hour"},
    {"name": "t4-medium", "prettyName": "Nvidia T4 - medium", "cpu": "8 vCPU", "ram": "30 GB", "unitCostMicroUSD": 166667, "unitCostUSD": 0.6, "unitLabel": "hour"},
    {"name": "a10g-small", "prettyName": "Nvidia 1xA10G - small", "cpu": "4 vCPU", "ram": "15 GB", "unitCostMicroUSD": 277778, "unitCostUSD": 1.0, "unitLabel": "hour"},
]  # fmt: skip


class SpaceRoutes:
    def __init__(self, hub: HubRoutes, host: SpaceHost) -> None:
        self.hub = hub
        self.host = host

    def hardware_list(self, req: Request) -> Response:
        return Response.json(HARDWARE_LIST)

    def handle(self, req: Request, repo_id: str, action: str, rest: list[str]) -> Response:
        if req.method == "GET" and action == "runtime":
            self.hub.readable_repo(req, "space", repo_id)
        else:
            self.hub.writable_repo(req, "space", repo_id)
        if action in OAUTH_REFUSED and req.user is not None and req.user.oauth:
            # Sent with RepoNotFound so that the client raises what it raises against huggingface.co over https.
            raise HttpError(401, "RepoNotFound", "This endpoint does not accept OAuth tokens")
        body = req.json() if req.method in ("POST", "DELETE", "PUT") else {}
        book = self.host.book
        key = (req.method, action)
        if key == ("GET", "runtime"):
            return Response.json(self.host.runtime(repo_id))
        if key == ("POST", "hardware"):
            flavor = body.get("flavor")
            if flavor not in SPACE_HARDWARE:
                raise HttpError(400, None, f"Invalid hardware flavor {flavor!r}")
            sleep = body.get("sleepTimeSeconds")
            return self._runtime(book.update(repo_id, lambda s, now: s.request_hardware(flavor, sleep, now)))
        if key == ("POST", "sleeptime"):
            seconds = body.get("seconds")
            return self._runtime(book.update(repo_id, lambda s, now: setattr(s, "sleep_time", seconds)))
        if key == ("POST", "pause"):
            return self._runtime(book.update(repo_id, lambda s, now: s.pause(now)))
        if key == ("POST", "restart"):
            return self._runtime(book.update(repo_id, lambda s, now: s.restart(now)))
        if key == ("POST", "dev-mode"):
            enabled = bool(body.get("enabled"))
            return self._runtime(book.update(repo_id, lambda s, now: setattr(s, "dev_mode", enabled)))
        if action in ("secrets", "variables"):
            return self._settings(req, repo_id, action, body)
        if key == ("GET", "logs"):
            return self._logs(repo_id)
        raise HttpError(404, None, f"Unsupported Space endpoint {req.method} {action}")

    @staticmethod
    def _runtime(state: SpaceState) -> Response:
        return Response.json(state.runtime())

    def _settings(self, req: Request, repo_id: str, kind: str, body: dict) -> Response:
        book = self.host.book
        if req.method == "POST":
            if not body.get("key"):
                raise HttpError(400, None, "key is required")
            entry = {
                "value": str(body.get("value", "")),
                "description": body.get("description"),
                "updatedAt": _now_iso(),
            }

            def put(s: SpaceState, now: float) -> None:
                getattr(s, kind)[body["key"]] = entry
                s.settings_changed(now)

            state = book.update(repo_id, put)
        elif req.method == "DELETE":

            def drop(s: SpaceState, now: float) -> None:
                if getattr(s, kind).pop(body.get("key"), None) is not None:
                    s.settings_changed(now)

            state = book.update(repo_id, drop)
        else:
            state = book.update(repo_id, None)
        items = getattr(state, kind)
        if kind == "secrets":  # values of secrets are never returned
            if req.method != "GET":
                return Response.json({})
            return Response.json(
                {k: {"description": v["description"], "updatedAt": v["updatedAt"]} for k, v in items.items()}
            )
        return Response.json(items)

    def _logs(self, repo_id: str) -> Response:
        """Server-sent events with the lines of the latest container log."""
        logs = self.host.logs(repo_id)
        lines = logs[-1].read_text(errors="replace").splitlines() if logs else []
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
        body = "".join(f"data: {json.dumps({'data': line + chr(10), 'timestamp': stamp})}\n\n" for line in lines)
        return Response(200, {"Content-Type": "text/event-stream"}, body.encode())
