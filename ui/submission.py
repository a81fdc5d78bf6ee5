"""What happens when Train is pressed: validate, ask before a repeat, check the base model and the output repo,
enqueue, wake the worker and say what happens next.

Nothing is stored on error; a task identical to one queued minutes ago waits for "Queue it again"; the base model
and the output repo are checked on the Hub (one or two calls each) before any hardware is requested. Local mode
answers at once; on a Space the answer waits briefly for the worker's hardware request, never while it trains.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from contract.hub_dataset import DatasetSource
from contract.params import SCHEDULE_DEFAULTS
from contract.settings import hub_offline
from contract.text import md_code
from scheduler.dataset_check import DatasetCheck, DatasetRefused, check_dataset
from scheduler.output_names import OutputChoice, choose_output_repo, default_output_repo, write_problem
from scheduler.task import Task, TaskStatus
from scheduler.validation import CAPTIONS_LABEL, LIMITS, split_captions, submission_warnings, validate_submission
from training.base_check import Probe, probe_base_model
from training.families import find_family
from training.pairs import describe_pairs, pair_problems
from training.spec import TrainParams
from ui.auth import is_owner
from ui.context import AppContext
from ui.duplicates import submission_fingerprint
from ui.estimate import hardware_label
from ui.fit_check import check_fit
from ui.limits import output_namespace, output_repo_problem, user_limit_problem
from ui.local_device import local_device

if TYPE_CHECKING:
    from contract.catalog import RecipeInfo

WORKER_REPLY_S = 8.0  # on a Space: how long the answer waits for the worker's word on the hardware move
# Worker phases during which the answer never waits (the worker's loop is busy with a training run).
BUSY_PHASES = frozenset({"preparing", "downloading", "starting trainer", "training"})
# The form's fields a recipe may fix (shown read-only); the common ones every recipe takes, the others only the
# recipes that list them in their ``form_fields`` (the LoRA rank: hidden for the full fine-tune).
RECIPE_FIELDS = ("steps", "learning_rate", "rank", "resolution")
# The schedule settings of the Advanced settings (``ui.advanced``): every recipe takes them, and a recipe may fix them.
SCHEDULE_FIELDS = tuple(SCHEDULE_DEFAULTS)
# The Advanced settings' "Score checkpoints" (``params.score``): every recipe takes it, and a recipe may fix it.
SCORE_FIELD = "score"
SCORE_DEFAULT: bool = TrainParams.score  # the trainer's default: on
# The Advanced settings' "Write captions" (``params.auto_captions``): off by default, in the task only when on.
CAPTIONS_FIELD = "auto_captions"
COMMON_FIELDS = frozenset({"steps", "learning_rate", "resolution", *SCHEDULE_FIELDS, SCORE_FIELD, CAPTIONS_FIELD})
KINDS = {"steps": int, "learning_rate": float, "rank": int, "resolution": int, "lr_scheduler": str,
         "lr_warmup_steps": int, "snr_gamma": float}  # fmt: skip


@dataclass(frozen=True)
class SubmitOutcome:
    """The answer to one submission: Markdown for the user, whether a task was queued, and whether the user is asked
    to confirm a repeat of a recent identical task ("Queue it again")."""

    message: str
    task: Task | None = None
    confirm: bool = False

    @property
    def queued(self) -> bool:
        return self.task is not None



def uploaded_paths(files: Any) -> list[Path]:
    """Paths from a ``gr.File(file_count="multiple")`` value (strings or file objects): images and ``.txt``
    captions."""
    paths = []
    for item in files or []:
        paths.append(Path(item if isinstance(item, str) else getattr(item, "name", item)))
    return paths


def image_paths(files: Any) -> list[Path]:
    """The images of an upload (``uploaded_paths`` without the ``.txt`` captions): what the preview shows and the
    photo counts count."""
    return split_captions(uploaded_paths(files))[0]



def lists_field(info: RecipeInfo | None, name: str) -> bool:
    """Whether a recipe reads form field ``name`` at all (a common field, or one in its ``form_fields``)."""
    return name in COMMON_FIELDS or info is None or name in info.form_fields


def uses_field(ctx: AppContext, recipe: str, name: str) -> bool:
    """Whether ``recipe`` takes form field ``name`` from the user (not ignored, not fixed by the recipe)."""
    info = ctx.recipes.get(recipe)
    return lists_field(info, name) and (info is None or name not in info.fixed_params)


def build_task(ctx: AppContext, user: str, values: dict[str, Any], dataset: DatasetCheck | None = None) -> Task:
    """The Task for a validated submission; ``params`` holds only keys the trainer knows, and none the recipe
    ignores or fixes itself. ``score`` is always written (the form's value, else the default: on)."""
    recipe = values["recipe"]
    class_prompt = (values.get("class_prompt") or "").strip() or None
    params: dict[str, Any] = {
        "prior_preservation": class_prompt is not None,
        "validation_prompts": [values["instance_prompt"].strip()],
    }
    for name in (*RECIPE_FIELDS, *SCHEDULE_FIELDS):
        if uses_field(ctx, recipe, name) and values.get(name) is not None:
            params[name] = KINDS[name](values[name])
    if uses_field(ctx, recipe, SCORE_FIELD):
        params[SCORE_FIELD] = SCORE_DEFAULT if values.get(SCORE_FIELD) is None else values[SCORE_FIELD] is True
    if uses_field(ctx, recipe, CAPTIONS_FIELD) and values.get(CAPTIONS_FIELD) is True:
        params[CAPTIONS_FIELD] = True
    return Task(
        instance_prompt=values["instance_prompt"].strip(),
        submitted_by=user,
        recipe=recipe,
        base_model=values["base_model"],
        class_prompt=class_prompt,
        params=params,
        hardware=values["hardware"],
        output_repo=values["output_repo"].strip(),
        private=bool(values["private"]),
        max_attempts=int(ctx.settings.max_attempts),
        deadline_s=float(ctx.settings.deadline_s),
        dataset=dataset.source if dataset is not None else None,
    )


#: the form's dataset field (``dataset_answer``; the CLI also takes a config, a split and the columns)
DATASET_HELP = ("Instead of photos: a dataset id whose first image column (split train) holds 1 to 200 images, read "
                "by the trainer with HF_TOKEN, never copied into the queue")  # fmt: skip


def dataset_answer(ctx: AppContext, name: str, owner: bool) -> DatasetCheck | str:
    """The "Or a Hub dataset" field checked as the trainer will read it (``scheduler.dataset_check``): with the
    Space's token for the owner; for anyone else only a public dataset (the owner's private ones stay theirs)."""
    token = ctx.settings.hf_token if owner else None
    try:
        return check_dataset(DatasetSource(name), token, local_folders=ctx.local and owner)
    except DatasetRefused as exc:
        return str(exc) + ("" if owner else " Only the Space's owner may train on a private dataset.")
    except Exception as exc:  # noqa: BLE001 - an unclassified failure is still "could not check", never a crash
        return f"Dataset: {name!r} could not be checked ({type(exc).__name__}: {exc}); try again."


def validate(ctx: AppContext, images: list[Path], values: dict[str, Any], owner: bool = True,
             captions: list[Path] | None = None) -> list[str]:  # fmt: skip
    """Every problem with the form's values and the uploaded photos and ``.txt`` captions (empty list: ready to
    enqueue). Non-owners get only the offered base models; fields the recipe ignores or fixes are not checked.
    A dataset named instead of photos is checked later (``dataset_answer``, on the Hub)."""
    s = ctx.settings
    recipe = values["recipe"]
    dataset = (values.get("dataset") or "").strip()
    if dataset and (images or captions):
        return ["Give photos or a Hub dataset, not both: clear the upload or the dataset field."]

    def used(name: str) -> Any:
        return values.get(name) if uses_field(ctx, recipe, name) else None

    return validate_submission(
        instance_prompt=values["instance_prompt"],
        class_prompt=values.get("class_prompt") or None,
        images=images,
        hardware=values["hardware"],
        output_repo=values["output_repo"],
        steps=used("steps"),
        learning_rate=used("learning_rate"),
        rank=used("rank"),
        resolution=used("resolution"),
        base_model=values["base_model"],
        base_models=None if owner else list(s.base_models),  # the owner may name any model; others pick one offered
        recipe=recipe,
        recipes=list(ctx.recipes),
        allow_cpu_training=bool(s.allow_cpu_training or s.local),
        captions=captions or (),
        lr_scheduler=used("lr_scheduler"),
        lr_warmup_steps=used("lr_warmup_steps"),
        snr_gamma=used("snr_gamma"),
        score=used(SCORE_FIELD),
        auto_captions=used(CAPTIONS_FIELD),
        limits=dataclasses.replace(LIMITS, min_images=0) if dataset else LIMITS,
    )


def nothing_queued(problems: list[str]) -> str:
    return "**Nothing was queued. Please fix:**\n" + "\n".join(f"- {p}" for p in problems)


def base_model_answer(ctx: AppContext, base_model: str) -> tuple[str | None, Probe | None]:
    """The answer when the base model cannot be used (one or two Hub calls, no weights), else None; and what the
    check found (its ``model_index.json`` and file list, for ``ui.fit_check``)."""
    s = ctx.settings
    try:
        probe = probe_base_model(base_model, token=s.hf_token, endpoint=s.hf_endpoint)
    except Exception as exc:  # noqa: BLE001 - an unclassified failure is still "could not check", never a crash
        return (f"**Nothing was queued.** The base model {base_model!r} could not be checked "
                f"({type(exc).__name__}: {exc}); try again."), None  # fmt: skip
    problem = probe.problem
    if problem is None:
        return None, probe
    message = (problem.message[:1].upper() + problem.message[1:]).rstrip(".")
    if problem.retryable:
        advice = "" if "try again" in message.lower() else " Try again."
    else:
        advice = "" if "submit again" in message else " Choose another base model, or fix this one and submit again."
    return f"**Nothing was queued.** {message}.{advice}", probe


def pairs_problems(probe: Probe | None, images: list[Path], captions: object = None) -> list[str]:
    """The upload checked against the base model's family (``training.pairs``): an edit model needs before/after
    pairs, any other model refuses them; an edit model's instructions are not written by a captioner (``captions``:
    the "Write captions" box)."""
    family = find_family(probe.index) if probe is not None and probe.index else None
    if family is None:
        return pair_problems(images, edits=False, family_label="this base model")
    problems = pair_problems(images, edits=family.edits, family_label=family.label)
    if family.edits and captions is True:
        problems.append(f"{CAPTIONS_LABEL}: a {family.label} pair's .txt is its edit instruction, which a captioning "
                        "model cannot write; turn it off and give each pair its instruction.")  # fmt: skip
    return problems


def output_api(ctx: AppContext) -> tuple[Any, str | None] | str:
    """The HfApi that checks output repos and the namespace a bare name goes to: the Space's own api; locally one
    made from HF_TOKEN (uploads happen only then). (None, None) when nothing is uploaded; a message on failure."""
    s = ctx.settings
    if not ctx.local:
        return ctx.api, None
    if not s.hf_token or hub_offline():  # offline mode: nothing is uploaded (the model stays in its folder)
        return None, None
    from huggingface_hub import HfApi

    api = HfApi(endpoint=s.hf_endpoint, token=s.hf_token)
    try:
        return api, api.whoami()["name"]
    except Exception as exc:  # noqa: BLE001 - the upload would fail too: say so now
        return f"Output model repo: could not ask {s.hf_endpoint} whose token HF_TOKEN is ({type(exc).__name__}); try again."


def pick_output_repo(ctx: AppContext, user: str, owner: bool, values: dict[str, Any], tasks: list[Task] | None
                     ) -> OutputChoice | str:  # fmt: skip
    """Where the model goes: the asked repo, or a free ``-2``... name when it belongs to something else; a message
    when no name can be used, or when the token that uploads cannot create it (``write_problem``). Local runs without
    a token upload nothing and keep the name."""
    repo_id = values["output_repo"].strip()
    found = output_api(ctx)
    if isinstance(found, str):
        return found
    api, namespace = found
    if api is None:
        return OutputChoice(repo_id)
    instead = None if owner else default_output_repo(user, values["instance_prompt"], False, output_namespace(
        ctx.settings, user), class_prompt=values.get("class_prompt"))  # fmt: skip
    problem = write_problem(api, repo_id, instead=instead)  # the token that uploads must be able to create it
    if problem:
        return problem
    tasks = ctx.queue.list() if tasks is None else tasks
    choice = choose_output_repo(api, repo_id, values["instance_prompt"], tasks, namespace=namespace)
    if isinstance(choice, OutputChoice) and not owner and choice.repo_id != repo_id:
        problem = output_repo_problem(ctx.settings, user, choice.repo_id, tasks, api)
        if problem:
            return problem
    return choice


def worker_busy(ctx: AppContext) -> bool:
    """Whether the worker is in a training run now (its loop will not answer for minutes)."""
    status = ctx.worker.status.snapshot()
    return status.phase in BUSY_PHASES or any(t.status is TaskStatus.RUNNING for t in status.tasks)


def submit(ctx: AppContext, user: str, files: Any, values: dict[str, Any], *, confirm: bool = False,
           session: str | None = None) -> SubmitOutcome:  # fmt: skip
    """Validate, ask before a repeat, check the base model and the output repo, enqueue and wake the worker.

    Local mode answers at once; on a Space the answer waits briefly for the worker's hardware request (never while
    it trains). ``confirm`` queues a repeat of a recent identical task. ``session``: the browser session that sent it
    (Gradio's upload copies that another session's form still shows are not removed: ``ui.uploads``)."""
    uploads = uploaded_paths(files)  # the photos and their .txt captions, stored together
    images, captions = split_captions(uploads)
    if ctx.local:
        values = {**values, "hardware": values.get("hardware") or ctx.settings.train_hardware}
    owner = is_owner(ctx.settings, user)
    problems = validate(ctx, images, values, owner=owner, captions=captions)
    tasks: list[Task] | None = None
    if not owner:  # what a non-owner may spend and write, checked with the rest so every problem shows at once
        tasks, periods = ctx.queue.list_with_billing()  # the caps count what was billed (``ui.limits``)
        status = ctx.worker.status.snapshot()
        for problem in (user_limit_problem(ctx.settings, user, tasks, periods=periods, jobs=status.jobs,
                                           hardware=values.get("hardware"), prices=status.job_prices or None),
                        output_repo_problem(ctx.settings, user, values["output_repo"].strip(), tasks, ctx.api)):  # fmt: skip
            if problem:
                problems.append(problem)
    if problems:
        return SubmitOutcome(nothing_queued(problems))

    fingerprint = submission_fingerprint(user, values, uploads)
    if not confirm and ctx.recent.candidate(fingerprint) is not None:
        tasks = ctx.queue.list() if tasks is None else tasks
        earlier = ctx.recent.duplicate_of(fingerprint, tasks)
        if earlier is not None:
            return SubmitOutcome(duplicate_message(earlier), confirm=True)

    dataset = None
    if name := (values.get("dataset") or "").strip():
        dataset = dataset_answer(ctx, name, owner)
        if isinstance(dataset, str):
            return SubmitOutcome(nothing_queued([dataset]))
    answer, probe = base_model_answer(ctx, values["base_model"])
    if answer:
        return SubmitOutcome(answer)
    problems = pairs_problems(probe, images, values.get(CAPTIONS_FIELD))
    if problems:
        return SubmitOutcome(nothing_queued(problems))
    fits = check_fit(build_task(ctx, user, values, dataset), probe)
    if fits.problem:
        return SubmitOutcome(nothing_queued([fits.problem]))
    choice = pick_output_repo(ctx, user, owner, values, tasks)
    if isinstance(choice, str):
        return SubmitOutcome(nothing_queued([choice]))

    task = ctx.queue.enqueue(build_task(ctx, user, {**values, "output_repo": choice.repo_id}, dataset), uploads)
    ctx.recent.remember(fingerprint, task.id)
    remove_uploads(ctx.uploads.take(session, uploads))  # the queue holds them now; copies no other tab shows go
    ctx.worker.forget_refusal(task.id)
    busy = worker_busy(ctx)
    after = ctx.worker.status.loops
    ctx.worker.wake()
    if not ctx.local and not busy:  # the answer can tell whether the GPU was granted
        ctx.worker.wait_for_loop(after, WORKER_REPLY_S)
    notes = ([choice.note] if choice.note else []) + fits.notes
    notes += [f"**Warning:** {w[:1].upper()}{w[1:]} It was queued anyway: cancel it in the **Queue** tab to add photos."
              for w in submission_warnings(dataset.images if dataset else len(images))]  # fmt: skip
    what = f"the {dataset.images} images of dataset {md_code(dataset.source.describe())}" if dataset else None
    what = what or describe_pairs(images)  # an edit model's pairs
    return SubmitOutcome(queued_message(ctx, task, busy, what) + "".join(f"\n\n{n}" for n in notes), task=task)


def submit_task(ctx: AppContext, user: str, files: Any, values: dict[str, Any], *, confirm: bool = False) -> str:
    """``submit``'s Markdown answer."""
    return submit(ctx, user, files, values, confirm=confirm).message


def duplicate_message(task: Task, now: float | None = None) -> str:
    """Asks before queueing the same task again."""
    minutes = max(0, int(((time.time() if now is None else now) - task.created_at) // 60))
    when = "less than a minute ago" if minutes < 1 else f"{minutes} min ago"
    return (f"**Nothing was queued yet: this is the same task as `{task.id}`** (same prompt, photos and settings), "
            f"queued {when} (now {task.status.value}). Press **Queue it again** to train it a second time, or change "
            "something.")  # fmt: skip


def shown_uploads(ctx: AppContext, request: Any, files: Any) -> Any:
    """Note that ``request``'s session (its browser tab) shows ``files`` now (``ui.uploads``); returns ``files``."""
    ctx.uploads.hold(getattr(request, "session_hash", None), uploaded_paths(files))
    return files


def remove_uploads(paths: list[Path]) -> None:
    """Delete Gradio's copies of uploaded files (and their hashed folders, once empty)."""
    for path in paths:
        path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            path.parent.rmdir()


def queued_message(ctx: AppContext, task: Task, busy: bool = False, what: str | None = None) -> str:
    """What happens next for a just-queued task (``busy``: the worker is training another task; ``what``: what it
    trains on, when not its photos)."""
    count = task.images.count if task.images else 0
    head = f"**Task `{task.id}` queued** with {what or f'{count} photo' + ('' if count == 1 else 's')}."
    if ctx.local:
        after = " It starts when the task training now finishes." if busy else ""
        return head + f" Training runs on this machine ({local_device(ctx.worker).name}).{after} Follow it in the **Run** tab."
    if getattr(ctx.settings, "uses_jobs", False):
        return head + jobs_next_step(ctx, task)
    if busy:
        return head + " It trains after the task training now; follow it in the **Queue** and **Run** tabs."
    status = ctx.worker.status.snapshot()
    hw = status.hardware
    if status.phase == "refused":
        return head + f" The GPU was not granted: {status.message}"
    if hw is not None and hw.current == task.hardware:
        return head + f" This Space already runs on {hardware_label(task.hardware)}: training starts shortly."
    return head + (
        f" The Space is moving to {hardware_label(task.hardware)}. It restarts there, so **this page will disconnect "
        "and reconnect** in a few minutes; the task is safe in the queue and its progress shows in the **Run** tab."
    )


def jobs_next_step(ctx: AppContext, task: Task) -> str:
    """What happens next in Jobs mode: the task trains as a Hugging Face Job (this Space stays on CPU), now or when
    a Job slot is free. Why a Job was refused (the owner's credit, token or flavor) is told to the owner only."""
    status = ctx.worker.status.snapshot()
    where = hardware_label(task.hardware, status.job_prices.get(task.hardware))
    if status.phase == "refused" and is_owner(ctx.settings, task.submitted_by):
        return f" Its Job was not started: {status.message}"
    return (f" It trains as a Hugging Face Job on {where}, up to {ctx.settings.max_parallel_jobs} at once; this Space"
            " stays on CPU and does not restart. Follow it in the **Run** tab.")  # fmt: skip
