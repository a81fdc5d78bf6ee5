"""Exit codes of ``python -m training`` and the exceptions that map onto them (the worker's contract)."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit status of a training run."""

    OK = 0
    FAILURE = 1  # anything else (a bug, a crash, an interrupted run)
    BAD_INPUT = 2  # the task or its images are invalid; retrying will not help
    OUT_OF_MEMORY = 3  # the accelerator ran out of memory; a bigger GPU or lighter settings may help
    UPLOAD_FAILED = 4  # training finished, weights are in DIR/output and a checkpoint, but the upload failed


class TrainingError(Exception):
    """Base of the trainer's expected failures; ``kind`` is the progress event's error kind."""

    kind = "internal"
    exit_code = ExitCode.FAILURE


class BadInputError(TrainingError, ValueError):
    """The task spec, the base model or the images are unusable. Raised before any GPU work where possible."""

    kind = "bad_input"
    exit_code = ExitCode.BAD_INPUT


class HubUnreachableError(TrainingError):
    """The Hub could not be reached (or answered 5xx/429) while checking the input; exit code 1, which the worker
    retries."""

    kind = "hub_unreachable"


class UploadError(TrainingError):
    """Uploading the outputs (or a checkpoint) to the Hub failed after retries."""

    kind = "upload"
    exit_code = ExitCode.UPLOAD_FAILED


def is_out_of_memory(exc: BaseException) -> bool:
    """True for CUDA/MPS/CPU allocator out-of-memory errors."""
    import torch

    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
