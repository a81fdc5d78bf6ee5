"""The Train form without a browser: the demo model, base-model and output-repo checks at submit time, the answer's
speed and wording, repeats, and the recipe catalog's steps and fields.

Real queues (a local folder, or a Hub dataset repo on the emulator), real huggingface_hub, real recipe catalog
(``python -m training --list-recipes``); nothing is mocked. The GPU of a test machine is "probed" through
``LocalHardware``'s own ``gpu_probe`` argument, since this machine has none.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from pathlib import Path

import gradio as gr
import pytest
from huggingface_hub import HfApi

from contract.catalog import load_catalog
from contract.flavors import GPU_FLAVORS, JOBS_GPU_FLAVORS
from contract.settings import load_settings
from scheduler.hardware import make_hardware
from scheduler.hardware.local import LocalHardware
from scheduler.output_names import default_output_repo, subject_name
from scheduler.queue import make_queue
from scheduler.task import RunRecord, Task, TaskStatus
from scheduler.worker import Worker
from tests.conftest import ALICE_TOKEN, MOCK_SIGNIN
from tests.polling import free_port, wait_for
from tests.tiny_flux import build_tiny_flux1
from tests.tiny_models import make_images
from training.demo import DEMO_LABEL, DEMO_MODEL, DEMO_RESOLUTION, DEMO_STEPS
from ui.context import AppContext
from ui.estimate import LOCAL_CPU, LOCAL_GPU, describe, estimate
from ui.form import (
    APPLY_DEFAULTS_JS,
    FOLLOWED_FIELDS,
    HardwareChoice,
    build_form,
    field_updates,
    follow_base_model,
    form_estimate,
    toucher,
)
from ui.local_device import CPU, LocalDevice
from ui.model_family import family_hardware, family_of, hardware_note, mark_applied
from ui.submission import build_task, queued_message, submit, submit_task


def local_ctx(tmp_path: Path, gpu: bool = False, recipes: dict | None = None, **env: str) -> AppContext:
    settings = load_settings({"DATA_DIR": str(tmp_path / "data"), **env})
    queue = make_queue(settings)
    worker = Worker(settings, queue, LocalHardware(gpu_probe=lambda: gpu))  # not started unless a test does
    return AppContext(settings=settings, queue=queue, worker=worker, **({"recipes": recipes} if recipes else {}))


def space_ctx(hub, tmp_path: Path, **env: str) -> AppContext:
    repo = f"alice/form-{uuid.uuid4().hex[:6]}"
    hub.create_space(repo, owner_token=ALICE_TOKEN)
    settings = load_settings({"SPACE_ID": repo, "HF_ENDPOINT": hub.url, "HF_TOKEN": ALICE_TOKEN, "RETRY_BASE_S": "0.01",
                              "DATA_DIR": str(tmp_path / "data"), **MOCK_SIGNIN, **env})  # fmt: skip
    api = HfApi(endpoint=hub.url, token=ALICE_TOKEN)
    queue = make_queue(settings, api=api)
    worker = Worker(settings, queue, make_hardware(settings, api=api))
    return AppContext(settings=settings, queue=queue, worker=worker, api=api)


def form_blocks(ctx: AppContext) -> dict[str, gr.components.Component]:
    """The form's components by label."""
    with gr.Blocks() as demo:
        build_form(ctx)
    return {b.label: b for b in demo.blocks.values() if getattr(b, "label", None)}


def values(**changes):
    base = {"instance_prompt": "a photo of sks dog", "class_prompt": "", "base_model": DEMO_MODEL,
            "recipe": "dreambooth-lora", "steps": 4, "hardware": "t4-small", "learning_rate": 1e-4, "rank": 4,
            "resolution": DEMO_RESOLUTION, "output_repo": "dreambooth-sks-dog", "private": True}  # fmt: skip
    return {**base, **changes}


def photos(tmp_path: Path, n: int = 3, name: str = "photos") -> list[str]:
    """Fresh copies of the same ``n`` photos (a queued submit removes its uploads)."""
    source = tmp_path / "originals"
    if not source.exists():
        make_images(source, 3, size=128)
    folder = tmp_path / f"{name}-{uuid.uuid4().hex[:6]}"
    folder.mkdir()
    return [str(shutil.copy(p, folder)) for p in sorted(source.iterdir())[:n]]


# ---------------------------------------------------------------- item 1 and 2: the demo model, the field's help
def test_the_demo_model_is_offered_locally_and_chosen_on_a_machine_without_a_gpu(tmp_path):
    form = form_blocks(local_ctx(tmp_path, gpu=False))
    model = form["Base model"]
    assert (DEMO_LABEL, DEMO_MODEL) in model.choices and model.value == DEMO_MODEL
    assert DEMO_RESOLUTION in [v for _, v in form["Resolution (px)"].choices]
    assert form["Resolution (px)"].value == DEMO_RESOLUTION and form["Steps (auto from the photo count; editable)"].value == DEMO_STEPS
    # Item 2: the field says what it accepts.
    assert "namespace/name" in model.info and "local folder" in model.info

    with_gpu = form_blocks(local_ctx(tmp_path / "gpu", gpu=True))["Base model"]
    assert (DEMO_LABEL, DEMO_MODEL) in with_gpu.choices and with_gpu.value == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    configured = form_blocks(local_ctx(tmp_path / "cfg", gpu=False, BASE_MODELS="me/my-model"))["Base model"]
    assert configured.value == "me/my-model"  # BASE_MODELS set: the owner's choice wins, the demo is still offered


def test_choosing_the_demo_model_sets_its_resolution_and_steps(tmp_path):
    ctx = local_ctx(tmp_path)
    steps, _lr, _rank, resolution, _note = field_updates(ctx, "dreambooth-lora", DEMO_MODEL, 3, 512, recipe_changed=False)
    assert steps.constructor_args["value"] == DEMO_STEPS
    assert resolution.constructor_args["value"] == DEMO_RESOLUTION
    steps, _lr, _rank, resolution, _note = field_updates(ctx, "dreambooth-lora", "some/model", 3, DEMO_RESOLUTION,
                                                          recipe_changed=False)  # fmt: skip
    assert steps.constructor_args["value"] == ctx.recipes["dreambooth-lora"].auto_steps(3)
    assert resolution.constructor_args["value"] == 512  # back to a real model's size
    # A demo task at its own 64 px passes validation (other models keep the 256 px minimum).
    answer = submit_task(ctx, "local", photos(tmp_path), values())
    assert "queued" in answer, answer
    assert "Resolution" in submit_task(ctx, "local", photos(tmp_path), values(base_model="x/y", resolution=64))


def test_the_demo_model_is_not_offered_on_a_space(hub, tmp_path):
    form = form_blocks(space_ctx(hub, tmp_path))
    model = form["Base model"]
    assert DEMO_RESOLUTION not in [v for _, v in form["Resolution (px)"].choices]
    assert DEMO_MODEL not in [value for _, value in model.choices]
    assert model.value == "stable-diffusion-v1-5/stable-diffusion-v1-5" and "namespace/name" in model.info


# ---------------------------------------------------------------- item 4: the base model is checked at submit time
def test_a_base_model_that_cannot_be_used_is_refused_before_anything_is_queued(hub, tmp_path, monkeypatch):
    import ui.submission

    monkeypatch.setattr(ui.submission, "WORKER_REPLY_S", 0.1)
    ctx = space_ctx(hub, tmp_path)
    answer = submit_task(ctx, "alice", photos(tmp_path), values(base_model="alice/no-such-model", resolution=512,
                                                                 output_repo="alice/out"))  # fmt: skip
    assert answer.startswith("**Nothing was queued.**") and "alice/no-such-model" in answer and "no such model repo" in answer
    assert ctx.queue.list() == []

    offline = local_ctx(tmp_path / "offline", HF_ENDPOINT=f"http://127.0.0.1:{free_port()}")  # nothing listens there
    answer = offline_answer = submit_task(offline, "local", photos(tmp_path), values(base_model="someone/model", resolution=512))
    assert answer.startswith("**Nothing was queued.**") and "cannot be reached" in answer and "try again" in offline_answer.lower()
    assert offline.queue.list() == []


# ---------------------------------------------------------------- item 10: a local submit answers at once
def test_a_local_submit_answers_at_once_while_the_worker_trains(tmp_path):
    settings = load_settings({"DATA_DIR": str(tmp_path / "data"), "POLL_INTERVAL_S": "0.2"})
    queue = make_queue(settings)
    worker = Worker(settings, queue, LocalHardware(gpu_probe=lambda: False), recipes_modules=("tests.test_worker_recipes",))
    ctx = AppContext(settings=settings, queue=queue, worker=worker)
    busy = queue.enqueue(Task(instance_prompt="a photo of zwx cat", submitted_by="local", base_model=DEMO_MODEL,
                              recipe="test-slow", params={"steps": 200}), make_images(tmp_path / "busy", 1))  # fmt: skip
    worker.start()
    try:
        wait_for(lambda: worker.status.snapshot().phase == "training", 60, "the worker trains the first task")
        started = time.monotonic()
        answer = submit_task(ctx, "local", photos(tmp_path), values())
        took = time.monotonic() - started
        assert "queued" in answer and "this machine (CPU)" in answer and "training now finishes" in answer, answer
        assert took < 0.8, f"the answer took {took:.1f} s"
        assert queue.get(busy.id).status is TaskStatus.RUNNING
    finally:
        worker.stop()


# ---------------------------------------------------------------- item 11: output repo names
@pytest.mark.parametrize(
    ("prompt", "klass", "name"),
    [
        ("a photo of sks dog", None, "dreambooth-sks-dog"),
        ("a photo of sks toy", None, "dreambooth-sks-toy"),
        ("A photo of SKS dog, in a bucket", None, "dreambooth-sks-dog"),
        ("zwx", None, "dreambooth-zwx"),
        ("a portrait of ohwx man wearing a hat", "a photo of a man", "dreambooth-ohwx-man"),
        ("", None, "dreambooth-lora"),
    ],
)
def test_output_names_come_from_the_trigger_token_and_the_class(prompt, klass, name):
    assert subject_name(prompt, klass) == name
    assert default_output_repo("alice", prompt, class_prompt=klass) == f"alice/{name}"


def test_an_existing_repo_not_made_for_this_subject_is_never_overwritten(hub, tmp_path, tiny_sd, monkeypatch):
    import ui.submission

    monkeypatch.setattr(ui.submission, "WORKER_REPLY_S", 0.1)
    ctx = space_ctx(hub, tmp_path)
    api = ctx.api
    suffix = uuid.uuid4().hex[:4]
    taken = f"alice/dreambooth-sks{suffix}-dog"
    api.create_repo(taken)  # someone else's model (no card of this app)
    common = {"base_model": str(tiny_sd), "resolution": 256, "steps": 4}
    answer = submit_task(ctx, "alice", photos(tmp_path), values(instance_prompt=f"a photo of sks{suffix} dog", output_repo=taken, **common))
    [task] = ctx.queue.list()
    assert task.output_repo == f"{taken}-2" and f"**{taken}-2**" in answer and "already exists" in answer

    # A repo this app trained for the same subject (its card: the dreambooth tag and the same instance prompt) is
    # updated in place; the same card for another subject is not.
    ours = f"alice/dreambooth-sks{suffix}-cat"
    api.create_repo(ours)
    card = "---\ntags:\n- dreambooth\n- lora\ninstance_prompt: a photo of sks{s} cat\n---\n# model\n"
    api.upload_file(path_or_fileobj=card.format(s=suffix).encode(), path_in_repo="README.md", repo_id=ours)
    submit_task(ctx, "alice", photos(tmp_path), values(instance_prompt=f"a photo of sks{suffix} cat", output_repo=ours, **common))
    assert ctx.queue.list()[-1].output_repo == ours
    answer = submit_task(ctx, "alice", photos(tmp_path), values(instance_prompt=f"a photo of sks{suffix} cat on a sofa",
                                                                 output_repo=ours, **common))  # fmt: skip
    assert ctx.queue.list()[-1].output_repo == f"{ours}-2", answer


# ---------------------------------------------------------------- item 12: a repeat asks first
def test_an_identical_task_queued_minutes_ago_is_queued_again_only_when_confirmed(tmp_path):
    ctx = local_ctx(tmp_path)
    first = submit(ctx, "local", photos(tmp_path), values())
    assert first.queued
    again = submit(ctx, "local", photos(tmp_path), values())  # the same photos (by content), prompt and settings
    assert not again.queued and again.confirm
    assert f"same task as `{first.task.id}`" in again.message and "Queue it again" in again.message
    assert len(ctx.queue.list()) == 1
    second = submit(ctx, "local", photos(tmp_path), values(), confirm=True)
    assert second.queued
    assert submit(ctx, "local", photos(tmp_path), values(steps=5)).queued  # a changed setting: a new task
    assert submit(ctx, "local", photos(tmp_path, n=2), values()).queued  # other photos: a new task
    assert len(ctx.queue.list()) == 4
    ctx.queue.cancel(second.task.id)  # the latest identical task was cancelled: queueing it again needs no confirmation
    assert submit(ctx, "local", photos(tmp_path), values()).queued


# ---------------------------------------------------------------- item 13: the recipe catalog drives the form
def test_steps_and_fields_come_from_the_recipe_catalog(tmp_path):
    catalog = load_catalog(("tests.form_recipes",))
    ctx = local_ctx(tmp_path, gpu=True, recipes=dict(catalog))
    form = form_blocks(ctx)
    assert ("LoRA for faces (rank 16)", "lora-faces") in form["Recipe"].choices
    lora = catalog["dreambooth-lora"]
    assert form["Steps (auto from the photo count; editable)"].value == lora.auto_steps(0)

    steps, lr, rank, _res, note = field_updates(ctx, "lora-faces", "some/model", 6, 512)
    assert steps.constructor_args["value"] == 6 * 120  # the README's custom recipe: 120 steps per photo
    assert rank.constructor_args == {"visible": True, "interactive": False, "value": 16}  # fixed: shown read-only
    assert "rank = 16" in note.constructor_args["value"]
    steps, lr, rank, _res, note = field_updates(ctx, "dreambooth-full", "some/model", 6, 512)
    full = catalog["dreambooth-full"]
    assert steps.constructor_args["value"] == full.auto_steps(6) and lr.constructor_args["value"] == full.default_learning_rate
    assert rank.constructor_args["visible"] is False and note.constructor_args["visible"] is False  # ignored: hidden

    task = build_task(ctx, "local", values(recipe="lora-faces", rank=4, resolution=512))
    assert "rank" not in task.params  # the recipe sets its own
    assert "rank" not in build_task(ctx, "local", values(recipe="dreambooth-full", resolution=512)).params
    assert build_task(ctx, "local", values(rank=8, resolution=512)).params["rank"] == 8


# ---------------------------------------------------------------- item 14: local wording
def test_the_local_estimate_and_answer_speak_of_this_machine(tmp_path):
    cpu = describe(estimate(4, LOCAL_CPU, base_model=DEMO_MODEL), True, CPU)
    assert "this machine (CPU)" in cpu and "T4" not in cpu and "about under" not in cpu and "under a minute" in cpu
    gpu = describe(estimate(1000, LOCAL_GPU), True, LocalDevice(True, "NVIDIA H200"))
    assert "this machine (NVIDIA H200)" in gpu and "T4" not in gpu and gpu.startswith("**Estimate:** about ")
    slow = estimate(1000, LOCAL_CPU)
    assert slow.train_s > estimate(1000, LOCAL_GPU).train_s * 10 and slow.usd == 0

    ctx = local_ctx(tmp_path)
    task = ctx.queue.enqueue(Task(instance_prompt="p", submitted_by="local", base_model=DEMO_MODEL), photos(tmp_path))
    assert "Training runs on this machine (CPU)" in queued_message(ctx, task)


# ---------------------------------------------------------------- item 15: fewer than three photos
def test_one_or_two_photos_are_queued_with_a_clear_warning(tmp_path):
    ctx = local_ctx(tmp_path)
    one = submit_task(ctx, "local", photos(tmp_path, n=1), values())
    assert "queued** with 1 photo." in one and "**Warning:** Only 1 photo" in one and "3 to 20 photos" in one
    two = submit_task(ctx, "local", photos(tmp_path, n=2), values(steps=5))
    assert "**Warning:** Only 2 photos" in two
    three = submit_task(ctx, "local", photos(tmp_path, n=3), values(steps=6))
    assert "Warning" not in three


# ---------------------------------------------------------------- estimates from this Space's own runs
def past(base_model: str = "org/sd15-a", steps_per_s: float = 2.0, **changes) -> RunRecord:
    fields = {"flavor": "t4-small", "recipe": "dreambooth-lora", "base_model": base_model, "family": "sd15",
              "resolution": 512, "batch_size": 1, "steps": 1000, "steps_per_s": steps_per_s}  # fmt: skip
    return RunRecord(**{**fields, **changes})


def test_a_submit_removes_only_the_upload_copies_no_other_tab_shows(tmp_path):
    """Gradio keeps one copy of an upload per content: the tabs that show it are tracked (``ui.uploads``), so a submit
    leaves a copy another tab still shows; the last one to let go removes it (the browser test runs this for real)."""
    ctx = local_ctx(tmp_path)
    shared = photos(tmp_path)
    for tab in ("tab-a", "tab-b"):
        ctx.uploads.hold(tab, map(Path, shared))
    first = submit(ctx, "local", shared, values(), session="tab-a")
    assert first.queued and all(Path(p).exists() for p in shared)
    assert ctx.uploads.holders(Path(shared[0])) == 1
    second = submit(ctx, "local", shared, values(instance_prompt="a photo of zwx dog"), session="tab-b")
    assert second.queued and not any(Path(p).exists() for p in shared), second.message
    # A tab closed without submitting lets go of its photos; copies gone from the disk are forgotten.
    again = photos(tmp_path)
    ctx.uploads.hold("tab-c", map(Path, again))
    ctx.uploads.hold("tab-d", map(Path, again))
    ctx.uploads.release("tab-d")
    assert submit(ctx, "local", again, values(instance_prompt="a photo of qwv dog"), session="tab-c").queued
    assert not any(Path(p).exists() for p in again)
    ctx.uploads.hold("tab-e", [])
    assert ctx.uploads.holders(Path(shared[0])) == 0 and not ctx.uploads._held


def test_a_truncated_jpeg_is_refused_at_submit_under_the_users_file_name(tmp_path):
    ctx = local_ctx(tmp_path)
    good = photos(tmp_path, 2)
    whole = Path(photos(tmp_path, 2)[1])
    assert whole.suffix == ".jpg"
    cut = whole.with_name("Rex at the beach.jpg")
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    answer = submit_task(ctx, "local", [*good, str(cut)], values())
    assert answer.startswith("**Nothing was queued") and "Image Rex at the beach.jpg: the file is incomplete" in answer
    assert ctx.queue.list() == [] and cut.exists()


def test_the_estimate_uses_the_median_of_the_matching_earlier_runs_and_says_so():
    history = [
        past(steps_per_s=1.0, switch_s=60.0, startup_s=100.0, wrapup_s=40.0, release_s=5.0),
        past(steps_per_s=2.0, startup_s=10.0, wrapup_s=30.0),  # a later task of a period: no switch, quick start
        past("org/sd15-b", steps_per_s=4.0, switch_s=80.0, startup_s=120.0, wrapup_s=50.0, release_s=7.0),
        # Not like the task asked for: another GPU, resolution, recipe, prior preservation, text encoder, batch size,
        # model family; and a run without a measured speed.
        past(steps_per_s=40.0, flavor="a10g-small"), past(steps_per_s=40.0, resolution=768),
        past(steps_per_s=40.0, recipe="dreambooth-full"), past(steps_per_s=40.0, prior_preservation=True),
        past(steps_per_s=40.0, train_text_encoder=True), past(steps_per_s=40.0, batch_size=2),
        past("org/sdxl", steps_per_s=40.0, family="sdxl"), past(steps_per_s=None),
    ]  # fmt: skip
    est = estimate(1000, "t4-small", base_model="org/sd15-a", history=history)
    assert (est.source, est.runs) == ("history", 3)
    assert est.train_s == pytest.approx(1000 / 2.0)  # the median speed of the three
    # Medians: switch (60, 80) + start-up of the runs that started a period (100, 120) + wrap-up + release (5, 7).
    assert est.overhead_s == pytest.approx(70 + 110 + 40 + 6)
    assert est.usd == pytest.approx((500 + 226) / 3600 * 0.40)
    text = describe(est, local=False)
    assert "from 3 earlier runs on this Space" in text and "$0.08" in text and "8 min training" in text

    # A model whose family no run told: only the runs of that very model count.
    custom = [past("me/custom", steps_per_s=3.0, family=None), past("me/other", steps_per_s=9.0, family=None)]
    one = estimate(300, "t4-small", base_model="me/custom", history=custom)
    assert (one.runs, one.train_s) == (1, pytest.approx(100.0))
    assert "from 1 earlier run on this Space" in describe(one, local=False)
    # The family of a model no run trained yet can still be given (e.g. a known model id).
    assert estimate(300, "t4-small", base_model="org/new-sd15", family="sd15", history=history).runs == 3

    # Nothing matches: the built-in figures, labelled.
    table = estimate(1000, "t4-small", base_model="org/sd15-a", resolution=1024, history=history)
    assert (table.source, table.runs) == ("built-in", 0)
    assert table == estimate(1000, "t4-small", base_model="org/sd15-a", resolution=1024)
    assert "from the built-in figures" in describe(table, local=False)
    assert "from the built-in figures" in describe(estimate(4, LOCAL_CPU, base_model=DEMO_MODEL), True, CPU)


def test_the_form_estimate_comes_from_the_finished_runs_in_the_queue(tmp_path):
    """A real local queue holding past runs (claimed and completed with their records), read by the worker's loop;
    the form's estimate (and its first value in a new page) is the median of the matching ones."""
    ctx = local_ctx(tmp_path)
    local = {"flavor": LOCAL_CPU, "base_model": DEMO_MODEL, "family": None, "resolution": DEMO_RESOLUTION}
    runs = [past(steps_per_s=s, startup_s=20.0, **local) for s in (4.0, 5.0, 10.0)]
    runs += [past(steps_per_s=50.0, **{**local, "resolution": 256}),  # not the resolution asked for
             past(steps_per_s=1e9, **local)]  # implausible (a forged record): never feeds an estimate  # fmt: skip
    for i, run in enumerate(runs):
        task = ctx.queue.enqueue(Task(instance_prompt=f"a photo of sks{i} dog", submitted_by="local", base_model=DEMO_MODEL),
                                 photos(tmp_path))  # fmt: skip
        ctx.queue.claim(task.id, "old-worker", 60)
        ctx.queue.complete(task.id, "old-worker", "/data/out", run=run)
    ctx.worker.step()  # one loop: the worker's read of the queue is what the form uses (no read of its own)

    est = form_estimate(ctx, 100, LOCAL_CPU, "dreambooth-lora", DEMO_RESOLUTION, False, DEMO_MODEL)
    assert (est.source, est.runs, est.train_s, est.overhead_s) == ("history", 3, 20.0, 20.0)  # 100 steps / 5 steps/s
    text = describe(est, local=True, device=CPU)
    assert "from 3 earlier runs on this machine" in text and "free" in text
    with gr.Blocks() as page:  # a form built now starts with it (and each page load computes it again)
        build_form(ctx)
    (shown,) = [b.value for b in page.blocks.values() if isinstance(b, gr.Markdown) and "**Estimate:**" in str(b.value)]
    assert "from 3 earlier runs on this machine" in shown, shown
    table = form_estimate(ctx, 100, LOCAL_CPU, "dreambooth-lora", 512, False, DEMO_MODEL)
    assert table.source == "built-in" and "from the built-in figures" in describe(table, local=True, device=CPU)


# ---------------------------------------------------------------- the form follows the base model's family
LORA = "dreambooth-lora"
T4_CHOICE = HardwareChoice("t4-small", GPU_FLAVORS)


def on_the_hub(hub, folder: Path, name: str) -> str:
    """``folder`` (a saved pipeline) as alice's public model repo on the emulator."""
    repo = f"alice/{name}-{uuid.uuid4().hex[:6]}"
    api = HfApi(endpoint=hub.url, token=ALICE_TOKEN)
    api.create_repo(repo)
    api.upload_folder(repo_id=repo, folder_path=str(folder))
    return repo


@pytest.fixture(scope="module")
def tiny_flux1(tmp_path_factory) -> Path:
    """A tiny random FLUX.1 [dev]-shaped pipeline folder (``tests.tiny_flux``)."""
    return build_tiny_flux1(tmp_path_factory.mktemp("form-flux1") / "model")


def test_a_flux_base_model_brings_its_familys_defaults_and_back_to_sd_brings_sds(hub, tmp_path, tiny_sd, tiny_flux1):
    sd_repo, flux_repo = on_the_hub(hub, tiny_sd, "form-sd"), on_the_hub(hub, tiny_flux1, "form-flux")
    ctx = space_ctx(hub, tmp_path, BASE_MODELS=f"{sd_repo},{flux_repo}")
    hub.clear_requests()
    flux = family_of(ctx.settings, flux_repo)  # its model_index.json, read with the app's token
    assert (flux.name, flux.defaults.hardware, flux.defaults.rank) == ("flux1", "l4x1", 16)
    asked = len(hub.requests())
    assert asked >= 2
    assert family_of(ctx.settings, flux_repo) == flux and len(hub.requests()) == asked  # picked again: no request

    auto = ctx.recipes[LORA].auto_steps(3)
    proposal, holds, applied = follow_base_model(ctx, LORA, flux_repo, 3, 512, flux, "sd", {}, {}, T4_CHOICE)
    assert proposal == {"steps": auto, "learning_rate": 1e-4, "rank": 16, "resolution": 512, "hardware": "l4x1"}
    assert holds == "flux1" and set(applied) == set(FOLLOWED_FIELDS)
    # Beside the hardware, on a GPU smaller than the family's L4: the family's hardware note (none on the L4).
    on_t4 = hardware_note(ctx.settings, flux_repo, "t4-small")
    assert on_t4.startswith("**Warning:**") and "NF4" in on_t4 and "Nvidia 1xL4" in on_t4
    assert hardware_note(ctx.settings, flux_repo, "l4x1") == hardware_note(ctx.settings, flux_repo, "a100-large") == ""
    assert hardware_note(ctx.settings, sd_repo, "t4-small") == ""  # SD: nothing new

    # Back to SD: SD's defaults.
    sd = family_of(ctx.settings, sd_repo)
    assert sd.name == "sd"
    proposal, holds, _ = follow_base_model(ctx, LORA, sd_repo, 3, 512, sd, "flux1", {}, applied, T4_CHOICE)
    lr = ctx.recipes[LORA].default_learning_rate
    assert proposal == {"steps": auto, "learning_rate": lr, "rank": 4, "resolution": 512, "hardware": "t4-small"}
    assert holds == "sd"

    # SD to SD: today's behaviour exactly (the auto steps; hardware, rank and learning rate stay as they are).
    proposal, holds, _ = follow_base_model(ctx, LORA, sd_repo, 5, 768, sd, "sd", {}, {}, T4_CHOICE)
    today = field_updates(ctx, LORA, sd_repo, 5, 768, recipe_changed=False)
    assert proposal == {n: u.constructor_args["value"] for n, u in zip(FOLLOWED_FIELDS[:4], today[:4], strict=True)
                        if "value" in u.constructor_args} == {"steps": ctx.recipes[LORA].auto_steps(5)}  # fmt: skip
    assert holds == "sd"
    # Back from the demo model: a real model's 512 px, as today.
    assert follow_base_model(ctx, LORA, sd_repo, 5, DEMO_RESOLUTION, sd, "sd", {}, {}, T4_CHOICE)[0]["resolution"] == 512

    # A model whose family cannot be read (not on the Hub): nothing new, the Flux values stay.
    assert family_of(ctx.settings, "alice/no-such-model") is None
    proposal, holds, _ = follow_base_model(ctx, LORA, "alice/no-such-model", 3, 512, None, "flux1", {}, {}, T4_CHOICE)
    assert proposal == {"steps": auto} and holds == "flux1"
    # The page's first load with an SD default: nothing; with a Flux default: Flux's.
    assert follow_base_model(ctx, LORA, sd_repo, 0, 512, sd, "sd", {}, {}, T4_CHOICE, model_changed=False)[0] == {}
    first, holds, _ = follow_base_model(ctx, LORA, flux_repo, 0, 512, flux, "sd", {}, {}, T4_CHOICE, model_changed=False)
    assert (first["hardware"], first["rank"], holds) == ("l4x1", 16, "flux1")


def test_a_value_the_user_typed_is_kept_by_the_base_models_defaults(hub, tmp_path, tiny_flux1):
    """Edits before the base model changed: counted by the fields' ``.input`` handlers, left out of the proposal.
    Edits while the change is answered: the proposal is applied in the browser (``APPLY_DEFAULTS_JS``) only to fields
    that still show what they showed when the model changed (the browser test types during a slow answer)."""
    flux_repo = on_the_hub(hub, tiny_flux1, "form-flux-race")
    ctx = space_ctx(hub, tmp_path, BASE_MODELS=flux_repo)
    flux = family_of(ctx.settings, flux_repo)
    sd = family_of(ctx.settings, DEMO_MODEL)  # the demo model is the SD family's (no request)
    touched: dict = {}
    for field in ("steps", "rank", "steps"):  # the fields' .input handlers
        touched = toucher(field)(touched)
    assert touched == {"steps": 2, "rank": 1}
    proposal, _holds, applied = follow_base_model(ctx, LORA, flux_repo, 3, 512, flux, "sd", touched, {}, T4_CHOICE)
    assert proposal == {"learning_rate": 1e-4, "resolution": 512, "hardware": "l4x1"}  # steps and rank: the user's
    assert "steps" not in applied and "rank" not in applied

    # Back to SD: the typed values are still the user's; the hardware Flux set is not, so SD's comes back.
    proposal, _holds, _ = follow_base_model(ctx, LORA, "stable-diffusion-v1-5/stable-diffusion-v1-5", 3, 512, sd,
                                            "flux1", touched, applied, T4_CHOICE)  # fmt: skip
    assert "steps" not in proposal and "rank" not in proposal and proposal["hardware"] == "t4-small"
    # A user's pick of the GPU is kept too.
    picked = toucher("hardware")(touched)
    assert "hardware" not in follow_base_model(ctx, LORA, flux_repo, 3, 512, flux, "sd", picked, {}, T4_CHOICE)[0]
    # Once a default was set in a field (the photo count's auto steps), the next default replaces it again.
    applied = mark_applied(applied, touched, ["steps"])
    proposal, _holds, _ = follow_base_model(ctx, LORA, flux_repo, 4, 512, flux, "sd", touched, applied, T4_CHOICE)
    assert proposal["steps"] == ctx.recipes[LORA].auto_steps(4) and "rank" not in proposal
    # The browser step's rule, spelled out in its script: a proposal only where the field equals its snapshot.
    assert "snapshot[i] === current[i]" in APPLY_DEFAULTS_JS and json.dumps(list(FOLLOWED_FIELDS)) in APPLY_DEFAULTS_JS


@pytest.mark.parametrize(
    ("family", "label"), [("flux1", "FLUX.1 ([dev] / [schnell])"), ("flux2-klein", "FLUX.2 [klein]")]
)
def test_a_flux_estimate_uses_the_familys_reference_speed_until_this_space_has_runs_of_its_own(family, label):
    sd = estimate(1000, "l4x1", base_model="stable-diffusion-v1-5/stable-diffusion-v1-5")
    ref = estimate(1000, "l4x1", base_model="black-forest-labs/some-flux", family=family)
    assert ref.source == "family" and ref.train_s > 2 * sd.train_s and ref.usd > sd.usd  # slower than SD, not SD's
    assert ref.overhead_s == sd.overhead_s
    text = describe(ref, local=False, family_label=label)
    assert f"from the {label} family's reference figure" in text and "not yet measured on this Space" in text, text
    assert "Stable Diffusion's" not in text and "built-in figures" not in text
    assert "not yet measured on this machine" in describe(estimate(1000, LOCAL_GPU, family=family), local=True,
                                                          device=LocalDevice(True, "GPU"), family_label=label)  # fmt: skip
    # A family without a reference figure (a customizer's) still says the figures are Stable Diffusion's.
    custom = estimate(1000, "l4x1", base_model="me/toy", family="toy-sd")
    assert (custom.source, custom.train_s) == ("built-in", sd.train_s)
    assert "built-in figures are Stable Diffusion's" in describe(custom, local=False, family_label="Toy")


def test_the_familys_gpu_is_one_the_form_offers_and_the_owners_bigger_choice_wins(tmp_path, tiny_flux1):
    ctx = local_ctx(tmp_path, gpu=True, BASE_MODELS=str(tiny_flux1))
    flux = family_of(ctx.settings, str(tiny_flux1))  # a local folder, read on disk
    assert flux is not None and flux.name == "flux1"
    s = ctx.settings
    assert family_hardware(s, flux, GPU_FLAVORS, "t4-small") == "l4x1"
    assert family_hardware(s, flux, JOBS_GPU_FLAVORS, "t4-small") == "l4x1"  # Jobs mode: a Jobs flavor too
    assert family_hardware(s, flux, {"t4-small", "a10g-small"}, "t4-small") == "t4-small"  # not offered: the default
    assert family_hardware(s, family_of(s, DEMO_MODEL), GPU_FLAVORS, "a10g-small") == "a10g-small"  # SD: the form's
    bigger = load_settings({"DATA_DIR": str(tmp_path / "b"), "TRAIN_HARDWARE": "a100-large"})
    smaller = load_settings({"DATA_DIR": str(tmp_path / "c"), "TRAIN_HARDWARE": "t4-medium"})
    assert family_hardware(bigger, flux, GPU_FLAVORS, "a100-large") == "a100-large"
    assert family_hardware(smaller, flux, GPU_FLAVORS, "t4-medium") == "l4x1"
    assert hardware_note(s, str(tiny_flux1), "t4-small") and "NF4" in hardware_note(s, str(tiny_flux1), "t4-small")

    # The estimate of a Flux model comes from the family's reference speed and says so; a Flux run of this machine
    # replaces it.
    est = form_estimate(ctx, 500, LOCAL_GPU, LORA, 512, False, str(tiny_flux1), family="flux1")
    text = describe(est, local=True, device=LocalDevice(True, "GPU"), family_label=flux.label)
    assert f"from the {flux.label} family's reference figure" in text and "Stable Diffusion's" not in text, text
    flux_run = past("other/flux", steps_per_s=0.5, flavor=LOCAL_GPU, family="flux1")
    from_runs = estimate(500, LOCAL_GPU, base_model=str(tiny_flux1), family="flux1", history=[flux_run])
    assert (from_runs.source, from_runs.train_s) == ("history", 1000.0)
    assert "Stable Diffusion's" not in describe(from_runs, local=True, device=CPU, family_label=flux.label)

    # The form has the note beside the hardware choice, hidden until a family has something to say.
    with gr.Blocks() as page:
        build_form(ctx)
    [note] = [b for b in page.blocks.values() if getattr(b, "elem_id", None) == "hardware-note"]
    assert note.visible is False
