"""Issue 20, findings 5, 6 and 9, over real HTTP against the app served by Gradio (``ui.http_guard``).

5. Local mode has no sign-in. A page whose name an attacker rebinds to 127.0.0.1 (DNS rebinding) reaches the app
   with its own name as ``Host`` (and as ``Origin``, so the handlers' same-site check passes): it read the queue and
   acted on it. Only loopback Host names are served now, on every route.
6. Local mode listened wherever ``GRADIO_SERVER_NAME`` said (0.0.0.0 in many containers): 127.0.0.1 now, unless
   ``LOCAL_EXPOSE_TO_NETWORK`` says otherwise, and then the page warns that whoever reaches the port owns the app.
9. ``/gradio_api/upload`` stored files for anyone (20 MB each, kept an hour): on a Space only a signed-in allowed
   user may upload, within a cap on what one user holds.

The Space-mode app runs in-process as ``alice/...`` against the Hub emulator with Gradio's mocked sign-in (the
test-only opt-in); the session cookies are signed as Gradio signs them (tests/signin.py). Nothing is mocked.
"""

from __future__ import annotations

import http.client
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import gradio.http_server
import pytest

from app import App, create_app
from contract.settings import SettingsError, load_settings
from scheduler.queue import make_queue
from scheduler.task import Task, TaskStatus
from tests.conftest import ALICE_TOKEN, MOCK_SIGNIN
from tests.polling import free_port
from tests.signin import session_cookie
from tests.tiny_models import make_images
from ui.auth import EXPOSED_WARNING
from ui.http_guard import UploadCap

pytestmark = pytest.mark.slow
EVIL = "evil.example"
WARNING_WORDS = "everyone who can reach this port owns it"
assert WARNING_WORDS in EXPOSED_WARNING


@dataclass
class Reply:
    status: int
    body: str


def request(port: int, method: str, path: str, host: str, *, body: bytes | None = None, user: str | None = None,
            headers: dict[str, str] | None = None) -> Reply:  # fmt: skip
    """One request to the app on 127.0.0.1:``port`` sent with ``Host: host`` (what a browser sends for the name in
    its address bar), as ``user`` (a signed session cookie) or anonymously."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    sent = {"Host": host, **(headers or {})}
    if user:
        sent["Cookie"] = f"session={session_cookie(user)}"
    try:
        conn.request(method, path, body=body, headers=sent)
        resp = conn.getresponse()
        return Reply(resp.status, resp.read().decode(errors="replace"))
    finally:
        conn.close()


def call(port: int, api_name: str, data: list, host: str, **kw) -> Reply:
    """Run a handler through ``/gradio_api/call/<api_name>`` and read its event stream (or the refusal)."""
    headers = {"Content-Type": "application/json", **kw.pop("headers", {})}
    started = request(port, "POST", f"/gradio_api/call/{api_name}", host, body=json.dumps({"data": data}).encode(),
                      headers=headers, **kw)  # fmt: skip
    if started.status != 200:
        return started
    event_id = json.loads(started.body)["event_id"]
    return request(port, "GET", f"/gradio_api/call/{api_name}/{event_id}", host, **kw)


def multipart(files: dict[str, bytes]) -> tuple[bytes, str]:
    """A ``multipart/form-data`` body of ``files`` under the field Gradio's upload reads (``files``)."""
    boundary = uuid.uuid4().hex
    parts = [(f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
              f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + b"\r\n"
             for name, data in files.items()]  # fmt: skip
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def upload(port: int, files: dict[str, bytes], host: str, **kw) -> Reply:
    body, content_type = multipart(files)
    headers = {"Content-Type": content_type, **kw.pop("headers", {})}
    return request(port, "POST", "/gradio_api/upload", host, body=body, headers=headers, **kw)


def tick_name(port: int, host: str) -> str:
    config = json.loads(request(port, "GET", "/config", host).body)
    return next(d["api_name"] for d in config["dependencies"] if (d.get("api_name") or "").startswith("on_tick"))


@dataclass
class Served:
    app: App
    port: int
    task: Task | None = None


def serve(app: App, **overrides) -> Served:
    port = free_port()
    app.demo.launch(prevent_thread_lock=True, **{**app.launch_options(), "server_port": port, **overrides})
    return Served(app, port)


@pytest.fixture
def local_app(tmp_path):
    """A local-mode app with one queued task, served on 127.0.0.1 (the worker's loop is not started)."""
    settings = load_settings({"DATA_DIR": str(tmp_path / "data")})
    task = make_queue(settings).enqueue(
        Task(instance_prompt="a photo of sks secret-dog", submitted_by="local", base_model="m", params={"steps": 4}),
        make_images(tmp_path / "photos", 3, size=64),
    )
    app = create_app(settings)
    app.worker.snapshot()
    served = serve(app)
    served.task = task
    try:
        yield served
    finally:
        app.close()


def test_local_mode_answers_only_to_loopback_host_names(local_app):
    """Finding 5: with ``Host: evil.example`` the page, its config, the queue and the handlers were all served."""
    port, task_id = local_app.port, local_app.task.id
    tick = tick_name(port, f"127.0.0.1:{port}")
    evil = {"headers": {"Origin": f"http://{EVIL}:{port}"}}
    for host in (EVIL, f"{EVIL}:{port}"):
        for path in ("/", "/config", "/gradio_api/info", "/gradio_api/queue/status", "/theme.css"):
            reply = request(port, "GET", path, host, **evil)
            assert reply.status == 403 and "secret-dog" not in reply.body, (host, path, reply.status)
        read = call(port, tick, [None, [], {}], host, **evil)
        assert read.status == 403 and task_id not in read.body, read
        write = call(port, "cancel", [task_id], host, **evil)
        assert write.status == 403, write
        assert upload(port, {"x.png": b"x" * 100}, host, **evil).status == 403
    assert local_app.app.worker.queue.get(task_id).status is TaskStatus.PENDING

    # The page's own names are served: the queue is read, the task cancelled, a photo uploaded.
    for host in (f"127.0.0.1:{port}", f"localhost:{port}"):
        page = request(port, "GET", "/", host)
        assert page.status == 200 and "<html" in page.body.lower()
        config = request(port, "GET", "/config", host)
        assert config.status == 200 and WARNING_WORDS not in config.body  # not exposed: no warning
        assert task_id in call(port, tick, [None, [], {}], host).body
    same_site = {"Origin": f"http://127.0.0.1:{port}", "Sec-Fetch-Site": "same-origin"}
    assert "CANCELLED" in call(port, "cancel", [task_id], f"127.0.0.1:{port}", headers=same_site).body
    assert local_app.app.worker.queue.get(task_id).status is TaskStatus.CANCELLED
    stored = upload(port, {"y.png": b"y" * 100}, f"127.0.0.1:{port}", headers=same_site)
    assert stored.status == 200 and Path(json.loads(stored.body)[0]).is_file()


def test_local_mode_listens_on_loopback_whatever_gradio_server_name_says(tmp_path, monkeypatch):
    """Finding 6: local mode bound where ``GRADIO_SERVER_NAME`` said (Gradio reads it when it is imported; set here
    as a process started with ``GRADIO_SERVER_NAME=0.0.0.0`` would have it)."""
    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")
    monkeypatch.setattr(gradio.http_server, "LOCALHOST_NAME", "0.0.0.0")
    app = create_app(load_settings({"DATA_DIR": str(tmp_path / "data")}))
    served = serve(app)
    try:
        assert app.demo.server_name == "127.0.0.1"  # what the server bound
        assert app.launch_options().get("server_name") == "127.0.0.1"
        assert request(served.port, "GET", "/config", f"127.0.0.1:{served.port}").status == 200
    finally:
        app.close()


def test_exposing_local_mode_is_the_operators_choice_and_the_page_warns(tmp_path):
    """Finding 6: ``LOCAL_EXPOSE_TO_NETWORK`` opts in to all interfaces; its names are served, and every visitor is
    told that whoever reaches the port owns the app. (Served on 127.0.0.1 here, named as the LAN would name it.)"""
    settings = load_settings({"DATA_DIR": str(tmp_path / "data"), "LOCAL_EXPOSE_TO_NETWORK": "mybox.lan,10.0.0.7:80"})
    app = create_app(settings)
    assert app.launch_options()["server_name"] == "0.0.0.0"
    served = serve(app, server_name="127.0.0.1")
    port = served.port
    try:
        for host in (f"mybox.lan:{port}", "MyBox.lan", "10.0.0.7:80", f"localhost:{port}"):
            config = request(port, "GET", "/config", host)
            assert config.status == 200 and WARNING_WORDS in config.body, host
        for host in (f"10.0.0.7:{port}", f"{EVIL}:{port}", f"mybox.lan.{EVIL}"):
            assert request(port, "GET", "/config", host).status == 403, host
    finally:
        app.close()
    assert load_settings({"LOCAL_EXPOSE_TO_NETWORK": "true"}).local_host_names == ()
    with pytest.raises(SettingsError, match="LOCAL_EXPOSE_TO_NETWORK"):
        load_settings({"LOCAL_EXPOSE_TO_NETWORK": "*"})


@pytest.fixture
def space_app(hub, tmp_path):
    """The Space ``alice/...`` (alice the owner, bob allowed, carol not), served with a small upload cap."""
    repo = f"alice/up-{uuid.uuid4().hex[:6]}"
    hub.create_space(repo, owner_token=ALICE_TOKEN)
    settings = load_settings({**MOCK_SIGNIN, "SPACE_ID": repo, "HF_TOKEN": ALICE_TOKEN, "HF_ENDPOINT": hub.url,
                              "ALLOWED_USERS": "alice,bob", "DATA_DIR": str(tmp_path / "data")})  # fmt: skip
    app = create_app(settings)
    assert not app.problems
    app.upload_cap = UploadCap(files=3, bytes=100_000)
    served = serve(app)
    try:
        yield served
    finally:
        app.close()


def photo() -> bytes:
    return os.urandom(10_000)  # distinct content: Gradio stores equal files once


def test_uploads_on_a_space_need_a_signed_in_allowed_user_on_the_spaces_page(space_app):
    """Finding 9: an anonymous POST to /gradio_api/upload was stored (200 and a path in Gradio's cache)."""
    port = space_app.port
    host = f"127.0.0.1:{port}"
    anonymous = upload(port, {"a.png": photo()}, host)
    assert anonymous.status == 401 and "sign in" in anonymous.body.lower(), anonymous
    not_allowed = upload(port, {"c.png": photo()}, host, user="carol")
    assert not_allowed.status == 403 and "not on this Space's allowed users" in not_allowed.body
    cross_site = upload(port, {"b.png": photo()}, host, user="bob", headers={"Origin": "https://evil.example"})
    assert cross_site.status == 403 and "another site" in cross_site.body
    assert request(port, "POST", "/gradio_api/process_recording", host, body=b"x", user="bob").status == 403
    for user in ("bob", "alice"):
        stored = upload(port, {f"{user}.png": photo()}, host, user=user)
        assert stored.status == 200, stored
        assert Path(json.loads(stored.body)[0]).is_file()


def test_when_visitors_pay_any_signed_in_visitor_may_upload_within_the_cap_and_anonymous_may_not(hub, tmp_path):
    """BILLING=visitor (issue 25): carol, on no allowed list, pays her own way, so her photos are taken (the browser's
    Train would otherwise have nothing to send); anonymous uploads stay refused and the per-user cap still holds."""
    repo = f"alice/open-up-{uuid.uuid4().hex[:6]}"
    hub.create_space(repo, owner_token=ALICE_TOKEN)
    settings = load_settings({**MOCK_SIGNIN, "SPACE_ID": repo, "HF_TOKEN": ALICE_TOKEN, "HF_ENDPOINT": hub.url,
                              "BILLING": "visitor", "DATA_DIR": str(tmp_path / "data")})  # fmt: skip
    app = create_app(settings)
    app.upload_cap = UploadCap(files=2, bytes=100_000)
    served = serve(app)
    try:
        port, host = served.port, f"127.0.0.1:{served.port}"
        assert upload(port, {"a.png": photo()}, host).status == 401
        stored = upload(port, {"c1.png": photo(), "c2.png": photo()}, host, user="carol")
        assert stored.status == 200, stored
        assert all(Path(p).is_file() for p in json.loads(stored.body))
        assert upload(port, {"c3.png": photo()}, host, user="carol").status == 413
    finally:
        app.close()


def test_one_user_holds_at_most_the_upload_cap(space_app):
    """Finding 9: nothing bounded what one session kept in Gradio's cache (here 3 files or 100 kB a user)."""
    port = space_app.port
    host = f"127.0.0.1:{port}"
    held = []
    for i in range(3):
        reply = upload(port, {f"{i}.png": photo()}, host, user="bob")
        assert reply.status == 200, reply
        held += json.loads(reply.body)
    fourth = upload(port, {"3.png": photo()}, host, user="bob")
    assert fourth.status == 413 and "at most 3 files" in fourth.body, fourth
    # Each user has their own share; a request that would take alice past it is undone, its files deleted.
    assert upload(port, {"a0.png": photo(), "a1.png": photo()}, host, user="alice").status == 200
    cache_before = {p for p in Path(held[0]).parents[1].rglob("*") if p.is_file()}
    over = upload(port, {"a2.png": photo(), "a3.png": photo()}, host, user="alice")
    assert over.status == 413, over
    assert {p for p in Path(held[0]).parents[1].rglob("*") if p.is_file()} == cache_before
    too_big = upload(port, {"big.png": os.urandom(95_000)}, host, user="alice")  # 2 files held: 20 kB + 95 kB
    assert too_big.status == 413 and "at most 3 files and 98 kB" in too_big.body, too_big
    # Files that leave the cache (a submission removes its uploads; the sweep removes old ones) no longer count.
    for path in held[:2]:
        Path(path).unlink()
    assert upload(port, {"4.png": photo()}, host, user="bob").status == 200


def test_events_refuse_files_named_by_url(space_app):
    """Finding 9, the other door: an event's file input given as ``{"path": "https://..."}`` made Gradio download
    that URL into its cache (any size, for anyone) before the handler could check the caller. (Offline here, so the
    old code's download failed at the DNS lookup; it was accepted and tried all the same.)"""
    port = space_app.port
    host = f"127.0.0.1:{port}"
    config = json.loads(request(port, "GET", "/config", host).body)
    files = {c["id"] for c in config["components"] if c.get("type") == "file"}
    dep = next(d for d in config["dependencies"] if d.get("api_name") == "submit")
    data: list = [None] * len(dep["inputs"])
    data[next(i for i, c in enumerate(dep["inputs"]) if c in files)] = [
        {"path": "https://example.com/huge.bin", "meta": {"_type": "gradio.FileData"}}
    ]
    headers = {"Content-Type": "application/json"}
    for user in (None, "alice"):
        direct = request(port, "POST", "/gradio_api/call/submit", host, body=json.dumps({"data": data}).encode(),
                         headers=headers, user=user)  # fmt: skip
        assert direct.status == 400 and "not a URL" in direct.body, direct
        joined = {"data": data, "fn_index": config["dependencies"].index(dep), "session_hash": uuid.uuid4().hex}
        queued = request(port, "POST", "/gradio_api/queue/join", host, body=json.dumps(joined).encode(),
                         headers=headers, user=user)  # fmt: skip
        assert queued.status == 400, queued
    # An event without a URL still runs (the public refresh: anyone sees the hardware line).
    tick = tick_name(port, host)
    assert "Hardware" in call(port, tick, [None, [], {}], host).body
