"""The emulator's OAuth tokens (scopes, expiry, the app that created a repo) and Jobs credit per namespace, driven
by the real huggingface_hub client: what a visitor's sign-in token may and may not do (issue 25)."""

from __future__ import annotations

import json
import urllib.request
import uuid
from datetime import datetime

import pytest
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

from scheduler.backends.jobs_runner import job_refusal
from tests.conftest import ALICE_TOKEN
from tests.fakehub.fixtures import FakeHub

VISITOR_SCOPES = ("openid", "profile", "jobs", "contribute-repos")
PY = "python"


def visitor(hub: FakeHub, scopes=VISITOR_SCOPES, expires_in: float | None = 3600, app: str | None = None):
    """A fresh user signed in through OAuth: (name, token, HfApi)."""
    name = f"vis{uuid.uuid4().hex[:8]}"
    token = f"hf_oauth_fake_{uuid.uuid4().hex}"
    hub.add_oauth_user(name, token, scopes=scopes, expires_in=expires_in, app=app)
    return name, token, HfApi(endpoint=hub.url, token=token)


def status(err: pytest.ExceptionInfo) -> int:
    return err.value.response.status_code


def job(api: HfApi, namespace: str, code: str = "print('hi')", **kwargs):
    return api.run_job(image="python:3.12", command=[PY, "-u", "-c", code], namespace=namespace, **kwargs)


def wait(api: HfApi, namespace: str, job_id: str):
    return api.wait_for_job(job_id, namespace=namespace, poll_interval=0.05, timeout=20)


# ------------------------------------------------------------------------------ whoami
def test_whoami_of_an_oauth_token_reports_its_type_scopes_and_expiry(hub):
    name, _, api = visitor(hub, expires_in=600)
    info = api.whoami()
    assert info["name"] == name and info["type"] == "user"
    auth = info["auth"]
    assert auth["type"] == "oauth" and "accessToken" not in auth  # as huggingface_hub PR #2631 saw it
    assert set(auth["scope"].split()) == set(VISITOR_SCOPES)
    expires = datetime.fromisoformat(auth["expiresAt"].replace("Z", "+00:00")).timestamp()
    assert abs(expires - hub.emulator.users.by_name(name).expires_at) < 0.01
    classic = HfApi(endpoint=hub.url, token=ALICE_TOKEN).whoami()["auth"]
    assert classic["type"] == "access_token" and classic["accessToken"]["role"] == "write"


def test_a_token_that_never_expires_has_no_expiry_in_whoami(hub):
    _, _, api = visitor(hub, expires_in=None)
    assert "expiresAt" not in api.whoami()["auth"]


# ------------------------------------------------------------------------------ expiry
def test_an_expired_token_is_refused_everywhere(hub):
    name, _, api = visitor(hub)
    repo = api.create_repo(f"{name}/photos", repo_type="dataset", private=True).repo_id
    public = HfApi(endpoint=hub.url, token=ALICE_TOKEN).create_repo(f"alice/pub-{uuid.uuid4().hex[:6]}").repo_id
    hub.add_oauth_user(name, api.token, scopes=VISITOR_SCOPES, expires_in=-1)  # the same token, now expired
    calls = {
        "whoami": lambda: api.whoami(),
        "create_repo": lambda: api.create_repo(f"{name}/more", private=True),
        "read own repo": lambda: api.repo_info(repo, repo_type="dataset"),
        "read a public repo": lambda: api.model_info(public),
        "upload": lambda: api.upload_file(path_or_fileobj=b"x", path_in_repo="x", repo_id=repo, repo_type="dataset"),
        "run_job": lambda: job(api, name),
        "list_jobs": lambda: list(api.list_jobs(namespace=name)),
    }
    for what, call in calls.items():
        with pytest.raises(HfHubHTTPError) as err:
            call()
        assert status(err) == 401, what


# ------------------------------------------------------------------------------ the jobs scope
def test_without_the_jobs_scope_every_jobs_route_answers_403(hub):
    name, _, api = visitor(hub, scopes=("openid", "profile", "contribute-repos"))
    hub.add_user(name, f"hf_fake_{name}_write")  # the same user's classic write token starts a Job to look at
    own = HfApi(endpoint=hub.url, token=f"hf_fake_{name}_write")
    started = job(own, name, "import time; time.sleep(30)")
    calls = {
        "run_job": lambda: job(api, name),
        "list_jobs": lambda: list(api.list_jobs(namespace=name)),
        "inspect_job": lambda: api.inspect_job(job_id=started.id, namespace=name),
        "cancel_job": lambda: api.cancel_job(job_id=started.id, namespace=name),
        "fetch_job_logs": lambda: list(api.fetch_job_logs(job_id=started.id, namespace=name)),
    }
    for what, call in calls.items():
        with pytest.raises(HfHubHTTPError) as err:
            call()
        assert status(err) == 403 and "jobs" in str(err.value), what
    assert own.inspect_job(job_id=started.id, namespace=name).status.stage in ("SCHEDULING", "RUNNING")
    refused = job_refusal(err_of(lambda: job(api, name)), "t4-small", name)
    assert refused is not None and refused.status == 403


def err_of(call) -> HfHubHTTPError:
    with pytest.raises(HfHubHTTPError) as err:
        call()
    return err.value


def test_with_the_jobs_scope_a_visitor_runs_jobs_in_their_own_namespace_only(hub):
    name, _, api = visitor(hub)
    done = wait(api, name, job(api, name, labels={"who": name}).id)
    assert done.status.stage == "COMPLETED" and done.owner.name == name
    assert [j.id for j in api.list_jobs(namespace=name)] == [done.id]
    with pytest.raises(HfHubHTTPError) as err:
        job(api, "alice")
    assert status(err) == 403
    alice_job = job(HfApi(endpoint=hub.url, token=ALICE_TOKEN), "alice")
    with pytest.raises(HfHubHTTPError) as err:
        api.inspect_job(job_id=alice_job.id, namespace="alice")
    assert status(err) == 403


# ------------------------------------------------------------------------------ repos through contribute-repos
def test_without_a_repo_scope_an_oauth_token_cannot_create_repos(hub):
    name, _, api = visitor(hub, scopes=("openid", "profile", "jobs", "write-repos"))
    for kind in ("model", "dataset"):
        with pytest.raises(HfHubHTTPError) as err:
            api.create_repo(f"{name}/out-{kind}", repo_type=kind, private=True)
        assert status(err) == 403 and "contribute-repos" in str(err.value)
    _, _, managed = visitor(hub, scopes=("openid", "profile", "manage-repos"))
    assert managed.create_repo(f"{managed.whoami()['name']}/made", private=True).repo_id.endswith("/made")


def test_contribute_repos_creates_private_repos_and_writes_only_those_of_its_app(hub):
    name, token, api = visitor(hub, app="space-a")
    repo = api.create_repo(f"{name}/queue", repo_type="dataset", private=True).repo_id
    assert hub.repo_created_by_app(repo, "dataset") == "space-a"
    api.upload_file(path_or_fileobj=b"{}", path_in_repo="tasks/t.json", repo_id=repo, repo_type="dataset")
    assert api.list_repo_files(repo, repo_type="dataset") == [".gitattributes", "tasks/t.json"]
    assert api.repo_info(repo, repo_type="dataset").private

    classic = f"hf_fake_{name}_write"
    hub.add_user(name, classic)
    own = HfApi(endpoint=hub.url, token=classic)
    mine = own.create_repo(f"{name}/personal", private=True).repo_id  # created without the app
    assert hub.repo_created_by_app(mine) is None
    own.upload_file(path_or_fileobj=b"by the owner", path_in_repo="a.txt", repo_id=repo, repo_type="dataset")
    with pytest.raises(RepositoryNotFoundError):  # a private repo the app did not create: invisible
        api.repo_info(mine)
    with pytest.raises(HfHubHTTPError):
        api.upload_file(path_or_fileobj=b"x", path_in_repo="x", repo_id=mine)
    assert own.list_repo_files(mine) == [".gitattributes"]

    other_token = f"hf_oauth_fake_{uuid.uuid4().hex}"  # the same visitor signed in to another Space
    hub.add_oauth_user(name, other_token, scopes=VISITOR_SCOPES, app="space-b")
    other = HfApi(endpoint=hub.url, token=other_token)
    with pytest.raises(RepositoryNotFoundError):
        other.list_repo_files(repo, repo_type="dataset")
    public = other.create_repo(f"{name}/public-b").repo_id
    with pytest.raises(HfHubHTTPError) as err:  # readable (public) but not writable through space-a's token
        api.upload_file(path_or_fileobj=b"x", path_in_repo="x", repo_id=public)
    assert status(err) == 403 and "contribute-repos" in str(err.value)


def test_write_repos_writes_the_users_repos_but_never_another_namespace(hub):
    name, _, api = visitor(hub, scopes=("openid", "profile", "write-repos"))
    hub.add_user(name, f"hf_fake_{name}_w")
    repo = HfApi(endpoint=hub.url, token=f"hf_fake_{name}_w").create_repo(f"{name}/r", private=True).repo_id
    api.upload_file(path_or_fileobj=b"ok", path_in_repo="ok.txt", repo_id=repo)
    assert "ok.txt" in api.list_repo_files(repo)
    with pytest.raises(HfHubHTTPError) as err:
        api.create_repo(f"{name}/new")
    assert status(err) == 403
    _, _, contributor = visitor(hub)
    with pytest.raises(HfHubHTTPError) as err:
        contributor.create_repo(f"{name}/theirs", private=True)
    assert status(err) == 403


def test_a_job_uses_the_visitors_token_as_its_secret_to_write_the_apps_repo(hub):
    name, token, api = visitor(hub)
    repo = api.create_repo(f"{name}/model", private=True).repo_id
    code = (
        "import os; from huggingface_hub import HfApi; "
        f"HfApi(token=os.environ['HF_TOKEN']).upload_file(path_or_fileobj=b'w', path_in_repo='w.bin', repo_id='{repo}')"
    )
    done = wait(api, name, job(api, name, code, secrets={"HF_TOKEN": token}).id)
    assert done.status.stage == "COMPLETED", hub.job_log(done.id)
    assert "w.bin" in api.list_repo_files(repo)
    assert token not in hub.job_log(done.id)


# ------------------------------------------------------------------------------ credit and ledgers per namespace
def test_a_namespace_without_credit_gets_402_and_the_reason_maps_to_a_refusal(hub):
    name, _, api = visitor(hub)
    hub.set_credit(name, 0)
    assert hub.credit_left(name) == 0
    exc = err_of(lambda: job(api, name, flavor="t4-small"))
    assert exc.response.status_code == 402 and "credit" in str(exc)
    refused = job_refusal(exc, "t4-small", name)
    assert refused is not None and refused.status == 402 and "credit" in refused.reason
    assert hub.jobs(name) == [] and hub.jobs_ledger(name) == []
    hub.set_credit(name, None)
    assert wait(api, name, job(api, name).id).status.stage == "COMPLETED"
    assert hub.job_cost_usd(name) > 1e-9
    hub.set_credit(name, 1e-9)  # a new grant: what the namespace spent before it does not draw on it
    assert hub.credit_left(name) == pytest.approx(1e-9)
    assert wait(api, name, job(api, name).id).status.stage == "COMPLETED"


def test_jobs_draw_on_their_namespaces_credit_and_land_on_its_ledger_only(hub):
    a, _, api_a = visitor(hub)
    b, _, api_b = visitor(hub)
    alice_before = hub.jobs_ledger("alice")
    hub.set_credit(a, 1e-5)  # t4-small costs $0.40/h: about 0.09 s of it
    ja = wait(api_a, a, job(api_a, a, "import time; time.sleep(0.5)", flavor="t4-small").id)
    jb = wait(api_b, b, job(api_b, b, flavor="cpu-basic").id)
    assert ja.status.stage == jb.status.stage == "COMPLETED"
    ledger_a, ledger_b = hub.jobs_ledger(a), hub.jobs_ledger(b)
    assert [p["job_id"] for p in ledger_a] == [ja.id] and ledger_a[0]["initiator"] == a
    assert [p["job_id"] for p in ledger_b] == [jb.id] and ledger_b[0]["initiator"] == b
    assert hub.jobs_ledger("alice") == alice_before  # the Space owner pays nothing for visitors' Jobs
    assert hub.job_cost_usd(a) > 1e-5 and hub.credit_left(a) < 0
    assert status_of(lambda: job(api_a, a)) == 402  # spent: the next Job is refused
    assert wait(api_b, b, job(api_b, b).id).status.stage == "COMPLETED"  # b's credit is b's own (unlimited)


def status_of(call) -> int:
    return err_of(call).response.status_code


# ------------------------------------------------------------------------------ the same over /_emu/ (for subprocesses)
def emu_post(hub: FakeHub, path: str, body: dict) -> dict:
    req = urllib.request.Request(f"{hub.url}/_emu/{path}", data=json.dumps(body).encode(), method="POST")
    return json.loads(urllib.request.urlopen(req).read())


def test_oauth_users_and_credit_over_the_emulators_control_endpoints(hub):
    name, token = f"emu{uuid.uuid4().hex[:8]}", f"hf_oauth_fake_{uuid.uuid4().hex}"
    emu_post(hub, "users", {"name": name, "token": token, "scopes": ["openid", "jobs"], "expires_at": 4e9})
    api = HfApi(endpoint=hub.url, token=token)
    auth = api.whoami()["auth"]
    assert auth["type"] == "oauth" and auth["scope"] == "jobs openid" and auth["expiresAt"].startswith("2096-")
    assert status_of(lambda: api.create_repo(f"{name}/r")) == 403  # no repo scope
    assert emu_post(hub, "credit", {"namespace": name, "usd": 0}) == {"left": 0}
    assert status_of(lambda: job(api, name)) == 402
    assert emu_post(hub, "credit", {"namespace": name, "usd": None}) == {"left": None}
    assert wait(api, name, job(api, name).id).status.stage == "COMPLETED"
