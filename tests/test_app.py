"""The app without a browser: start-up modes, setup diagnostics, the submit/settings handlers, the estimate."""

from __future__ import annotations

import uuid
from pathlib import Path

import gradio as gr
import pytest
from huggingface_hub import HfApi

from app import create_app
from contract.settings import load_settings
from scheduler.task import TaskStatus
from tests.conftest import ALICE_TOKEN, MOCK_SIGNIN
from tests.tiny_models import make_images
from training.demo import DEMO_MODEL
from ui.auth import access_for, require_allowed
from ui.context import AppContext
from ui.estimate import auto_steps, estimate
from ui.settings_view import changed_variables, check_variables, save_variables
from ui.setup_page import setup_markdown
from ui.submission import submit_task


def space_settings(hub, repo: str, token: str | None = ALICE_TOKEN, **extra: str):
    env = {"SPACE_ID": repo, "HF_ENDPOINT": hub.url, "RETRY_BASE_S": "0.01", **MOCK_SIGNIN, **extra}
    if token:
        env["HF_TOKEN"] = token
    return load_settings(env)


def labels(demo: gr.Blocks) -> str:
    return " ".join(str(getattr(b, "value", "")) for b in demo.blocks.values())


def test_local_mode_starts_without_any_token(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    app = create_app(load_settings({"DATA_DIR": str(tmp_path / "data")}))
    assert not app.problems and app.worker is not None
    assert not any(isinstance(b, gr.LoginButton) for b in app.demo.blocks.values())
    assert (tmp_path / "data" / "queue").is_dir()
    assert app.launch_options()["server_name"] == "127.0.0.1"  # local mode stays on 127.0.0.1 (issue 20, finding 6)


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("missing", "The HF_TOKEN secret is missing"),
        ("read_only", "read-only token"),
        ("oauth", "OAuth token"),
        ("not_owner", "does not belong to this Space's owner"),
        ("queue", "cannot be used"),
    ],
)
def test_setup_page_explains_what_to_do_instead_of_crashing(hub, kind, expected):
    suffix = uuid.uuid4().hex[:6]
    repo, token, extra = f"alice/space-{suffix}", ALICE_TOKEN, {}
    if kind == "missing":
        token = None
    elif kind == "read_only":
        token = f"hf_fake_reader_{suffix}"
        hub.add_user(f"reader{suffix}", token, role="read")
        repo = f"reader{suffix}/space"
    elif kind == "oauth":
        token = f"hf_fake_oauthy_{suffix}"
        hub.add_user(f"oauthy{suffix}", token, oauth=True)
        repo = f"oauthy{suffix}/space"
    elif kind == "not_owner":
        repo = f"bob/space-{suffix}"
    elif kind == "queue":
        extra = {"QUEUE_REPO": f"bob/queue-{suffix}"}  # alice cannot create a repo in bob's namespace
    app = create_app(space_settings(hub, repo, token, **extra))
    assert app.worker is None and len(app.problems) == 1
    problem = app.problems[0]
    assert expected in problem.title
    assert problem.fix
    text = labels(app.demo)
    assert "Setup needed" in text and problem.fix in text
    assert not any(isinstance(b, gr.LoginButton) for b in app.demo.blocks.values())
    if token:
        assert token not in setup_markdown(app.problems, repo)


def test_space_app_with_the_mocked_sign_in_stays_on_loopback(hub):
    repo = f"alice/space-{uuid.uuid4().hex[:6]}"
    hub.create_space(repo, owner_token=ALICE_TOKEN)
    app = create_app(space_settings(hub, repo))
    assert not app.problems
    assert app.launch_options()["server_name"] == "127.0.0.1"  # all interfaces only with the platform's sign-in
    assert any(isinstance(b, gr.LoginButton) for b in app.demo.blocks.values())


class Profile:
    """Stands in for gr.OAuthProfile (only ``username`` is read)."""

    def __init__(self, username: str) -> None:
        self.username = username


def test_only_allowed_users_may_write():
    settings = load_settings({"SPACE_ID": "alice/s", "HF_TOKEN": "x", "ALLOWED_USERS": "alice,carol"})
    with pytest.raises(gr.Error, match="Sign in"):
        require_allowed(settings, None)
    with pytest.raises(gr.Error, match="not on this Space's allowed users"):
        require_allowed(settings, Profile("mallory"))
    assert require_allowed(settings, Profile("carol")).user == "carol"
    assert access_for(settings, Profile("alice")).owner and not access_for(settings, Profile("carol")).owner
    local = load_settings({})
    assert access_for(local, None).allowed  # local mode: the person at the machine owns it


def test_the_owner_may_always_submit_even_when_allowed_users_leaves_them_out():
    """Issue 26: with ALLOWED_USERS=carol the owner alice could no longer submit on her own Space."""
    settings = load_settings({"SPACE_ID": "alice/s", "HF_TOKEN": "x", "ALLOWED_USERS": "carol"})
    owner = require_allowed(settings, Profile("alice"))
    assert owner.user == "alice" and owner.allowed and owner.owner
    assert "(owner)" in owner.banner()
    assert require_allowed(settings, Profile("carol")).allowed and not access_for(settings, Profile("carol")).owner
    with pytest.raises(gr.Error, match="not on this Space's allowed users"):
        require_allowed(settings, Profile("mallory"))


@pytest.fixture
def local_ctx(tmp_path):
    from scheduler.hardware import make_hardware
    from scheduler.queue import make_queue
    from scheduler.worker import Worker

    settings = load_settings({"DATA_DIR": str(tmp_path / "data")})
    queue = make_queue(settings)
    worker = Worker(settings, queue, make_hardware(settings))  # not started: wait_for_loop just times out
    return AppContext(settings=settings, queue=queue, worker=worker)


def form_values(**changes):
    values = {"instance_prompt": "a photo of sks dog", "class_prompt": "", "base_model": DEMO_MODEL,
              "recipe": "dreambooth-lora", "steps": 300, "hardware": "t4-small", "learning_rate": 1e-4, "rank": 8,
              "resolution": 512, "output_repo": "dreambooth-sks", "private": True}  # fmt: skip
    values.update(changes)
    return values


def test_submit_validates_before_enqueuing(local_ctx, tmp_path, monkeypatch):
    import ui.submission

    monkeypatch.setattr(ui.submission, "WORKER_REPLY_S", 0.1)
    images = [str(p) for p in make_images(tmp_path / "photos", 3, size=128)]
    answer = submit_task(local_ctx, "local", images, form_values(instance_prompt=" ", resolution=500, steps=0))
    assert answer.startswith("**Nothing was queued")
    assert "Instance prompt" in answer and "Resolution" in answer and "Steps" in answer
    assert local_ctx.queue.list() == []
    answer = submit_task(local_ctx, "local", [], form_values())
    assert "Images" in answer and local_ctx.queue.list() == []

    answer = submit_task(local_ctx, "local", images, form_values(class_prompt="a photo of a dog"))
    [task] = local_ctx.queue.list()
    assert f"Task `{task.id}` queued" in answer and "this machine" in answer
    assert task.status is TaskStatus.PENDING and task.images.count == 3
    assert task.class_prompt == "a photo of a dog" and task.params["prior_preservation"] is True
    assert task.params["rank"] == 8 and task.params["steps"] == 300
    assert task.max_attempts == local_ctx.settings.max_attempts
    # Finding 9: the queue holds the photos now; the upload copies are gone (a refused submission keeps them).
    assert not any(Path(p).exists() for p in images)


def test_owner_changes_space_variables_through_the_hub(hub):
    repo = f"alice/space-{uuid.uuid4().hex[:6]}"
    hub.create_space(repo, owner_token=ALICE_TOKEN)
    settings = space_settings(hub, repo)
    values = [settings.queue_repo, "alice,bob", "a10g-small", "7200"]
    changes = changed_variables(settings, values)
    assert changes == {"ALLOWED_USERS": "alice,bob", "TRAIN_HARDWARE": "a10g-small", "TASK_DEADLINE_S": "7200"}
    assert check_variables(settings, changes) is None
    assert "TRAIN_HARDWARE" in check_variables(settings, {"TRAIN_HARDWARE": "gpu-xl"})
    save_variables(settings, changes)
    stored = HfApi(endpoint=hub.url, token=ALICE_TOKEN).get_space_variables(repo)
    assert {k: v.value for k, v in stored.items()} == changes
    assert "HF_TOKEN" not in stored


def test_estimate_follows_steps_hardware_and_price():
    from contract.catalog import load_catalog

    lora = load_catalog()["dreambooth-lora"]  # the form's default recipe sets the "auto" steps
    assert auto_steps(1) == lora.min_steps and auto_steps(100) == lora.max_steps
    assert auto_steps(5) == lora.auto_steps(5) == max(lora.min_steps, 5 * lora.steps_per_image)
    t4 = estimate(1000, "t4-small")
    assert t4.train_s == pytest.approx(1000 / 1.1)
    assert t4.usd == pytest.approx(t4.total_s / 3600 * 0.40)
    assert estimate(1000, "a100-large").train_s < t4.train_s
    assert estimate(1000, "t4-small", prior_preservation=True).total_s > t4.total_s
    assert estimate(1000, "t4-small", resolution=1024).train_s == pytest.approx(4 * t4.train_s)


def handler(demo: gr.Blocks, api_name: str):
    """The Python function behind a (private) event of ``demo``."""
    return next(f.fn for f in demo.fns.values() if f.api_name == api_name)


def test_queue_view_cancel_and_retry_handlers(local_ctx, tmp_path):
    from scheduler.task import Task
    from ui.layout import build_ui

    demo = build_ui(local_ctx, login=False)
    task = local_ctx.queue.enqueue(Task(instance_prompt="a photo of sks dog", submitted_by="local", base_model="m"),
                                   make_images(tmp_path / "photos", 3, size=128))  # fmt: skip
    cancel, retry = handler(demo, "cancel"), handler(demo, "retry")
    assert cancel(None, None, None) == "Pick a task first."
    assert "CANCELLED" in cancel(task.id, None, None)
    assert local_ctx.queue.get(task.id).status is TaskStatus.CANCELLED
    assert "PENDING" in retry(task.id, None, None)
    assert local_ctx.queue.get(task.id).status is TaskStatus.PENDING
    assert "Could not retry" in retry(task.id, None, None)  # a PENDING task without a note cannot be retried


def test_queue_view_delete_handler_removes_the_task_and_its_photos_but_not_the_model(local_ctx, tmp_path):
    from scheduler.task import Task
    from ui.layout import build_ui

    demo = build_ui(local_ctx, login=False)
    queue = local_ctx.queue
    task = queue.enqueue(Task(instance_prompt="a photo of sks dog", submitted_by="local", base_model="m"),
                         make_images(tmp_path / "photos", 3, size=128))  # fmt: skip
    run = local_ctx.worker.run_dir(task.id)  # what the worker left: a copy of the photos and the model
    queue.fetch_images(task, run / "images")
    (run / "work" / "output").mkdir(parents=True)
    (run / "work" / "output" / "pytorch_lora_weights.safetensors").write_bytes(b"lora")
    delete = handler(demo, "delete")

    assert "Could not delete" in delete(task.id, None, None) and "Cancel it first" in delete(task.id, None, None)
    assert queue.get(task.id).status is TaskStatus.PENDING and len(list((run / "images").iterdir())) == 3

    queue.claim(task.id, "w", 60)
    queue.complete(task.id, "w", str(run / "work" / "output"))
    message = delete(task.id, None, None)
    assert message.startswith(f"Task `{task.id}` was deleted with its photos") and "The model stays in" in message
    assert queue.list() == [] and not (run / "images").exists()
    assert not (local_ctx.settings.data_dir / "queue" / "images" / task.id).exists()
    assert (run / "work" / "output" / "pytorch_lora_weights.safetensors").read_bytes() == b"lora"
    assert "Could not delete" in delete(task.id, None, None)  # already gone


def test_space_handlers_refuse_anonymous_callers(hub):
    repo = f"alice/space-{uuid.uuid4().hex[:6]}"
    hub.create_space(repo, owner_token=ALICE_TOKEN)
    app = create_app(space_settings(hub, repo))
    for name in ("cancel", "retry", "delete"):
        with pytest.raises(gr.Error, match="Sign in"):
            handler(app.demo, name)("some-id", None, None)
    with pytest.raises(gr.Error, match="Only the owner"):
        handler(app.demo, "save_settings")("a/b", "alice", "t4-small", "3600", Profile("bob"), None)
    assert HfApi(endpoint=hub.url, token=ALICE_TOKEN).get_space_variables(repo) == {}


def test_invalid_variable_shows_the_setup_page():
    from app import settings_problem_app
    from contract.settings import SettingsError

    with pytest.raises(SettingsError) as err:
        load_settings({"SPACE_ID": "alice/s", "TRAIN_HARDWARE": "gpu-xl"})
    app = settings_problem_app(err.value)
    assert app.worker is None and "TRAIN_HARDWARE" in labels(app.demo)
