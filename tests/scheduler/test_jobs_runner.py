"""The Jobs executor's pure helpers: refusals, timeouts, prices, GPU hours, the Job's command and env."""

from __future__ import annotations

import httpx2
import pytest
from huggingface_hub.errors import HfHubHTTPError

from contract.flavors import FLAVORS, GPU_FLAVORS, JOBS_GPU_FLAVORS, is_gpu, is_jobs_only, jobs_prices
from contract.settings import load_settings
from scheduler.backends.jobs import JobView
from scheduler.backends.jobs_runner import (
    JobsRunner,
    gpu_seconds_in_day,
    job_refusal,
    job_timeout_s,
)
from scheduler.status import WorkerStatus


def http_error(status: int, body: str = "") -> HfHubHTTPError:
    request = httpx2.Request("POST", "https://huggingface.co/api/jobs/alice")
    return HfHubHTTPError(body or f"HTTP {status}", response=httpx2.Response(status, request=request, text=body))


@pytest.mark.parametrize(
    ("status", "words"),
    [(402, ("positive credit balance", "billing")), (403, ("may not run Jobs", "write token")),
     (401, ("refused the token",)), (400, ("does not run Jobs on the flavor", "another hardware"))],
)  # fmt: skip
def test_refusals_say_the_reason_and_the_fix(status, words):
    refused = job_refusal(http_error(status), "h200", "alice")
    assert refused is not None and refused.status == status and refused.fix
    assert all(w in str(refused) for w in words)


def test_transient_errors_are_not_refusals():
    assert job_refusal(http_error(503), "t4-small", "alice") is None


def test_the_platform_timeout_outlives_the_trainers_deadline():
    assert job_timeout_s(3 * 3600) == 3 * 3600 + 600
    assert job_timeout_s(30) == 60  # a tiny deadline gets at most its own length again


def test_jobs_only_flavors_are_jobs_gpus_but_not_space_gpus():
    assert {"h200", "rtx-pro-6000"} <= JOBS_GPU_FLAVORS and not {"h200", "rtx-pro-6000"} & GPU_FLAVORS
    assert is_gpu("h200") and is_jobs_only("h200") and not is_jobs_only("t4-small")
    assert (FLAVORS["h200"].usd_per_hour, FLAVORS["h200"].gpu_memory_gib) == (5.0, 141)
    assert (FLAVORS["rtx-pro-6000"].usd_per_hour, FLAVORS["rtx-pro-6000"].gpu_memory_gib) == (2.75, 96)


def test_prices_come_from_the_hub_with_the_table_as_fallback():
    prices, source = jobs_prices([{"name": "t4-small", "unit_cost_usd": 0.01, "unit_label": "minute"},
                                  {"name": "bad", "unit_cost_usd": "x"}])  # fmt: skip
    assert prices["t4-small"] == pytest.approx(0.6) and prices["h200"] == 5.0
    assert source.startswith("list_jobs_hardware") and "fallback" in source
    assert jobs_prices(None) == (
        {n: f.usd_per_hour for n, f in FLAVORS.items()},
        "fallback table (contract/flavors.py)",
    )


def test_gpu_seconds_count_the_last_24_hours_times_the_gpus():
    now = 1_000_000.0
    jobs = [JobView("a", "t", "COMPLETED", flavor="t4-small", started_at=now - 100, finished_at=now - 40),
            JobView("b", "t", "RUNNING", flavor="l4x4", started_at=now - 10),
            JobView("c", "t", "COMPLETED", flavor="a10g-small", started_at=now - 90_000, finished_at=now - 86_300),
            JobView("d", "t", "RUNNING", flavor="cpu-basic", started_at=now - 500),
            JobView("e", "t", "SCHEDULING", flavor="t4-small")]  # fmt: skip
    assert gpu_seconds_in_day(jobs, now) == pytest.approx(60 + 4 * 10 + 100)


def test_the_job_gets_the_settings_it_needs_and_the_token_only_as_a_secret():
    settings = load_settings({"SPACE_ID": "alice/trainer", "HF_TOKEN": "hf_secret_value", "HF_ENDPOINT": "http://hub:1",
                              "TRAINING_BACKEND": "jobs", "TRAINING_RECIPES_MODULES": "mine", "MAX_ATTEMPTS": "3"})  # fmt: skip
    runner = JobsRunner(settings, queue=None, status=WorkerStatus())  # type: ignore[arg-type]
    env = runner.job_env()
    assert env["SPACE_ID"] == "alice/trainer" and env["QUEUE_REPO"] == "alice/trainer-queue"
    assert (
        env["HF_ENDPOINT"] == "http://hub:1"
        and env["TRAINING_RECIPES_MODULES"] == "mine"
        and env["MAX_ATTEMPTS"] == "3"
    )
    assert "hf_secret_value" not in repr(env) and "HF_TOKEN" not in env
    assert runner.job_command("abc", "job:1") == [
        "python",
        "-u",
        "-m",
        "scheduler",
        "run-task",
        "abc",
        "--holder",
        "job:1",
    ]
    assert settings.job_image == "hf.co/spaces/alice/trainer" and runner.namespace == "alice"


def test_the_job_runs_the_training_script_the_space_is_set_to():
    space = {"SPACE_ID": "alice/trainer", "TRAINING_BACKEND": "jobs"}
    settings = load_settings({**space, "TRAINING_SCRIPT": "app.py"})  # any .py in the app's folder (the Job's too)
    env = JobsRunner(settings, queue=None, status=WorkerStatus()).job_env()  # type: ignore[arg-type]
    assert env["TRAINING_SCRIPT"] == "app.py"  # as set: relative to the app's folder in the Job's image as well
    assert load_settings(env).training_script == "app.py"  # the Job's settings parse it like the Space's
    unset = JobsRunner(load_settings(space), queue=None, status=WorkerStatus()).job_env()  # type: ignore[arg-type]
    assert "TRAINING_SCRIPT" not in unset


def test_the_job_loads_the_model_families_the_space_is_set_to():
    space = {"SPACE_ID": "alice/trainer", "TRAINING_BACKEND": "jobs"}
    settings = load_settings({**space, "TRAINING_FAMILY_MODULES": "my_family, pkg.more"})
    env = JobsRunner(settings, queue=None, status=WorkerStatus()).job_env()  # type: ignore[arg-type]
    assert env["TRAINING_FAMILY_MODULES"] == "my_family,pkg.more"
    assert load_settings(env).family_modules == ("my_family", "pkg.more")  # the Job's worker passes them on
    unset = JobsRunner(load_settings(space), queue=None, status=WorkerStatus()).job_env()  # type: ignore[arg-type]
    assert "TRAINING_FAMILY_MODULES" not in unset


def test_a_jobs_period_is_recorded_once_and_is_its_tasks_whole_cost(tmp_path):
    from scheduler.backends.jobs import job_period_label
    from scheduler.billing import Claim, GpuPeriod, task_cost_usd
    from scheduler.queue import LocalQueue

    queue = LocalQueue(tmp_path / "queue")
    period = GpuPeriod("h200", 1000.0, 1000.0 + 1800, [Claim("t1", 1010.0)], closed_by=job_period_label("abc123"))
    queue.record_period(period)
    queue.record_period(period)  # seen again by a restarted Space: not twice
    [stored] = queue.list_with_billing()[1]
    assert stored.closed_by == "job abc123" and not stored.is_open
    assert task_cost_usd("t1", [stored], now=10**9) == pytest.approx(2.5)  # half an hour of H200 at $5.00/h


def test_the_job_scores_with_the_models_the_space_is_set_to():
    space = {"SPACE_ID": "alice/trainer", "TRAINING_BACKEND": "jobs"}
    settings = load_settings({**space, "SCORING_DINO_MODEL": "facebook/dino-vits16", "SCORING_CLIP_MODEL": "none"})
    env = JobsRunner(settings, queue=None, status=WorkerStatus()).job_env()  # type: ignore[arg-type]
    assert env["SCORING_DINO_MODEL"] == "facebook/dino-vits16" and env["SCORING_CLIP_MODEL"] == "none"
    job = load_settings(env)  # the Job's trainer reads them like the Space: a measure turned off stays off
    assert job.scoring_dino_model == "facebook/dino-vits16" and job.scoring_clip_model is None
    unset = JobsRunner(load_settings(space), queue=None, status=WorkerStatus()).job_env()  # type: ignore[arg-type]
    assert "SCORING_DINO_MODEL" not in unset and "SCORING_CLIP_MODEL" not in unset  # the trainer's defaults


def test_the_job_captions_with_the_model_the_space_is_set_to():
    space = {"SPACE_ID": "alice/trainer", "TRAINING_BACKEND": "jobs"}
    env = JobsRunner(load_settings({**space, "CAPTION_MODEL": "me/my-captioner"}), queue=None,
                     status=WorkerStatus()).job_env()  # type: ignore[arg-type]  # fmt: skip
    assert env["CAPTION_MODEL"] == "me/my-captioner" and load_settings(env).caption_model == "me/my-captioner"
    unset = JobsRunner(load_settings(space), queue=None, status=WorkerStatus()).job_env()  # type: ignore[arg-type]
    assert "CAPTION_MODEL" not in unset  # the trainer's default
