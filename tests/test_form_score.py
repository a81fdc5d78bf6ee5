"""The task option that turns scoring off (issue 22, point 4): "Score checkpoints" in the form's Advanced settings
(on by default; read-only where a recipe's ``fixed_params`` set it: the recipe wins), ``--no-score`` in the CLI;
either way the task's ``params.score`` says it, checked at submit and by the trainer alike.

Real recipe catalog (``python -m training --list-recipes`` with ``tests.score_recipe``), real local queue, the real
Gradio app served on a free port and pressed as the page presses Train (upload, then ``queue/join``); nothing is
mocked.
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import gradio as gr
import pytest

from app import create_app
from contract.catalog import load_catalog
from contract.settings import load_settings
from scheduler.cli import EXIT_OK, main
from scheduler.queue.local import LocalQueue
from scheduler.validation import validate_task
from tests.polling import free_port
from tests.scheduler.helpers import make_images, make_task
from tests.test_form import form_blocks, local_ctx, photos, values
from tests.test_form_schedule import local_submit, spec_of
from tests.test_http_guard import upload
from tests.test_security import http, page_event
from training.demo import DEMO_MODEL
from training.exitcodes import BadInputError
from training.spec import TrainSpec
from ui.advanced import advanced_updates
from ui.form import field_updates
from ui.submission import submit

LABEL = "Score checkpoints"
HELP = ("Scores every sample point and the base model (subject and prompt fidelity), and gives you the best "
        "checkpoint. Adds a few images per sample point.")  # fmt: skip
FIXING = "lora-unscored"  # tests/score_recipe.py: fixes score off
QUEUED = re.compile(r"\*\*Task `\w+` queued\*\* with 3 photos")


@pytest.fixture(scope="module")
def catalog():
    return dict(load_catalog(("tests.score_recipe",)))


def test_the_form_offers_scoring_on_and_a_recipe_that_fixes_it_shows_it_read_only(tmp_path, catalog):
    box = form_blocks(local_ctx(tmp_path, recipes=catalog))[LABEL]
    assert box.value is True and box.interactive is not False and box.info == HELP

    # A recipe that fixes it: its value, read-only, marked, and named in the recipe's note.
    (*_, fixed, captions), applied = advanced_updates(catalog[FIXING], {}, {})
    args = fixed.constructor_args
    assert captions == gr.skip()  # the captions box is the user's alone: a recipe leaves it as it is
    assert args["value"] is False and args["interactive"] is False and args["info"] == HELP + " Set by this recipe."
    note = field_updates(local_ctx(tmp_path / "b", recipes=catalog), FIXING, "some/model", 3, 512)[-1]
    assert "score = False" in note.constructor_args["value"]

    # Back to a recipe that fixes nothing: on again and editable; a box the user unticked meanwhile keeps its value.
    (*_, back, _captions), _ = advanced_updates(catalog["dreambooth-lora"], {}, applied)
    assert back.constructor_args["value"] is True and back.constructor_args["interactive"] is True
    (*_, kept, _captions), _ = advanced_updates(catalog["dreambooth-lora"], {"score": 1}, {})
    assert "value" not in kept.constructor_args and kept.constructor_args["interactive"] is True


def served_submit(port: int, folder: Path, changes: dict[str, object]) -> str:
    """Upload 3 new photos (made in ``folder``) and press Train as the page does, with the form's defaults but
    ``changes`` (by label): the handler's answer."""
    url = f"http://127.0.0.1:{port}/"
    config = json.loads(http(f"{url}config").body)
    dep = next(d for d in config["dependencies"] if d.get("api_name") == "submit")
    components = {c["id"]: c for c in config["components"]}
    source = make_images(folder, 3)
    sent = upload(port, {p.name: p.read_bytes() for p in source}, f"127.0.0.1:{port}")
    assert sent.status == 200, sent
    files = [{"path": path, "orig_name": p.name, "meta": {"_type": "gradio.FileData"}}
             for path, p in zip(json.loads(sent.body), source, strict=True)]  # fmt: skip
    data = []
    for cid in dep["inputs"]:
        props = components[cid].get("props", {})
        data.append(files if components[cid]["type"] == "file" else changes.get(props.get("label"), props.get("value")))
    done, _ = page_event(url, dep["id"], data, uuid.uuid4().hex)
    assert done.get("success"), done  # answered by the handler, not refused by Gradio's own checks
    answer = done["output"]["data"][0]
    return answer.get("value", answer) if isinstance(answer, dict) else answer


def test_pressing_train_writes_the_boxs_value_into_the_tasks_params(tmp_path):
    app = create_app(load_settings({"DATA_DIR": str(tmp_path / "data")}))
    assert not app.problems
    port = free_port()
    app.demo.launch(prevent_thread_lock=True, **{**app.launch_options(), "server_port": port})
    prompt = {"Instance prompt": "a photo of sks dog", "Steps (auto from the photo count; editable)": 4}
    try:
        unticked = served_submit(port, tmp_path / "a", {**prompt, LABEL: False})
        by_default = served_submit(port, tmp_path / "b", prompt)
        refused = served_submit(port, tmp_path / "c", {**prompt, LABEL: "no"})
    finally:
        app.close()
    assert QUEUED.match(unticked) and QUEUED.match(by_default), (unticked, by_default)  # two tasks: not a repeat
    assert f"{LABEL}: 'no' is not on or off; use true or false." in refused, refused
    first, second = sorted(app.worker.queue.list(), key=lambda t: t.created_at)  # the refused one is not queued
    assert first.params["score"] is False and second.params["score"] is True


def test_scoring_reaches_the_trainers_spec_and_a_recipes_fixed_value_wins(tmp_path, catalog):
    ctx = local_ctx(tmp_path, recipes=catalog)
    off = submit(ctx, "local", photos(tmp_path), values(score=False))
    assert off.queued, off.message
    assert off.task.params["score"] is False and spec_of(off.task, tmp_path, ctx.settings).params.score is False
    default = submit(ctx, "local", photos(tmp_path), values(steps=5))  # a caller that sends no value: on, written
    assert default.task.params["score"] is True and spec_of(default.task, tmp_path, ctx.settings).params.score is True

    # The recipe's fixed value is not the user's: the task does not carry the form's, the trainer applies the recipe's.
    fixing = submit(ctx, "local", photos(tmp_path), values(recipe=FIXING, steps=6, score=True))
    assert fixing.queued, fixing.message
    assert "score" not in fixing.task.params
    assert spec_of(fixing.task, tmp_path, ctx.settings, catalog[FIXING].fixed_params).params.score is False


def test_a_score_that_is_not_true_or_false_is_refused_by_the_cli_check_and_the_trainer_alike(tmp_path):
    images = make_images(tmp_path / "cli", 3)
    problems = validate_task(make_task(base_model=DEMO_MODEL, params={"score": "no"}), images)
    assert problems == ["Score checkpoints: 'no' is not on or off; use true or false."]
    with pytest.raises(BadInputError, match="^params.score must be true or false"):
        TrainSpec.from_dict({"task_id": "t", "base_model": "m", "instance_prompt": "p", "images": "/i",
                             "params": {"score": "no"}})  # fmt: skip
    assert validate_task(make_task(base_model=DEMO_MODEL, params={"score": False}), images) == []


def test_the_cli_turns_scoring_off_with_no_score(tmp_path, monkeypatch, capsys):
    base, qdir = local_submit(tmp_path, monkeypatch)
    assert main([*base, "--no-score", "--id", "off01"]) == EXIT_OK, capsys.readouterr().err
    assert main([*base, "--steps", "60", "--id", "on01"]) == EXIT_OK, capsys.readouterr().err
    queue = LocalQueue(qdir)
    off, on = queue.get("off01"), queue.get("on01")
    assert off.params["score"] is False and on.params["score"] is True  # written either way, as the form writes it
    settings = load_settings({"DATA_DIR": str(tmp_path / "data")})
    assert spec_of(off, tmp_path, settings).params.score is False
