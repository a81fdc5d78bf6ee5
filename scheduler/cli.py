"""``python -m scheduler``: the operator's command line for the queue and the Space's hardware.

What it prints comes partly from the queue, which others write (a submitter's prompt, a Job's error): every line
goes out through ``say``, which writes control characters and bidi overrides as visible escapes (``\\x1b``), so an
escape sequence in a prompt cannot retitle, clear or rewrite the operator's terminal.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import logging
import sys
import textwrap
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi

from contract.hub_dataset import DEFAULT_SPLIT, MAX_DATASET_IMAGES, DatasetSource
from contract.params import LR_SCHEDULER_CHOICES
from contract.settings import DEFAULT_BASE_MODEL, Settings, SettingsError, hub_offline, load_settings
from contract.text import printable
from scheduler.dataset_check import DatasetCheck, DatasetRefused, check_dataset
from scheduler.hardware import HardwareController, HardwareRefused, HardwareUnavailable, LocalHardware, make_hardware
from scheduler.hardware.space import SpaceHardware
from scheduler.host_ram import DEFAULT_RECIPE
from scheduler.output_names import LOCAL_USER, OutputChoice, choose_output_repo, default_output_repo
from scheduler.queue import HubQueue, InvalidTransition, LocalQueue, QueueError, TaskNotFound, TaskQueue, make_queue
from scheduler.queue.document import list_images
from scheduler.retry import RetryPolicy
from scheduler.stored import is_safe_task_id
from scheduler.task import Task, TaskStatus
from scheduler.validation import split_captions, submission_warnings, validate_task
from training.base_check import DEMO_MODEL, id_problem  # torch-free

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_CONFLICT = 0, 1, 2, 3, 4
#: what the hardware of a task in a local queue is: ``python app.py`` trains it where it runs
THIS_MACHINE = "this machine"

EPILOG = """\
where the queue is:
  --local DIR      a local queue folder (as used by `python app.py` in local mode: ./data/queue)
  --queue REPO     a Hub dataset repo (owner/name), reached with HF_TOKEN and HF_ENDPOINT
  neither          from the settings: QUEUE_REPO (or <owner>/<space>-queue on a Space), else DATA_DIR/queue

exit codes:
  0  success
  1  error (Hub unreachable, hardware refused, ...)
  2  usage or validation error (nothing was changed)
  3  task not found
  4  the task's state does not allow the change (e.g. cancel a DONE task)

examples:
  python -m scheduler --local data/queue submit --images photos/ --prompt "a photo of sks dog" --base-model builtin:demo
  python -m scheduler --queue me/trainer-queue list
  python -m scheduler list --queue me/trainer-queue        # the queue options also go after the command
  python -m scheduler --queue me/trainer-queue cancel 3f2a9c1b7e4d
  python -m scheduler --queue me/trainer-queue squash   # photos removed from the queue leave its history too
  python -m scheduler --space me/trainer hardware
"""


def say(text: object, err: bool = False) -> None:
    """Print ``text`` (lines kept) with every other control character written visibly (``contract.text``)."""
    print(printable(text, keep_newlines=True), file=sys.stderr if err else sys.stdout)


def safe_json(data: Any) -> str:
    """JSON for the terminal: ``json.dumps`` escapes C0, C1 and bidi characters (ASCII only); DEL too here."""
    return json.dumps(data, indent=2).replace("\x7f", "\\u007f")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Wraps help text at spaces only, so a default such as a repo id (``stable-diffusion-v1-5/...``) stays whole."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False, break_long_words=False)


class CliError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def build_parser(settings: Settings | None = None) -> argparse.ArgumentParser:
    """The parser; its help names the defaults ``settings`` give (the built-in ones when they could not be read)."""
    base_model = settings.default_base_model if settings else DEFAULT_BASE_MODEL
    hardware = settings.train_hardware if settings else Settings().train_hardware
    parser = argparse.ArgumentParser(
        prog="python -m scheduler",
        description="Inspect and change the training queue and the Space's hardware.",
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    add_where_options(parser, default=None)
    # The same options after the command (``list --queue me/q``); SUPPRESS keeps a value given before it.
    where_after = argparse.ArgumentParser(add_help=False)
    add_where_options(where_after, default=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_parser = functools.partial(sub.add_parser, parents=[where_after], formatter_class=HelpFormatter)

    p = add_parser("list", help="list tasks, oldest first")
    p.add_argument("--status", choices=[s.value for s in TaskStatus], help="only tasks in this state")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    for name, text in (("show", "print one task as JSON"), ("cancel", "cancel a PENDING or RUNNING task"), ("retry", "put a FAILED or CANCELLED task back to PENDING (or clear a PENDING task's note)"),
                       ("delete", "remove a DONE, FAILED or CANCELLED task with its images and checkpoints (not its model)")):
        add_parser(name, help=text).add_argument("task_id", metavar="ID")

    p = add_parser("submit", help="validate and enqueue a training task (images and task in one commit)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", type=Path, metavar="DIR",
                        help="folder with the subject's photos, and a caption per photo if you like (dog1.jpg + dog1.txt)")  # fmt: skip
    source.add_argument("--dataset", metavar="ID", help="train on a dataset instead: a Hub dataset id (user/name), read "
                        "by the trainer with the token (a private one stays private), or in local mode a folder such as "
                        "an imagefolder with a metadata.jsonl; checked before anything is queued (1 to "
                        f"{MAX_DATASET_IMAGES} images)")  # fmt: skip
    p.add_argument("--dataset-config", metavar="NAME", help="the dataset's config (subset), if it has several")
    p.add_argument("--dataset-split", metavar="NAME", default=DEFAULT_SPLIT, help="its split (default: train)")
    p.add_argument("--image-column", metavar="NAME", help="its image column (default: the first column of images)")
    p.add_argument("--caption-column", metavar="NAME", help="its caption column: each row's text is its image's "
                   "caption, as a .txt beside a photo (default: none, the prompt for every image)")  # fmt: skip
    p.add_argument("--prompt", required=True, help='instance prompt, e.g. "a photo of sks dog"')
    p.add_argument("--class-prompt", help="class prompt for prior preservation, e.g. \"a photo of a dog\"")
    p.add_argument("--recipe", default=DEFAULT_RECIPE, help=f"training recipe (default: {DEFAULT_RECIPE})")
    p.add_argument("--base-model", help="a Hub repo id (namespace/name), or in local mode a folder of a diffusers pipeline "
                   f"or {DEMO_MODEL} (the tiny demo model); default: {base_model} (the DEFAULT_BASE_MODEL setting)")  # fmt: skip
    p.add_argument("--steps", type=int, help="training steps")
    p.add_argument("--learning-rate", type=float, help="learning rate")
    p.add_argument("--rank", type=int, help="LoRA rank")
    p.add_argument("--resolution", type=int, help="training resolution (multiple of 64)")
    p.add_argument("--lr-scheduler", help=f"learning-rate schedule: {', '.join(LR_SCHEDULER_CHOICES)} (default: the "
                   "recipe's, else constant)")  # fmt: skip
    p.add_argument("--lr-warmup-steps", type=int, help="warm-up steps (default: the recipe's, else 0)")
    p.add_argument("--snr-gamma", type=float, help="min-SNR loss weighting, e.g. 5 (default: the recipe's, else off)")
    p.add_argument("--no-score", dest="score", action="store_false", help="do not score the sampling points and the "
                   "base model, nor pick the best checkpoint (default: scored, as in the form)")  # fmt: skip
    p.add_argument("--captions", dest="auto_captions", action="store_true", help="before training, a captioning model "
                   "(CAPTION_MODEL) describes every photo without its own .txt (default: off, as in the form)")  # fmt: skip
    p.add_argument("--hardware", help=f"GPU flavor (default: {hardware}, the TRAIN_HARDWARE setting)")
    p.add_argument("--output-repo", help="model repo for the result; default: named from the prompt as the form names it, "
                   "<owner>/dreambooth-sks-dog (in local mode dreambooth-sks-dog, uploaded to HF_TOKEN's account when "
                   "set); a name that exists and is not this app's model of the subject becomes ...-2")  # fmt: skip
    p.add_argument("--public", action="store_true", help="make the output repo public (default: private)")
    p.add_argument("--submitted-by", help=f"who submits (default: {LOCAL_USER} in local mode, as in the form; else the "
                   "Space's owner (SPACE_ID), or HF_TOKEN's user)")  # fmt: skip
    p.add_argument("--id", dest="task_id", help="task id (default: generated); a repeated id is not enqueued twice")

    p = add_parser("run-task", help="inside a Job (TRAINING_BACKEND=jobs): claim, train, upload and complete one task")
    p.add_argument("task_id", metavar="ID")
    p.add_argument("--holder", help="the lease holder id (the Job's dreambooth-holder label; default: generated)")

    add_parser("squash", help="squash the queue repo's history into one commit (removed photos leave the Hub)")
    add_parser("hardware", help="show the Space's current and requested hardware")
    add_parser("release", help="move the Space back to its idle hardware (pauses it if that keeps failing)")
    return parser


def add_where_options(parser: argparse.ArgumentParser, default: object) -> None:
    """``--queue`` / ``--local`` (one of them) and ``--space``, with ``default`` as their default."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--queue", metavar="REPO", default=default, help="Hub dataset repo of the queue (owner/name)")
    where.add_argument("--local", metavar="DIR", type=Path, default=default, help="local queue folder")
    parser.add_argument("--space", metavar="ID", default=default, help="Space id for `hardware`/`release` (default: SPACE_ID)")


def _api(settings: Settings) -> HfApi:
    return HfApi(endpoint=settings.hf_endpoint, token=settings.hf_token)


def open_queue(args: argparse.Namespace, settings: Settings) -> TaskQueue:
    if args.local is not None:
        return LocalQueue(args.local, keep_photos=settings.keep_photos)
    repo = args.queue or settings.queue_repo
    if repo:  # not make_queue: reading a queue from the shell must not create its repo
        retry = RetryPolicy(base_s=settings.retry_base_s, max_s=max(settings.retry_base_s * 8, 0.01))
        return HubQueue(_api(settings), repo, retry=retry, keep_photos=settings.keep_photos)
    return make_queue(settings)


def open_hardware(args: argparse.Namespace, settings: Settings) -> HardwareController:
    if args.local is not None:
        return LocalHardware(settings.accelerator)
    if args.space:
        return SpaceHardware(
            _api(settings), args.space, settings.accelerator, idle_hardware=settings.idle_hardware,
            sleep_time_s=settings.sleep_time_s, retry=RetryPolicy(base_s=settings.retry_base_s),
        )
    return make_hardware(settings)


def _when(ts: float | None) -> str:
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M") if ts else "-"


def is_local(args: argparse.Namespace, settings: Settings) -> bool:
    """Whether the queue is a local folder (``--local``, or no queue repo in local mode): ``python app.py`` trains
    its tasks on the machine it runs on, whatever their ``hardware`` field says."""
    return args.local is not None or not (args.queue or settings.queue_repo)


def hardware_shown(task: Task, local: bool) -> str:
    return THIS_MACHINE if local else task.hardware


def task_record(task: Task, local: bool) -> dict[str, Any]:
    """The task as JSON for ``show`` and ``list --json`` (in local mode its hardware is "this machine")."""
    record = task.to_dict()
    if local:
        record["hardware"] = THIS_MACHINE
    return record


def format_table(tasks: Sequence[Task], local: bool = False) -> str:
    rows = [("ID", "STATUS", "TRIES", "HARDWARE", "SUBMITTED", "BY", "PROMPT")]
    for t in tasks:
        prompt = t.instance_prompt if len(t.instance_prompt) <= 40 else t.instance_prompt[:37] + "..."
        cells = (t.id, t.status.value, f"{t.attempts}/{t.max_attempts}", hardware_shown(t, local), _when(t.created_at),
                 t.submitted_by, prompt)  # fmt: skip
        rows.append(tuple(printable(c) for c in cells))  # from the queue: one line each, no escape sequence
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=False)) + "  " + r[-1] for r in rows)


def resolve_base_model(model: str, *, local: bool, offered: Collection[str]) -> tuple[str, str | None]:
    """The base model as the task stores it, and why it cannot be used (None when it can).

    The form's rules for the owner (who runs this CLI): one of BASE_MODELS or any Hub repo id; in local mode also
    a folder of a diffusers pipeline (stored as an absolute path, since ``python app.py`` may run elsewhere) or the
    demo model. A Space trains from the Hub, so a folder of this machine is refused for a Hub queue."""
    if model in offered or (local and model == DEMO_MODEL):
        return model, None
    folder = Path(model).expanduser()
    if folder.is_dir():
        if not local:
            return model, (f"Base model: {model!r} is a folder on this machine, which the Space cannot read; give a "
                           "Hub repo id (namespace/name).")  # fmt: skip
        if not (folder / "model_index.json").is_file():
            return model, f"Base model: the folder {model} has no model_index.json (not a diffusers pipeline)."
        return str(folder.resolve()), None
    if id_problem(model) is not None:
        accepted = f"a Hub repo id (namespace/name), a folder of a diffusers pipeline or {DEMO_MODEL}" if local else "a Hub repo id (namespace/name)"
        return model, f"Base model: {model!r} is not a folder here nor a valid Hub repo id; give {accepted}."
    return model, None


def next_step(queue: TaskQueue, settings: Settings, local: bool) -> str:
    """What happens to a just-enqueued task."""
    if not local:
        return "A running Space picks it up at its next poll and asks for the GPU."
    folder = Path(getattr(queue, "folder", settings.local_queue_dir)).resolve()
    if folder == settings.local_queue_dir.resolve():
        return "`python app.py` started in this folder trains it on this machine (a running one picks it up at its next poll)."
    if folder.name == "queue":
        return f"`DATA_DIR={folder.parent} python app.py` trains it on this machine (a running one picks it up at its next poll)."
    return (f"`python app.py` trains the tasks of DATA_DIR/queue on this machine; this queue is {folder}, so it runs "
            "only once that folder is the queue/ folder of the app's DATA_DIR.")  # fmt: skip


def token_user(api: HfApi, settings: Settings) -> str:
    """The Hub user whose token (HF_TOKEN) the CLI writes with."""
    try:
        return str(api.whoami()["name"])
    except Exception as exc:  # noqa: BLE001 - no answer, no token or a refused one: the write would fail too
        raise CliError(f"could not ask {settings.hf_endpoint} whose token HF_TOKEN is ({type(exc).__name__}); set "
                       "HF_TOKEN, or give --submitted-by and --output-repo.", EXIT_ERROR) from exc  # fmt: skip


def submitter_and_repo(args: argparse.Namespace, settings: Settings, local: bool, api: HfApi | None) -> tuple[str, str]:
    """Who submits and the output repo asked for, as the form has them: in local mode ``local`` and
    ``dreambooth-sks-dog`` (a bare name goes to HF_TOKEN's account); on a Hub queue the owner, the Space's
    (SPACE_ID) or else HF_TOKEN's user, and ``<owner>/dreambooth-sks-dog``."""
    if local:
        owner: str | None = LOCAL_USER
    elif settings.space_author or (args.submitted_by and args.output_repo):
        owner = settings.space_author
    else:
        owner = token_user(api or _api(settings), settings)
    submitted_by = args.submitted_by or owner or LOCAL_USER
    repo = args.output_repo or default_output_repo(owner, args.prompt, local, class_prompt=args.class_prompt)
    return submitted_by, repo.strip()


def check_output_repo(task: Task, queue: TaskQueue, settings: Settings, local: bool, api: HfApi | None) -> OutputChoice:
    """The form's check of the output repo (``scheduler.output_names.choose_output_repo``): the asked repo, or the
    next free ``-2``... name when it is not this app's model of the subject. Locally without HF_TOKEN nothing is
    uploaded, so the name is kept."""
    if api is None:
        return OutputChoice(task.output_repo)
    namespace = token_user(api, settings) if local else None  # a bare local name goes to the token's account
    choice = choose_output_repo(api, task.output_repo, task.instance_prompt, queue.list(), namespace=namespace)
    if isinstance(choice, str):
        raise CliError(f"The task was not enqueued:\n  - {choice}", EXIT_USAGE)
    return choice


def _checked_dataset(args: argparse.Namespace, settings: Settings, local: bool) -> DatasetCheck:
    """``--dataset`` and its options, checked as the trainer will read them (with ``HF_TOKEN``)."""
    source = DatasetSource(args.dataset.strip(), config=args.dataset_config, split=args.dataset_split,
                           image_column=args.image_column, caption_column=args.caption_column)  # fmt: skip
    try:
        return check_dataset(source, settings.hf_token, local_folders=local)
    except DatasetRefused as exc:
        raise CliError(f"The task was not enqueued:\n  - {exc}", EXIT_USAGE) from None


def cmd_submit(args: argparse.Namespace, settings: Settings) -> int:
    """Validate and enqueue as the form does: the same files (photos and ``.txt`` captions), checks, params,
    submitter and output repo."""
    local = is_local(args, settings)
    dataset = _checked_dataset(args, settings, local) if args.dataset else None
    if dataset is None and not args.images.is_dir():
        raise CliError(f"--images {args.images}: not a folder.", EXIT_USAGE)
    # the photos and their .txt captions, stored together (as the form's upload); none for a dataset
    uploads = list_images(args.images) if dataset is None else []
    images, captions = split_captions(uploads)
    # locally without a token, or in huggingface_hub's offline mode, nothing is uploaded
    api = _api(settings) if (settings.hf_token and not hub_offline()) or not local else None
    base_model, model_problem = resolve_base_model(args.base_model or settings.default_base_model, local=local,
                                                   offered=settings.base_models)  # fmt: skip
    submitted_by, output_repo = submitter_and_repo(args, settings, local, api)
    prompt, class_prompt = args.prompt.strip(), (args.class_prompt or "").strip() or None
    # ``score`` is always written, as the form writes it
    params: dict[str, Any] = {"prior_preservation": class_prompt is not None, "validation_prompts": [prompt],
                              "score": args.score}  # fmt: skip
    params |= {k: v for k, v in (("steps", args.steps), ("learning_rate", args.learning_rate), ("rank", args.rank),
                                 ("resolution", args.resolution), ("lr_scheduler", args.lr_scheduler),
                                 ("lr_warmup_steps", args.lr_warmup_steps), ("snr_gamma", args.snr_gamma))
               if v is not None}  # fmt: skip
    if args.auto_captions:
        params["auto_captions"] = True
    task = Task(
        instance_prompt=prompt,
        class_prompt=class_prompt,
        submitted_by=submitted_by,
        recipe=args.recipe,
        base_model=base_model,
        params=params,
        hardware=args.hardware or settings.train_hardware,
        output_repo=output_repo,
        private=not args.public,
        max_attempts=settings.max_attempts,
        deadline_s=settings.deadline_s,
        dataset=dataset.source if dataset else None,
    )
    if args.task_id:
        if not is_safe_task_id(args.task_id):
            raise CliError(f"--id {args.task_id!r}: use letters, digits, - and _ only (at most 64).", EXIT_USAGE)
        task.id = args.task_id
    # As the form validates the owner's submission: any base model (checked above), CPU flavors in local mode.
    problems = validate_task(task, images, captions=captions, allow_cpu_training=settings.allow_cpu_training or local)
    if model_problem:
        problems.append(model_problem)
    if problems:
        raise CliError("The task was not enqueued:\n" + "\n".join(f"  - {p}" for p in problems), EXIT_USAGE)
    queue = open_queue(args, settings)
    choice = check_output_repo(task, queue, settings, local, api)
    task.output_repo = choice.repo_id
    count = dataset.images if dataset else len(images)
    for warning in submission_warnings(count):
        say(f"warning: {warning}", err=True)
    stored = queue.enqueue(task, uploads)
    source = f" from dataset {dataset.source.describe()}" if dataset else ""
    say(f"Enqueued task {stored.id} ({count} images{source}, {hardware_shown(stored, local)}) in {queue!r}; output "
        f"repo: {stored.output_repo}.")  # fmt: skip
    if choice.note:
        say(choice.note.replace("**", ""))
    say(next_step(queue, settings, local))
    return EXIT_OK


def cmd_run_task(args: argparse.Namespace, settings: Settings) -> int:
    """The Job's entry point: the same claim / train / upload / complete path as the GPU container of a Space.

    Exit 0 when the task is DONE or was not claimable (cancelled, finished, held by another holder); 1 when this
    attempt failed (the task is requeued or FAILED in the queue)."""
    from scheduler.worker import Worker  # the trainer's supervisor (no torch): only this command needs it

    if not is_safe_task_id(args.task_id):
        raise CliError(f"run-task {args.task_id!r}: not a task id.", EXIT_USAGE)
    if settings.local or not settings.queue_repo:
        raise CliError("run-task runs inside a Job: it needs SPACE_ID and QUEUE_REPO (the Space's queue).", EXIT_USAGE)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpx2", "huggingface_hub"):  # one line per Hub request would bury the trainer's
        logging.getLogger(noisy).setLevel(logging.WARNING)
    queue = make_queue(settings)
    worker = Worker(settings, queue, LocalHardware(settings.accelerator), worker_id=args.holder, dispatch_jobs=False)
    code = worker.run_one(args.task_id)
    status = worker.status.snapshot()
    say(f"run-task {args.task_id}: {status.phase}: {status.message}")
    if status.last_error:
        say(status.last_error, err=True)
    return code


def run(args: argparse.Namespace, settings: Settings) -> int:
    command = args.command
    if command == "submit":
        return cmd_submit(args, settings)
    if command == "run-task":
        return cmd_run_task(args, settings)
    if command in ("hardware", "release"):
        hardware = open_hardware(args, settings)
        if command == "release":
            say(hardware.release())
        else:
            s = hardware.state()
            say(f"current: {s.current or 'unknown'}\nrequested: {s.requested or 'unknown'}\nstage: {s.stage}")
        return EXIT_OK
    queue = open_queue(args, settings)
    local = is_local(args, settings)
    if command == "list":
        tasks = [t for t in queue.list() if args.status is None or t.status.value == args.status]
        if args.json:
            say(safe_json([task_record(t, local) for t in tasks]))
        else:
            say(format_table(tasks, local) if tasks else "No tasks.")
        return EXIT_OK
    if command == "show":
        say(safe_json(task_record(queue.get(args.task_id), local)))
        return EXIT_OK
    if command == "squash":
        say(queue.squash_history())
        return EXIT_OK
    if command == "delete":
        task = queue.delete(args.task_id)
        say(f"Task {task.id} ({task.status.value}) deleted with its images and checkpoints.")
        return EXIT_OK
    change = {"cancel": queue.cancel, "retry": queue.retry}[command]
    task = change(args.task_id)
    say(f"Task {task.id} is {task.status.value}.")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (see --help)."""
    try:
        settings, bad_setting = load_settings(), None
    except SettingsError as exc:  # reported after parsing: --help still works
        settings, bad_setting = None, exc
    parser = build_parser(settings)
    args = parser.parse_args(argv)
    if args.queue is not None and args.local is not None:  # one before the command, the other after it
        parser.error("argument --local: not allowed with argument --queue")
    if settings is None:
        say(f"error: {bad_setting}", err=True)
        return EXIT_USAGE
    try:
        return run(args, settings)
    except SettingsError as exc:
        say(f"error: {exc}", err=True)
        return EXIT_USAGE
    except CliError as exc:
        say(f"error: {exc}", err=True)
        return exc.code
    except TaskNotFound as exc:
        say(f"error: {exc}", err=True)
        return EXIT_NOT_FOUND
    except InvalidTransition as exc:
        say(f"error: {exc}", err=True)
        return EXIT_CONFLICT
    except HardwareRefused as exc:
        say(f"error: {exc}", err=True)
        return EXIT_ERROR
    except (QueueError, HardwareUnavailable, OSError) as exc:
        say(f"error: {exc}", err=True)
        return EXIT_ERROR
