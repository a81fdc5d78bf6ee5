"""Attacks on a Space-mode app through real HTTP, as a visitor's browser or a script would make them.

The app runs in-process as the Space ``alice/...`` (the emulator answers its Hub calls) with Gradio's mocked
sign-in, opted in with the test-only variable. That sign-in signs session cookies with a key derived from an empty
secret, so these tests can be several people at once (alice the owner, bob an allowed user, carol signed in but not
allowed) by signing cookies the way Gradio's session middleware does: the very weakness that finding 4 keeps off
real Spaces. The worker is not started (no hardware is requested); one ``worker.snapshot()`` loads the queue.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from app import App, create_app
from contract.settings import load_settings
from scheduler.queue import make_queue
from scheduler.task import Task, TaskStatus
from tests.conftest import ALICE_TOKEN, MOCK_SIGNIN
from tests.polling import free_port
from tests.signin import session_cookie
from tests.tiny_models import make_images

EVIL = "https://evil.example"


@dataclass
class Reply:
    status: int
    body: str


def http(url: str, data: dict | None = None, user: str | None = None, origin: str | None = None,
         site: str | None = None) -> Reply:  # fmt: skip
    """GET (or POST JSON) ``url`` as ``user`` (None: anonymous), with the Origin and Sec-Fetch-Site a browser sends."""
    headers = {"Content-Type": "application/json"}
    if user:
        headers["Cookie"] = f"session={session_cookie(user)}"
    if origin:
        headers["Origin"] = origin
    if site:
        headers["Sec-Fetch-Site"] = site
    body = json.dumps(data).encode() if data is not None else None
    req = urllib.request.Request(url, data=body, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return Reply(resp.status, resp.read().decode(errors="replace"))
    except urllib.error.HTTPError as exc:
        return Reply(exc.code, exc.read().decode(errors="replace"))

def page_event(url: str, fn_index: int, data: list, session: str, user: str | None = None) -> tuple[dict, list[str]]:
    """Run event ``fn_index`` as the page does (``queue/join`` in the page's ``session``, whose ``gr.State`` values
    the server keeps) as ``user`` (None: anonymous): its completion message and the messages shown on the way
    (toasts)."""
    body = {"data": data, "fn_index": fn_index, "session_hash": session, "event_data": None, "trigger_id": None}
    joined = http(f"{url}gradio_api/queue/join", body, user=user)
    assert joined.status == 200, joined
    event_id = json.loads(joined.body)["event_id"]
    headers = {"Cookie": f"session={session_cookie(user)}"} if user else {}
    shown: list[str] = []
    stream = urllib.request.Request(f"{url}gradio_api/queue/data?session_hash={session}", headers=headers)
    with urllib.request.urlopen(stream, timeout=60) as resp:
        for raw in resp:
            line = raw.decode().strip()
            msg = json.loads(line[5:]) if line.startswith("data:") else {}
            if msg.get("event_id") != event_id:
                continue
            if msg["msg"] == "log":
                shown.append(msg.get("log") or "")
            if msg["msg"] == "process_completed":
                return msg, shown
    raise AssertionError(f"event {fn_index} did not complete")



def call(url: str, api_name: str, data: list, **kw) -> str:
    """Run an event handler through ``/gradio_api/call/<api_name>`` (how a script, or a forged page, calls it)."""
    started = http(f"{url}gradio_api/call/{api_name}", {"data": data}, **kw)
    assert started.status == 200, started
    event_id = json.loads(started.body)["event_id"]
    return http(f"{url}gradio_api/call/{api_name}/{event_id}", user=kw.get("user")).body


def dependency_names(config: dict) -> list[str]:
    return [d.get("api_name") for d in config["dependencies"]]


@dataclass
class Served:
    app: App
    url: str
    data_dir: Path
    tasks: dict[str, Task]  # submitter -> task


@pytest.fixture
def served(hub, tmp_path):
    repo = f"alice/sec-{uuid.uuid4().hex[:6]}"
    hub.create_space(repo, owner_token=ALICE_TOKEN)
    data_dir = tmp_path / "data"
    settings = load_settings({**MOCK_SIGNIN, "SPACE_ID": repo, "HF_TOKEN": ALICE_TOKEN, "HF_ENDPOINT": hub.url,
                              "ALLOWED_USERS": "alice,bob", "DATA_DIR": str(data_dir), "RETRY_BASE_S": "0.01"})  # fmt: skip
    queue = make_queue(settings)
    photos = make_images(tmp_path / "photos", 3, size=64)
    tasks = {}
    for user in ("alice", "bob"):
        task = Task(instance_prompt=f"a photo of sks {user}-secret-dog", submitted_by=user, base_model="m",
                    output_repo=f"{user}/private-model-of-{user}", params={"steps": 4})  # fmt: skip
        tasks[user] = queue.enqueue(task, photos)
    app = create_app(settings)
    assert not app.problems
    app.worker.snapshot()  # the UI's view of the queue, without starting the loop
    # What a trainer leaves in a run folder: a copy of the photos, logs, weights.
    run = data_dir / "runs" / tasks["alice"].id
    (run / "images").mkdir(parents=True)
    (run / "images" / "0.png").write_bytes(photos[0].read_bytes())
    (run / "task.json").write_text(json.dumps({"instance_prompt": tasks["alice"].instance_prompt}))
    port = free_port()
    app.demo.launch(prevent_thread_lock=True, **{**app.launch_options(), "server_port": port})
    try:
        yield Served(app, f"http://127.0.0.1:{port}/", data_dir, tasks)
    finally:
        app.close()


@pytest.mark.slow
def test_files_of_the_data_dir_are_not_served_by_url(served):
    """Finding 1: ``/gradio_api/file=<data_dir>/runs/<id>/...`` served the photos and task files to anyone."""
    run = (served.data_dir / "runs" / served.tasks["alice"].id).resolve()
    for path in (run / "images" / "0.png", run / "task.json"):
        for user in (None, "alice"):
            reply = http(f"{served.url}gradio_api/file={path}", user=user)
            assert reply.status in (403, 404), (path, user, reply.status)
            assert "secret-dog" not in reply.body


@pytest.mark.slow
def test_anonymous_visitors_see_no_task_and_no_setting(served):
    """Finding 2: the refresh handler returned every task to anyone; /config carried the settings' values."""
    config = http(f"{served.url}config")
    assert config.status == 200
    queue_repo = served.app.settings.queue_repo
    assert queue_repo not in config.body and str(served.data_dir) not in config.body
    assert "alice,bob" not in config.body
    names = dependency_names(json.loads(config.body))
    tick = next(n for n in names if n and n.startswith("on_tick"))
    for visitor in (None, "carol"):  # anonymous, and signed in but not allowed
        out = call(served.url, tick, [None, [], {}], user=visitor)
        assert "event: complete" in out, out[-500:]
        for task in served.tasks.values():
            assert task.id not in out and "secret-dog" not in out and "private-model" not in out
        assert "Hardware" in out  # the hardware line is public
    # The owner sees both tasks; bob (allowed, not the owner) only his own.
    owner_view = call(served.url, tick, [None, [], {}], user="alice")
    assert served.tasks["alice"].id in owner_view and served.tasks["bob"].id in owner_view
    bob_view = call(served.url, tick, [None, [], {}], user="bob")
    assert served.tasks["bob"].id in bob_view and served.tasks["alice"].id not in bob_view
    assert "alice-secret-dog" not in bob_view


@pytest.mark.slow
def test_cross_site_requests_are_refused_and_same_site_ones_pass(served):
    """Finding 3: a page elsewhere could call the handlers with the owner's session cookie."""
    task_id = served.tasks["alice"].id
    for forged in ({"origin": EVIL}, {"origin": EVIL, "site": "cross-site"}, {"site": "cross-site"}):
        out = call(served.url, "cancel", [task_id], user="alice", **forged)
        assert "Cross-site request refused" in out or "another site" in out, out[-400:]
        out = call(served.url, "save_settings", ["", "alice,mallory", "", ""], user="alice", **forged)
        assert "another site" in out, out[-400:]
    assert served.app.worker.queue.get(task_id).status is TaskStatus.PENDING
    same = call(served.url, "cancel", [task_id], user="alice", origin=served.url.rstrip("/"), site="same-origin")
    assert "CANCELLED" in same, same[-400:]
    assert served.app.worker.queue.get(task_id).status is TaskStatus.CANCELLED


@pytest.mark.slow
def test_allowed_non_owners_act_only_on_their_own_tasks(served):
    """Finding 6: any allowed user could cancel, retry or delete anyone's task."""
    alice_task = served.tasks["alice"].id
    for verb in ("cancel", "retry", "delete"):
        out = call(served.url, verb, [alice_task], user="bob")
        assert "only its submitter or the Space owner" in out, (verb, out[-400:])
    assert served.app.worker.queue.get(alice_task).status is TaskStatus.PENDING
    out = call(served.url, "cancel", [served.tasks["bob"].id], user="bob")
    assert "CANCELLED" in out, out[-400:]


def test_space_mode_without_the_platform_sign_in_serves_only_the_setup_page(hub, tmp_path):
    """Finding 4: with SPACE_ID but no real OAuth, Gradio's mocked sign-in made every visitor the token's owner."""
    repo = f"alice/nosignin-{uuid.uuid4().hex[:6]}"
    hub.create_space(repo, owner_token=ALICE_TOKEN)
    env = {"SPACE_ID": repo, "HF_TOKEN": ALICE_TOKEN, "HF_ENDPOINT": hub.url, "DATA_DIR": str(tmp_path / "d")}
    app = create_app(load_settings(env))
    assert [p.title for p in app.problems] == ["Sign-in with Hugging Face is not configured"]
    assert app.worker is None and app.launch_options()["server_name"] == "127.0.0.1"
    port = free_port()
    app.demo.launch(prevent_thread_lock=True, **{**app.launch_options(), "server_port": port})
    try:
        url = f"http://127.0.0.1:{port}/"
        config = json.loads(http(f"{url}config").body)
        assert not {"submit", "cancel", "save_settings"} & set(dependency_names(config))
        assert http(f"{url}login/huggingface").status == 404  # no mocked sign-in route to become the owner
    finally:
        app.close()
    # Gradio on a Space with its OAuth secret: the real sign-in, all interfaces.
    real = load_settings({**env, "SYSTEM": "spaces", "OAUTH_CLIENT_SECRET": "s3cret"})
    assert real.oauth_ready and App(app.demo, real).launch_options()["server_name"] == "0.0.0.0"
    assert not load_settings({**env, "SYSTEM": "spaces"}).oauth_ready  # no secret: not ready


@pytest.mark.slow
def test_non_owners_write_only_new_repos_of_their_own_within_their_caps(served, hub):
    """Finding 6: an allowed user could name any repo the token writes (the owner's, an org's) and queue without
    limit; an existing repo of theirs that this app did not make is refused too, and only offered base models."""
    from huggingface_hub import HfApi

    existing = f"alice/bob-existing-{uuid.uuid4().hex[:6]}"  # named as bob's models are, but not made for him
    HfApi(endpoint=hub.url, token=ALICE_TOKEN).create_repo(existing)

    def submit(user: str, output_repo: str, base_model: str = "stable-diffusion-v1-5/stable-diffusion-v1-5") -> str:
        data = [None, "", "a photo of sks dog", "", base_model, "dreambooth-lora", 4, "t4-small", 1e-4, 4, 512,
                output_repo, True, "constant", 0, 0, True, False]  # fmt: skip
        return call(served.url, "submit", data, user=user)

    assert "use a repo in alice/ named bob-..." in submit("bob", "alice/private-model-of-alice")
    assert "use a repo in alice/ named bob-..." in submit("bob", "alice-org/model")
    assert "use a repo in alice/ named bob-..." in submit("bob", "bob/model")  # the owner's token cannot write it
    assert f"{existing} already exists and was not made by this app for you" in submit("bob", existing)
    assert "Base model" in submit("bob", "alice/bob-new-model", base_model="someone/else")
    # bob has one PENDING task already; the default cap is 2 queued tasks, so a second one in flight hits it.
    served.app.worker.queue.enqueue(Task(instance_prompt="p", submitted_by="bob", base_model="m"), [])
    assert "the limit per user is 2 (MAX_QUEUED_PER_USER)" in submit("bob", "alice/bob-new-model")
    # The owner is not bound by any of these (only the missing photos are reported).
    owner = submit("alice", existing, base_model="someone/else")
    assert "already exists" not in owner and "use a repo in" not in owner and "MAX_QUEUED" not in owner
    assert "image" in owner.lower()


def test_the_upload_cache_is_swept_and_log_lines_are_scrubbed(tmp_path):
    """Finding 9: uploads piled up in Gradio's cache forever; a token echoed in the trainer's log reached the page."""
    from scheduler.trainer_process import trainer_outcome
    from scheduler.worker import Worker
    from ui.layout import CACHE_SWEEP

    settings = load_settings({"DATA_DIR": str(tmp_path / "d"), "HF_TOKEN": "hf_thisIsTheOwnersSecretToken1234"})
    app = create_app(settings)
    assert app.demo.delete_cache == CACHE_SWEEP
    log = tmp_path / "train.log"
    log.write_text("loading\nTraceback: Authorization: Bearer hf_thisIsTheOwnersSecretToken1234\n"
                   "also hf_someOtherTokenThatLeaked9876 here\n")  # fmt: skip
    worker: Worker = app.worker
    outcome = trainer_outcome(1, None, None, log, worker._redacted)  # the worker's own redaction
    assert "hf_thisIsTheOwnersSecretToken1234" not in (outcome.error or "")
    assert "hf_someOtherTokenThatLeaked9876" not in (outcome.error or "") and "***" in outcome.error
    shown = worker._redacted(log.read_text().splitlines())
    assert all("hf_" not in line for line in shown) and shown[0] == "loading"


def test_the_trainer_gets_the_token_but_not_the_sign_in_secrets():
    """Finding 5 (environment): the trainer subprocess ran with OAUTH_CLIENT_SECRET in its environment."""
    from contract.settings import child_environment

    env = child_environment({"HF_TOKEN": "hf_x", "OAUTH_CLIENT_SECRET": "s", "OAUTH_CLIENT_ID": "i", "PATH": "/bin"})
    assert env == {"HF_TOKEN": "hf_x", "PATH": "/bin"}


@pytest.mark.slow
def test_owner_is_warned_of_a_public_space_and_alone_squashes_the_queue_history(served, hub):
    """Privacy by default: a public Space is called out to its owner; the photos' history goes with one click."""
    names = dependency_names(json.loads(http(f"{served.url}config").body))
    load = next(n for n in names if n and n.startswith("on_load"))
    assert "This Space is public" in call(served.url, load, [], user="alice")
    assert "This Space is public" not in call(served.url, load, [], user="bob")
    assert "Only the owner" in call(served.url, "squash_history", [], user="bob")
    assert "another site" in call(served.url, "squash_history", [], user="alice", origin=EVIL)
    repo = served.app.settings.queue_repo
    from huggingface_hub import HfApi

    api = HfApi(endpoint=hub.url, token=ALICE_TOKEN)
    assert len(api.list_repo_commits(repo, repo_type="dataset")) > 1
    out = call(served.url, "squash_history", [], user="alice", origin=served.url.rstrip("/"))
    assert "event: complete" in out and "Not squashed" not in out, out[-400:]
    assert len(api.list_repo_commits(repo, repo_type="dataset")) == 1
