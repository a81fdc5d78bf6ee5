"""``LocalQueue``: the queue in a folder, for local mode and for tests without the Hub.

Layout (same ``queue.json`` as on the Hub)::

    <folder>/queue.json          the tasks (and their run records), pretty-printed JSON
    <folder>/images/<task id>/   the training images of each task (removed once it is DONE, unless ``keep_photos``)
    <folder>/checkpoints/<id>/   a task's resumable training state, if any (removed with its images)
    <folder>/.queue.lock         cross-process lock (filelock)

Every change holds the lock for its read-modify-write and replaces ``queue.json`` atomically (temp file, fsync,
``os.replace``), so readers never see a half-written file and concurrent writers in other processes never lose
each other's changes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

from filelock import FileLock, Timeout

from scheduler.queue.base import QueueError, QueueUnavailable
from scheduler.queue.document import (
    CHECKPOINTS_DIR,
    IMAGES_DIR,
    QUEUE_FILE,
    DocumentQueue,
    QueueDoc,
    R,
    check_image_paths,
    list_images,
    op_delete,
    op_enqueue,
    stored_files,
)
from scheduler.stored import is_safe_task_id, local_images_problem
from scheduler.task import ImageRef, RunRecord, Task


class LocalQueue(DocumentQueue):
    """A TaskQueue in ``folder`` (created if missing). ``vet`` and ``keep_photos``: see ``DocumentQueue``."""

    def __init__(
        self,
        folder: Path | str,
        lock_timeout_s: float = 60.0,
        clock: Callable[[], float] = time.time,
        *,
        vet: Callable[[Task], str | None] | None = None,
        keep_photos: bool = False,
    ) -> None:
        super().__init__(clock, vet=vet, keep_photos=keep_photos)
        self.folder = Path(folder).expanduser().resolve()
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / IMAGES_DIR).mkdir(exist_ok=True)
        self._file = self.folder / QUEUE_FILE
        self._lock = FileLock(str(self.folder / ".queue.lock"), timeout=lock_timeout_s)

    def __repr__(self) -> str:
        return f"LocalQueue({str(self.folder)!r})"

    def _read(self) -> QueueDoc:
        try:
            return QueueDoc.from_json(self._file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return QueueDoc()

    def _write(self, doc: QueueDoc) -> None:
        fd, tmp = tempfile.mkstemp(prefix=".queue-", suffix=".tmp", dir=self.folder)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(doc.to_json())
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self._file)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _transact(self, edit: Callable[[QueueDoc], R], message: str, after: Callable[[], None] | None = None) -> R:
        """Read, ``edit`` and write back under the lock; then ``after`` (still under the lock) when given."""
        try:
            with self._lock:
                doc = self._read()
                before = doc.to_json()
                result = edit(doc)
                if doc.to_json() != before:
                    self._write(doc)
                if after is not None:
                    after()
                return result
        except Timeout:
            raise QueueUnavailable(f"The local queue in {self.folder} stayed locked for {self._lock.timeout} s.") from None

    def enqueue(self, task: Task, images: Sequence[Path]) -> Task:
        files, count = stored_files(check_image_paths(images))  # the images and their .txt captions
        final_dir = self.folder / IMAGES_DIR / task.id
        staging = self.folder / IMAGES_DIR / f".staging-{uuid.uuid4().hex}"
        staging.mkdir()
        try:
            for name, source in files:
                shutil.copyfile(source, staging / name)
            ref = ImageRef(path=str(final_dir), count=count)

            def edit(doc: QueueDoc) -> Task:
                if doc.find(task.id) is None:  # images and task become visible together, under the lock
                    if final_dir.exists():
                        shutil.rmtree(final_dir)  # left over by an enqueue that died before writing the task
                    os.replace(staging, final_dir)
                return op_enqueue(doc, task, ref, self._clock())

            return self._transact(edit, f"Enqueue task {task.id}")
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)

    def _remove_own(self, task_id: str, *kinds: str) -> None:
        """Remove ``<folder>/<kind>/<task_id>`` for each kind, for a safe id only (a forged id names nothing)."""
        if is_safe_task_id(task_id):
            for kind in kinds:
                shutil.rmtree(self.folder / kind / task_id, ignore_errors=True)

    def delete(self, task_id: str) -> Task:
        def edit(doc: QueueDoc) -> Task:
            task = op_delete(doc, task_id)
            # Under the lock, before the queue file no longer names the task: a crash in between leaves a task
            # without images (its retry fails clearly), never images that nothing refers to.
            self._remove_own(task_id, IMAGES_DIR, CHECKPOINTS_DIR)
            return task

        return self._transact(edit, f"Delete task {task_id}")

    def complete(self, task_id: str, holder: str, result_url: str, run: RunRecord | None = None) -> Task:
        """DONE (with ``run``); unless ``keep_photos``, ``images/<id>/`` and its checkpoints (``checkpoints/<id>/``)
        are removed under the lock once the queue file says so."""
        if self.keep_photos:
            return super().complete(task_id, holder, result_url, run)

        edit = self._done_removing_photos(task_id, holder, result_url, run)

        def remove() -> None:
            self._remove_own(task_id, IMAGES_DIR, CHECKPOINTS_DIR)

        return self._transact(edit, f"Complete task {task_id}", after=remove)

    def fetch_images(self, task: Task, dest: Path) -> Path:
        problem = local_images_problem(task, self.folder)
        if problem:
            raise QueueError(f"Refusing to copy the images of task {task.id}: {problem}.")
        assert task.images is not None
        if task.images.removed:
            raise QueueError(f"The photos of task {task.id} were removed from the queue when it was done.")
        source = Path(task.images.path)
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        for image in list_images(source):
            shutil.copyfile(image, dest / image.name)
        return dest

    def squash_history(self) -> str:
        """Nothing to do: a local queue keeps no history (a removed photo is gone from the disk)."""
        return f"The local queue in {self.folder} keeps no history: nothing to squash."
