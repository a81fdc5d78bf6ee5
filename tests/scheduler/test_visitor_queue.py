"""The visitor-pays mode below the UI (scheduler.visitor_queue, issue 25), with the real huggingface_hub client
against the emulator: visitors signed in through OAuth (scopes ``jobs`` + ``contribute-repos``) queue tasks in their
own private repo and run them as Jobs in their own namespace, billed to them; the Space owner's token, repos and Jobs
ledger are never touched. The Jobs run the real in-Job entry point (``python -m scheduler run-task``) from this
checkout, with the ``test-slow`` recipe (a stand-in trainer that emits steps and writes a dummy output) where a test
needs a whole run; elsewhere the Jobs are held in SCHEDULING (``scheduling_s``) so that nothing runs."""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError

from contract.settings import Settings, load_settings
from scheduler import visitor_queue as vq
from scheduler.spending import job_timeout_s
from scheduler.task import Task, TaskStatus
from scheduler.visitor_token import VisitorToken, read_visitor_token
from tests.conftest import ALICE_TOKEN
from tests.polling import wait_for
from tests.tiny_models import make_images

pytestmark = pytest.mark.slow

SCOPES = ("openid", "profile", "jobs", "contribute-repos")
FLAVOR = "t4-small"
RECIPES = "tests.test_worker_recipes,tests.faults.recipes"


@dataclass
class Visitor:
    name: str
    token: str
    vt: VisitorToken
    api: HfApi


@pytest.fixture
def space(hub, tmp_path, tiny_sd) -> Settings:
    """The owner's Space (alice's, public, with her token as its HF_TOKEN) in the visitor-pays mode's settings."""
    repo = f"alice/open-{uuid.uuid4().hex[:6]}"
    hub.create_space(repo, owner_token=ALICE_TOKEN, switch_delay_s=0.1)
    hub.configure_jobs(scheduling_s=0.3, flavor_env={FLAVOR: {"DATA_DIR": str(tmp_path / "job-data")}})
    return load_settings({"SPACE_ID": repo, "HF_TOKEN": ALICE_TOKEN, "HF_ENDPOINT": hub.url, "RETRY_BASE_S": "0.01",
                          "TRAINING_BACKEND": "jobs", "BASE_MODELS": str(tiny_sd), "LEASE_S": "20",
                          "POLL_INTERVAL_S": "0.5", "TRAINING_RECIPES_MODULES": RECIPES,
                          "DATA_DIR": str(tmp_path / "space-data")})  # fmt: skip


def visitor(hub, scopes=SCOPES) -> Visitor:
    name, token = f"vis{uuid.uuid4().hex[:8]}", f"hf_oauth_fake_{uuid.uuid4().hex}"
    expires_at = hub.add_oauth_user(name, token, scopes=scopes, expires_in=8 * 3600)
    signin = SimpleNamespace(token=token, scope=" ".join(scopes), expires_at=expires_at)
    return Visitor(name, token, read_visitor_token(signin, endpoint=hub.url), HfApi(endpoint=hub.url, token=token))


def new_task(
    settings: Settings, tmp: Path, steps: int = 3, recipe: str = "test-slow", **params
) -> tuple[Task, list[Path]]:
    task = Task(instance_prompt="a photo of sks dog", submitted_by="?", base_model=settings.base_models[0],
                recipe=recipe, hardware=FLAVOR, params={"steps": steps, "resolution": 64, **params})  # fmt: skip
    return task, make_images(tmp / f"photos-{task.id}", 2, size=64)


def submit(v: Visitor, settings: Settings, tmp: Path, **kw) -> Task:
    task, images = new_task(settings, tmp, **kw)
    return vq.submit(v.token, v.vt, settings, task, images)


def alices_jobs(hub) -> tuple[int, int]:
    """alice's Jobs and billed periods so far (the session's emulator keeps earlier tests' Jobs)."""
    return len(hub.jobs("alice")), len(hub.jobs_ledger("alice"))


def owner_untouched(hub, settings: Settings, before: tuple[int, int]) -> None:
    """The owner paid nothing since ``before`` (``alices_jobs`` at the test's start) and nothing of hers was written."""
    assert alices_jobs(hub) == before
    writes = [r for r in hub.requests() if r.method in ("POST", "PUT", "DELETE") and "alice" in r.path]
    assert writes == [], writes


# ------------------------------------------------------------------------------ two visitors, each on their own
def test_two_visitors_train_at_once_each_in_their_own_namespace_and_the_owner_pays_nothing(hub, space, tmp_path):
    visitors = [visitor(hub), visitor(hub)]
    hub.clear_requests()
    before = alices_jobs(hub)
    tasks = [submit(v, space, tmp_path) for v in visitors]
    for v, task in zip(visitors, tasks, strict=True):
        assert task.submitted_by == v.name and task.output_repo.startswith(f"{v.name}/")
        queue_repo = vq.visitor_queue_repo(v.name)
        assert hub.repo_created_by_app(queue_repo, "dataset") is not None  # made through contribute-repos
        assert v.api.repo_info(queue_repo, repo_type="dataset").private
    sent = [vq.dispatch(v.token, v.vt, space, t.id) for v, t in zip(visitors, tasks, strict=True)]
    assert all(d.created and d.job_id and d.note is None for d in sent)

    for v, task, d in zip(visitors, tasks, sent, strict=True):
        job = hub.emulator.jobs.get(v.name, d.job_id)
        assert job is not None and job.namespace == v.name and job.initiator["name"] == v.name
        assert job.secrets == {"HF_TOKEN": v.token}  # the visitor's token, as a secret only
        assert job.space_id == space.space_id and job.timeout_s == job_timeout_s(task.deadline_s)
        holder = job.labels["dreambooth-holder"]
        ours = {k: v for k, v in job.labels.items() if k != "name"}  # "name": the client's, from the Space id
        assert ours == {"dreambooth-space": space.space_id, "dreambooth-task": task.id, "dreambooth-holder": holder,
                        "dreambooth-billing": "visitor"}  # fmt: skip
        assert v.name not in json.dumps(job.labels) and holder.startswith("job:")
        assert (job.command + job.arguments)[-4:] == ["run-task", task.id, "--holder", holder]
        assert job.environment["QUEUE_REPO"] == vq.visitor_queue_repo(v.name)

    def all_done() -> list[Task] | None:  # both tasks ended, and both Jobs (a Job exits after its task is DONE)
        got = [vq.list_visitor(v.token, v.vt, space) for v in visitors]
        ended = all(g.tasks and g.tasks[0].status.terminal and g.jobs and not g.jobs[0].alive for g in got)
        return [g.tasks[0] for g in got] if ended else None

    done = wait_for(all_done, 120, "both visitors' tasks and Jobs to end")
    assert [t.status for t in done] == [TaskStatus.DONE] * 2, [(t.last_error, hub.job_log(d.job_id)[-2000:]) for t, d in zip(done, sent, strict=True)]  # fmt: skip
    periods = [p for v in visitors for p in hub.jobs_ledger(v.name)]
    assert max(p["started_at"] for p in periods) < min(p["ended_at"] for p in periods)  # the two Jobs overlapped
    for v, task, d in zip(visitors, done, sent, strict=True):
        ledger = hub.jobs_ledger(v.name)
        assert [(p["job_id"], p["labels"]["dreambooth-task"]) for p in ledger] == [(d.job_id, task.id)]
        model = v.api.model_info(task.output_repo)  # the model is in the visitor's account, private
        assert model.private and hub.repo_created_by_app(task.output_repo) is not None
        view = vq.list_visitor(v.token, v.vt, space)
        assert [j.job_id for j in view.jobs] == [d.job_id] and view.jobs[0].stage == "COMPLETED"
    owner_untouched(hub, space, before)


def test_a_visitors_lora_trains_on_the_tiny_model_with_checkpoints_mirrored_to_their_queue_repo(hub, space, tmp_path):
    v = visitor(hub)
    hub.clear_requests()
    before = alices_jobs(hub)
    task = submit(v, space, tmp_path, recipe="dreambooth-lora", steps=4, rank=4, checkpoint_every=2)
    job_id = vq.dispatch(v.token, v.vt, space, task.id).job_id

    def ended() -> Task | None:
        got = vq.visitor_queue(v.token, v.vt, space).get(task.id)
        return got if got.status.terminal else None

    done = wait_for(ended, 150, "the visitor's LoRA run to end")
    log = hub.job_log(job_id or "")
    assert done.status is TaskStatus.DONE, (done.last_error, log[-3000:])
    assert done.run is not None and done.run.flavor == FLAVOR
    files = v.api.list_repo_files(done.output_repo)  # the LoRA, in the visitor's private repo
    assert any(f.endswith(".safetensors") for f in files) and v.api.model_info(done.output_repo).private, files
    repo = vq.visitor_queue_repo(v.name)
    mirrored = [c.commit_id for c in v.api.list_repo_commits(repo, repo_type="dataset")
                if any(f.startswith(f"checkpoints/{task.id}/") for f in
                       v.api.list_repo_files(repo, repo_type="dataset", revision=c.commit_id))]  # fmt: skip
    assert mirrored, "no commit of the visitor's queue repo held a checkpoint"
    assert v.token not in log and [p["job_id"] for p in hub.jobs_ledger(v.name)] == [job_id]
    owner_untouched(hub, space, before)


# ------------------------------------------------------------------------------ refused Jobs
def test_no_credit_or_no_jobs_scope_leaves_the_task_waiting_with_the_reason_and_the_fix(hub, space, tmp_path):
    broke, unscoped = visitor(hub), visitor(hub, scopes=("openid", "profile", "contribute-repos"))
    hub.clear_requests()
    before = alices_jobs(hub)
    hub.set_credit(broke.name, 0)
    for v, says in ((broke, ("credit", "HTTP 402", "settings/billing")),
                    (unscoped, ("HTTP 403", "`jobs`", "hf_oauth_scopes: [jobs, contribute-repos]"))):  # fmt: skip
        task = submit(v, space, tmp_path)
        got = vq.dispatch(v.token, v.vt, space, task.id)
        assert got.job_id is None and got.note is not None and all(s in got.note for s in says), got.note
        stored = (
            vq.list_visitor(v.token, v.vt, space).tasks if v is broke else vq.visitor_queue(v.token, v.vt, space).list()
        )
        assert [(t.status, t.note) for t in stored] == [(TaskStatus.PENDING, got.note)]
        assert hub.jobs(v.name) == [] and hub.jobs_ledger(v.name) == []
    with pytest.raises(HfHubHTTPError) as err:  # the emulator itself refuses the unscoped token's Jobs calls
        list(unscoped.api.list_jobs(namespace=unscoped.name))
    assert err.value.response.status_code == 403
    hub.set_credit(broke.name, None)  # credit added: Retry starts the Job and the refusal note goes
    again = vq.dispatch(
        broke.token, broke.vt, space, stored_id := vq.visitor_queue(broke.token, broke.vt, space).list()[0].id
    )
    assert again.created and vq.visitor_queue(broke.token, broke.vt, space).get(stored_id).note is None
    vq.cancel(broke.token, broke.vt, space, stored_id)
    owner_untouched(hub, space, before)


def test_a_sign_in_without_contribute_repos_or_too_short_for_the_task_is_refused_at_submit(hub, space, tmp_path):
    v = visitor(hub, scopes=("openid", "profile", "jobs"))
    with pytest.raises(vq.VisitorRefused) as err:
        submit(v, space, tmp_path)
    assert "contribute-repos" in err.value.fix
    short = visitor(hub)
    short.vt = VisitorToken(short.name, short.vt.scopes, expires_at=short.vt.expires_at - 7.5 * 3600)
    with pytest.raises(vq.VisitorRefused) as err:
        submit(short, space, tmp_path)  # a 3 h deadline, a sign-in that ends in 30 min
    assert "expires in" in err.value.fix
    assert not any(vq.visitor_queue_repo(n) in r.path for n in (v.name, short.name) for r in hub.requests())


def test_a_visitor_may_have_max_queued_per_user_tasks_at_once_in_their_queue(hub, space, tmp_path):
    v = visitor(hub)
    first, second = submit(v, space, tmp_path), submit(v, space, tmp_path)  # MAX_QUEUED_PER_USER: 2 by default
    with pytest.raises(vq.VisitorRefused) as err:
        submit(v, space, tmp_path)
    assert "MAX_QUEUED_PER_USER" in str(err.value)
    vq.cancel(v.token, v.vt, space, first.id)
    third = submit(v, space, tmp_path)  # a cancelled task frees its place
    assert [t.id for t in vq.list_visitor(v.token, v.vt, space).tasks] == [first.id, second.id, third.id]


def test_an_expired_sign_in_is_refused_before_any_request(hub, space, tmp_path):
    v = visitor(hub)
    task = submit(v, space, tmp_path)
    v.vt = VisitorToken(v.name, v.vt.scopes, expires_at=1.0)
    hub.clear_requests()
    for act in (lambda: vq.dispatch(v.token, v.vt, space, task.id), lambda: vq.list_visitor(v.token, v.vt, space),
                lambda: vq.cancel(v.token, v.vt, space, task.id)):  # fmt: skip
        with pytest.raises(vq.VisitorRefused) as err:
            act()
        assert "expired" in err.value.reason and "sign in again" in err.value.fix
    assert hub.requests() == []


# ------------------------------------------------------------------------------ one visitor cannot reach another's
def test_a_visitor_cannot_read_or_act_on_another_visitors_queue_task_job_or_model(hub, space, tmp_path):
    hub.configure_jobs(scheduling_s=600)  # the Job stays SCHEDULING: alive, never run
    owner, other = visitor(hub), visitor(hub)
    task = submit(owner, space, tmp_path)
    job_id = vq.dispatch(owner.token, owner.vt, space, task.id).job_id
    model = owner.api.create_repo(f"{owner.name}/a-model", private=True).repo_id
    repo = vq.visitor_queue_repo(owner.name)
    calls = {
        "read the queue repo": (lambda: other.api.repo_info(repo, repo_type="dataset"), 401),
        "download the queue": (lambda: other.api.hf_hub_download(repo, "queue.json", repo_type="dataset"), 401),
        "write the queue": (
            lambda: other.api.upload_file(
                path_or_fileobj=b"{}", path_in_repo="queue.json", repo_id=repo, repo_type="dataset"
            ),
            401,  # a private repo of someone else looks missing, for a write too (its preupload is a read)
        ),
        "read the model": (lambda: other.api.model_info(model), 401),
        "list the Jobs": (lambda: list(other.api.list_jobs(namespace=owner.name)), 403),
        "inspect the Job": (lambda: other.api.inspect_job(job_id=job_id, namespace=owner.name), 403),
        "cancel the Job": (lambda: other.api.cancel_job(job_id=job_id, namespace=owner.name), 403),
    }
    for what, (call, code) in calls.items():
        with pytest.raises(HfHubHTTPError) as err:
            call()
        assert err.value.response.status_code == code, what
        assert other.token not in str(err.value), what
    # the module's own functions with the other's token and the owner's name fail the same way
    for act in (lambda: vq.cancel(other.token, owner.vt, space, task.id),
                lambda: vq.list_visitor(other.token, owner.vt, space)):  # fmt: skip
        with pytest.raises(Exception) as err:
            act()
        assert other.token not in str(err.value) and owner.token not in str(err.value)
    assert vq.visitor_queue(owner.token, owner.vt, space).get(task.id).status is TaskStatus.PENDING
    assert owner.api.inspect_job(job_id=job_id, namespace=owner.name).status.stage == "SCHEDULING"
    assert vq.list_visitor(other.token, other.vt, space) == vq.VisitorView((), ())  # the other sees nothing
    cancelled = vq.cancel(owner.token, owner.vt, space, task.id)  # the owner of the task cancels both
    assert cancelled.status is TaskStatus.CANCELLED
    assert owner.api.inspect_job(job_id=job_id, namespace=owner.name).status.stage == "CANCELED"


# ------------------------------------------------------------------------------ the token goes nowhere
def test_the_token_is_in_no_queue_file_label_env_log_line_or_exception(hub, space, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    hub.configure_jobs(scheduling_s=600)
    v = visitor(hub)
    task = submit(v, space, tmp_path)
    job_id = vq.dispatch(v.token, v.vt, space, task.id).job_id
    again = vq.dispatch(v.token, v.vt, space, task.id)  # still PENDING (the Job has not claimed it): adopted
    assert again.job_id == job_id and not again.created
    hub.set_credit(v.name, 0)
    refused = vq.dispatch(v.token, v.vt, space, submit(v, space, tmp_path).id)
    assert refused.note and "402" in refused.note
    errors = []
    for act in (lambda: vq.cancel(v.token, v.vt, space, "nosuchtask00"),
                lambda: vq.dispatch(v.token, v.vt, space, "nosuchtask00"),
                lambda: vq.submit(v.token, v.vt, space, Task(instance_prompt="x", submitted_by="?",
                                                             output_repo="alice/theirs"), [])):  # fmt: skip
        with pytest.raises(Exception) as err:
            act()
        errors.append(f"{err.value!r} {err.value}")
    vq.cancel(v.token, v.vt, space, task.id)

    repo = vq.visitor_queue_repo(v.name)
    stored = []
    for commit in v.api.list_repo_commits(repo, repo_type="dataset"):
        for path in v.api.list_repo_files(repo, repo_type="dataset", revision=commit.commit_id):
            local = v.api.hf_hub_download(repo, path, repo_type="dataset", revision=commit.commit_id,
                                          cache_dir=tmp_path / "dl")  # fmt: skip
            stored.append(Path(local).read_bytes())
    assert len(stored) > 5 and any(b"queue" in s or task.id.encode() in s for s in stored)
    assert not any(v.token.encode() in s for s in stored)
    jobs = hub.jobs(v.name)
    assert jobs and all(v.token not in json.dumps({k: j[k] for k in ("labels", "environment", "command")})
                        for j in jobs)  # fmt: skip
    assert caplog.records and v.token not in caplog.text
    assert all(v.token not in e for e in errors)
    assert all(v.token not in json.dumps(t.to_dict())
               for t in vq.list_visitor(v.token, v.vt, space).tasks)  # fmt: skip


# ------------------------------------------------------------------------------ an ambiguous 5xx
def test_a_5xx_on_job_create_that_did_land_does_not_make_a_second_job(hub, space, tmp_path):
    hub.configure_jobs(scheduling_s=600)
    v = visitor(hub)
    task = submit(v, space, tmp_path)
    hub.inject_fault("POST", rf"^/api/jobs/{v.name}$", status=502, land_then_fail=True)
    got = vq.dispatch(v.token, v.vt, space, task.id)
    posts = hub.requests("POST", rf"^/api/jobs/{v.name}$")
    assert [r.status for r in posts] == [502]  # one creation, answered 502 after it landed; then adopted
    assert got.job_id is not None and not got.created
    assert [j["id"] for j in hub.jobs(v.name)] == [got.job_id]
    vq.cancel(v.token, v.vt, space, task.id)
