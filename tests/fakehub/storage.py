"""On-disk store of the emulated Hub: repos, immutable commits and content-addressed blobs.

Layout under ``root``::

    blobs/<git-blob-sha1>                 file contents, named by their git blob id (the Hub's file etag)
    commits/<commit-id>.json              {"id", "repo_uid", "parent", "summary", "description", "author", "date",
                                           "files": {path: {"oid", "size"}}}  (immutable, ids never reused)
    repos/<type>s/<ns>/<name>.json        {"uid", "type", "id", "private", "owner", "created_at", "branches": {...}}

Commits to one repo are serialised by a per-repo lock, so a compare-and-swap on ``parentCommit`` has exactly
one winner per parent, as on the Hub.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO_TYPES = ("model", "dataset", "space")
GITATTRIBUTES = b"*.bin filter=lfs diff=lfs merge=lfs -text\n*.safetensors filter=lfs diff=lfs merge=lfs -text\n"


class StoreError(Exception):
    """A Hub-style failure: HTTP status, ``X-Error-Code`` (or None) and message."""

    def __init__(self, status: int, code: str | None, message: str, *, commit: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.commit = commit


def git_blob_sha1(data: bytes) -> str:
    """The git blob id of ``data`` (what the Hub uses as a regular file's etag)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def git_blob_sha1_of_file(path: Path, chunk: int = 8 << 20) -> str:
    """The git blob id of a file's contents, read in chunks (a file of any size, never whole in memory)."""
    digest = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}Z"


@dataclass
class FileEntry:
    oid: str
    size: int


@dataclass
class Commit:
    id: str
    repo_uid: str
    parent: str | None
    summary: str
    description: str
    author: str
    date: float
    files: dict[str, FileEntry] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "repo_uid": self.repo_uid,
            "parent": self.parent,
            "summary": self.summary,
            "description": self.description,
            "author": self.author,
            "date": self.date,
            "files": {p: {"oid": f.oid, "size": f.size} for p, f in sorted(self.files.items())},
        }

    @classmethod
    def from_json(cls, d: dict) -> Commit:
        files = {p: FileEntry(**f) for p, f in d["files"].items()}
        return cls(**{**d, "files": files})

    @property
    def iso_date(self) -> str:
        return _iso(self.date)


@dataclass
class Repo:
    uid: str
    type: str
    id: str
    private: bool
    owner: str
    created_at: float
    branches: dict[str, str]
    sdk: str | None = None
    created_by_app: str | None = None  # the OAuth app whose token created it (``contribute-repos`` reaches these)

    @property
    def namespace(self) -> str:
        return self.id.split("/")[0]

    @property
    def name(self) -> str:
        return self.id.split("/")[1]

    def to_json(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Operation:
    """One commit operation: ``add`` (with ``content``, or the file at ``source``), ``delete`` (file) or
    ``delete_folder``. A ``source`` file is hard-linked into the blob store (copied across file systems), so a
    large or sparse file is never read into memory and keeps its holes."""

    kind: str
    path: str
    content: bytes = b""
    source: Path | None = None


class Storage:
    """Repos, commits and blobs under one root folder; safe to use from many threads."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        for sub in ("blobs", "commits", "repos"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._global = threading.Lock()
        self._repo_locks: dict[tuple[str, str], threading.Lock] = {}

    # ---------------------------------------------------------------- paths and locks
    def _repo_path(self, repo_type: str, repo_id: str) -> Path:
        ns, name = repo_id.split("/")
        return self.root / "repos" / f"{repo_type}s" / ns / f"{name}.json"

    def repo_lock(self, repo_type: str, repo_id: str) -> threading.Lock:
        with self._global:
            return self._repo_locks.setdefault((repo_type, repo_id.lower()), threading.Lock())

    # ---------------------------------------------------------------- repos
    def get_repo(self, repo_type: str, repo_id: str) -> Repo | None:
        """The repo, or None when it does not exist."""
        if repo_id.count("/") != 1:
            return None
        path = self._repo_path(repo_type, repo_id)
        try:
            return Repo(**json.loads(path.read_text()))
        except FileNotFoundError:
            return None

    def _save_repo(self, repo: Repo) -> None:
        _write_atomic(self._repo_path(repo.type, repo.id), json.dumps(repo.to_json(), indent=1).encode())

    def create_repo(
        self, repo_type: str, repo_id: str, *, private: bool, owner: str, sdk: str | None = None, app: str | None = None
    ) -> Repo:
        """Create a repo with an initial commit holding ``.gitattributes``; 409 when it exists. ``app``: the OAuth
        app whose token created it."""
        with self.repo_lock(repo_type, repo_id):
            if self.get_repo(repo_type, repo_id) is not None:
                raise StoreError(409, None, f"You already created this {repo_type} repo")
            uid = uuid.uuid4().hex
            repo = Repo(uid, repo_type, repo_id, private, owner, time.time(), {}, sdk, app)
            oid = self.put_blob(GITATTRIBUTES)
            commit = self._new_commit(
                repo, None, "initial commit", "", owner, {".gitattributes": FileEntry(oid, len(GITATTRIBUTES))}
            )
            repo.branches["main"] = commit.id
            self._save_repo(repo)
            return repo

    def delete_repo(self, repo_type: str, repo_id: str) -> None:
        """Forget a repo (its commits and blobs stay on disk, so commit ids are never reused)."""
        with self.repo_lock(repo_type, repo_id):
            path = self._repo_path(repo_type, repo_id)
            if not path.exists():
                raise StoreError(404, "RepoNotFound", "Repository not found")
            path.unlink()

    def set_private(self, repo: Repo, private: bool) -> None:
        with self.repo_lock(repo.type, repo.id):
            repo.private = private
            self._save_repo(repo)

    def list_repos(self) -> Iterator[Repo]:
        for path in sorted((self.root / "repos").glob("*/*/*.json")):
            yield Repo(**json.loads(path.read_text()))

    def set_branch(self, repo_type: str, repo_id: str, branch: str, commit_id: str | None) -> None:
        """Create a branch at ``commit_id`` (409 if it exists), or delete it when ``commit_id`` is None."""
        with self.repo_lock(repo_type, repo_id):
            repo = self.get_repo(repo_type, repo_id)
            if repo is None:
                raise StoreError(404, "RepoNotFound", "Repository not found")
            if commit_id is None and branch == "main":
                raise StoreError(403, None, "Cannot delete the main branch")
            if commit_id is None:
                if repo.branches.pop(branch, None) is None:
                    raise StoreError(404, "RevisionNotFound", f"Invalid rev id: {branch}")
            elif branch in repo.branches:
                raise StoreError(409, None, f"Branch {branch} already exists")
            else:
                repo.branches[branch] = commit_id
            self._save_repo(repo)

    # ---------------------------------------------------------------- blobs and commits
    def put_blob(self, data: bytes) -> str:
        oid = git_blob_sha1(data)
        path = self.root / "blobs" / oid
        if not path.exists():
            _write_atomic(path, data)
        return oid

    def put_blob_file(self, source: Path) -> tuple[str, int]:
        """Store the file at ``source`` as a blob (hard link, else a copy); its ``(oid, size)``."""
        source = Path(source)
        oid, size = git_blob_sha1_of_file(source), source.stat().st_size
        path = self.root / "blobs" / oid
        if not path.exists():
            tmp = path.with_name(f".{oid}.{uuid.uuid4().hex}.tmp")
            try:
                os.link(source, tmp)
            except OSError:
                shutil.copyfile(source, tmp)
            os.replace(tmp, path)
        return oid, size

    def blob_path(self, oid: str) -> Path:
        return self.root / "blobs" / oid

    def get_commit(self, commit_id: str) -> Commit | None:
        if len(commit_id) != 40 or any(c not in "0123456789abcdef" for c in commit_id):
            return None
        try:
            return Commit.from_json(json.loads((self.root / "commits" / f"{commit_id}.json").read_text()))
        except FileNotFoundError:
            return None

    def _new_commit(
        self, repo: Repo, parent: str | None, summary: str, description: str, author: str, files: dict[str, FileEntry]
    ) -> Commit:
        now = time.time()
        seed = f"{repo.uid}|{parent}|{now}|{uuid.uuid4().hex}".encode()
        commit = Commit(hashlib.sha1(seed).hexdigest(), repo.uid, parent, summary, description, author, now, files)
        _write_atomic(self.root / "commits" / f"{commit.id}.json", json.dumps(commit.to_json()).encode())
        return commit

    def resolve(self, repo: Repo, revision: str) -> Commit:
        """The commit a branch name or a commit id of this repo points to; 404 RevisionNotFound otherwise."""
        commit_id = repo.branches.get(revision)
        if commit_id is None and len(revision) == 40:
            commit_id = revision
        commit = self.get_commit(commit_id) if commit_id else None
        if commit is None or commit.repo_uid != repo.uid:
            raise StoreError(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return commit

    def history(self, commit: Commit) -> Iterator[Commit]:
        """``commit`` and its ancestors, newest first."""
        current: Commit | None = commit
        while current is not None:
            yield current
            current = self.get_commit(current.parent) if current.parent else None

    def commit(
        self,
        repo_type: str,
        repo_id: str,
        branch: str,
        operations: list[Operation],
        *,
        summary: str,
        description: str = "",
        author: str,
        parent_commit: str | None = None,
    ) -> Commit:
        """Apply ``operations`` atomically on ``branch``; 412 when ``parent_commit`` is not the branch head."""
        with self.repo_lock(repo_type, repo_id):
            repo, head = self._branch_head(repo_type, repo_id, branch)
            if parent_commit is not None and not head.id.startswith(parent_commit.lower()):
                raise StoreError(412, None, "A commit has happened since. Please refresh and try again.")
            files = dict(head.files)
            for op in operations:
                path = op.path.lstrip("/")
                if op.kind == "add" and op.source is not None:
                    files[path] = FileEntry(*self.put_blob_file(op.source))
                elif op.kind == "add":
                    files[path] = FileEntry(self.put_blob(op.content), len(op.content))
                elif op.kind == "delete":
                    if files.pop(path, None) is None:
                        raise StoreError(404, "EntryNotFound", "A file with this name doesn't exist")
                elif op.kind == "delete_folder":
                    prefix = path.rstrip("/") + "/"
                    doomed = [p for p in files if p.startswith(prefix)]
                    if not doomed:
                        raise StoreError(404, "EntryNotFound", "A folder with this name doesn't exist")
                    for p in doomed:
                        del files[p]
                else:
                    raise StoreError(400, None, f"Unsupported operation {op.kind}")
            return self._move_branch(repo, branch, self._new_commit(repo, head.id, summary, description, author, files))

    def _branch_head(self, repo_type: str, repo_id: str, branch: str) -> tuple[Repo, Commit]:
        """The repo and the head commit of ``branch`` (call under ``repo_lock``); 404s as the Hub answers them."""
        repo = self.get_repo(repo_type, repo_id)
        if repo is None:
            raise StoreError(404, "RepoNotFound", "Repository not found")
        if branch not in repo.branches:
            raise StoreError(404, "RevisionNotFound", f"Invalid rev id: {branch}")
        head = self.get_commit(repo.branches[branch])
        assert head is not None
        return repo, head

    def _move_branch(self, repo: Repo, branch: str, commit: Commit) -> Commit:
        """Point ``branch`` at ``commit`` and persist the repo (under ``repo_lock``)."""
        repo.branches[branch] = commit.id
        self._save_repo(repo)
        return commit

    def squash(self, repo_type: str, repo_id: str, branch: str, *, summary: str, author: str) -> Commit:
        """Replace ``branch``'s history by one parentless commit holding its current files (super-squash)."""
        with self.repo_lock(repo_type, repo_id):
            repo, head = self._branch_head(repo_type, repo_id, branch)
            return self._move_branch(repo, branch, self._new_commit(repo, None, summary, "", author, dict(head.files)))

    # ---------------------------------------------------------------- inspection for tests
    def stored_bytes(self) -> Iterator[tuple[str, bytes]]:
        """Every file version and commit message stored in any repo, as ``(label, bytes)``."""
        seen: set[tuple[str, str, str]] = set()
        for path in sorted((self.root / "commits").glob("*.json")):
            commit = Commit.from_json(json.loads(path.read_text()))
            yield f"commit {commit.id}", f"{commit.summary}\n{commit.description}".encode()
            for file_path, entry in commit.files.items():
                key = (commit.repo_uid, file_path, entry.oid)
                if key not in seen:
                    seen.add(key)
                    yield f"{commit.repo_uid}:{file_path}@{entry.oid}", self.blob_path(entry.oid).read_bytes()
