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
