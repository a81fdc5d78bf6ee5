"""The results view: one finished task's samples, loss curve, scores (``ui.scores_view``), settings, model link and
(local mode) output files.

Built on demand, when a task is picked or the Results tab opens, from the queue record (``task.params``,
``result_url``, status, times, error) plus the task's outputs: the local output folder (local mode), or the model
repo on the Hub (its ``samples/*.png``, the trainer's ``training_metrics.json`` and ``scores.json`` with the images
of the base model and the picked step, downloaded with the app's ``HfApi`` into a cache under the data dir). Nothing is fetched per browser refresh: a built result is kept in
memory until its task changes, so it also survives a restart of the Space (it is rebuilt from the same sources).

Privacy: only tasks the caller may see (``ui.auth.visible_tasks``) are built; images reach the browser as PIL images
in the event's output, and local download links are copies in a temporary folder (the data dir is never served).
"""

from __future__ import annotations

import atexit
import json
import logging
import re
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from contract.flavors import FLAVORS
from contract.scores import SCORED_CHECKPOINTS_DIR, SCORING_IMAGES_DIR
from contract.settings import DEFAULT_ENDPOINT
from contract.text import md_code, md_text, printable
from scheduler.task import Task, TaskStatus
from training.metrics import METRICS_NAME, downsample  # torch-free
from ui.auth import Access, access_for, not_allowed_prompt, visible_tasks
from ui.captions_view import captions_from_folder, captions_from_repo, captions_markdown
from ui.context import AppContext
from ui.estimate import format_duration
from ui.loss_chart import loss_chart_html
from ui.queue_view import is_hub_url
from ui.scores_view import RunScores, scores_from_folder, scores_from_repo, scores_update

log = logging.getLogger(__name__)

METRICS_FILE = METRICS_NAME  # what the trainer writes into its output folder
SAMPLES_DIR = "samples"
MAX_SAMPLES = 12  # newest first
MAX_CURVE_POINTS = 2000
MAX_COPY_BYTES = 512 * 1024**2  # a local output file bigger than this is named, not offered for download
SAMPLE_NAME = re.compile(r"step(\d+)_(\d+)\.png")
NO_RESULT = "Pick a finished task to see its samples, loss curve, settings and model."
NOTHING_VISIBLE = "Sign in as an allowed user to see the results of your tasks."


@dataclass
class Sample:
    """One sample image of a run, with the step it was drawn at and its prompt index (from its file name)."""

    image: Image.Image
    step: int
    index: int

    @property
    def caption(self) -> str:
        return f"step {self.step} · prompt {self.index + 1}"


@dataclass
class TaskResult:
    """Everything the results view shows for one task."""

    task: Task
    model_url: str | None = None  # the Hub repo's URL
    output_dir: Path | None = None  # local mode: the run's output folder
    samples: list[Sample] = field(default_factory=list)
    loss_curve: list[tuple[int, float]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)  # training_metrics.json without its loss curve
    files: list[Path] = field(default_factory=list)  # local mode: the output folder's files (originals)
    problems: list[str] = field(default_factory=list)  # what could not be read, said to the user
    scores: RunScores | None = None  # scores.json with the grid's images (``ui.scores_view``)
    captions: list[tuple[str, str]] = field(default_factory=list)  # (photo stem, caption): ``ui.captions_view``


# ----------------------------------------------------------------------------------------------- reading outputs
def _sample_order(name: str) -> tuple[int, int] | None:
    match = SAMPLE_NAME.fullmatch(name)
    return (int(match.group(1)), int(match.group(2))) if match else None


def open_image(path: str | Path) -> Image.Image | None:
    """The image in ``path`` read into memory (it goes out as event output), or None when it is gone or unreadable."""
    try:
        with Image.open(path) as img:
            img.load()
            return img.copy()
    except (OSError, Image.DecompressionBombError):
        return None


def metrics_from(data: Any) -> tuple[list[tuple[int, float]], dict[str, Any], str | None]:
    """The loss curve and the other fields of a ``training_metrics.json`` document (checked, as it comes from the
    model repo), or a problem."""
    if not isinstance(data, dict):
        return [], {}, f"{METRICS_FILE} is not a JSON object"
    curve = []
    for point in data.get("loss_curve") or []:
        if (isinstance(point, list | tuple) and len(point) == 2 and all(isinstance(v, int | float) for v in point)
                and not isinstance(point[0], bool)):  # fmt: skip
            curve.append((int(point[0]), float(point[1])))
    curve = downsample(curve, MAX_CURVE_POINTS)  # the repo's file is not trusted to keep the trainer's bound
    rest = {k: data[k] for k in ("steps", "steps_per_s", "resolution", "recipe", "base_model")
            if isinstance(data.get(k), str | int | float) and not isinstance(data.get(k), bool)}  # fmt: skip
    return curve, rest, None


def _read_metrics(path: Path, result: TaskResult) -> None:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        result.problems.append(f"No {METRICS_FILE} in the outputs: the loss curve is not available.")
        return
    except (OSError, ValueError) as exc:
        result.problems.append(f"{METRICS_FILE} could not be read ({type(exc).__name__}).")
        return
    result.loss_curve, result.metrics, problem = metrics_from(data)
    if problem:
        result.problems.append(problem + ".")


def _read_samples(paths: list[Path]) -> list[Sample]:
    ordered = sorted(((_sample_order(p.name), p) for p in paths if _sample_order(p.name)), reverse=True)
    samples = []
    for (step, index), path in ordered[:MAX_SAMPLES]:
        image = open_image(path)
        if image is not None:
            samples.append(Sample(image, step, index))
    return sorted(samples, key=lambda s: (-s.step, s.index))


def hub_url(task: Task) -> str | None:
    """The task's ``result_url`` when it is a URL (a model repo), else None (a local folder)."""
    return task.result_url if (task.result_url or "").startswith("http") else None


def local_output_dir(ctx: AppContext, task: Task) -> Path:
    """Where the worker left a task's outputs on this machine (never a path read from the queue record)."""
    return ctx.worker.run_dir(task.id) / "work" / "output"


def result_from_folder(task: Task, output_dir: Path) -> TaskResult:
    """A task's result from its local output folder (local mode: ``task.result_url`` is that folder)."""
    result = TaskResult(task=task, model_url=hub_url(task), output_dir=output_dir)
    if not output_dir.is_dir():
        if task.status is TaskStatus.DONE:
            result.problems.append(f"The output folder {output_dir} is gone (deleted from this machine?).")
        return result
    # the model's files and samples; the scored checkpoints and scoring images (same names, one folder per step)
    # stay in the output folder and the model repo, out of the download list
    result.files = sorted(p for p in output_dir.rglob("*") if p.is_file()
                          and p.relative_to(output_dir).parts[0] not in (SCORED_CHECKPOINTS_DIR, SCORING_IMAGES_DIR))  # fmt: skip
    result.samples = _read_samples(list((output_dir / SAMPLES_DIR).glob("*.png")))
    _read_metrics(output_dir / METRICS_FILE, result)
    result.scores = scores_from_folder(output_dir, result.problems)
    result.captions = captions_from_folder(output_dir)
    return result


def repo_id_of(task: Task) -> str | None:
    """The model repo of a task: its ``output_repo``, else the ``owner/name`` of a Hub ``result_url``."""
    if task.output_repo:
        return task.output_repo
    url = task.result_url or ""
    if url.startswith("http"):
        parts = url.rstrip("/").split("/")
        if len(parts) >= 5:
            return "/".join(parts[-2:])
    return None


def result_from_repo(task: Task, api: Any, cache_dir: Path) -> TaskResult:
    """A task's result from its model repo: one listing, then the samples and the metrics file (cached on disk)."""
    repo_id = repo_id_of(task)
    result = TaskResult(task=task, model_url=hub_url(task))
    if task.status is not TaskStatus.DONE or repo_id is None:
        return result
    try:
        names = api.list_repo_files(repo_id, repo_type="model")
    except Exception as exc:  # noqa: BLE001 - any Hub failure is said, not raised
        result.problems.append(f"The model repo {repo_id} could not be read: {type(exc).__name__}: {str(exc)[:200]}")
        return result
    wanted = [n for n in names if n.startswith(f"{SAMPLES_DIR}/") and _sample_order(n.split("/", 1)[1])]
    wanted = sorted(wanted, key=lambda n: _sample_order(n.split("/", 1)[1]), reverse=True)[:MAX_SAMPLES]

    def download(name: str) -> Path | None:
        try:
            return Path(api.hf_hub_download(repo_id, name, repo_type="model", cache_dir=str(cache_dir)))
        except Exception as exc:  # noqa: BLE001
            result.problems.append(f"{name} could not be downloaded from {repo_id}: {type(exc).__name__}.")
            return None

    paths = [p for p in map(download, wanted) if p is not None]
    # hf_hub_download returns snapshot paths named like the repo file: keep the name for the step/index
    result.samples = _read_samples(paths)
    if METRICS_FILE in names:
        metrics = download(METRICS_FILE)
        if metrics is not None:
            _read_metrics(metrics, result)
    else:
        result.problems.append(f"No {METRICS_FILE} in {repo_id}: the loss curve is not available.")
    result.scores = scores_from_repo(names, download, result.problems)
    result.captions = captions_from_repo(names, download)
    return result


def build_result(ctx: AppContext, task: Task) -> TaskResult:
    """A task's result from where its outputs are: the local output folder, or its model repo on the Hub."""
    if ctx.local:
        return result_from_folder(task, local_output_dir(ctx, task))
    if ctx.api is None:
        return TaskResult(task=task, model_url=task.result_url, problems=["No Hub client to read the model repo."])
    return result_from_repo(task, ctx.api, Path(ctx.settings.data_dir) / "results-cache")


# ----------------------------------------------------------------------------------------------- presenting
def _when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC") if ts else "-"


def _cell(value: Any) -> str:
    """A value as inert Markdown text (``contract.text.md_text``: no link, image, HTML or table cell break), cut at
    200 characters: prompts, names and errors come from the queue, written by other users."""
    text = json.dumps(value) if isinstance(value, list | dict) else str(value)
    return md_text(text[:200])


#: a URL that can stand as a Markdown link's destination as it is (nothing that could end it or start markup)
LINKABLE = re.compile(r"https?://[A-Za-z0-9._~:/%-]+")


def model_link(url: str | None, label: str, endpoint: str) -> str:
    """A Markdown link to the model repo when ``url`` is a plain URL of the Hub, else the URL as text."""
    if url and is_hub_url(url, endpoint) and LINKABLE.fullmatch(url):
        return f"[{_cell(label)}]({url})"
    return _cell(url or label)


def summary_markdown(result: TaskResult, endpoint: str = DEFAULT_ENDPOINT) -> str:
    """Status, prompt, times, the model link (only to a page of the Hub at ``endpoint``) and (for a failed task) its
    error; every value from the queue as inert text."""
    t = result.task
    took = format_duration(t.finished_at - t.started_at) if t.started_at and t.finished_at else "-"
    lines = [f"### Task {md_code(t.id)}: {t.status.value}",
             f"**Prompt:** {_cell(t.instance_prompt)}",
             f"**Submitted:** {_when(t.created_at)} · **started:** {_when(t.started_at)} · "
             f"**finished:** {_when(t.finished_at)} · **training took:** {took} · **tries:** {t.attempts}"]  # fmt: skip
    if result.model_url:
        lines.append(f"**Model:** {model_link(result.model_url, repo_id_of(t) or result.model_url, endpoint)}")
    if result.output_dir is not None:
        # breaks anywhere: a long path would otherwise run off a phone's screen
        lines.append(f'**Output folder:** <code style="word-break: break-all">{_cell(result.output_dir)}</code>')
    if t.status is TaskStatus.FAILED and t.last_error:
        lines.append(f"**Error:** {_cell(t.last_error.strip().splitlines()[0])}")
    if t.status is TaskStatus.CANCELLED:
        lines.append("This task was cancelled.")
    lines += [f"_{_cell(p)}_" for p in result.problems]
    where = ("Their .txt files are among the output files below." if result.output_dir is not None
             else "Their .txt files are in the model repo's captions/ folder.")  # fmt: skip
    lines.append(captions_markdown(result.captions, where=where))
    return "\n\n".join(line for line in lines if line)


def settings_markdown(result: TaskResult) -> str:
    """The task's settings as a two-column table: recipe, base model, hardware, then every parameter."""
    t = result.task
    local = result.output_dir is not None  # only local mode has an output folder here
    hardware = "this machine" if local else (FLAVORS[t.hardware].label if t.hardware in FLAVORS else t.hardware)
    rows = [("recipe", t.recipe), ("base model", t.base_model), ("hardware", hardware)]
    if t.class_prompt:
        rows.append(("class prompt", t.class_prompt))
    rows += sorted(t.params.items())
    if result.metrics.get("steps_per_s"):
        rows.append(("measured speed", f"{float(result.metrics['steps_per_s']):.2f} steps/s"))
    body = "\n".join(f"| {_cell(k)} | {_cell(v)} |" for k, v in rows)
    return f"**Settings**\n\n| setting | value |\n|---|---|\n{body}"


def loss_frame(result: TaskResult) -> str:
    """The task's loss curve as the chart's HTML (``ui.loss_chart``)."""
    return loss_chart_html(result.loss_curve)


def gallery_value(result: TaskResult) -> list[tuple[Image.Image, str]] | None:
    return [(s.image, s.caption) for s in result.samples] or None


#: the events that build the Results views (a pick, the tab opened) run one at a time, whichever tab sent them: Gradio
#: writes a sample image into its cache at a path named by its content, and a second build of the same image at once
#: finds the file there and serves it while the first is still writing it (a broken image in the gallery)
SHOW_EVENT = {"api_visibility": "private", "show_progress": "minimal", "concurrency_limit": 1,
              "concurrency_id": "results-view"}  # fmt: skip


class DownloadCopies:
    """Copies of local output files in a temporary folder, for Gradio to serve (the data dir is blocked)."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="dreambooth-results-"))
        atexit.register(shutil.rmtree, self.root, True)

    def copies(self, result: TaskResult) -> tuple[list[str], list[Path]]:
        """Paths of the copies of ``result.files`` (made once per task), and the files too big to copy."""
        folder = self.root / result.task.id
        shutil.rmtree(folder, ignore_errors=True)  # a rebuilt result replaces its old copies
        out, too_big = [], []
        for path in result.files:
            try:
                if path.stat().st_size > MAX_COPY_BYTES:
                    too_big.append(path)
                    continue
                target = folder / path.relative_to(result.output_dir)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
                out.append(str(target))
            except (OSError, ValueError):
                continue  # removed meanwhile
        return out, too_big


@dataclass
class ResultsParts:
    pick: gr.Dropdown
    summary: gr.Markdown
    samples: gr.Gallery
    loss: gr.HTML  # ``ui.loss_chart``
    settings: gr.Markdown
    files: gr.File
    scores: gr.HTML  # ``ui.scores_view``: hidden without scores.json
    show: Callable[..., list[Any]]  # (task id, profile) -> values for ``outputs()``, checked against the caller
    charts: gr.Row | None = None  # the samples and the loss chart

    def outputs(self) -> list[Any]:
        return [self.summary, self.samples, self.loss, self.settings, self.files, self.scores]

    def visibility_outputs(self) -> list[Any]:
        return [self.pick, self.charts]

    def shown_to(self, may_see: bool) -> list[Any]:
        """The picker and the charts for a visitor who may see results; else only the summary's sign-in prompt."""
        return [gr.Dropdown(visible=may_see), gr.Row(visible=may_see)]


def finished_tasks(tasks: list[Task]) -> list[Task]:
    """Terminal tasks, newest finished first."""
    done = [t for t in tasks if t.status.terminal]
    return sorted(done, key=lambda t: (t.finished_at or t.updated_at or t.created_at), reverse=True)


def default_pick(tasks: list[Task]) -> str | None:
    """The newest DONE task, else the newest finished one."""
    finished = finished_tasks(tasks)
    done = [t for t in finished if t.status is TaskStatus.DONE]
    newest = (done or finished)[:1]
    return newest[0].id if newest else None


def pick_choices(tasks: list[Task]) -> list[tuple[str, str]]:
    return [(printable(f"{t.id} · {t.status.value} · {t.instance_prompt[:40]}"), t.id) for t in finished_tasks(tasks)]


def results_pointer(tasks: list[Task]) -> str:
    """A line for the idle Run tab: where the last finished task's results are."""
    pick = default_pick(tasks)
    if pick is None:
        return ""
    task = next(t for t in tasks if t.id == pick)
    return (f"**Last finished:** task {md_code(task.id)} ({task.status.value}, {_cell(task.instance_prompt[:60])}): its "
            "samples, loss curve, settings and model are in the **Results** tab.")  # fmt: skip


class ResultsCache:
    """Built results by task, rebuilt when the task's record changes (status, finish time, result)."""

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self.copies = DownloadCopies() if ctx.local else None
        self._lock = threading.Lock()
        self._built: dict[str, tuple[tuple, list[Any]]] = {}

    def values(self, task: Task) -> list[Any]:
        """Values for ``ResultsParts.outputs()`` (built once per version of the task)."""
        key = (task.status, task.finished_at, task.result_url, task.attempts)
        with self._lock:
            cached = self._built.get(task.id)
            if cached and cached[0] == key:
                return cached[1]
            result = build_result(self.ctx, task)
            files = None
            if self.copies is not None:
                copied, too_big = self.copies.copies(result)
                files = copied or None
                result.problems += [f"{p.name} is too big to offer here; it is at {p}." for p in too_big]
            values = [summary_markdown(result, self.ctx.settings.hf_endpoint), gallery_value(result), loss_frame(result), settings_markdown(result),
                      files, scores_update(result.scores)]  # fmt: skip
            self._built[task.id] = (key, values)
            return values


class UserPicks:
    """The finished task each browser tab's user picked in the Results tab (by Gradio session), so that the picker
    follows the newest finished task only until the user picks one. Kept here, not in a ``gr.State``: the refresh
    tick would write back an older copy of a state the pick changed meanwhile. Bounded: the oldest are forgotten."""

    MAX_SESSIONS = 10_000

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._picks: dict[str, str] = {}

    def set(self, session: str | None, task_id: str | None) -> None:
        """Remember (or, with None, forget) the pick of ``session``."""
        if not session:
            return
        with self._lock:
            self._picks.pop(session, None)
            if task_id:
                self._picks[session] = task_id[:64]
                while len(self._picks) > self.MAX_SESSIONS:
                    del self._picks[next(iter(self._picks))]

    def get(self, session: str | None) -> str | None:
        with self._lock:
            return self._picks.get(session or "")


def empty_values(text: str) -> list[Any]:
    return [text, None, loss_chart_html([]), "", None, scores_update(None)]


def results_values_for(cache: ResultsCache, access: Access, tasks: list[Task], task_id: str | None,
                       prompt: str = NOTHING_VISIBLE) -> list[Any]:  # fmt: skip
    """The results of ``task_id`` if ``access`` may see that task (its submitter or the owner), else a prompt. No
    ``task_id`` (the picker not filled yet): the newest finished task the user may see, as the picker will show it,
    so that an answer for the empty picker arriving after the picker's own cannot blank the view. ``prompt``: what
    a visitor who may not see results is told."""
    if not access.allowed and not access.owner:
        return empty_values(prompt)
    visible = visible_tasks(access, tasks)
    task_id = task_id or default_pick(visible)
    task = next((t for t in visible if t.id == task_id and t.status.terminal), None)
    if task is None:
        return empty_values(NO_RESULT if not task_id else f"No finished task {md_code(task_id[:40])} of yours.")
    return cache.values(task)


def build_results_view(ctx: AppContext) -> ResultsParts:
    """Render the results view inside the current Blocks and wire its picker."""
    pick = gr.Dropdown(label="Finished task", choices=[], min_width=200, allow_custom_value=True)
    summary = gr.Markdown(NO_RESULT, elem_id="results-summary")
    with gr.Row() as charts:
        samples = gr.Gallery(label="Samples (newest first)", columns=3, height=320, interactive=False, min_width=280,
                             elem_id="results-samples")
        loss = gr.HTML(loss_chart_html([]), min_width=280, elem_id="results-loss", container=True, padding=True,
                       js_on_load=None)  # fmt: skip
    scores = gr.HTML("", visible=False, elem_id="results-scores", container=True, padding=True)
    settings = gr.Markdown(elem_id="results-settings")
    files = gr.File(label="Output files (copies to download)", file_count="multiple", interactive=False,
                    visible=ctx.local, elem_id="results-files")  # fmt: skip
    cache = ResultsCache(ctx)

    def show(task_id: str | None, profile: gr.OAuthProfile | None) -> list[Any]:
        access = access_for(ctx.settings, profile)
        return results_values_for(cache, access, ctx.worker.status.snapshot().tasks, task_id,
                                  not_allowed_prompt(ctx.settings, access, NOTHING_VISIBLE))  # fmt: skip

    parts = ResultsParts(pick=pick, summary=summary, samples=samples, loss=loss, settings=settings, files=files,
                         scores=scores, show=show, charts=charts)  # fmt: skip
    pick.change(show, pick, parts.outputs(), **SHOW_EVENT)
    return parts
