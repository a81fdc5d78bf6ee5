"""The schedule settings of the form's Advanced settings (issue 21, item 16): learning-rate schedule, warm-up steps
and min-SNR gamma, offered with the recipe's values (read-only where the recipe's ``fixed_params`` set them: the
recipe wins), checked at submit and by the trainer against the same bounds, and carried in ``task.params`` to the
trainer's ``TrainSpec``; the CLI sets them too.

Real recipe catalog (``python -m training --list-recipes`` with ``tests.schedule_recipe``), real local queue; the
trainer runs in-process on the tiny SD model for the schedule's effect.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from contract.catalog import load_catalog
from contract.params import LR_SCHEDULER_CHOICES, SCHEDULE_DEFAULTS
from scheduler.cli import EXIT_OK, EXIT_USAGE, main
from scheduler.queue.local import LocalQueue
from scheduler.trainer_process import task_spec
from scheduler.validation import validate_task
from tests.scheduler.helpers import make_images, make_task
from tests.test_form import form_blocks, local_ctx, photos, values
from training.demo import DEMO_MODEL
from training.exitcodes import BadInputError
from training.spec import TrainParams, TrainSpec
from ui.advanced import schedule_updates, schedule_values
from ui.form import field_updates
from ui.submission import submit

FIXING = "lora-cosine-snr"  # tests/schedule_recipe.py: fixes the schedule (cosine) and the SNR gamma (5), not warm-up
LABELS = ("Learning-rate schedule", "Warm-up steps", "SNR gamma")


@pytest.fixture(scope="module")
def catalog():
    return dict(load_catalog(("tests.schedule_recipe",)))


def spec_of(task, tmp_path, settings, fixed: dict | None = None) -> TrainSpec:
    """The trainer's spec of a queued task as the worker writes it, with a recipe's fixed params applied over it as
    ``python -m training`` does (``training.cli``)."""
    spec = TrainSpec.from_dict(json.loads(json.dumps(task_spec(task, tmp_path, settings))))
    return spec.with_params(fixed or {})


def test_the_form_offers_the_schedule_settings_with_the_recipes_values(tmp_path, catalog):
    assert dict(SCHEDULE_DEFAULTS) == {k: getattr(TrainParams(), k) for k in SCHEDULE_DEFAULTS}  # the trainer's own
    form = form_blocks(local_ctx(tmp_path, gpu=True, recipes=catalog))
    scheduler, warmup, gamma = (form[label] for label in LABELS)
    assert [v for _, v in scheduler.choices] == list(LR_SCHEDULER_CHOICES)
    assert (scheduler.value, warmup.value, gamma.value) == ("constant", 0, 0)  # the LoRA recipe fixes none; 0: off
    assert scheduler.interactive is not False and warmup.interactive is not False and gamma.interactive is not False

    # A recipe that fixes two of them: shown with its values, read-only, marked; warm-up stays the user's.
    (s, w, g), applied = schedule_updates(catalog[FIXING], {}, {})
    assert s.constructor_args["value"] == "cosine" and s.constructor_args["interactive"] is False
    assert g.constructor_args["value"] == 5.0 and g.constructor_args["interactive"] is False
    assert "Set by this recipe." in s.constructor_args["info"] and "Set by this recipe." in g.constructor_args["info"]
    assert w.constructor_args["value"] == 0 and w.constructor_args["interactive"] is True
    assert "Set by this recipe." not in w.constructor_args["info"]
    note = field_updates(local_ctx(tmp_path / "b", recipes=catalog), FIXING, "some/model", 3, 512)[-1]
    assert (
        "lr scheduler = cosine" in note.constructor_args["value"]
        and "snr gamma = 5.0" in note.constructor_args["value"]
    )

    # Edited fields keep their value across a recipe change, unless the new recipe fixes them.
    touched = {"lr_scheduler": 1, "lr_warmup_steps": 2}
    (s, w, g), applied = schedule_updates(catalog["dreambooth-lora"], touched, {})
    assert "value" not in s.constructor_args and "value" not in w.constructor_args  # kept
    assert g.constructor_args["value"] == 0 and applied == {"snr_gamma": 0}
    (s, w, g), applied = schedule_updates(catalog[FIXING], touched, applied)
    assert s.constructor_args["value"] == "cosine" and "value" not in w.constructor_args
    assert applied == {"snr_gamma": 0, "lr_scheduler": 1}
    # Back to a recipe that fixes nothing: the fields the last recipe set go back to the trainer's defaults.
    (s, w, g), _ = schedule_updates(catalog["dreambooth-lora"], touched, applied)
    assert (s.constructor_args["value"], g.constructor_args["value"]) == ("constant", 0)
    assert s.constructor_args["interactive"] is True and "value" not in w.constructor_args


def test_schedule_values_set_in_the_form_reach_the_trainers_spec(tmp_path, catalog):
    ctx = local_ctx(tmp_path, recipes=catalog)
    form_values = schedule_values("cosine", 20.0, 5)  # as the browser sends them (numbers as floats)
    assert form_values == {"lr_scheduler": "cosine", "lr_warmup_steps": 20, "snr_gamma": 5.0}
    assert (
        schedule_values("constant", 0, 0)["snr_gamma"] is schedule_values("constant", 0, None)["snr_gamma"] is None
        and schedule_values("linear", "", "")["lr_warmup_steps"] is None
    )

    outcome = submit(ctx, "local", photos(tmp_path), values(**form_values))
    assert outcome.queued, outcome.message
    params = outcome.task.params
    assert (params["lr_scheduler"], params["lr_warmup_steps"], params["snr_gamma"]) == ("cosine", 20, 5.0)
    p = spec_of(outcome.task, tmp_path, ctx.settings).params
    assert (p.lr_scheduler, p.lr_warmup_steps, p.snr_gamma) == ("cosine", 20, 5.0)

    # Left at the defaults (SNR gamma empty): the task holds what the trainer would take anyway.
    plain = submit(ctx, "local", photos(tmp_path), values(steps=5, **schedule_values("constant", 0, 0)))
    assert plain.queued and "snr_gamma" not in plain.task.params
    p = spec_of(plain.task, tmp_path, ctx.settings).params
    assert (p.lr_scheduler, p.lr_warmup_steps, p.snr_gamma) == ("constant", 0, None)

    # A recipe's fixed values win: the task does not carry the form's, the trainer applies the recipe's.
    fixing = submit(ctx, "local", photos(tmp_path), values(recipe=FIXING, steps=6, lr_scheduler="linear",
                                                            lr_warmup_steps=30, snr_gamma=2.0))  # fmt: skip
    assert fixing.queued, fixing.message
    assert "lr_scheduler" not in fixing.task.params and "snr_gamma" not in fixing.task.params
    p = spec_of(fixing.task, tmp_path, ctx.settings, catalog[FIXING].fixed_params).params
    assert (p.lr_scheduler, p.lr_warmup_steps, p.snr_gamma) == ("cosine", 30, 5.0)


def test_schedule_values_out_of_bounds_are_refused_at_submit_and_by_the_trainer(tmp_path, catalog):
    ctx = local_ctx(tmp_path, recipes=catalog)
    answer = submit(ctx, "local", photos(tmp_path), values(lr_scheduler="step", lr_warmup_steps=-1, snr_gamma=-1.0))
    assert not answer.queued and ctx.queue.list() == []
    assert (
        "Learning-rate schedule: 'step' is not a choice; use one of constant, linear, cosine, polynomial."
        in answer.message
    )
    assert "Warm-up steps: -1 is out of range; use 0 to 10000." in answer.message
    assert "SNR gamma: -1.0 is out of range; use a value from 0 and at most 100." in answer.message
    # A value the recipe fixes is not the user's: not checked, not sent.
    assert submit(ctx, "local", photos(tmp_path), values(recipe=FIXING, lr_scheduler="step", snr_gamma=-1.0)).queued

    # The same values in a task (the CLI's, or one read back from the queue): refused by both ends alike.
    images = make_images(tmp_path / "cli", 3)
    for params, form, trainer in (
        (
            {"lr_scheduler": "step"},
            "Learning-rate schedule: 'step' is not a choice",
            "params.lr_scheduler must be one of",
        ),
        ({"lr_warmup_steps": 10_001}, "Warm-up steps: 10001 is out of range", "params.lr_warmup_steps must be at most"),
        ({"snr_gamma": 100.5}, "SNR gamma: 100.5 is out of range", "params.snr_gamma must be at most 100"),
    ):
        problems = validate_task(make_task(base_model=DEMO_MODEL, params=params), images)
        assert len(problems) == 1 and problems[0].startswith(form), problems
        with pytest.raises(BadInputError, match=f"^{trainer}"):
            TrainSpec.from_dict({"task_id": "t", "base_model": "m", "instance_prompt": "p", "images": "/i",
                                 "params": params})  # fmt: skip
    assert validate_task(make_task(base_model=DEMO_MODEL, params={"lr_scheduler": "polynomial"}), images) == []


def local_submit(tmp_path, monkeypatch) -> tuple[list[str], Path]:
    """``python -m scheduler``'s arguments that submit three photos of the demo model for 50 steps to a local queue
    (no Hub account), and that queue's folder."""
    monkeypatch.delenv("HF_TOKEN", raising=False)
    images = tmp_path / "photos"
    make_images(images, 3)
    qdir = tmp_path / "q"
    return ["--local", str(qdir), "submit", "--images", str(images), "--prompt", "a photo of sks dog", "--base-model",
            DEMO_MODEL, "--steps", "50"], qdir  # fmt: skip


def test_the_cli_sets_the_schedule_like_the_form(tmp_path, monkeypatch, capsys):
    base, qdir = local_submit(tmp_path, monkeypatch)
    args = ["--lr-scheduler", "cosine", "--lr-warmup-steps", "20", "--snr-gamma", "5"]
    assert main([*base, *args, "--id", "sched01"]) == EXIT_OK, capsys.readouterr().err
    [task] = LocalQueue(qdir).list()
    assert {k: task.params[k] for k in SCHEDULE_DEFAULTS} == {"lr_scheduler": "cosine", "lr_warmup_steps": 20,
                                                               "snr_gamma": 5.0}  # fmt: skip
    assert main([*base, "--lr-scheduler", "step", "--snr-gamma", "-1"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "Learning-rate schedule: 'step' is not a choice" in err and "SNR gamma: -1.0 is out of range" in err
    assert len(LocalQueue(qdir).list()) == 1


def lrs(events: list[dict]) -> list[float]:
    return [e["lr"] for e in events if e["event"] == "step"]


def test_warm_up_and_the_recipes_schedule_take_effect_in_a_real_run(tiny_sd, tmp_path):
    """The constant schedule with a warm-up rises over it (diffusers' "constant" alone ignores a warm-up), and a
    recipe's fixed cosine schedule decays to 0 whatever the task asked for."""
    from tests.test_training import run_task
    from tests.tiny_models import make_images as make_tiny_images

    images = tmp_path / "images"
    make_tiny_images(images, 2, size=32)
    rc, events = run_task(tmp_path / "warm", base_model=str(tiny_sd), images=str(images),
                          params={"steps": 10, "learning_rate": 1e-4, "lr_warmup_steps": 2})  # fmt: skip
    assert rc == 0, events[-3:]
    rates = lrs(events)
    assert rates[0] == pytest.approx(5e-5) and rates[1:] == pytest.approx([1e-4] * 9)  # 2 warm-up steps, then flat

    rc, events = run_task(tmp_path / "fixed", "--recipes-module", "tests.schedule_recipe", recipe=FIXING,
                          base_model=str(tiny_sd), images=str(images),
                          params={"steps": 4, "learning_rate": 1e-4, "lr_scheduler": "constant"})  # fmt: skip
    assert rc == 0, events[-3:]
    rates = lrs(events)
    assert rates[-1] == pytest.approx(0.0, abs=1e-12) and rates[0] > rates[1] > rates[2]  # the recipe's cosine
    card = (tmp_path / "fixed" / "output" / "README.md").read_text()
    assert "| lr scheduler | cosine (warm-up 0 steps) |" in card and "| SNR gamma | 5.0 |" in card
