"""The trainer's expected failures and the exit codes they map onto (``contract.events.ExitCode``)."""

from __future__ import annotations

from contract.events import ExitCode


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


class UploadRefusedError(UploadError):
    """The Hub refused the upload for a reason another try will not change (401, 403, 404: the token, its rights,
    the namespace); the trained outputs and the final checkpoint are kept."""

    kind = "upload_refused"
    exit_code = ExitCode.UPLOAD_REFUSED


def is_out_of_memory(exc: BaseException) -> bool:
    """True for CUDA/MPS/CPU allocator out-of-memory errors."""
    import torch

    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
