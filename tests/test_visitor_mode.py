"""The Train button and the page load in the visitor-pays mode (``BILLING=visitor``, issue 25), through the real
Gradio handlers of the built app against the emulator, with visitors signed in through OAuth.

The handlers get their ``gr.OAuthProfile`` and ``gr.OAuthToken`` from Gradio's own injection
(``gradio.helpers.special_args``) of a request carrying the session a sign-in leaves (``tests.visitor_app``).
The Jobs are held in SCHEDULING (``scheduling_s``) so that nothing trains: what is checked is where the task, the
Job and the money go."""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path

import gradio as gr
import pytest
from huggingface_hub import HfApi, snapshot_download

from app import create_app
from contract.settings import SettingsError, load_settings
from scheduler.queue.hub import HubQueue
from scheduler.spending import job_timeout_s
from scheduler.task import TaskStatus
from scheduler.visitor_queue import visitor_queue_repo
from scheduler.visitor_token import task_fits_token
from tests import visitor_app
from tests.conftest import ALICE_TOKEN, MOCK_SIGNIN
from tests.tiny_models import make_images
from tests.visitor_app import (
    alices_jobs,
    load_handler,
    owner_untouched,
    read_token,
    run_handler,
    train,
    visitor,
)

open_space = visitor_app.open_space  # the fixture (shared with tests/test_visitor_tasks.py)


def test_billing_setting_is_owner_by_default_and_refuses_anything_else():
    assert load_settings({}).billing == "owner" and not load_settings({}).visitor_pays
    space = {"SPACE_ID": "alice/x"}
    assert load_settings({**space, "BILLING": "Visitor"}).visitor_pays
    with pytest.raises(SettingsError, match="BILLING='nobody' is not a billing mode"):
        load_settings({**space, "BILLING": "nobody"})
    with pytest.raises(SettingsError, match="needs a Space"):
        load_settings({"BILLING": "visitor"})


@pytest.mark.slow
def test_two_visitors_each_run_a_job_in_their_own_namespace_and_the_owner_pays_nothing(hub, open_space, tmp_path,
                                                                                        caplog):  # fmt: skip
    caplog.set_level(logging.DEBUG)
    visitors = [visitor(hub), visitor(hub)]  # neither is on ALLOWED_USERS: in this mode every visitor may train
    hub.clear_requests()
    before = alices_jobs(hub)
    answers = [train(open_space, tmp_path, v) for v in visitors]
    for v, answer in zip(visitors, answers, strict=True):
        jobs = hub.jobs(v.name)
        assert len(jobs) == 1, (answer, jobs)
        job = hub.emulator.jobs.get(v.name, jobs[0]["id"])
        assert job.namespace == v.name and job.secrets == {"HF_TOKEN": v.token}
        assert f"Job `{job.id}`" in answer and f"`{visitor_queue_repo(v.name)}`" in answer
        assert f"`{v.name}/dreambooth-sks-dog`" in answer
        api = HfApi(endpoint=hub.url, token=v.token)
        assert api.repo_info(visitor_queue_repo(v.name), repo_type="dataset").private
        files = Path(snapshot_download(visitor_queue_repo(v.name), repo_type="dataset", token=v.token,
                                       endpoint=hub.url, local_dir=tmp_path / f"queue-{v.name}"))  # fmt: skip
        stored = [p for p in files.rglob("*") if p.is_file()]
        assert any(p.suffix == ".json" for p in stored)
        for other in visitors:  # no token in any queue file, answer or log line
            assert not any(other.token.encode() in p.read_bytes() for p in stored)
            assert other.token not in answer
    assert not any(v.token in r.getMessage() for v in visitors for r in caplog.records)
    assert len(caplog.records) > 0  # the handlers did log (the check above looked at something)
    owner_untouched(hub, open_space, before)


@pytest.mark.slow
def test_a_sign_in_without_the_jobs_scope_is_told_the_fix_and_nothing_is_created(hub, open_space, tmp_path):
    v = visitor(hub, scopes=("openid", "profile", "contribute-repos"))
    hub.clear_requests()
    answer = train(open_space, tmp_path, v)
    assert answer.startswith("**Nothing was queued")
    assert "does not allow `jobs`" in answer and "hf_oauth_scopes: [jobs, contribute-repos]" in answer
    assert hub.jobs(v.name) == [] and not [r for r in hub.requests() if r.method in ("POST", "PUT")]
    banner = run_handler(open_space.demo, None, [], v, fn=load_handler(open_space))[0]
    assert "their own** Hugging Face Jobs credit" in banner and "does not allow `jobs`" in banner
    assert v.token not in answer + banner


@pytest.mark.slow
def test_a_visitor_without_credit_keeps_the_task_waiting_with_the_reason_and_fix(hub, open_space, tmp_path):
    v = visitor(hub)
    hub.set_credit(v.name, 0)
    hub.clear_requests()
    before = alices_jobs(hub)
    answer = train(open_space, tmp_path, v)
    assert "**Its Job was not started.**" in answer and "402" in answer and "credit" in answer.lower()
    assert hub.jobs(v.name) == [] and hub.jobs_ledger(v.name) == []
    from scheduler.visitor_queue import list_visitor
    from scheduler.visitor_token import read_visitor_token

    vt = read_visitor_token(gr.OAuthToken(token=v.token, scope=v.scope, expires_at=int(v.expires_at)),
                            endpoint=hub.url)  # fmt: skip
    (task,) = list_visitor(v.token, vt, open_space.settings).tasks
    assert task.status is TaskStatus.PENDING and task.note and "402" in task.note
    owner_untouched(hub, open_space, before)


@pytest.mark.slow
def test_an_anonymous_visitor_is_refused_and_nothing_is_created(hub, open_space, tmp_path):
    hub.clear_requests()
    before = len(hub.jobs())
    with pytest.raises(gr.Error, match="Sign in with Hugging Face first"):
        train(open_space, tmp_path, None)
    assert len(hub.jobs()) == before and [r for r in hub.requests() if r.method in ("POST", "PUT", "DELETE")] == []
    banner = run_handler(open_space.demo, None, [], None, fn=load_handler(open_space))[0]
    assert banner.startswith("Sign in with Hugging Face to train.")


@pytest.mark.slow
def test_a_visitor_is_held_to_the_per_visitor_cap_and_a_cross_site_press_is_refused(hub, open_space, tmp_path):
    v = visitor(hub)
    with pytest.raises(gr.Error, match="another site"):
        train(open_space, tmp_path, v, origin="https://evil.example")
    assert hub.jobs(v.name) == []
    assert "Job `" in train(open_space, tmp_path, v) and "Job `" in train(open_space, tmp_path, v, "a photo of zwx cat")
    third = train(open_space, tmp_path, v, "a photo of qwe toy")
    assert third.startswith("**Nothing was queued") and "the limit is 2 (MAX_QUEUED_PER_USER)" in third
    assert len(hub.jobs(v.name)) == 2


@pytest.mark.slow
def test_the_page_load_of_a_visitor_with_both_scopes_says_who_pays_with_one_request(hub, open_space):
    v = visitor(hub)
    hub.clear_requests()
    values = run_handler(open_space.demo, None, [], v, fn=load_handler(open_space))
    assert values[0].startswith(f"Signed in as **{v.name}**.") and "credit" in values[0]
    assert "Training is not possible" not in values[0]
    assert values[1].constructor_args["interactive"] is True  # Train, although ALLOWED_USERS leaves them out
    assert values[2].startswith(f"{v.name}/")  # the model repo the form proposes: in their own account
    hardware = next(b for b in open_space.demo.blocks.values() if getattr(b, "elem_id", None) == "hardware-choice")
    assert "in your own account" in hardware.info and "t4-small" in str(hardware.choices)  # the Jobs flavors
    assert len([r for r in hub.requests() if "whoami" in r.path]) == 1
    tick = next(f.fn for f in open_space.demo.fns.values() if getattr(f.fn, "__name__", "") == "on_tick")
    queue_text = run_handler(open_space.demo, None, [None, [], {}], v, fn=tick)[1]
    assert f"{visitor_queue_repo(v.name)}" in queue_text and "ALLOWED_USERS" not in queue_text


def test_the_owner_mode_page_load_does_not_read_the_token(hub, tmp_path):
    """BILLING unset: the banner is the owner mode's, and the load asks the Hub nothing about the sign-in."""
    repo = f"alice/own-{uuid.uuid4().hex[:6]}"
    hub.create_space(repo, owner_token=ALICE_TOKEN)
    settings = load_settings({**MOCK_SIGNIN, "SPACE_ID": repo, "HF_TOKEN": ALICE_TOKEN, "HF_ENDPOINT": hub.url,
                              "DATA_DIR": str(tmp_path / "data")})  # fmt: skip
    app = create_app(settings)
    try:
        v = visitor(hub)
        hub.clear_requests()
        values = run_handler(app.demo, None, [], v, fn=load_handler(app))
        assert "not on this Space's allowed users" in values[0] and "credit" not in values[0]
        assert values[1].constructor_args["interactive"] is False
        assert [r for r in hub.requests() if "whoami" in r.path] == []
    finally:
        app.close()
    assert time.time() < v.expires_at


def test_the_readme_documents_the_mode_without_asking_the_scopes_for_itself():
    """The scopes are documented for owners who turn the mode on; this repo's own front matter (owner mode) does
    not ask visitors for them."""
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    front = text.split("---", 2)[1]
    assert "hf_oauth_scopes" not in front and "hf_oauth: true" in front
    section = text.split("## Open your Space to everyone, each paying their own way", 1)[1].split("\n## ", 1)[0]
    for needed in ("`BILLING=visitor`", "hf_oauth_scopes: [jobs, contribute-repos]", "hf_oauth_expiration_minutes",
                   "**Not done yet:**", "**Not verified here**"):  # fmt: skip
        assert needed in section, needed


@pytest.mark.slow
def test_a_hub_that_fails_the_visitors_commit_gets_an_answer_and_no_job(hub, open_space, tmp_path):
    v = visitor(hub)
    hub.inject_fault("POST", rf"/api/datasets/{v.name}/.*/commit/", status=403, count=20)  # not retried: at once
    answer = train(open_space, tmp_path, v)
    assert answer.startswith("**Nothing was queued") and "The Hub did not take your task" in answer
    assert v.token not in answer and hub.jobs(v.name) == []


@pytest.mark.slow
def test_a_task_that_would_outlive_the_sign_in_is_refused_with_the_reason(hub, open_space, tmp_path):
    v = visitor(hub, expires_in=1200)  # the default TASK_DEADLINE_S is 3 h, and 20 min leave no 15-min deadline
    answer = train(open_space, tmp_path, v)
    assert answer.startswith("**Nothing was queued") and "would outlive your sign-in" in answer
    assert "hf_oauth_expiration_minutes" in answer and hub.jobs(v.name) == []


@pytest.mark.slow
def test_a_short_run_gets_a_deadline_that_ends_before_the_sign_in_does(hub, open_space, tmp_path):
    """A 4-step run (minutes) under a sign-in with an hour left is not refused for the 3-h default deadline: it gets
    the longest deadline that fits, its Job's platform timeout follows it, and the answer says so."""
    v = visitor(hub, expires_in=3600)
    answer = train(open_space, tmp_path, v)
    assert "deadline is" in answer and "before your sign-in expires" in answer, answer
    (task,) = HubQueue(HfApi(endpoint=hub.url, token=v.token), visitor_queue_repo(v.name)).list()
    assert task.deadline_s < open_space.settings.deadline_s
    assert task_fits_token(task.deadline_s, read_token(hub, v), time.time()) is None
    (job,) = hub.jobs(v.name)
    assert job["timeoutSeconds"] == job_timeout_s(task.deadline_s), job


def test_the_estimate_is_at_the_hubs_jobs_price_read_once_by_the_space(hub, open_space):
    """The price list is read once by the Space's loop (anonymously: nobody's token is needed for it), and each
    visitor's estimate says it is the Hub's Jobs price, the one they pay."""
    v = visitor(hub)
    hub.clear_requests()
    for _ in range(2):
        open_space.worker.step()
    assert len(hub.requests("GET", r"^/api/jobs/hardware$")) == 1
    assert open_space.worker.status.view().job_prices_source.startswith("list_jobs_hardware")
    estimate = next(f.fn for f in open_space.demo.fns.values() if getattr(f.fn, "__name__", "") == "on_estimate")
    values = [40, "t4-small", "dreambooth-lora", 512, "", open_space.settings.base_models[0], False, False, None]
    text = "".join(run_handler(open_space.demo, None, values, v, fn=estimate))  # one Markdown string
    assert "as a Hugging Face Job on Nvidia T4 small ($0.40/h)" in text and "the Hub's Jobs prices" in text, text


def test_the_time_a_visitors_deadline_must_leave_counts_the_photos_the_run_captions(open_space, tmp_path):
    """``expected_s`` (what a deadline fitted to the sign-in must leave room for) adds the captioning of the uploaded
    photos without a ``.txt``, as the form's estimate does; none when the option is off."""
    from scheduler.task import Task
    from ui.context import AppContext
    from ui.form_estimate import form_estimate
    from ui.visitor_submit import expected_s

    ctx = AppContext(settings=open_space.settings, queue=open_space.worker.queue, worker=open_space.worker, api=None,
                     public_space=False)  # fmt: skip
    photos = make_images(tmp_path / "photos", 3, size=128)
    (photos[0].parent / f"{photos[0].stem}.txt").write_text("a dog on a sofa")
    uploads = [*photos, photos[0].parent / f"{photos[0].stem}.txt"]
    params = {"steps": 40, "resolution": 512}
    task = Task(instance_prompt="a photo of sks dog", submitted_by="v", base_model=open_space.settings.base_models[0],
                hardware="t4-small", params={**params, "auto_captions": True})  # fmt: skip
    plain = Task(instance_prompt="a photo of sks dog", submitted_by="v", base_model=task.base_model,
                 hardware="t4-small", params=params)  # fmt: skip
    two = form_estimate(ctx, 40, "t4-small", task.recipe, 512, False, task.base_model, captioned_photos=2).total_s
    assert expected_s(ctx, task, uploads) == two > expected_s(ctx, plain, uploads)
