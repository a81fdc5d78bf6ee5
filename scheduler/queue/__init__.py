"""Task queues: ``HubQueue`` (a private dataset repo) and ``LocalQueue`` (a folder), one contract."""

from __future__ import annotations

from huggingface_hub import HfApi

from contract.settings import Settings
from scheduler.queue.base import InvalidTransition, QueueError, QueueUnavailable, TaskNotFound, TaskQueue
from scheduler.queue.hub import HubQueue
from scheduler.queue.local import LocalQueue
from scheduler.retry import RetryPolicy
from scheduler.stored import queue_checker

__all__ = [
    "HubQueue",
    "InvalidTransition",
    "LocalQueue",
    "QueueError",
    "QueueUnavailable",
    "TaskNotFound",
    "TaskQueue",
    "make_queue",
]


def make_queue(settings: Settings, api: HfApi | None = None) -> TaskQueue:
    """``HubQueue`` on ``settings.queue_repo`` when one is set (always on a Space), else a ``LocalQueue`` under
    ``settings.data_dir``. The queue gets ``settings.keep_photos`` and a ``vet`` of stored tasks
    (``scheduler.stored``). On a Space the queue repo is created here if missing (one request), so that a token
    that cannot create it is reported at start-up (QueueUnavailable); elsewhere it is created on the first write."""
    queue: HubQueue | LocalQueue
    if settings.queue_repo:
        queue = HubQueue(
            api or HfApi(endpoint=settings.hf_endpoint, token=settings.hf_token),
            settings.queue_repo,
            retry=RetryPolicy(base_s=settings.retry_base_s, max_s=max(settings.retry_base_s * 8, 0.01)),
            keep_photos=settings.keep_photos,
        )
        if not settings.local:
            queue.ensure_repo()
    else:
        queue = LocalQueue(settings.local_queue_dir, keep_photos=settings.keep_photos)
    queue.vet = queue_checker(queue, settings)  # stored tasks beyond the settings are never claimed nor requeued
    return queue
