"""Building queues for tests: a LocalQueue in a temp folder, or a HubQueue on a fresh repo in the emulator."""

from __future__ import annotations

import uuid
from pathlib import Path

from huggingface_hub import HfApi, hf_hub_download

from scheduler.queue.base import TaskQueue
from scheduler.queue.document import QUEUE_FILE
from scheduler.queue.local import LocalQueue
from scheduler.retry import RetryPolicy

FAST_RETRY = RetryPolicy(attempts=6, base_s=0.01, max_s=0.1)


def unique_repo(owner: str = "alice", stem: str = "queue") -> str:
    return f"{owner}/{stem}-{uuid.uuid4().hex[:8]}"


def make_hub_queue(hub, token: str, repo_id: str | None = None, **kwargs):
    from scheduler.queue.hub import HubQueue

    api = HfApi(endpoint=hub.url, token=token)
    kwargs.setdefault("retry", FAST_RETRY)
    return HubQueue(api, repo_id or unique_repo(), **kwargs)


def queue_file_text(queue: TaskQueue) -> str:
    """The stored queue file, read the way a person would see it."""
    if isinstance(queue, LocalQueue):
        return (queue.folder / QUEUE_FILE).read_text(encoding="utf-8")
    path = hf_hub_download(queue.repo_id, QUEUE_FILE, repo_type="dataset", token=queue.api.token, endpoint=queue.api.endpoint, force_download=True)
    return Path(path).read_text(encoding="utf-8")


def stored_files(queue: TaskQueue) -> list[str]:
    """Every file the queue keeps, as paths relative to its folder or repo."""
    if isinstance(queue, LocalQueue):
        return sorted(str(p.relative_to(queue.folder)) for p in queue.folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    return sorted(queue.api.list_repo_files(queue.repo_id, repo_type="dataset"))


def store_checkpoint(
    queue: TaskQueue, task_id: str, data: bytes = b"weights", name: str = "trainable.safetensors"
) -> str:
    """Put a checkpoint file (``name``: the LoRA's ``trainable.safetensors``, the ``optimizer.safetensors`` state...)
    where the worker mirrors a task's checkpoints (as the trainer does); returns its path."""
    from scheduler.queue.document import CHECKPOINTS_DIR

    path = f"{CHECKPOINTS_DIR}/{task_id}/step-00000002/{name}"
    if isinstance(queue, LocalQueue):
        target = queue.folder / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    else:
        queue.api.upload_file(path_or_fileobj=data, path_in_repo=path, repo_id=queue.repo_id, repo_type="dataset")
    return path
