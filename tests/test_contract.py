"""The task's parameters have one set of bounds (contract.params): the form / CLI (scheduler.validation) and the
trainer (training.spec) accept and refuse exactly the same values, at every end of every bound."""

from __future__ import annotations

import dataclasses
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from contract.params import MAX_PROMPT_CHARS, MAX_VALIDATION_PROMPTS, PARAMS, Bound
from scheduler.validation import LIMITS, validate_submission, validate_task
from tests.scheduler.helpers import make_images, make_task
from training.demo import DEMO_MODEL, DEMO_RESOLUTION
from training.exitcodes import BadInputError
from training.spec import TrainParams, TrainSpec

ROOT = Path(__file__).resolve().parents[1]


def _edges(bound: Bound) -> tuple[list[float], list[float]]:
    """(accepted, refused): each end of ``bound`` and the value just past it."""
    if bound.kind is int:
        accepted = [int(bound.low), int(bound.high)]
        refused = [int(bound.low) - bound.multiple, int(bound.high) + bound.multiple]
        if bound.multiple > 1:
            refused.append(int(bound.low) + 1)
        return accepted, refused
    accepted, refused = [], []
    inward_low, outward_low = math.nextafter(bound.low, math.inf), math.nextafter(bound.low, -math.inf)
    inward_high, outward_high = math.nextafter(bound.high, -math.inf), math.nextafter(bound.high, math.inf)
    (refused if bound.low_open else accepted).append(bound.low)
    accepted.append(inward_low if bound.low_open else bound.low)
    refused.append(bound.low if bound.low_open else outward_low)
    (refused if bound.high_open else accepted).append(bound.high)
    accepted.append(inward_high if bound.high_open else bound.high)
    refused.append(bound.high if bound.high_open else outward_high)
    return accepted, refused


def _trainer_accepts(params: dict) -> bool:
    task = {"task_id": "t", "base_model": DEMO_MODEL, "instance_prompt": "sks", "images": "/i", "params": params}
    try:
        TrainSpec.from_dict(task)
    except BadInputError as err:
        assert str(err).startswith("params."), err
        return False
    return True


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("photos"), 3)


def _form_problems(images, params: dict) -> list[str]:
    # the demo model: the form's narrower resolution policy for real models is tested on its own below
    return validate_task(make_task(base_model=DEMO_MODEL, params=params), images)


CASES = [(key, value, ok) for key, bound in PARAMS.items() for ok, values in zip((True, False), _edges(bound), strict=True)
         for value in values]  # fmt: skip


@pytest.mark.parametrize(("key", "value", "ok"), CASES, ids=[f"{k}={v!r}" for k, v, _ in CASES])
def test_the_form_and_the_trainer_agree_at_every_bound(images, key, value, ok):
    form = _form_problems(images, {key: value})
    assert (form == []) is ok, form
    assert _trainer_accepts({key: value}) is ok
    if not ok:
        assert len(form) == 1 and form[0].startswith(f"{PARAMS[key].label}: "), form


def test_every_number_of_the_task_has_a_bound():
    numeric = {f.name for f in dataclasses.fields(TrainParams) if re.search(r"\b(int|float)\b", str(f.type))}
    assert numeric == set(PARAMS)


@pytest.mark.parametrize(
    ("params", "form_message", "trainer_message"),
    [  # each was checked by neither side before
        ({"seed": -1}, "Seed: -1 is out of range; use 0 to 4294967295.", "params.seed must be at least 0 (got -1)"),
        (
            {"sample_inference_steps": 0},
            "Sampling steps: 0 is out of range",
            "params.sample_inference_steps must be at least 1",
        ),
        (
            {"checkpoints_to_keep": -1},
            "Checkpoints to keep: -1 is out of range",
            "params.checkpoints_to_keep must be at least 0",
        ),
        (
            {"memory_budget_gib": 0},
            "Memory budget (GiB): 0 is out of range",
            "params.memory_budget_gib must be above 0",
        ),
        ({"batch_size": 65}, "Batch size: 65 is out of range; use 1 to 64.", "params.batch_size must be at most 64"),
        (
            {"prior_loss_weight": -0.5},
            "Prior loss weight: -0.5 is out of range",
            "params.prior_loss_weight must be at least 0",
        ),
        (
            {"num_class_images": 5000},
            "Class images: 5000 is out of range",
            "params.num_class_images must be at most 1000",
        ),
        (
            {"lr_warmup_steps": 10**6},
            "Warm-up steps: 1000000 is out of range",
            "params.lr_warmup_steps must be at most",
        ),
        ({"alpha": 4096}, "LoRA alpha: 4096 is out of range", "params.alpha must be at most 1024"),
        (
            {"validation_prompts": ["a dog"] * (MAX_VALIDATION_PROMPTS + 1)},
            "Validation prompts: holds 9 prompts",
            "params.validation_prompts holds 9 prompts",
        ),
        (
            {"validation_prompts": ["x" * (MAX_PROMPT_CHARS + 1)]},
            "Validation prompts: has a prompt of 1001 characters",
            "params.validation_prompts has a prompt of 1001 characters",
        ),
    ],
)
def test_params_checked_by_neither_are_now_refused_by_both(images, params, form_message, trainer_message):
    problems = _form_problems(images, params)
    assert len(problems) == 1 and problems[0].startswith(form_message), problems
    task = {"task_id": "t", "base_model": "m", "instance_prompt": "sks", "images": "/i", "params": params}
    with pytest.raises(BadInputError) as err:
        TrainSpec.from_dict(task)
    assert str(err.value).startswith(trainer_message), err.value


def test_the_old_disagreements_are_gone(images):
    for params in ({"rank": 300}, {"learning_rate": 0.5}, {"steps": 10_001}):  # the trainer took these before
        assert _form_problems(images, params) and not _trainer_accepts(params)
    for params in ({"learning_rate": 3e-2}, {"resolution": 32}, {"resolution": 48}):  # the form refused these
        assert _form_problems(images, params) == [] and _trainer_accepts(params)
    rank = validate_submission(instance_prompt="sks", images=images, hardware="t4-small", output_repo="u/m", rank=300)
    assert rank == ["LoRA rank: 300 is out of range; use 1 to 256."]
    with pytest.raises(BadInputError, match=r"^params\.rank must be at most 256 \(got 300\)$"):
        TrainSpec.from_dict({"task_id": "t", "base_model": "m", "instance_prompt": "p", "images": "/i",
                             "params": {"rank": 300}})  # fmt: skip


def test_the_form_policy_for_real_models_lies_inside_the_shared_bound(images):
    from ui.advanced import RESOLUTIONS

    shared, policy = PARAMS["resolution"], LIMITS.resolution
    assert all(shared.admits(r) for r in range(int(policy.low), int(policy.high) + 1) if policy.admits(r))
    assert all(policy.admits(r) for r in RESOLUTIONS)  # what the form offers for real models
    assert shared.admits(DEMO_RESOLUTION) and shared.admits(32) and shared.admits(48)  # the demo and test models
    with pytest.raises(ValueError, match="reaches outside"):
        shared.narrowed(low=16)
    with pytest.raises(ValueError, match="reaches outside"):
        shared.narrowed(multiple=12)

    def form(resolution, model):
        return validate_submission(instance_prompt="sks", images=images, hardware="t4-small", output_repo="u/m",
                                   base_model=model, resolution=resolution)  # fmt: skip

    assert form(128, "stable-diffusion-v1-5/stable-diffusion-v1-5") == [
        "Resolution: 128 is out of range; use 256 to 1024."
    ]
    assert form(DEMO_RESOLUTION, DEMO_MODEL) == [] and form(32, DEMO_MODEL) == []


def test_prompts_share_one_length_bound(images):
    long = "x" * (MAX_PROMPT_CHARS + 1)
    assert validate_submission(instance_prompt=long, images=images, hardware="t4-small", output_repo="u/m")
    with pytest.raises(BadInputError, match="instance_prompt has 1001 characters; at most 1000"):
        TrainSpec.from_dict({"task_id": "t", "base_model": "m", "instance_prompt": long, "images": "/i"})
    ok = "x" * MAX_PROMPT_CHARS
    assert validate_submission(instance_prompt=ok, images=images, hardware="t4-small", output_repo="u/m") == []
    TrainSpec.from_dict({"task_id": "t", "base_model": "m", "instance_prompt": ok, "images": "/i"})


def test_contract_imports_no_torch():
    code = "import sys, contract.params; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr


# ---------------------------------------------------------------- progress events: written by the trainer, read by the app
def test_every_event_the_trainer_writes_is_read_back_by_the_app_as_written(tmp_path):
    from contract import events
    from scheduler.trainer_process import EventReader
    from training.progress import Progress

    written = [
        events.Phase(phase="training"),
        events.Step(step=3, total=10, loss=0.25, lr=1e-4, steps_per_s=2.0, eta_s=3.5, peak_mem_gib=1.5),
        events.Sample(step=3, paths=["/w/output/samples/step3_0.png"]),
        events.Checkpoint(step=3, path="/w/checkpoints/step-00000003"),
        events.Resumed(step=3),
        events.MemoryPlan(quantized_base="nf4", gradient_checkpointing=True, estimate_gib=9.9, source="table"),
        events.Done(output_dir="/w/output", repo_url=None, run={"steps": 10}),
        events.Error(kind="bad_input", message="no images"),
    ]
    progress = Progress(tmp_path / "events.jsonl")
    for event in written:
        progress.emit(event)
    progress.close()
    read = EventReader(tmp_path / "events.jsonl").read_new()
    assert [e.model_copy(update={"time": None}) for e in read] == written
    assert all(isinstance(e.time, float) for e in read)  # stamped when written


@pytest.mark.parametrize(
    "record",
    [{"event": "step", "step": "three", "total": 10}, {"event": "step", "total": 10}, {"event": "sample", "step": 1},
     {"event": "error", "kind": "oom"}, {"event": "resumed"}, {"event": "nonsense", "step": 1}, {"step": 1},
     ["event", "step"], "step", None],
)  # fmt: skip
def test_a_line_that_is_not_a_well_formed_event_is_not_trusted(record):
    from contract.events import parse_event

    assert parse_event(record) is None


def test_the_apps_outcome_of_a_run_follows_its_exit_code_and_events(tmp_path):
    from contract.events import Done, Error, ExitCode
    from scheduler.trainer_process import trainer_outcome

    log = tmp_path / "train.log"
    log.write_text("line\n")
    ok = trainer_outcome(ExitCode.OK, Done(output_dir="/w/output", run={"steps": 4}), None, log, list)
    assert ok.ok and ok.result_url == "/w/output" and ok.report == {"steps": 4}
    bad = trainer_outcome(ExitCode.BAD_INPUT, None, Error(kind="bad_input", message="no images"), log, list)
    assert not bad.ok and not bad.retryable and "refused the task's input (bad_input: no images)" in bad.error
    crash = trainer_outcome(ExitCode.FAILURE, None, None, log, list)
    assert not crash.ok and crash.retryable
    silent = trainer_outcome(ExitCode.OK, None, None, log, list)  # exited 0 without a done event: not a result
    assert not silent.ok and "without reporting a result" in silent.error
