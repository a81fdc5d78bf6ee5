"""The results view, built from a queue record plus the task's outputs: a local output folder (a tiny model trained
here by the real worker and trainer) and the same outputs uploaded to an emulator model repo (real huggingface_hub
against tests/fakehub). No mocks."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest
from huggingface_hub import HfApi

from contract.flavors import FLAVORS
from contract.settings import load_settings
from scheduler.hardware import make_hardware
from scheduler.queue import make_queue
from scheduler.status import StatusData
from scheduler.task import Task, TaskStatus
from scheduler.worker import Worker
from tests.conftest import ALICE_TOKEN
from tests.results_fixtures import read_metrics
from tests.tiny_models import make_images
from tests.tiny_scorers import pixel_scores
from ui.auth import Access
from ui.context import AppContext
from ui.loss_chart import NO_LOSS
from ui.results_view import (
    NO_RESULT,
    ResultsCache,
    build_result,
    default_pick,
    result_from_repo,
    results_values_for,
    settings_markdown,
    summary_markdown,
)
from ui.run_view import run_values_for
from ui.scores_view import scores_html

OWNER = Access(user="local", allowed=True, owner=True)


def local_ctx(data_dir: Path) -> AppContext:
    """A local-mode app's context on ``data_dir`` (a fresh one stands for the app after a restart)."""
    settings = load_settings({"DATA_DIR": str(data_dir), "POLL_INTERVAL_S": "0.2", "LEASE_S": "30"})
    queue = make_queue(settings)
    return AppContext(settings=settings, queue=queue, worker=Worker(settings, queue, make_hardware(settings)))


def assert_newest_samples_first(result) -> None:
    """The validation prompts' samples of both sampling steps, newest first (scoring may add more of each step)."""
    shown = [(s.step, s.index) for s in result.samples]
    assert shown[:2] == [(4, 0), (4, 1)] and {(2, 0), (2, 1)} <= set(shown)
    assert shown == sorted(shown, key=lambda si: (-si[0], si[1]))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_sd):
    """A tiny LoRA task trained to DONE by the real worker in local mode: (data dir, task, metrics)."""
    root = tmp_path_factory.mktemp("results")
    ctx = local_ctx(root / "data")
    params = {"steps": 4, "resolution": 64, "learning_rate": 1e-4, "rank": 4, "validation_every": 2,
              "validation_prompts": ["a photo of sks dog", "a sks dog on a beach"], "sample_inference_steps": 2}  # fmt: skip
    task = ctx.queue.enqueue(Task(instance_prompt="a photo of sks dog", submitted_by="local", base_model=str(tiny_sd),
                                  params=params), make_images(root / "photos", 3))  # fmt: skip
    with pixel_scores():  # image scores too (the scores test below)
        ctx.worker.step()
    done = ctx.queue.get(task.id)
    assert done.status is TaskStatus.DONE, done.last_error
    metrics = read_metrics(ctx.worker.run_dir(done.id))
    return root / "data", done, metrics


def test_a_local_result_has_samples_loss_curve_settings_and_the_output_files(trained):
    data_dir, task, metrics = trained
    ctx = local_ctx(data_dir)  # a new app on the same data dir: nothing comes from the worker's memory

    result = build_result(ctx, task)

    assert result.output_dir == Path(task.result_url)
    assert_newest_samples_first(result)
    assert all(s.image.size == (64, 64) for s in result.samples)
    assert result.loss_curve == [(int(s), float(v)) for s, v in metrics["loss_curve"]] and len(result.loss_curve) == 4
    names = {p.name for p in result.files}
    assert {"README.md", "training_metrics.json", "step4_0.png"} <= names and any(n.endswith(".safetensors") for n in names)
    assert result.problems == []
    settings = settings_markdown(result)
    assert "| steps | 4 |" in settings and "| resolution | 64 |" in settings and "| rank | 4 |" in settings
    assert f"| base model | {task.base_model} |" in settings and "| hardware | this machine |" in settings
    summary = summary_markdown(result)
    assert f"Task `{task.id}`: DONE" in summary and "a photo of sks dog" in summary and str(result.output_dir) in summary


def test_local_download_links_are_copies_outside_the_data_dir(trained):
    data_dir, task, _ = trained
    ctx = local_ctx(data_dir)

    summary, gallery, loss, settings, files, _scores = results_values_for(ResultsCache(ctx), OWNER, [task], task.id)

    assert files and all(not Path(f).resolve().is_relative_to(data_dir.resolve()) for f in files)
    output = Path(task.result_url)
    originals = {p.relative_to(output).as_posix(): p for p in output.rglob("*") if p.is_file()}
    assert any(name.startswith("checkpoints/step-") for name in originals)  # the run kept scored checkpoints
    # the model's files and samples are offered; the scored checkpoints and scoring images stay in the folder
    originals = {n: p for n, p in originals.items() if not n.startswith(("checkpoints/", "scores/"))}
    root = Path(files[0]).parent  # the copies keep the folders (samples/)
    while not (root / "README.md").is_file():
        root = root.parent
    copies = {Path(f).relative_to(root).as_posix(): Path(f) for f in files}
    assert sorted(copies) == sorted(originals)
    for name, copy in copies.items():
        assert copy.read_bytes() == originals[name].read_bytes()
    assert [caption for _, caption in gallery][:2] == ["step 4 · prompt 1", "step 4 · prompt 2"]
    assert 'aria-label="Training loss: 4 points"' in loss and "<polyline" in loss  # the chart of ui.loss_chart


def test_the_trainers_own_scores_show_with_the_base_and_picked_images(trained):
    data_dir, task, _ = trained

    result = build_result(local_ctx(data_dir), task)

    assert result.scores is not None, "the trainer wrote no scores.json"
    record = result.scores.record
    assert record.picked is not None and record.base is not None and record.prompts
    picked = record.point(record.picked.step)
    assert set(result.scores.images) == set(record.base.images) | set(picked.images)  # every one of them read
    html = scores_html(result.scores)
    assert html.count('<th scope="row"') == len(record.prompts) and "no image" not in html
    assert f"Picked checkpoint: step {record.picked.step}" in html and 'class="scores-chart"' in html


def test_results_are_shown_only_to_the_owner_and_the_submitter(trained):
    data_dir, task, _ = trained
    cache = ResultsCache(local_ctx(data_dir))
    alices = dataclasses.replace(task, submitted_by="alice")

    anonymous = results_values_for(cache, Access(None, False, False), [alices], task.id)
    not_allowed = results_values_for(cache, Access("carol", False, False), [alices], task.id)
    bob = results_values_for(cache, Access("bob", True, False), [alices], task.id)
    alice = results_values_for(cache, Access("alice", True, False), [alices], task.id)

    for values in (anonymous, not_allowed, bob):
        assert values[1] is None and values[4] is None and NO_LOSS in values[2] and task.id not in values[3]
        assert "a photo of sks dog" not in values[0]
    assert alice[1] and "DONE" in alice[0]


def test_an_empty_pick_shows_the_newest_finished_task_the_user_may_see(trained):
    """The Results tab opened before its picker was filled (or an answer for the empty picker arriving after the
    picker's own): the newest finished task of the user's, never the prompt to pick one, nor another user's task."""
    data_dir, task, _ = trained
    cache = ResultsCache(local_ctx(data_dir))
    alices = dataclasses.replace(task, submitted_by="alice")
    bobs_newer = dataclasses.replace(task, id="b0b000000001", submitted_by="bob", created_at=task.created_at + 60,
                                     finished_at=(task.finished_at or 0) + 60)  # fmt: skip

    alice = results_values_for(cache, Access("alice", True, False), [alices, bobs_newer], None)
    carol = results_values_for(cache, Access("carol", True, False), [alices, bobs_newer], None)

    assert f"Task `{task.id}`: DONE" in alice[0] and alice[1]  # hers (bob's newer one is not hers to see)
    assert carol[0] == NO_RESULT and carol[1] is None  # nothing of hers: the prompt, no one else's result


def test_a_result_from_the_model_repo_is_downloaded_once_and_cached(trained, hub, tmp_path):
    data_dir, task, metrics = trained
    api = HfApi(endpoint=hub.url, token=ALICE_TOKEN)
    repo = f"alice/results-{int(time.time() * 1000) % 10**9}"
    url = str(api.create_repo(repo, private=True))
    api.upload_folder(repo_id=repo, folder_path=task.result_url)  # what training/upload.py uploads
    on_space = dataclasses.replace(task, output_repo=repo, result_url=url, submitted_by="alice")

    result = result_from_repo(on_space, api, tmp_path / "cache")

    assert result.problems == []
    assert_newest_samples_first(result)
    assert result.loss_curve == [(int(s), float(v)) for s, v in metrics["loss_curve"]]
    assert result.model_url == url and repo in summary_markdown(result)
    assert f"| hardware | {FLAVORS[on_space.hardware].label} |" in settings_markdown(result)
    assert all(p.is_relative_to(tmp_path / "cache") for p in (tmp_path / "cache").rglob("*.png"))

    # Built once per version of the task: picking it again makes no Hub request.
    space = load_settings({"SPACE_ID": "alice/space", "HF_TOKEN": ALICE_TOKEN, "HF_ENDPOINT": hub.url,
                           "DATA_DIR": str(tmp_path / "space-data")})  # fmt: skip
    ctx = AppContext(settings=space, queue=None, worker=None, api=api)  # type: ignore[arg-type]
    cache = ResultsCache(ctx)
    first = results_values_for(cache, Access("alice", True, True), [on_space], on_space.id)
    hub.clear_requests()
    again = results_values_for(cache, Access("alice", True, True), [on_space], on_space.id)
    assert again is first and not [r for r in hub.requests() if repo in r.path]
    assert first[4] is None  # no download links on a Space (the model repo is the place)
    assert (tmp_path / "space-data" / "results-cache").is_dir()


def test_a_missing_model_repo_is_said_not_raised(hub, tmp_path):
    api = HfApi(endpoint=hub.url, token=ALICE_TOKEN)
    task = Task(instance_prompt="a photo of sks dog", submitted_by="alice", status=TaskStatus.DONE,
                output_repo="alice/no-such-model-repo", result_url=f"{hub.url}/alice/no-such-model-repo")  # fmt: skip
    result = result_from_repo(task, api, tmp_path)
    assert result.samples == [] and len(result.problems) == 1
    assert "alice/no-such-model-repo could not be read" in result.problems[0]


def test_the_idle_run_view_points_to_the_newest_finished_task(trained):
    _, task, _ = trained
    older = dataclasses.replace(task, id="older1234567", finished_at=task.finished_at - 100)
    failed = dataclasses.replace(task, id="failed123456", status=TaskStatus.FAILED, finished_at=task.finished_at + 5)
    assert default_pick([older, failed, task]) == task.id  # DONE before a newer FAILED one

    idle = run_values_for(OWNER, StatusData(phase="idle"), [older, task])[0]
    assert f"**Last finished:** task `{task.id}` (DONE" in idle and "**Results** tab" in idle
    training = run_values_for(OWNER, StatusData(phase="training", task_id="x"), [older, task])[0]
    assert "Last finished" not in training
    anonymous = run_values_for(Access(None, False, False), StatusData(phase="idle"), [task])[0]
    assert "Last finished" not in anonymous
