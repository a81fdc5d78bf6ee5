"""Scenario 10 of issue 6: bad input is refused with a clear message, nothing is enqueued or uploaded, and no GPU
is requested. The app is built for a Space on the emulator (in-process: real settings, HubQueue and worker); the
form's values go through the same ``submit_task`` the Train button calls, and a script's direct call to the private
submit endpoint goes over raw HTTP. Not checked here: the browser's own file picker (see tests/e2e)."""

from __future__ import annotations

import uuid

import pytest
from PIL import Image

from app import create_app
from contract.settings import load_settings
from tests.conftest import ALICE_TOKEN, MOCK_SIGNIN
from tests.e2e.harness import free_port
from tests.faults.space import CAPTURED_TEXT, call_gradio
from tests.tiny_models import make_images
from ui.context import AppContext
from ui.submission import submit_task

pytestmark = pytest.mark.slow

GOOD = {"instance_prompt": "a photo of sks dog", "class_prompt": "", "base_model": "m", "recipe": "dreambooth-lora",
        "steps": 4, "hardware": "t4-small", "learning_rate": 1e-4, "rank": 4, "resolution": 256,
        "output_repo": "alice/sks-dog", "private": True}  # fmt: skip


def test_10_bad_input_is_refused_clearly_and_nothing_is_enqueued_or_uploaded(hub, tmp_path):
    repo = f"alice/bad-input-{uuid.uuid4().hex[:6]}"
    hub.create_space(repo, owner_token=ALICE_TOKEN)
    settings = load_settings({**MOCK_SIGNIN, "SPACE_ID": repo, "HF_TOKEN": ALICE_TOKEN, "HF_ENDPOINT": hub.url, "RETRY_BASE_S": "0.01",
                              "DATA_DIR": str(tmp_path / "data"), "POLL_INTERVAL_S": "5"})  # fmt: skip
    app = create_app(settings)
    ctx = AppContext(settings=settings, queue=app.worker.queue, worker=app.worker)
    photos = make_images(tmp_path / "photos", 3, size=128)
    many = [tmp_path / "many" / f"{i:03d}.png" for i in range(500)]
    many[0].parent.mkdir()
    for p in many:
        Image.new("RGB", (8, 8), (p.stem.__hash__() % 255, 0, 0)).save(p)
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    fake = tmp_path / "fake.png"
    fake.write_text("not a png either")
    huge = tmp_path / "huge.bmp"
    with open(huge, "wb") as f:  # a 60 MB file with an image name
        f.truncate(60 * 1024 * 1024)
    cases = {
        "zero images": ([], {}, "at least 1"),
        "500 images": (many, {}, "500"),
        "non-image files": ([*photos, text], {}, "notes.txt"),
        "fake png": ([*photos, fake], {}, "fake.png"),
        "60 MB image": ([*photos, huge], {}, "huge.bmp"),
        "empty prompt": (photos, {"instance_prompt": "  "}, "prompt"),
        "10,000-character prompt": (photos, {"instance_prompt": "a" * 10_000}, "prompt"),
        "invalid repo name": (photos, {"output_repo": "not a/valid//repo"}, "repo"),
        "negative steps": (photos, {"steps": -5}, "steps"),
        "huge steps": (photos, {"steps": 10**9}, "steps"),
        "unknown hardware": (photos, {"hardware": "gpu-9000"}, "gpu-9000"),
    }
    before = hub.request_counts()
    for name, (files, change, word) in cases.items():
        answer = submit_task(ctx, "alice", [str(p) for p in files], {**GOOD, **change})
        CAPTURED_TEXT.append(answer)
        assert answer.startswith("**Nothing was queued. Please fix:**"), (name, answer)
        assert word.lower() in answer.lower(), (name, answer)
        assert answer.count("\n- ") == 1, (name, answer)  # only the problem under test is reported

    # A script calling the private endpoint directly, without signing in: refused before anything happens.
    url = app.launch(block=False, server_name="127.0.0.1", server_port=free_port())
    try:
        stream = call_gradio(url, "submit", [None, "", "", "", "m", "dreambooth-lora", -1, "gpu-9000", 1e-4, 4, 256, "x",
                                             True, "constant", 0, 0, True, False])  # photos, dataset, prompts...; Advanced
    finally:
        app.close()
    # Gradio's own input checks (the hardware choice) or the handler's sign-in check answer first; either way a
    # clear error, no task.
    assert "event: error" in stream
    assert "Sign in with Hugging Face first" in stream or "gpu-9000 is not in the list of choices" in stream, stream

    assert app.worker.queue.list() == []
    after = hub.request_counts()
    new = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    assert not [k for k in new if k[0] == "POST" and ("/commit/" in k[1] or "/hardware" in k[1] or "repos/create" in k[1])], new
    assert not any(k[1].startswith("/api/models/") for k in new), new
