"""What a finished run reports and how the worker turns it into the task's run record: the trainer's steady rate and
step times (``RunMetrics.timing``), its settings and model family (``training.cli.run_report``), and the start-up
measured from the container's start or from the claim (``scheduler.run_records.run_record``). Pure functions on plain
values; the trainer's real "done" event is checked by tests/test_worker.py's happy path."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from scheduler.run_records import ClaimInfo, process_started_at, run_record
from scheduler.task import Task
from scheduler.trainer_process import TrainOutcome
from training.cli import model_family, run_report
from training.families.base import ModelInfo
from training.metrics import RunMetrics
from training.spec import TrainParams
from training.utils.results import RunResult


def test_run_metrics_report_the_steady_rate_and_the_wall_clock_of_the_first_and_last_logged_steps():
    metrics = RunMetrics()
    assert metrics.timing() == {"steps_per_s": None, "first_step": None, "first_step_at": None, "last_step": None,
                                "last_step_at": None}  # fmt: skip
    before = time.time()
    metrics.log(10, 0.5, now=100.0)  # ``now`` is the trainer's perf_counter: the wall clock is taken separately
    metrics.paused(5.0)
    metrics.log(30, 0.4, now=115.0)
    timing = metrics.timing()
    assert timing["steps_per_s"] == pytest.approx(20 / 10)  # 15 s less the 5 s spent on samples
    assert (timing["first_step"], timing["last_step"]) == (10, 30)
    assert before - 1 <= timing["first_step_at"] <= timing["last_step_at"] <= time.time() + 1


def info(cross_attention_dim: int | None, sdxl: bool = False) -> ModelInfo:
    """A Stable Diffusion pipeline's ``ModelInfo`` (SDXL: a second text encoder) with this UNet width."""
    index = {"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
             "text_encoder": ["transformers", "CLIPTextModel"]}  # fmt: skip
    if sdxl:
        index |= {"_class_name": "StableDiffusionXLPipeline", "text_encoder_2": ["transformers", "CLIPTextModel"]}
    return ModelInfo("org/any", index, {"cross_attention_dim": cross_attention_dim}, {})


@pytest.mark.parametrize(
    ("model", "family"),
    [(info(768), "sd15"), (info(1024), "sd2"), (info(2048, sdxl=True), "sdxl"), (info(64), None),
     (info(2048, sdxl=False), None), (info(768, sdxl=True), None), (info(None), None)],
)  # fmt: skip
def test_the_model_family_comes_from_the_unets_cross_attention_width(model, family):
    assert model_family(model, "org/any") == family


def test_another_model_family_is_named_by_its_registry_name():
    assert model_family(ModelInfo("org/flux", {"_class_name": "FluxPipeline"}, {}, {}), "org/flux") == "flux1"
    assert model_family(ModelInfo("org/x", {"_class_name": "NoSuchPipeline"}, {}, {}), "org/x") is None  # unknown


def test_the_run_report_gives_the_settings_the_recipe_really_trained_with(tmp_path):
    metrics = RunMetrics()
    metrics.log(1, 0.5, now=0.0)
    metrics.log(4, 0.5, now=1.5)
    result = RunResult("dreambooth-lora", steps=4, resolution=64, learning_rate=1e-4, warmup_steps=0,
                       mixed_precision="no", model_info=info(768), metrics=metrics)  # fmt: skip
    spec = SimpleNamespace(params=TrainParams(batch_size=2, prior_preservation=True), base_model="org/sd15")
    report = run_report(result, spec)
    assert report["steps_per_s"] == 2.0 and report["first_step"] == 1 and report["last_step"] == 4
    assert {k: report[k] for k in ("steps", "resolution", "batch_size", "prior_preservation", "train_text_encoder",
                                   "family")} == {"steps": 4, "resolution": 64, "batch_size": 2,
                                                  "prior_preservation": True, "train_text_encoder": False,
                                                  "family": "sd15"}  # fmt: skip
    custom = run_report(None, SimpleNamespace(params=TrainParams(steps=9), base_model="x"))
    assert custom["steps"] == 9 and custom["family"] is None and "steps_per_s" not in custom  # no metrics kept


def test_startup_runs_from_the_reference_to_the_first_step_and_leaves_out_the_steps_logged_with_it():
    task = Task(instance_prompt="a photo of sks dog", submitted_by="alice", base_model="org/sd15", recipe="dreambooth-lora",
                params={"steps": 100, "resolution": 512})  # fmt: skip
    report = {"steps_per_s": 2.0, "first_step": 10, "first_step_at": 1100.0, "last_step": 100, "last_step_at": 1145.0,
              "steps": 100, "resolution": 512, "batch_size": 1, "family": "sd15"}  # fmt: skip
    first = ClaimInfo(flavor="t4-small", claimed_at=1060.0, since=1000.0, switch_s=30.0)  # the container's first task
    record = run_record(task, TrainOutcome(ok=True, report=report), first)
    assert record.startup_s == 1100.0 - 1000.0 - 10 / 2.0  # the 10 steps before the first log took 5 s
    assert (record.flavor, record.family, record.switch_s, record.steps_per_s) == ("t4-small", "sd15", 30.0, 2.0)
    later = ClaimInfo(flavor="t4-small", claimed_at=1060.0, since=1060.0)
    resumed = run_record(task, TrainOutcome(ok=True, report=report, resumed_step=8), later)
    assert resumed.startup_s == pytest.approx(1100.0 - 1060.0 - 2 / 2.0)  # resumed at step 8: 2 steps before the log
    silent = run_record(task, TrainOutcome(ok=True, report=None), later)  # a recipe that reports nothing
    assert (silent.steps_per_s, silent.startup_s, silent.resolution, silent.steps) == (None, None, 512, 100)


def test_the_process_start_is_before_now_and_recent():
    started = process_started_at()
    assert time.time() - 24 * 3600 < started <= time.time()
