"""``HubQueue``: the queue in a private dataset repo on the Hub, changed only by compare-and-swap commits.

Layout of the dataset repo::

    queue.json                 every task (with the run record of each finished one) and the GPU periods
                               (``scheduler.billing``), pretty-printed JSON (readable in the Hub's file viewer)
    images/<task id>/NNN.ext   the training images of each task, committed together with the task; removed in the
                               commit that marks the task DONE unless ``keep_photos`` (they stay in the history
                               until ``squash_history``)
    checkpoints/<task id>/     the trainer's resumable state (LoRA and optimizer), mirrored while it trains; removed
                               with the photos

Why one ``queue.json`` rather than one file per task: a CAS commit guards the whole branch anyway (any commit
moves ``main``), so per-task files would not reduce conflicts, while one file gives (a) a consistent snapshot of
all tasks at one commit, (b) a cheap "did anything change?" check: one HEAD request whose ETag and commit id
are compared with what this process last read or wrote, and (c) a queue that a person can read in one place.

Every change: read ``queue.json`` at the head commit, edit it, ``create_commit(parent_commit=<that commit>)``.
- HTTP 412/409 (someone committed in between): re-read and redo the edit, with jittered backoff, bounded.
- 5xx, 429 or a network error after the commit was sent: the commit may have landed. Each attempt writes a
  unique operation id into ``recent_ops``; the queue is re-read and the attempt counts as done when its id is
  there, so an ambiguous answer neither loses nor duplicates a change.
- Enqueue puts the images and the task into the same commit (both or neither); task ids come from the client,
  so a repeated enqueue is recognised.

Requests (measured against the emulator, see tests/scheduler/test_queue_reliability.py::test_hub_requests_per_operation): an unchanged read costs
1 request (HEAD); a write costs 1 HEAD + 1 preupload + 1 commit when this process holds the latest state (and
complete one more: which checkpoints are there to remove).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, hf_hub_url
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from scheduler.queue.base import InvalidTransition, QueueError, QueueUnavailable
from scheduler.queue.document import (
    CHECKPOINTS_DIR,
    IMAGES_DIR,
    QUEUE_FILE,
    DocumentQueue,
    QueueDoc,
    R,
    check_image_paths,
    new_op_id,
    op_delete,
    op_enqueue,
    stored_files,
)
from scheduler.retry import RetryPolicy, call_with_retries, http_status, is_transient
from scheduler.stored import hub_images_problem, images_folder, is_safe_task_id
from scheduler.task import ImageRef, RunRecord, Task, TaskStatus

CONFLICT_STATUSES = frozenset({409, 412})


def _repo_commit(exc: Exception) -> str | None:
    """The ``X-Repo-Commit`` header of an HTTP error answer (the head commit the Hub looked at), if any."""
    response = getattr(exc, "response", None)
    return response.headers.get("X-Repo-Commit") if response is not None else None


def _content_ids(data: bytes) -> set[str]:
    """The ETags the Hub may give a file with this content: git blob sha1 (regular) or sha256 (LFS)."""
    blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
    return {blob, hashlib.sha256(data).hexdigest()}


@dataclass
class _Known:
    """The queue file as this process last read or wrote it."""

    commit: str | None
    text: str
    etags: set[str] = field(default_factory=set)


class HubQueue(DocumentQueue):
    """A TaskQueue in dataset repo ``repo_id`` (created private on the first write).

    ``retry`` governs transient errors (5xx, 429, network) of each request; ``conflict_attempts`` bounds how many
    times one change is redone after commit conflicts (412), with backoff from ``conflict_backoff``. ``vet`` and
    ``keep_photos``: see ``DocumentQueue``.
    """

    def __init__(
        self,
        api: HfApi,
        repo_id: str,
        *,
        retry: RetryPolicy | None = None,
        conflict_attempts: int = 50,
        conflict_backoff: RetryPolicy | None = None,
        private: bool = True,
        cache_dir: Path | str | None = None,
        clock: Callable[[], float] = time.time,
        vet: Callable[[Task], str | None] | None = None,
        keep_photos: bool = False,
    ) -> None:
        super().__init__(clock, vet=vet, keep_photos=keep_photos)
        self.api = api
        self.repo_id = repo_id
        self.retry_policy = retry or RetryPolicy()
        self.conflict_attempts = conflict_attempts
        self.conflict_backoff = conflict_backoff or RetryPolicy(attempts=conflict_attempts, base_s=self.retry_policy.base_s / 5, max_s=2.0, jitter=1.0)
        self.private = private
        self.cache_dir = cache_dir
        self._known: _Known | None = None
        self._lock = threading.RLock()
        self._repo_ready = False

    def __repr__(self) -> str:
        return f"HubQueue({self.repo_id!r})"

    # --- reading ---------------------------------------------------------------------------------------------

    def _call(self, what: str, fn: Callable[[], R]) -> R:
        """One Hub call with retries on transient errors; what is left is raised as QueueUnavailable."""
        try:
            return call_with_retries(fn, self.retry_policy)
        except (QueueError, RepositoryNotFoundError, EntryNotFoundError, RevisionNotFoundError):
            raise
        except HfHubHTTPError as exc:
            raise QueueUnavailable(f"Could not {what} in queue repo {self.repo_id}: HTTP {http_status(exc)} {exc.server_message or ''}".strip()) from exc
        except Exception as exc:
            if is_transient(exc):
                raise QueueUnavailable(f"Could not {what} in queue repo {self.repo_id}: the Hub did not answer ({type(exc).__name__}).") from exc
            raise

    def _read_state(self) -> tuple[str | None, QueueDoc]:
        """(head commit, document). The commit is None when the repo does not exist yet."""
        url = hf_hub_url(self.repo_id, QUEUE_FILE, repo_type="dataset", revision="main", endpoint=self.api.endpoint)
        try:
            meta = self._call("read the queue", lambda: self.api.get_hf_file_metadata(url=url))
        except RepositoryNotFoundError:
            self._repo_ready = False
            return None, QueueDoc()
        except (EntryNotFoundError, RevisionNotFoundError) as exc:
            # A new queue repo has no queue.json yet; the Hub's 404 still names the head commit.
            head = _repo_commit(exc)
            if head is None:
                head = self._call("read the repo", lambda: self.api.repo_info(self.repo_id, repo_type="dataset")).sha
            self._repo_ready = True
            return head, QueueDoc(revision=head)
        self._repo_ready = True
        known = self._known
        if known is None or meta.etag not in known.etags:
            commit = meta.commit_hash
            path = self._call(
                "download the queue",
                lambda: self.api.hf_hub_download(self.repo_id, QUEUE_FILE, repo_type="dataset", revision=commit, cache_dir=self.cache_dir),
            )
            known = _Known(commit=commit, text=Path(path).read_text(encoding="utf-8"), etags={meta.etag} if meta.etag else set())
        self._known = _Known(commit=meta.commit_hash, text=known.text, etags=known.etags)
        doc = QueueDoc.from_json(known.text)
        doc.revision = meta.commit_hash
        return meta.commit_hash, doc

    def _read(self) -> QueueDoc:
        with self._lock:
            return self._read_state()[1]

    # --- writing ---------------------------------------------------------------------------------------------

    def ensure_repo(self) -> None:
        """Create the private dataset repo if it does not exist yet (one request; retried on transient errors).

        Raises QueueUnavailable with a fix when the token cannot create or reach it."""
        self._repo_ready = False
        self._ensure_repo()

    def _ensure_repo(self) -> None:
        if self._repo_ready:
            return
        try:
            self._call(
                "create the repo",
                lambda: self.api.create_repo(self.repo_id, repo_type="dataset", private=self.private, exist_ok=True),
            )
        except QueueUnavailable as exc:
            raise QueueUnavailable(
                f"{exc} Check that HF_TOKEN is a write token of the owner of {self.repo_id.split('/')[0]!r}."
            ) from exc.__cause__
        self._repo_ready = True

    def _transact(
        self,
        edit: Callable[[QueueDoc], R],
        message: str,
        files: Sequence[tuple[str, Path]] = (),
        delete_folders: Sequence[str] | Callable[[QueueDoc], Sequence[str]] = (),
    ) -> R:
        """Read, ``edit``, commit with ``parent_commit`` (plus ``files`` and ``delete_folders``: a list, or a function
        of the edited document), retried on conflicts; an edit that changes nothing commits nothing."""
        with self._lock:
            in_doubt: dict[str, R] = {}  # op id -> result, for attempts whose outcome is unknown
            delays = self.conflict_backoff
            for attempt in range(self.conflict_attempts):
                commit, doc = self._read_state()
                landed = next((op for op in in_doubt if op in doc.recent_ops), None)
                if landed is not None:
                    return in_doubt[landed]
                if commit is None:
                    self._ensure_repo()
                    commit, doc = self._read_state()
                before = doc.to_json()
                result = edit(doc)
                if doc.to_json() == before:
                    return result
                op_id = new_op_id()
                doc.recent_ops.append(op_id)
                text = doc.to_json()
                operations: list[CommitOperationAdd | CommitOperationDelete] = [
                    CommitOperationAdd(path_in_repo=path, path_or_fileobj=str(local)) for path, local in files
                ]
                folders = delete_folders(doc) if callable(delete_folders) else delete_folders
                operations += [CommitOperationDelete(path_in_repo=f"{folder}/", is_folder=True) for folder in folders]
                operations.append(CommitOperationAdd(path_in_repo=QUEUE_FILE, path_or_fileobj=text.encode("utf-8")))
                try:
                    info = self.api.create_commit(
                        self.repo_id,
                        operations,
                        commit_message=message,
                        commit_description=f"queue operation {op_id}",
                        repo_type="dataset",
                        parent_commit=commit,
                    )
                except Exception as exc:
                    status = http_status(exc)
                    if status in CONFLICT_STATUSES:
                        time.sleep(delays.delay(min(attempt, 6)))
                        continue
                    if not is_transient(exc):
                        if isinstance(exc, HfHubHTTPError):
                            raise QueueUnavailable(f"The Hub refused a change to queue repo {self.repo_id}: HTTP {status} {exc.server_message or ''}".strip()) from exc
                        raise
                    in_doubt[op_id] = result  # the commit may have landed: the next read tells
                    time.sleep(self.retry_policy.delay(min(attempt, 4)))
                    continue
                self._known = _Known(commit=info.oid, text=text, etags=_content_ids(text.encode("utf-8")))
                return result
            raise QueueUnavailable(f"Gave up on '{message}' after {self.conflict_attempts} attempts: the queue repo {self.repo_id} kept changing or failing.")

    # --- operations that need files --------------------------------------------------------------------------

    def enqueue(self, task: Task, images: Sequence[Path]) -> Task:
        uploads, count = stored_files(check_image_paths(images))  # the images and their .txt captions
        folder = f"{IMAGES_DIR}/{task.id}"
        files = [(f"{folder}/{name}", p) for name, p in uploads]
        ref = ImageRef(path=folder, repo_id=self.repo_id, count=count)

        def edit(doc: QueueDoc) -> Task:
            return op_enqueue(doc, task, ref, self._clock())

        stored = self._transact(edit, f"Enqueue task {task.id}", files=files)
        if stored.images is not None and stored.images.revision is None and self._known is not None:
            stored.images.revision = self._known.commit  # a commit that contains the images
        return stored

    def _present(self, folders: Sequence[str]) -> list[str]:
        """Which of ``folders`` exist in the repo (one request): the Hub refuses to delete a missing folder."""
        try:
            found = self._call("look up the task's files", lambda: self.api.get_paths_info(self.repo_id, list(folders), repo_type="dataset"))
        except RepositoryNotFoundError:
            found = []
        return [entry.path for entry in found if entry.path in folders]

    def delete(self, task_id: str) -> Task:
        # Only the task's own folders, named from a safe id; an unsafe id (a forged entry) removes the entry alone.
        folders = [f"{IMAGES_DIR}/{task_id}", f"{CHECKPOINTS_DIR}/{task_id}"] if is_safe_task_id(task_id) else []
        present = self._present(folders) if folders else []

        def edit(doc: QueueDoc) -> Task:
            return op_delete(doc, task_id)

        return self._transact(edit, f"Delete task {task_id} with its images and checkpoints", delete_folders=present)

    def complete(self, task_id: str, holder: str, result_url: str, run: RunRecord | None = None) -> Task:
        """DONE (with ``run``); unless ``keep_photos``, the same commit deletes ``images/<id>/`` and the checkpoints
        trained on them (``checkpoints/<id>/``: LoRA and optimizer state, when the trainer mirrored any), and records
        ``images.removed``."""
        if self.keep_photos or not is_safe_task_id(task_id):
            return super().complete(task_id, holder, result_url, run)
        folder = images_folder(task_id)
        checkpoints = self._present([f"{CHECKPOINTS_DIR}/{task_id}"])  # one request: the Hub refuses a missing folder
        edit = self._done_removing_photos(task_id, holder, result_url, run)

        def photos(doc: QueueDoc) -> list[str]:  # enqueue committed them with the task: there when it has any
            task = doc.find(task_id)
            held = task is not None and task.images is not None and task.images.count > 0
            return ([folder] if held else []) + checkpoints

        message = f"Complete task {task_id} and remove its photos" + (" and checkpoints" if checkpoints else "")
        try:
            return self._transact(edit, message, delete_folders=photos)
        except QueueUnavailable as exc:
            if http_status(exc.__cause__) != 404:
                raise
            # A folder was already gone (removed by hand): ask what is there (one request) and commit without it.
            return self._transact(edit, message, delete_folders=self._present([folder, *checkpoints]))

    def fetch_images(self, task: Task, dest: Path) -> Path:
        problem = hub_images_problem(task, self.repo_id)
        if problem:
            raise QueueError(f"Refusing to fetch the images of task {task.id}: {problem}.")
        ref = task.images
        assert ref is not None
        if ref.removed:
            raise QueueError(f"The photos of task {task.id} were removed from the queue when it was done.")
        dest = Path(dest)
        self._call(
            "download the images",
            lambda: self.api.snapshot_download(
                self.repo_id, repo_type="dataset", revision=ref.revision or "main", allow_patterns=[f"{ref.path}/*"], local_dir=dest
            ),
        )
        folder = dest / ref.path
        if not folder.is_dir():
            raise QueueError(f"The images of task {task.id} are missing from {self.repo_id} ({ref.path}).")
        return folder

    def squash_history(self) -> str:
        """Replace the branch history by one commit holding the current files (``HfApi.super_squash_history``), so
        that removed photos are gone from the Hub. Refused while a task is RUNNING (its pinned images revision would
        vanish); pinned revisions of the other tasks are cleared first (they name commits that are about to go)."""
        with self._lock:
            running = [t.id for t in self._read().tasks if t.status is TaskStatus.RUNNING]
            if running:
                raise InvalidTransition(f"Not squashing the history of {self.repo_id}: task {running[0]} is RUNNING; try again when it has finished.")

            def unpin(doc: QueueDoc) -> int:
                if any(t.status is TaskStatus.RUNNING for t in doc.tasks):
                    raise InvalidTransition(f"Not squashing the history of {self.repo_id}: a task started running.")
                pinned = [t for t in doc.tasks if t.images is not None and t.images.revision]
                for t in pinned:
                    t.images.revision = None  # type: ignore[union-attr]
                return len(pinned)

            self._transact(unpin, "Unpin image revisions before squashing the history")
            self._call(
                "squash the history",
                lambda: self.api.super_squash_history(
                    self.repo_id, repo_type="dataset", commit_message="Squash the queue history (removed photos leave the Hub)"
                ),
            )
            self._known = None
        return f"The history of {self.repo_id} is now one commit holding the current files."
