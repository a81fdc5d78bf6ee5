"""Uploading the output folder to a model repo (private by default), retrying transient Hub errors.

A refusal another try will not change (401, 403, 404) raises ``UploadRefusedError`` (exit code 5) with its reason
and fix: the worker then fails the task without training it again, and keeps its final checkpoint in the queue, so
that Retry, once the cause is fixed, resumes at the last step and only uploads.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from training.checkpoint import META_FILE, STATES_FILE, STATES_JSON, WEIGHTS_FILE
from training.exitcodes import UploadError, UploadRefusedError
from training.spec import OutputRepo

log = logging.getLogger(__name__)
T = TypeVar("T")

# Resumable state (``training.checkpoint``'s files: trainable weights with their optimizer state) never goes to the
# model repo, whatever ends up in the output folder. The scored checkpoints' LoRAs (``checkpoints/step-NNNNNN/``, the
# model's own weight files) do: the user may pick another one.
_STATE_FILES = (WEIGHTS_FILE, STATES_FILE, STATES_JSON, META_FILE)
UPLOAD_IGNORE = ["checkpoint-*/*", "step-*/*", *_STATE_FILES, *(f"*/{name}" for name in _STATE_FILES), "*.pt",
                 "*.ckpt.tmp", ".tmp*", "*.tmp"]  # fmt: skip


def _is_transient(exc: BaseException) -> bool:
    from huggingface_hub.errors import HfHubHTTPError

    from training.base_check import is_network_error

    if isinstance(exc, HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else None
        return status is None or status == 429 or status >= 500
    return is_network_error(exc)  # huggingface_hub's client raises httpx2 errors, not httpx ones


#: HTTP statuses of a refusal that no retry changes, with what to do about each
REFUSALS = {
    401: "the Hub does not accept the token (expired or revoked?): set a valid write token as HF_TOKEN",
    403: "the token may not create or write {repo}: give it write access to {namespace}, or choose a repo in a "
         "namespace it can write (OUTPUT_NAMESPACE for the models of users other than the owner)",
    404: "{namespace} does not exist or the token cannot see it: choose an existing user or organization the token "
         "can write",
}  # fmt: skip


def refusal(exc: BaseException, repo_id: str) -> str | None:
    """The reason and fix of a permanent Hub refusal (401/403/404) of uploading to ``repo_id``; None otherwise."""
    from huggingface_hub.errors import HfHubHTTPError

    if not isinstance(exc, HfHubHTTPError) or exc.response is None:
        return None
    status = exc.response.status_code
    if status not in REFUSALS:
        return None
    namespace = repo_id.split("/")[0] if "/" in repo_id else "the token's account"
    return f"HTTP {status} for {repo_id}; " + REFUSALS[status].format(repo=repo_id, namespace=namespace)


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

    Raises ``UploadRefusedError`` (exit code 5) when the Hub refuses for good (401/403/404), ``UploadError`` (exit
    code 4) when it keeps failing; the outputs stay on disk.
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
                repo_id=url.repo_id,  # the Hub's full id: a bare name lands in the token's account
                repo_type="model",
                folder_path=str(output_dir),
                commit_message=commit_message,
                ignore_patterns=UPLOAD_IGNORE,
            ),
            "upload_folder", attempts, base_delay,
        )  # fmt: skip
    except Exception as e:
        reason = refusal(e, repo.repo_id)
        if reason:
            raise UploadRefusedError(reason) from e
        raise UploadError(f"uploading to {repo.repo_id} failed: {type(e).__name__}: {e}") from e
    return str(url)
