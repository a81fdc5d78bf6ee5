"""Offline mode (``HF_HUB_OFFLINE=1``) with the base model in the Hugging Face cache: the cached copy is used, and only
a model that is not cached is refused, saying that offline mode is on (never that the Hub cannot be reached).

The cache is filled from the Hub emulator with the real client, in the two shapes it takes: a ``snapshot_download`` of
the repo (what a Space's ``preload_from_hub`` does: the ``main`` ref points to the commit) and the trainer's own
download step of an earlier online run (files fetched at a commit, no ref). The base check and the form's check run
in-process with offline mode switched on by monkeypatching ``huggingface_hub.constants.HF_HUB_OFFLINE`` (the value
the library reads at every call); the trainer runs as a subprocess with ``HF_HUB_OFFLINE=1`` in its environment, as
a user would set it. Every offline step is checked to make no request to the emulator.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from huggingface_hub import HfApi, constants, scan_cache_dir, snapshot_download

from contract.events import parse_event
from scheduler.trainer_process import memory_plan_message, task_spec
from tests.test_form import local_ctx, photos, values
from tests.tiny_models import make_images
from training.base_check import check_base_model, probe_base_model
from ui.submission import submit_task

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cached(fakehub, tiny_sd) -> dict[str, tuple[str, str]]:
    """Two tiny SD repos on the emulator, in the cache: "preloaded" (``snapshot_download``) and "trained" (the
    trainer's download step); name -> (repo id, commit)."""
    from training.models import choose_model_files, fetch_model_files, inspect_base_model

    api = HfApi()
    out = {}
    for shape in ("preloaded", "trained"):
        repo = f"alice/offline-{shape}-{uuid.uuid4().hex[:6]}"
        api.create_repo(repo)
        api.upload_folder(repo_id=repo, folder_path=str(tiny_sd))
        if shape == "preloaded":
            snapshot_download(repo)
        else:
            info = inspect_base_model(repo)
            fetch_model_files(info, choose_model_files(info))
        out[shape] = (repo, api.model_info(repo).sha)
        refs = {ref for r in scan_cache_dir().repos if r.repo_id == repo for rev in r.revisions for ref in rev.refs}
        assert refs == ({"main"} if shape == "preloaded" else set())  # the two shapes differ as said
    return out


@pytest.fixture
def offline(monkeypatch, hub):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    hub.clear_requests()
    yield
    assert hub.requests() == []  # offline: not one request reached the Hub


@pytest.mark.parametrize("shape", ["preloaded", "trained"])
def test_offline_a_cached_model_passes_with_the_cached_copys_revision(cached, offline, shape):
    repo, sha = cached[shape]
    probe = probe_base_model(repo)
    assert probe.problem is None, probe.problem
    assert probe.revision == sha and probe.index["_class_name"] == "StableDiffusionPipeline"
    assert probe.note == f"offline mode: using the cached copy of {repo} at {sha[:12]}"
    assert "unet/diffusion_pytorch_model.safetensors" in probe.files


def test_offline_a_model_not_in_the_cache_is_refused_saying_offline_mode_is_on(cached, offline):
    problem = check_base_model(f"alice/never-downloaded-{uuid.uuid4().hex[:6]}")
    assert problem is not None and not problem.retryable, problem
    assert "offline mode is on" in problem.message and "HF_HUB_OFFLINE" in problem.message
    assert "not in the Hugging Face cache" in problem.message
    assert "cannot be reached" not in problem.message and "retryable" not in problem.message


def test_offline_the_forms_check_queues_a_cached_model_and_refuses_one_not_cached(cached, offline, tmp_path):
    repo, sha = cached["preloaded"]
    ctx = local_ctx(tmp_path)
    answer = submit_task(ctx, "local", photos(tmp_path), values(base_model=repo, resolution=512))
    assert "queued" in answer and "Nothing was queued" not in answer, answer
    assert f"offline mode: using the cached copy of {repo} at {sha[:12]}" in answer
    missing = f"alice/never-downloaded-{uuid.uuid4().hex[:6]}"
    answer = submit_task(ctx, "local", photos(tmp_path), values(base_model=missing, resolution=512))
    assert answer.startswith("**Nothing was queued.**") and "offline mode is on" in answer.lower(), answer
    assert "cannot be reached" not in answer
    assert [t.base_model for t in ctx.queue.list()] == [repo]



def test_offline_with_a_token_a_local_task_is_queued_and_trained_without_an_upload(cached, offline, tmp_path):
    """Locally with HF_TOKEN the form asks the Hub whose token it is and the trainer uploads; offline mode asks
    nothing and keeps the model in its output folder (before, the form refused: "could not ask ... whose token")."""
    repo, _ = cached["preloaded"]
    ctx = local_ctx(tmp_path, HF_TOKEN="hf_offline_test_token", HF_ENDPOINT="http://127.0.0.1:9")
    answer = submit_task(ctx, "local", photos(tmp_path), values(base_model=repo, resolution=512))
    assert "queued" in answer and "Nothing was queued" not in answer, answer
    (task,) = ctx.queue.list()
    assert task.output_repo  # the name is kept for the card ...
    assert task_spec(task, tmp_path, ctx.settings)["output"] is None  # ... and nothing is uploaded

def test_offline_the_trainer_trains_on_the_cached_copy(cached, hub, tmp_path):
    """One tiny CPU run, with ``HF_HUB_OFFLINE=1`` set as a user would, on the cache an earlier online run left."""
    repo, sha = cached["trained"]
    images = tmp_path / "images"
    make_images(images, 2, size=32)
    task = tmp_path / "task.json"
    task.write_text(json.dumps({"task_id": "t", "base_model": repo, "instance_prompt": "a photo of sks dog",
                                "images": str(images), "output": None,
                                "params": {"steps": 2, "resolution": 32, "checkpoint_every": 0,
                                           "sample_inference_steps": 2}}))  # fmt: skip
    events = tmp_path / "events.jsonl"
    hub.clear_requests()
    proc = subprocess.run(
        [sys.executable, "-m", "training", "--task", str(task), "--workdir", str(tmp_path / "w"),
         "--progress", str(events), "--progress-bar", "off"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"offline mode: using the cached copy of {repo} at {sha[:12]}" in proc.stderr
    evs = [json.loads(line) for line in events.read_text().splitlines()]
    done = evs[-1]
    assert done["event"] == "done", done
    # a CPU run's memory plan, as the run view shows it, speaks of the CPU's RAM (issue 21, item 10)
    plan = memory_plan_message(parse_event(next(e for e in evs if e["event"] == "memory_plan")))
    assert "RAM" in plan and "GPU" not in plan, plan
    assert (Path(done["output_dir"]) / "pytorch_lora_weights.safetensors").is_file()
    assert hub.requests() == []
