"""The torch-free base-model check (``training.base_check``) against the Hub emulator with the real client, and the
trainer's use of the same classification (Hub unreachable: exit 1 and a clear last line; the rest: exit 2).

Gated repos: the emulator has no gating of its own, so the Hub's gated answer (403 with ``X-Error-Code:
GatedRepo``, what huggingface.co sends for a file of a gated repo whose licence the token's account has not
accepted) is injected with the emulator's fault mechanism on the file download.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import BOB_TOKEN
from tests.polling import free_port
from tests.tiny_models import make_images
from training.base_check import DEMO_MODEL, check_base_model
from training.families.rules import KINDS

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def api():
    from huggingface_hub import HfApi

    return HfApi()


@pytest.fixture(scope="module")
def hub_model(fakehub, api, tiny_sd) -> str:
    api.create_repo("alice/bc-tiny-sd", exist_ok=True)
    api.upload_folder(repo_id="alice/bc-tiny-sd", folder_path=str(tiny_sd))
    return "alice/bc-tiny-sd"


def _upload(api, repo_id: str, folder: Path, token: str | None = None, private: bool = False, **kw) -> str:
    api.create_repo(repo_id, exist_ok=True, private=private, token=token)
    api.upload_folder(repo_id=repo_id, folder_path=str(folder), token=token, **kw)
    return repo_id


def _closed_endpoint() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens there


def test_a_usable_hub_model_passes_with_two_client_calls_and_no_weights(hub, hub_model):
    hub.clear_requests()
    assert check_base_model(hub_model) is None
    # model_info (one API request), then hf_hub_download of model_index.json (HEAD + GET of that file only)
    seen = [(r.method, r.path.rsplit("/", 1)[-1] if "/resolve/" in r.path else r.path) for r in hub.requests()]
    assert seen == [("GET", "/api/models/alice/bc-tiny-sd"), ("HEAD", "model_index.json"), ("GET", "model_index.json")]


def test_the_demo_model_and_a_local_pipeline_folder_pass_without_any_request(hub, tiny_sd):
    hub.clear_requests()
    assert check_base_model(DEMO_MODEL) is None
    assert check_base_model(str(tiny_sd)) is None
    assert hub.requests() == []


def test_the_base_check_imports_no_torch():
    code = (
        "import sys, training.base_check; bad = {'torch', 'diffusers', 'transformers'} & set(sys.modules); print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "set()"


@pytest.mark.parametrize("base_model", ["", "alice/../x", "https://huggingface.co/alice/x", "/no/such/folder"])
def test_an_invalid_id_is_invalid_before_any_request(hub, base_model):
    hub.clear_requests()
    problem = check_base_model(base_model)
    assert problem is not None and problem.kind == "invalid" and not problem.retryable
    assert hub.requests() == []


def test_a_missing_repo_is_missing(hub):
    problem = check_base_model("alice/no-such-model")
    assert problem is not None and problem.kind == "missing", problem
    assert "no such model repo" in problem.message and hub.url in problem.message


def test_a_private_repo_the_token_cannot_read_is_private(hub, api, tiny_sd):
    repo = _upload(api, "bob/bc-private-sd", tiny_sd, token=BOB_TOKEN, private=True)
    problem = check_base_model(repo)  # the token is alice's (HF_TOKEN)
    assert problem is not None and problem.kind == "private", problem
    assert "private" in problem.message and "token" in problem.message
    assert check_base_model(repo, token=BOB_TOKEN) is None  # its owner's token reads it


def test_a_gated_repo_says_where_to_accept_the_licence(hub, api, tiny_sd):
    repo = _upload(api, "bob/bc-gated-sd", tiny_sd, token=BOB_TOKEN)
    hub.inject_fault("*", r"^/bob/bc-gated-sd/resolve/", status=403, count=5, headers={
        "X-Error-Code": "GatedRepo",
        "X-Error-Message": "Access to model bob/bc-gated-sd is restricted. You must have access to it and be authenticated to access it. Please log in.",
    })  # fmt: skip
    try:
        problem = check_base_model(repo)
    finally:
        hub.clear_faults()
    assert problem is not None and problem.kind == "gated", problem
    assert f"{hub.url}/bob/bc-gated-sd" in problem.message and "accept" in problem.message
    assert "account" in problem.message and not problem.retryable


def test_an_unreachable_hub_is_retryable_names_the_address_and_is_fast():
    endpoint = _closed_endpoint()
    started = time.monotonic()
    problem = check_base_model("alice/anything", endpoint=endpoint)
    assert time.monotonic() - started < 5  # no retry loop before answering
    assert problem is not None and problem.kind == "unreachable" and problem.retryable
    assert endpoint in problem.message and "retryable" in problem.message


def test_hub_5xx_is_unreachable_and_retryable(hub, hub_model):
    hub.inject_fault("GET", r"^/api/models/alice/bc-tiny-sd", status=503, count=10)
    try:
        problem = check_base_model(hub_model)
    finally:
        hub.clear_faults()
    assert problem is not None and problem.kind == "unreachable" and problem.retryable, problem


def test_a_repo_without_model_index_is_missing(hub, api, tmp_path):
    (tmp_path / "weights.safetensors").write_bytes(b"x")
    repo = _upload(api, "alice/bc-no-index", tmp_path)
    problem = check_base_model(repo)
    assert problem is not None and problem.kind == "missing" and "model_index.json" in problem.message


def _variant(tiny_sd: Path, folder: Path, index_patch: dict | None = None, text: str | None = None) -> Path:
    shutil.copytree(tiny_sd, folder)
    if text is not None:
        (folder / "model_index.json").write_text(text)
    elif index_patch is not None:
        index = json.loads((folder / "model_index.json").read_text())
        (folder / "model_index.json").write_text(json.dumps({**index, **index_patch}))
    return folder


@pytest.mark.parametrize("where", ["hub", "local"])
@pytest.mark.parametrize(
    ("case", "kind", "shown"),
    [
        ("bad_json", "not_a_pipeline", "not valid JSON"),
        ("no_unet", "not_a_pipeline", "UNet"),
        ("custom_pipeline", "not_allowed", "custom pipelines are refused"),
        ("os_system", "not_allowed", "os.system"),
        ("bin_only", "no_safetensors", "safetensors are required"),
    ],
)
def test_unusable_pipelines_are_classified_alike_on_the_hub_and_on_disk(
    hub, api, tiny_sd, tmp_path, where, case, kind, shown
):
    folder = tmp_path / "m"
    if case == "bad_json":
        _variant(tiny_sd, folder, text="{not json")
    elif case == "no_unet":
        index = json.loads((tiny_sd / "model_index.json").read_text())
        _variant(tiny_sd, folder, text=json.dumps({k: v for k, v in index.items() if k != "unet"}))
    elif case == "custom_pipeline":
        _variant(tiny_sd, folder, {"_class_name": "MyCustomPipeline"})
    elif case == "os_system":
        _variant(tiny_sd, folder, {"vae": ["os", "system"]})
    else:
        _variant(tiny_sd, folder)
        for f in (folder / "unet").glob("*.safetensors"):
            f.rename(f.with_suffix(".bin"))
    base = str(folder) if where == "local" else _upload(api, f"alice/bc-{case.replace('_', '-')}", folder)
    problem = check_base_model(base)
    assert problem is not None and problem.kind == kind and shown in problem.message, problem
    assert problem.kind in KINDS


# ---------------------------------------------------------------- the trainer uses the same classification
def _run_trainer(tmp_path: Path, base_model: str, env: dict[str, str]) -> tuple[int, list[dict], list[str], float]:
    images = tmp_path / "images"
    make_images(images, 2, size=32)
    task = tmp_path / "task.json"
    task.write_text(json.dumps({"task_id": "t", "base_model": base_model, "instance_prompt": "a photo of sks dog",
                                "images": str(images), "params": {"steps": 1}}))  # fmt: skip
    events = tmp_path / "events.jsonl"
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "training", "--task", str(task), "--workdir", str(tmp_path / "w"),
         "--progress", str(events), "--progress-bar", "off"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, **env},
    )  # fmt: skip
    evs = [json.loads(line) for line in events.read_text().splitlines()] if events.exists() else []
    return proc.returncode, evs, proc.stderr.strip().splitlines(), time.monotonic() - started


def test_the_trainer_with_the_hub_unreachable_fails_fast_with_exit_1_and_says_so_last(tmp_path):
    endpoint = _closed_endpoint()
    rc, events, stderr, took = _run_trainer(tmp_path, "alice/tiny-sd", {"HF_ENDPOINT": endpoint})
    assert rc == 1, stderr[-5:]
    assert events[-1]["event"] == "error" and events[-1]["kind"] == "hub_unreachable", events[-1]
    assert endpoint in events[-1]["message"] and "retryable" in events[-1]["message"]
    assert stderr[-1].startswith("error (hub_unreachable):") and endpoint in stderr[-1], stderr[-5:]
    assert not any("Retrying in" in line for line in stderr), stderr
    assert took < 60  # python start-up and imports; no 25 s of retries


def test_the_trainer_refuses_a_gated_model_with_exit_2_and_the_licence_address(hub, api, tiny_sd, tmp_path):
    repo = _upload(api, "bob/bc-gated-trainer", tiny_sd, token=BOB_TOKEN)
    hub.inject_fault("*", r"^/bob/bc-gated-trainer/resolve/", status=403, count=5,
                     headers={"X-Error-Code": "GatedRepo", "X-Error-Message": "Access to this model is restricted."})  # fmt: skip
    try:
        rc, events, stderr, _ = _run_trainer(tmp_path, repo, {})
    finally:
        hub.clear_faults()
    assert rc == 2, stderr[-5:]
    assert events[-1]["kind"] == "bad_input" and f"{hub.url}/{repo}" in events[-1]["message"], events[-1]
