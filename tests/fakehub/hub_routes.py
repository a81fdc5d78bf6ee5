"""Hub API routes: whoami, repos, repo info, tree, paths-info, preupload, commit and downloads."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from urllib.parse import urlencode

from tests.fakehub.auth import User
from tests.fakehub.messages import HttpError, Request, Response
from tests.fakehub.space_host import SpaceHost
from tests.fakehub.storage import REPO_TYPES, Commit, Operation, Repo, Storage, StoreError

TYPE_BY_PLURAL = {f"{t}s": t for t in REPO_TYPES}
WEB_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
INVALID_CREDENTIALS = "Invalid credentials in Authorization header"


def repo_url(base: str, repo_type: str, repo_id: str) -> str:
    return f"{base}/{WEB_PREFIX[repo_type]}{repo_id}"


def repo_not_found(user: User | None, *, exists: bool) -> HttpError:
    """The Hub's answer for a missing or invisible repo (401 for anonymous and for others' private repos)."""
    status = 404 if (user is not None and not exists) else 401
    return HttpError(status, "RepoNotFound", "Repository not found")


class HubRoutes:
    """Handlers for the repository part of the Hub API. ``spaces`` receives Space life-cycle events."""

    def __init__(self, storage: Storage, spaces: SpaceHost, tree_page_size: int = 1000) -> None:
        self.storage = storage
        self.spaces = spaces
        self.tree_page_size = tree_page_size

    # ------------------------------------------------------------------ access
    def readable_repo(self, req: Request, repo_type: str, repo_id: str) -> Repo:
        repo = self.storage.get_repo(repo_type, repo_id)
        if repo is None:
            raise repo_not_found(req.user, exists=False)
        if repo.private and not (req.user and req.user.can_read_repo(repo.namespace, repo.created_by_app)):
            raise repo_not_found(req.user, exists=True)
        return repo

    def writable_repo(self, req: Request, repo_type: str, repo_id: str) -> Repo:
        repo = self.readable_repo(req, repo_type, repo_id)
        require_write(req, repo.namespace, repo.created_by_app)
        return repo

    def resolve(self, repo: Repo, revision: str) -> Commit:
        try:
            return self.storage.resolve(repo, revision)
        except StoreError as e:
            raise HttpError(e.status, e.code, e.message) from e

    # ------------------------------------------------------------------ account and repos
    def whoami(self, req: Request) -> Response:
        if req.user is None:
            raise HttpError(401, None, INVALID_CREDENTIALS)
        return Response.json(req.user.whoami())

    def create_repo(self, req: Request) -> Response:
        body = req.json()
        if req.user is None:
            raise HttpError(401, None, INVALID_CREDENTIALS)
        repo_type = body.get("type") or "model"
        if repo_type not in REPO_TYPES:
            raise HttpError(400, None, f"Invalid repo type {repo_type!r}")
        name = body.get("name") or ""
        namespace = body.get("organization") or req.user.name
        if not name or "/" in name:
            raise HttpError(400, None, "Invalid repo name")
        repo_id = f"{namespace}/{name}"
        url = repo_url(req.base_url, repo_type, repo_id)
        if not req.user.can_create_repo(namespace):
            detail = " (an OAuth token needs the contribute-repos or manage-repos scope)" if req.user.oauth else ""
            raise HttpError(403, None, f"You don't have the rights to create a repo under this namespace{detail}")
        private = body.get("visibility", "public") != "public" or bool(body.get("private"))
        sdk = body.get("sdk")
        if repo_type == "space" and not sdk:
            raise HttpError(400, None, "sdk is required for a Space")
        try:
            repo = self.storage.create_repo(
                repo_type, repo_id, private=private, owner=req.user.name, sdk=sdk, app=req.user.oauth_app
            )
        except StoreError as e:
            raise HttpError(409, None, e.message, extra={"url": url}) from e
        if repo_type == "space":
            self.spaces.create(
                repo_id,
                hardware=body.get("hardware") or "cpu-basic",
                sleep_time=body.get("sleepTimeSeconds"),
                secrets={s["key"]: s for s in body.get("secrets") or []},
                variables={v["key"]: v for v in body.get("variables") or []},
            )
        return Response.json({"url": url, "name": repo_id, "id": repo.uid})

    def delete_repo(self, req: Request) -> Response:
        body = req.json()
        repo_type = body.get("type") or "model"
        repo_id = f"{body.get('organization') or (req.user.name if req.user else '')}/{body.get('name')}"
        self.writable_repo(req, repo_type, repo_id)
        self.storage.delete_repo(repo_type, repo_id)
        if repo_type == "space":
            self.spaces.delete(repo_id)
        return Response.json({})

    def update_settings(self, req: Request, repo_type: str, repo_id: str) -> Response:
        repo = self.writable_repo(req, repo_type, repo_id)
        body = req.json()
        if "visibility" in body or "private" in body:
            self.storage.set_private(repo, body.get("visibility", "public") != "public" or bool(body.get("private")))
        return Response.json({})

    def validate_yaml(self, req: Request) -> Response:
        return Response.json({"errors": [], "warnings": []})

    # ------------------------------------------------------------------ reading
    def repo_info(self, req: Request, repo_type: str, repo_id: str, revision: str = "main") -> Response:
        repo = self.readable_repo(req, repo_type, repo_id)
        commit = self.resolve(repo, revision)
        with_blobs = req.flag("blobs")
        siblings = []
        for path, entry in sorted(commit.files.items()):
            sibling: dict = {"rfilename": path}
            if with_blobs:
                sibling.update(size=entry.size, blobId=entry.oid)
            siblings.append(sibling)
        info: dict = {
            "_id": repo.uid,
            "id": repo.id,
            "author": repo.namespace,
            "sha": commit.id,
            "lastModified": commit.iso_date,
            "createdAt": Commit("", "", None, "", "", "", repo.created_at).iso_date,
            "private": repo.private,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
        }
        if repo_type == "model":
            info["modelId"] = repo.id
        if repo_type == "space":
            subdomain = self.spaces.subdomain(repo.id)
            info.update(sdk=repo.sdk, subdomain=subdomain, host=f"https://{subdomain}.hf.space")
            info["runtime"] = self.spaces.runtime(repo.id)
        return Response.json(info)

    def refs(self, req: Request, repo_type: str, repo_id: str) -> Response:
        repo = self.readable_repo(req, repo_type, repo_id)
        branches = [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": c} for b, c in sorted(repo.branches.items())]
        return Response.json({"branches": branches, "tags": [], "converts": []})

    def branch(self, req: Request, repo_type: str, repo_id: str, branch: str) -> Response:
        repo = self.writable_repo(req, repo_type, repo_id)
        commit_id = None
        if req.method == "POST":
            commit_id = self.resolve(repo, req.json().get("startingPoint") or "main").id
        try:
            self.storage.set_branch(repo_type, repo.id, branch, commit_id)
        except StoreError as e:
            raise HttpError(e.status, e.code, e.message) from e
        return Response.json({})

    def list_commits(self, req: Request, repo_type: str, repo_id: str, revision: str) -> Response:
        repo = self.readable_repo(req, repo_type, repo_id)
        commits = [
            {
                "id": c.id,
                "title": c.summary,
                "message": c.description,
                "authors": [{"user": c.author}],
                "date": c.iso_date,
            }
            for c in self.storage.history(self.resolve(repo, revision))
        ]
        return Response.json(commits)

    def _entries(self, commit: Commit, folder: str, recursive: bool) -> list[dict]:
        """Tree entries under ``folder`` (``""`` = root): files, and folders as ``directory`` entries."""
        prefix = folder.strip("/") + "/" if folder.strip("/") else ""
        files: dict[str, dict] = {}
        folders: dict[str, list[str]] = {}
        for path, entry in commit.files.items():
            if not path.startswith(prefix):
                continue
            rest = path[len(prefix) :].split("/")
            for depth in range(1, len(rest)):
                folder_path = prefix + "/".join(rest[:depth])
                folders.setdefault(folder_path, []).append(f"{path}:{entry.oid}")
                if not recursive:
                    break
            if recursive or len(rest) == 1:
                files[path] = {"type": "file", "oid": entry.oid, "size": entry.size, "path": path}
        if prefix and not files and not folders:
            raise HttpError(404, "EntryNotFound", f'{folder} does not exist on "{commit.id}"')
        entries = [
            {"type": "directory", "oid": hashlib.sha1("\n".join(sorted(m)).encode()).hexdigest(), "path": p}
            for p, m in folders.items()
        ]
        return sorted(entries, key=lambda e: e["path"]) + sorted(files.values(), key=lambda e: e["path"])

    def _last_commit(self, commit: Commit, path: str) -> dict:
        """The commit that last changed ``path`` (a file, or anything under a folder)."""

        def view(c: Commit) -> dict:
            return {p: e.oid for p, e in c.files.items() if p == path or p.startswith(path + "/")}

        current, changed_in = view(commit), commit
        for older in self.storage.history(commit):
            if view(older) != current:
                break
            changed_in = older
        return {"id": changed_in.id, "title": changed_in.summary, "date": changed_in.iso_date}

    def tree(self, req: Request, repo_type: str, repo_id: str, revision: str, folder: str) -> Response:
        repo = self.readable_repo(req, repo_type, repo_id)
        commit = self.resolve(repo, revision)
        entries = self._entries(commit, folder, req.flag("recursive"))
        expand = req.flag("expand")
        page_size = min(self.tree_page_size, 50) if expand else self.tree_page_size
        start = int(req.arg("cursor", "0") or 0)
        page = entries[start : start + page_size]
        if expand:
            page = [{**e, "lastCommit": self._last_commit(commit, e["path"])} for e in page]
        headers = {}
        if start + page_size < len(entries):
            query = {k: v[0] for k, v in req.query.items()}
            query["cursor"] = str(start + page_size)
            headers["Link"] = f'<{req.base_url}{req.raw_path}?{urlencode(query)}>; rel="next"'
        return Response.json(page, headers=headers)

    def paths_info(self, req: Request, repo_type: str, repo_id: str, revision: str) -> Response:
        repo = self.readable_repo(req, repo_type, repo_id)
        commit = self.resolve(repo, revision)
        form = req.form()
        found = []
        for path in form.get("paths", []):
            path = path.strip("/")
            if path in commit.files:
                entry = commit.files[path]
                found.append({"type": "file", "oid": entry.oid, "size": entry.size, "path": path})
            elif any(p.startswith(path + "/") for p in commit.files):
                found.append({"type": "directory", "oid": hashlib.sha1(path.encode()).hexdigest(), "path": path})
        return Response.json(found)

    def resolve_file(self, req: Request, repo_type: str, repo_id: str, revision: str, path: str) -> Response:
        repo = self.readable_repo(req, repo_type, repo_id)
        commit = self.resolve(repo, revision)
        entry = commit.files.get(path)
        if entry is None:
            raise HttpError(
                404, "EntryNotFound", f'{path} does not exist on "{revision}"', headers={"X-Repo-Commit": commit.id}
            )
        headers = {
            "Content-Type": "application/octet-stream",
            "X-Repo-Commit": commit.id,
            "ETag": f'"{entry.oid}"',
            "Accept-Ranges": "bytes",
        }
        status, start, end = 200, 0, entry.size - 1
        range_header = req.headers.get("range", "")
        if req.method == "GET" and range_header.startswith("bytes="):
            first, _, last = range_header[len("bytes=") :].partition("-")
            start = int(first or 0)
            end = min(int(last), entry.size - 1) if last else entry.size - 1
            headers["Content-Range"] = f"bytes {start}-{end}/{entry.size}"
            status = 206
        # streamed from the blob file: a file of any size is served without reading it into memory
        body_file = (self.storage.blob_path(entry.oid), start, max(0, end + 1 - start))
        return Response(status, headers, head_length=entry.size, body_file=body_file)

    # ------------------------------------------------------------------ writing
    def preupload(self, req: Request, repo_type: str, repo_id: str, revision: str) -> Response:
        repo = self.writable_repo(req, repo_type, repo_id)
        commit = self.resolve(repo, revision)
        files = []
        for f in req.json().get("files", []):
            answer = {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
            if f["path"] in commit.files:
                answer["oid"] = commit.files[f["path"]].oid
            files.append(answer)
        return Response.json({"files": files, "commitOid": commit.id})

    def commit(self, req: Request, repo_type: str, repo_id: str, revision: str) -> Response:
        repo = self.writable_repo(req, repo_type, repo_id)
        if req.flag("create_pr"):
            raise HttpError(400, None, "Pull requests are not supported by this emulator")
        header: dict = {}
        operations: list[Operation] = []
        for line in req.body.decode().splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item.get("key"), item.get("value") or {}
            if key == "header":
                header = value
            elif key == "file":
                try:
                    content = (
                        base64.b64decode(value["content"])
                        if value.get("encoding") == "base64"
                        else value["content"].encode()
                    )
                except (binascii.Error, KeyError) as e:
                    raise HttpError(400, None, f"Invalid file line: {e}") from e
                operations.append(Operation("add", value["path"], content))
            elif key == "deletedFile":
                operations.append(Operation("delete", value["path"]))
            elif key == "deletedFolder":
                operations.append(Operation("delete_folder", value["path"]))
            elif key == "lfsFile":
                raise HttpError(400, None, "LFS files are not supported: preupload always answers 'regular'")
            else:
                raise HttpError(400, None, f"Unknown commit line key {key!r}")
        if not header.get("summary"):
            raise HttpError(400, None, "A commit summary is required")
        assert req.user is not None
        try:
            commit = self.storage.commit(
                repo_type,
                repo.id,
                revision,
                operations,
                summary=header["summary"],
                description=header.get("description") or "",
                author=req.user.name,
                parent_commit=header.get("parentCommit"),
            )
        except StoreError as e:
            raise HttpError(e.status, e.code, e.message) from e
        url = f"{repo_url(req.base_url, repo_type, repo.id)}/commit/{commit.id}"
        return Response.json({"success": True, "commitOid": commit.id, "commitUrl": url, "hookOutput": ""})

    def super_squash(self, req: Request, repo_type: str, repo_id: str, branch: str) -> Response:
        """``HfApi.super_squash_history``: the branch becomes one commit holding its current files."""
        repo = self.writable_repo(req, repo_type, repo_id)
        message = req.json().get("message") or f"Super-squash branch '{branch}'"
        assert req.user is not None
        try:
            commit = self.storage.squash(repo_type, repo.id, branch, summary=message, author=req.user.name)
        except StoreError as e:
            raise HttpError(e.status, e.code, e.message) from e
        return Response.json({"commitId": commit.id})


def require_write(req: Request, namespace: str, created_by_app: str | None = None) -> None:
    """401 for anonymous callers, 403 for read-only tokens, other namespaces, and OAuth tokens whose scopes do not
    reach the repo (created by ``created_by_app``)."""
    if req.user is None:
        raise HttpError(401, None, INVALID_CREDENTIALS)
    if not req.user.can_write_repo(namespace, created_by_app):
        detail = ""
        if req.user.oauth and req.user.can_write(namespace):
            detail = " (this OAuth token's scopes do not reach this repo: write-repos, or contribute-repos for the repos its app created)"
        raise HttpError(403, None, f"You don't have the rights to write to {namespace} with this token{detail}")
