"""Checks of tasks read back from the queue, before the worker acts on them.

Anyone with write access to the queue (repo or folder) can edit ``queue.json``, and its fields flow into paths,
downloads and spending. ``stored_task_problem`` says why a stored task must not be acted on; ``vet_tasks`` replaces
such tasks by FAILED copies whose ``last_error`` starts with ``rejected:``, which nothing in the lifecycle acts on.
Pure functions (no I/O beyond resolving paths); this module imports nothing of ``scheduler.queue``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath
from typing import Any

from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from contract.flavors import FLAVORS, is_gpu, is_jobs_only
from scheduler.billing import GpuPeriod
from scheduler.task import RunRecord, Task, TaskStatus
from scheduler.validation import LIMITS, check_prompt

IMAGES_DIR = "images"
REJECTED = "rejected: "
# Client-generated ids are ``uuid4().hex[:12]``; the CLI's --id accepts any such safe name (one path component).
TASK_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
RECIPE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
COMMIT_RE = re.compile(r"[0-9a-f]{40}")
MAX_PARAMS, MAX_PARAM_CHARS, MAX_PARAM_ITEMS = 64, 10_000, 100
MAX_TEXT_CHARS = 2000  # submitted_by, result_url
# Bounds of a run record that may feed an estimate (a forged or broken one must not skew the median).
MAX_STEPS_PER_S, MAX_RUN_S, MAX_RESOLUTION, MAX_BATCH = 1000.0, 7 * 24 * 3600.0, 8192, 1024


@dataclasses.dataclass
class UnreadableTask(Task):
    """Placeholder for a stored entry that is not a task record: shown FAILED, written back unchanged (``raw``)."""

    raw: Any = None
    problem: str = ""


def unreadable(raw: Any, index: int, problem: str) -> UnreadableTask:
    """The placeholder of entry ``index`` of the stored task list."""
    raw_id = raw.get("id") if isinstance(raw, dict) else None
    task_id = raw_id[:64] if isinstance(raw_id, str) and raw_id else f"unreadable-{index}"
    by = raw.get("submitted_by") if isinstance(raw, dict) else None
    reason = f"unreadable task entry: {problem}"
    return UnreadableTask(
        instance_prompt="", submitted_by=by if isinstance(by, str) else "", id=task_id, status=TaskStatus.FAILED,
        last_error=REJECTED + reason, created_at=0.0, updated_at=0.0, raw=raw, problem=reason,
    )  # fmt: skip


def is_safe_task_id(task_id: object) -> bool:
    """Whether ``task_id`` can name a folder: letters, digits, ``-`` and ``_`` only, at most 64 characters."""
    return isinstance(task_id, str) and TASK_ID_RE.fullmatch(task_id) is not None


def images_folder(task_id: str) -> str:
    """The task's images folder in a queue (``images/<id>``). ValueError for an unsafe id."""
    if not is_safe_task_id(task_id):
        raise ValueError(f"Unsafe task id {task_id!r}.")
    return f"{IMAGES_DIR}/{task_id}"


def _images_ref_problem(task: Task) -> str | None:
    """What both queues require first: an id that can name a folder, and a reference to the task's images."""
    if not is_safe_task_id(task.id):
        return f"id {task.id!r} is not a safe task id"
    if task.images is None:
        return "the task has no images"
    return None


def hub_images_problem(task: Task, repo_id: str) -> str | None:
    """Why ``task.images`` is not the task's own folder in queue repo ``repo_id``, or None."""
    if problem := _images_ref_problem(task):
        return problem
    ref = task.images
    assert ref is not None
    if ref.repo_id != repo_id:
        return f"its images are in {ref.repo_id or 'a local folder'!r}, not in the queue repo {repo_id}"
    path = PurePosixPath(ref.path)
    parts = ref.path.split("/")
    if ref.path.startswith("/") or "\\" in ref.path or any(p in ("", ".", "..") for p in parts):
        return f"images path {ref.path!r} is not a plain relative path"
    if path.parts[:2] != (IMAGES_DIR, task.id):
        return f"images path {ref.path!r} is outside {images_folder(task.id)}/"
    if ref.revision is not None and not COMMIT_RE.fullmatch(ref.revision):
        return f"images revision {ref.revision!r} is not a commit id"
    return None


def local_images_problem(task: Task, queue_dir: Path) -> str | None:
    """Why ``task.images`` is not the task's own folder in local queue ``queue_dir``, or None."""
    if problem := _images_ref_problem(task):
        return problem
    ref = task.images
    assert ref is not None
    if ref.repo_id is not None:
        return f"its images are in Hub repo {ref.repo_id!r}, but this queue is a local folder"
    root = (Path(queue_dir) / IMAGES_DIR).resolve()
    try:
        inside = Path(ref.path).resolve().relative_to(root).parts[:1] == (task.id,)
    except (ValueError, OSError):
        inside = False
    if not inside:
        return f"images path {ref.path!r} is outside {root / task.id}"
    return None


def _repo_id_problem(label: str, value: str) -> str | None:
    try:
        validate_repo_id(value)
    except HFValidationError:
        return f"{label} {value!r} is not a valid repo id"
    return None


def _simple(value: Any) -> bool:
    if isinstance(value, str):
        return len(value) <= MAX_PARAM_CHARS
    if isinstance(value, float):
        return math.isfinite(value)
    return value is None or isinstance(value, bool | int)


def params_problem(params: dict[str, Any]) -> str | None:
    """Why ``params`` is not a small dict of simple JSON values (or lists of them), or None."""
    if len(params) > MAX_PARAMS:
        return f"{len(params)} params; at most {MAX_PARAMS}"
    for key, value in params.items():
        if isinstance(value, list):
            if len(value) > MAX_PARAM_ITEMS or not all(_simple(v) for v in value):
                return f"param {key!r} is not a short list of simple values"
        elif not _simple(value):
            return f"param {key!r} is not a simple value (text, number, boolean or null)"
    return None


def _limits_problem(task: Task, settings: Any) -> str | None:
    if task.hardware not in FLAVORS:
        return f"hardware {task.hardware!r} is not a known flavor"
    if not is_gpu(task.hardware) and not (settings.allow_cpu_training or settings.local):
        return f"hardware {task.hardware!r} has no GPU"
    if is_jobs_only(task.hardware) and not getattr(settings, "uses_jobs", False):
        return f"hardware {task.hardware!r} runs only on Jobs (TRAINING_BACKEND=jobs)"
    if not 0 < task.deadline_s <= settings.deadline_s:
        return f"deadline_s {task.deadline_s:g} is outside (0, {settings.deadline_s:g}] (TASK_DEADLINE_S)"
    if not 1 <= task.max_attempts <= settings.max_attempts:
        return f"max_attempts {task.max_attempts} is outside [1, {settings.max_attempts}] (MAX_ATTEMPTS)"
    if task.attempts < 0:
        return f"attempts {task.attempts} is negative"
    return None


def _content_problem(task: Task, settings: Any) -> str | None:
    if not RECIPE_RE.fullmatch(task.recipe):
        return f"recipe {task.recipe!r} is not a recipe name"
    if task.dataset is not None and (problem := task.dataset.problem(local_folders=settings.local)):
        return f"dataset: {problem}"  # a folder on the machine is named in local mode only
    model = task.base_model
    path_allowed = settings.local or model in settings.base_models
    if not model or (_repo_id_problem("base model", model) and not path_allowed):
        return f"base model {model!r} is not a valid repo id"
    if task.output_repo and (problem := _repo_id_problem("output repo", task.output_repo)):
        return problem
    prompts = check_prompt("instance prompt", task.instance_prompt, LIMITS, required=True)
    prompts += check_prompt("class prompt", task.class_prompt, LIMITS, required=False)
    if prompts:
        return prompts[0].rstrip(".")
    if len(task.submitted_by) > MAX_TEXT_CHARS or len(task.result_url or "") > MAX_TEXT_CHARS:
        return "submitted_by or result_url is too long"
    return params_problem(task.params)


def stored_task_problem(task: Task, settings: Any, *, queue_repo: str | None, queue_dir: Path | None) -> str | None:
    """Why a task read from the queue must not be acted on, or None when it may.

    ``queue_repo`` is the Hub queue's repo id (its images must be there, under ``images/<id>/``); else
    ``queue_dir`` is the local queue folder (images under ``<queue_dir>/images/<id>/``). ``settings`` bounds the
    spending fields (hardware, deadline, attempts)."""
    if isinstance(task, UnreadableTask):
        return task.problem
    if queue_repo:  # both image checks start with the id (it names folders)
        images = hub_images_problem(task, queue_repo)
    elif queue_dir is not None:
        images = local_images_problem(task, queue_dir)
    else:
        images = "the queue's location is unknown"
    return images or _limits_problem(task, settings) or _content_problem(task, settings)


def rejected_copy(task: Task, reason: str) -> Task:
    """A FAILED copy of ``task`` that says why it was rejected (holds no lease, so nothing acts on it)."""
    return dataclasses.replace(task, status=TaskStatus.FAILED, last_error=REJECTED + reason, lease=None, note=None)


def vet_tasks(tasks: Iterable[Task], problem: Callable[[Task], str | None]) -> list[Task]:
    """``tasks`` with each one that has a ``problem`` (or repeats an earlier id) replaced by its rejected copy."""
    seen: set[str] = set()
    out = []
    for task in tasks:
        reason = "another task has the same id" if task.id in seen else problem(task)
        seen.add(task.id)
        out.append(task if reason is None else rejected_copy(task, reason))
    return out


def queue_checker(queue: Any, settings: Any) -> Callable[[Task], str | None]:
    """``stored_task_problem`` bound to ``settings`` and to where ``queue`` is (HubQueue.repo_id, LocalQueue.folder)."""
    repo, folder = getattr(queue, "repo_id", None), getattr(queue, "folder", None)

    def check(task: Task) -> str | None:
        return stored_task_problem(task, settings, queue_repo=repo, queue_dir=folder)

    return check


def vetted_tasks(queue: Any, settings: Any) -> list[Task]:
    """``queue.list()`` with every task that fails ``stored_task_problem`` replaced by its rejected copy."""
    return vet_tasks(queue.list(), queue_checker(queue, settings))


def vetted_with_billing(queue: Any, settings: Any) -> tuple[list[Task], list[GpuPeriod]]:
    """``vetted_tasks`` and the queue's GPU periods, from one read (``TaskQueue.list_with_billing``)."""
    tasks, billing = queue.list_with_billing()
    return vet_tasks(tasks, queue_checker(queue, settings)), billing


def run_problem(run: RunRecord) -> str | None:
    """Why a stored run record must not feed an estimate (no measured speed, or values out of any real range)."""
    if run.steps_per_s is None or not 0 < run.steps_per_s <= MAX_STEPS_PER_S:
        return f"steps_per_s {run.steps_per_s!r} is not a measured speed in (0, {MAX_STEPS_PER_S:g}]"
    for name in ("startup_s", "wrapup_s", "switch_s", "release_s"):
        value = getattr(run, name)
        if value is not None and not 0 <= value <= MAX_RUN_S:
            return f"{name} {value!r} is outside [0, {MAX_RUN_S:g}]"
    if run.resolution is not None and not 0 < run.resolution <= MAX_RESOLUTION:
        return f"resolution {run.resolution} is outside (0, {MAX_RESOLUTION}]"
    if not 0 < run.batch_size <= MAX_BATCH:
        return f"batch_size {run.batch_size} is outside (0, {MAX_BATCH}]"
    return None


def past_runs(tasks: Iterable[Task]) -> list[RunRecord]:
    """The run records of the DONE tasks that may feed an estimate, oldest first."""
    done = sorted((t for t in tasks if t.status is TaskStatus.DONE), key=lambda t: t.finished_at or 0)
    return [t.run for t in done if t.run is not None and run_problem(t.run) is None]
