"""``python -m scheduler``: the operator's command line for the queue and the Space's hardware."""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from huggingface_hub import HfApi

from scheduler.hardware import HardwareController, HardwareRefused, HardwareUnavailable, LocalHardware, make_hardware
from scheduler.hardware.space import SpaceHardware
from scheduler.queue import HubQueue, InvalidTransition, LocalQueue, QueueError, TaskNotFound, TaskQueue, make_queue
from scheduler.queue.document import list_images
from scheduler.retry import RetryPolicy
from scheduler.settings import Settings, SettingsError, load_settings
from scheduler.stored import is_safe_task_id
from scheduler.task import Task, TaskStatus
from scheduler.validation import submission_warnings, validate_task

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_CONFLICT = 0, 1, 2, 3, 4

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
  python -m scheduler --local data/queue submit --images photos/ --prompt "a photo of sks dog" --output-repo me/sks-dog
  python -m scheduler --queue me/trainer-queue list
  python -m scheduler --queue me/trainer-queue cancel 3f2a9c1b7e4d
  python -m scheduler --queue me/trainer-queue squash   # photos removed from the queue leave its history too
  python -m scheduler --space me/trainer hardware
"""


class CliError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m scheduler",
        description="Inspect and change the training queue and the Space's hardware.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--queue", metavar="REPO", help="Hub dataset repo of the queue (owner/name)")
    where.add_argument("--local", metavar="DIR", type=Path, help="local queue folder")
    parser.add_argument("--space", metavar="ID", help="Space id for `hardware`/`release` (default: SPACE_ID)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("list", help="list tasks, oldest first")
    p.add_argument("--status", choices=[s.value for s in TaskStatus], help="only tasks in this state")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    for name, text in (("show", "print one task as JSON"), ("cancel", "cancel a PENDING or RUNNING task"), ("retry", "put a FAILED or CANCELLED task back to PENDING (or clear a PENDING task's note)"),
                       ("delete", "remove a DONE, FAILED or CANCELLED task with its images and checkpoints (not its model)")):
        sub.add_parser(name, help=text).add_argument("task_id", metavar="ID")

    p = sub.add_parser("submit", help="validate and enqueue a training task (images and task in one commit)")
    p.add_argument("--images", required=True, type=Path, metavar="DIR", help="folder with the subject's photos")
    p.add_argument("--prompt", required=True, help='instance prompt, e.g. "a photo of sks dog"')
    p.add_argument("--class-prompt", help="class prompt for prior preservation, e.g. \"a photo of a dog\"")
    p.add_argument("--recipe", default="dreambooth-lora", help="training recipe (default: dreambooth-lora)")
    p.add_argument("--base-model", help="base model (default: DEFAULT_BASE_MODEL)")
    p.add_argument("--steps", type=int, help="training steps")
    p.add_argument("--learning-rate", type=float, help="learning rate")
    p.add_argument("--rank", type=int, help="LoRA rank")
    p.add_argument("--resolution", type=int, help="training resolution (multiple of 64)")
    p.add_argument("--hardware", help="GPU flavor (default: TRAIN_HARDWARE)")
    p.add_argument("--output-repo", help="model repo for the result (default: <owner>/dreambooth-<task id>)")
    p.add_argument("--public", action="store_true", help="make the output repo public (default: private)")
    p.add_argument("--submitted-by", help="who submits (default: the Space owner, or your login name)")
    p.add_argument("--id", dest="task_id", help="task id (default: generated); a repeated id is not enqueued twice")

    sub.add_parser("squash", help="squash the queue repo's history into one commit (removed photos leave the Hub)")
    sub.add_parser("hardware", help="show the Space's current and requested hardware")
    sub.add_parser("release", help="move the Space back to its idle hardware (pauses it if that keeps failing)")
    return parser


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


def format_table(tasks: Sequence[Task]) -> str:
    rows = [("ID", "STATUS", "TRIES", "HARDWARE", "SUBMITTED", "BY", "PROMPT")]
    for t in tasks:
        prompt = t.instance_prompt if len(t.instance_prompt) <= 40 else t.instance_prompt[:37] + "..."
        rows.append((t.id, t.status.value, f"{t.attempts}/{t.max_attempts}", t.hardware, _when(t.created_at), t.submitted_by, prompt))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=False)) + "  " + r[-1] for r in rows)


def cmd_submit(args: argparse.Namespace, settings: Settings) -> int:
    if not args.images.is_dir():
        raise CliError(f"--images {args.images}: not a folder.", EXIT_USAGE)
    images = list_images(args.images)
    submitted_by = args.submitted_by or settings.space_author or getpass.getuser()
    params = {k: v for k, v in (("steps", args.steps), ("learning_rate", args.learning_rate), ("rank", args.rank), ("resolution", args.resolution)) if v is not None}
    task = Task(
        instance_prompt=args.prompt,
        class_prompt=args.class_prompt,
        submitted_by=submitted_by,
        recipe=args.recipe,
        base_model=args.base_model or settings.default_base_model,
        params=params,
        hardware=args.hardware or settings.train_hardware,
        private=not args.public,
        max_attempts=settings.max_attempts,
        deadline_s=settings.deadline_s,
    )
    if args.task_id:
        if not is_safe_task_id(args.task_id):
            raise CliError(f"--id {args.task_id!r}: use letters, digits, - and _ only (at most 64).", EXIT_USAGE)
        task.id = args.task_id
    task.output_repo = args.output_repo or f"{settings.space_author or submitted_by}/dreambooth-{task.id}"
    problems = validate_task(task, images, base_models=settings.base_models, allow_cpu_training=settings.allow_cpu_training)
    if problems:
        raise CliError("The task was not enqueued:\n" + "\n".join(f"  - {p}" for p in problems), EXIT_USAGE)
    for warning in submission_warnings(len(images)):
        print(f"warning: {warning}", file=sys.stderr)
    queue = open_queue(args, settings)
    stored = queue.enqueue(task, images)
    print(f"Enqueued task {stored.id} ({len(images)} images, {stored.hardware}) in {queue!r}.")
    print("A running Space picks it up at its next poll and asks for the GPU.")
    return EXIT_OK


def run(args: argparse.Namespace, settings: Settings) -> int:
    command = args.command
    if command == "submit":
        return cmd_submit(args, settings)
    if command in ("hardware", "release"):
        hardware = open_hardware(args, settings)
        if command == "release":
            print(hardware.release())
        else:
            s = hardware.state()
            print(f"current: {s.current or 'unknown'}\nrequested: {s.requested or 'unknown'}\nstage: {s.stage}")
        return EXIT_OK
    queue = open_queue(args, settings)
    if command == "list":
        tasks = [t for t in queue.list() if args.status is None or t.status.value == args.status]
        print(json.dumps([t.to_dict() for t in tasks], indent=2) if args.json else format_table(tasks) if tasks else "No tasks.")
        return EXIT_OK
    if command == "show":
        print(json.dumps(queue.get(args.task_id).to_dict(), indent=2))
        return EXIT_OK
    if command == "squash":
        print(queue.squash_history())
        return EXIT_OK
    if command == "delete":
        task = queue.delete(args.task_id)
        print(f"Task {task.id} ({task.status.value}) deleted with its images and checkpoints.")
        return EXIT_OK
    change = {"cancel": queue.cancel, "retry": queue.retry}[command]
    task = change(args.task_id)
    print(f"Task {task.id} is {task.status.value}.")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (see --help)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
        return run(args, settings)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    except TaskNotFound as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_NOT_FOUND
    except InvalidTransition as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFLICT
    except HardwareRefused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except (QueueError, HardwareUnavailable, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
