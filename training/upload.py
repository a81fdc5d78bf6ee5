"""Uploading the output folder to a model repo (private by default), retrying transient Hub errors."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from training.exitcodes import UploadError
from training.spec import OutputRepo

log = logging.getLogger(__name__)
T = TypeVar("T")

# Resumable state never goes to the model repo, whatever ends up in the output folder.
UPLOAD_IGNORE = ["checkpoints/*", "**/checkpoints/*", "checkpoint-*/*", "step-*/*", "*.pt", "*.ckpt.tmp", ".tmp*"]


def _is_transient(exc: BaseException) -> bool:
    from huggingface_hub.errors import HfHubHTTPError

    from training.base_check import is_network_error

    if isinstance(exc, HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else None
        return status is None or status == 429 or status >= 500
    return is_network_error(exc)  # huggingface_hub's client raises httpx2 errors, not httpx ones


def with_retries(fn: Callable[[], T], what: str, attempts: int = 4, base_delay: float = 1.0) -> T:
    """Call ``fn``; retry transient Hub errors (5xx, 429, connection) with exponential backoff."""
    for i in range(attempts):
        try:
            return fn()
        except Exception as e:
            if i == attempts - 1 or not _is_transient(e):
                raise
            delay = base_delay * 2**i
            log.warning("%s failed (%s); retrying in %.0fs", what, type(e).__name__, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def upload_outputs(output_dir: Path, repo: OutputRepo, *, commit_message: str = "Upload DreamBooth training outputs",
                   attempts: int = 4, base_delay: float = 1.0) -> str:  # fmt: skip
    """Create ``repo`` (private unless told otherwise; existing is fine) and upload ``output_dir``; return its URL.

    Raises ``UploadError`` (exit code 4) when the Hub refuses or keeps failing; the outputs stay on disk.
    """
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        url = with_retries(
            lambda: api.create_repo(repo.repo_id, repo_type="model", private=repo.private, exist_ok=True),
            "create_repo", attempts, base_delay,
        )  # fmt: skip
        with_retries(
            lambda: api.upload_folder(
                repo_id=repo.repo_id,
                repo_type="model",
                folder_path=str(output_dir),
                commit_message=commit_message,
                ignore_patterns=UPLOAD_IGNORE,
            ),
            "upload_folder", attempts, base_delay,
        )  # fmt: skip
    except Exception as e:
        raise UploadError(f"uploading to {repo.repo_id} failed: {type(e).__name__}: {e}") from e
    return str(url)
