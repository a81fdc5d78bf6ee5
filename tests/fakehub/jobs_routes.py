"""Jobs API routes (``/api/jobs/...``) as huggingface_hub 2.4's ``run_job``, ``inspect_job``, ``list_jobs``,
``cancel_job``, ``fetch_job_logs`` and ``list_jobs_hardware`` call them."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path, PurePosixPath

from tests.fakehub.auth import User
from tests.fakehub.hub_routes import INVALID_CREDENTIALS, HubRoutes
from tests.fakehub.jobs import DEFAULT_TIMEOUT_S, JOB_FLAVORS, JOB_STAGES, Job, JobHost, sse_events
from tests.fakehub.messages import HttpError, Request, Response

REPO_VOLUME_TYPES = ("model", "dataset", "space")


class JobRoutes:
    def __init__(self, hub: HubRoutes, host: JobHost) -> None:
        self.hub = hub
        self.host = host

    def handle(self, req: Request, rest: list[str]) -> Response:
        """``rest``: the path segments after ``/api/jobs``."""
        m = req.method
        if rest == ["hardware"] and m == "GET":
            return Response.json([f.to_json() for f in JOB_FLAVORS.values()])
        if len(rest) == 1 and m == "POST":
            return self.create(req, rest[0])
        if len(rest) == 1 and m == "GET":
            return self.list(req, rest[0])
        if len(rest) == 2 and m == "GET":
            return Response.json(self._job(req, rest[0], rest[1]).to_json(time.time()))
        if len(rest) == 3 and rest[2] == "cancel" and m == "POST":
            job = self._job(req, rest[0], rest[1], write=True)
            self.host.cancel(job)
            return Response.json({})
        if len(rest) == 3 and rest[2] == "logs" and m == "GET":
            return self.logs(req, self._job(req, rest[0], rest[1]))
        raise HttpError(404, None, f"No route for {m} {req.raw_path}")

    # ---------------------------------------------------------------- auth
    @staticmethod
    def _user(req: Request, namespace: str, *, write: bool) -> User:
        if req.user is None:
            raise HttpError(401, None, INVALID_CREDENTIALS)
        if not req.user.can_use_jobs():  # wording assumed; the status follows hub-docs oauth.md (`jobs`: run jobs)
            raise HttpError(403, None, "This OAuth token lacks the 'jobs' scope: it cannot run or read Jobs")
        if not req.user.can_read(namespace):
            raise HttpError(403, None, f"You don't have access to the Jobs of namespace {namespace!r}")
        if write and not req.user.can_write(namespace):
            raise HttpError(403, None, "This token has no write access: it cannot run or cancel Jobs")
        return req.user

    def _job(self, req: Request, namespace: str, job_id: str, *, write: bool = False) -> Job:
        self._user(req, namespace, write=write)
        job = self.host.get(namespace, job_id)
        if job is None:
            raise HttpError(404, None, f"Job {job_id} not found")
        return job

    # ---------------------------------------------------------------- routes
    def create(self, req: Request, namespace: str) -> Response:
        user = self._user(req, namespace, write=True)
        spec = req.json()
        command = _str_list(spec.get("command"), "command")
        if not command:
            raise HttpError(400, None, "command must not be empty")
        flavor = spec.get("flavor") or "cpu-basic"
        if flavor not in JOB_FLAVORS:
            raise HttpError(400, None, f"Invalid flavor {flavor!r}: not one of the Jobs hardware flavors")
        timeout_s = spec.get("timeoutSeconds", DEFAULT_TIMEOUT_S)
        if not isinstance(timeout_s, int) or timeout_s <= 0:
            raise HttpError(400, None, f"timeoutSeconds must be a positive integer, not {timeout_s!r}")
        docker_image, space_id = spec.get("dockerImage"), spec.get("spaceId")
        if bool(docker_image) == bool(space_id):
            raise HttpError(400, None, "Exactly one of dockerImage and spaceId is required")
        if space_id:
            self.hub.readable_repo(req, "space", space_id)  # what the Hub answers for a missing/private repo
        labels = _str_dict(spec.get("labels"), "labels")
        attempts = spec.get("attempts")
        if attempts is not None and (not isinstance(attempts, int) or attempts < 1):
            raise HttpError(400, None, "attempts must be a positive integer")
        volumes, mount_files = self._volumes(req, spec.get("volumes") or [])
        taken = self.host.faults.take(namespace, labels)
        refused = [f for f in taken if f.kind == "refuse"]
        if refused:
            fault = refused[0]
            message = fault.message or _REFUSAL_MESSAGES.get(fault.status or 402, "Job creation refused")
            raise HttpError(fault.status or 402, None, message)
        left = self.host.credit_left(namespace)
        if left is not None and left <= 0:
            raise HttpError(402, None, _REFUSAL_MESSAGES[402])
        job_id = self.host.new_id()
        job = Job(
            id=job_id,
            namespace=namespace,
            owner=_owner(user, namespace),
            initiator={"type": "user", "id": user.id, "name": user.name},
            docker_image=docker_image,
            space_id=space_id,
            command=command,
            arguments=_str_list(spec.get("arguments") or [], "arguments"),
            environment=_str_dict(spec.get("environment"), "environment"),
            secrets=_str_dict(spec.get("secrets"), "secrets"),
            flavor=flavor,
            timeout_s=timeout_s,
            labels=labels,
            volumes=volumes,
            attempts=attempts,
            created_at=time.time(),
            workdir=self.host.dir / job_id,
            mount_files=mount_files,
            faults=[f for f in taken if f.kind != "refuse"],
        )
        self.host.add(job)
        return Response.json(job.to_json(time.time()))

    def list(self, req: Request, namespace: str) -> Response:
        self._user(req, namespace, write=False)
        stages = [s.upper() for s in req.query.get("stage", [])]
        unknown = [s for s in stages if s not in JOB_STAGES]
        if unknown:
            raise HttpError(400, None, f"Unknown stage(s) {unknown}")
        labels: dict[str, str] = {}
        for item in req.query.get("label", []):
            key, sep, value = item.partition("=")
            if not sep:
                raise HttpError(400, None, f"label filter must be key=value, not {item!r}")
            labels[key] = value
        now = time.time()
        return Response.json([j.to_json(now) for j in self.host.list(namespace, stages, labels)])

    def logs(self, req: Request, job: Job) -> Response:
        fault = job.fault("logs_unavailable")
        if fault is not None:
            raise HttpError(fault.status or 503, None, fault.message or "Logs are temporarily unavailable")
        tail = req.arg("tail")
        try:
            tail_n = None if tail is None else max(0, int(tail))
        except ValueError as e:
            raise HttpError(400, None, f"tail must be an integer, not {tail!r}") from e
        headers = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        if job.log is None:  # never ran (still scheduling, or canceled before it started)
            if job.terminal:
                return Response(200, headers, b"")
            return Response(200, headers, stream=_wait_for_log(self.host, job, tail_n))
        return Response(200, headers, stream=sse_events(job.log, tail_n))

    # ---------------------------------------------------------------- volumes
    def _volumes(self, req: Request, specs: list) -> tuple[list[dict], dict[str, Path]]:
        """Validated volumes (repo volumes forced read-only) and the files to materialise for them."""
        if not isinstance(specs, list):
            raise HttpError(400, None, "volumes must be a list")
        volumes: list[dict] = []
        files: dict[str, Path] = {}
        seen: set[str] = set()
        for spec in specs:
            if not isinstance(spec, dict) or not spec.get("source") or not spec.get("mountPath"):
                raise HttpError(400, None, f"A volume needs type, source and mountPath: {spec!r}")
            kind, source, mount = spec.get("type", "model"), spec["source"], spec["mountPath"]
            if kind == "bucket":
                raise HttpError(400, None, "Bucket volumes are not emulated by fakehub")
            if kind not in REPO_VOLUME_TYPES:
                raise HttpError(400, None, f"Invalid volume type {kind!r}")
            path = PurePosixPath(mount)
            if not path.is_absolute() or ".." in path.parts or str(path) == "/":
                raise HttpError(400, None, f"mountPath must be an absolute path below /, not {mount!r}")
            if str(path) in seen:
                raise HttpError(400, None, f"Two volumes are mounted at {mount!r}")
            seen.add(str(path))
            if spec.get("readOnly") is False:
                raise HttpError(400, None, f"{kind} volumes are read-only")
            repo = self.hub.readable_repo(req, kind, source)
            revision = spec.get("revision") or "main"
            commit = self.hub.resolve(repo, revision)
            prefix = (spec.get("path") or "").strip("/")
            for name, entry in commit.files.items():
                if prefix and not (name == prefix or name.startswith(prefix + "/")):
                    continue
                rel = name[len(prefix) :].lstrip("/") if prefix else name
                files[str(path.relative_to("/") / rel)] = self.hub.storage.blob_path(entry.oid)
            volume = {"type": kind, "source": source, "mountPath": mount, "readOnly": True}
            for key in ("revision", "path"):
                if spec.get(key) is not None:
                    volume[key] = spec[key]
            volumes.append(volume)
        return volumes, files


_REFUSAL_MESSAGES = {
    402: "Payment required: your namespace needs a positive credit balance to run Jobs",
    403: "You are not allowed to run Jobs in this namespace",
}


def _wait_for_log(host: JobHost, job: Job, tail: int | None):
    """The log stream of a Job still scheduling: wait for it to start (or end), then stream its log."""
    while job.log is None and not job.terminal:
        time.sleep(0.05)
    if job.log is not None:
        yield from sse_events(job.log, tail)


def _owner(user: User, namespace: str) -> dict:
    if namespace == user.name:
        return {"id": user.id, "name": user.name, "type": "user"}
    return {"id": hashlib.sha1(f"org:{namespace}".encode()).hexdigest()[:24], "name": namespace, "type": "org"}


def _str_list(value, name: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise HttpError(400, None, f"{name} must be a list of strings")
    return list(value)


def _str_dict(value, name: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise HttpError(400, None, f"{name} must be an object")
    return {str(k): "" if v is None else str(v) for k, v in value.items()}
