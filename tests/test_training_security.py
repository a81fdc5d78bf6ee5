"""Security of the trainer's inputs: checkpoints (from the Hub queue repo) and base models are untrusted.

Nothing from a checkpoint is unpickled, ``state.json`` is checked before a tensor file is read, downloads take only
the checkpoint's own file names; base models load from safetensors only, with allow-listed classes and a valid id.
"""

from __future__ import annotations

import builtins
import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from contract.events import ExitCode
from tests.test_training import lora_weights, phases, run_task
from tests.tiny_models import make_images
from training import checkpoint as ckpt_mod
from training import statefile
from training.exitcodes import BadInputError
from training.models import inspect_base_model, load_components

STEP2 = "step-00000002"
FILES = {"trainable.safetensors", "optimizer.safetensors", "optimizer.json", "state.json"}


class _Marker:
    """Unpickling this opens (creates) ``path``: what a hostile ``optimizer.pt`` or ``.bin`` would do."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return builtins.open, (str(self.path), "w")


def write_pickle_bomb(path: Path, marker: Path) -> None:
    torch.save({"optimizer": _Marker(marker)}, path)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("instance")
    make_images(folder, 3, size=48)
    return folder


def _fields(tiny_sd: Path, images: Path, steps: int, **extra) -> dict:
    return dict(base_model=str(tiny_sd), images=str(images), params={"steps": steps, "checkpoint_every": 2}, **extra)


@pytest.fixture(scope="module")
def straight3(tiny_sd, images, tmp_path_factory) -> dict[str, torch.Tensor]:
    """LoRA weights of an uninterrupted 3-step run (what a run that ignores a checkpoint must end with)."""
    work = tmp_path_factory.mktemp("straight") / "w"
    rc, _ = run_task(work, **_fields(tiny_sd, images, 3))
    assert rc == 0
    return lora_weights(work)


def _checkpointed(tiny_sd: Path, images: Path, work: Path) -> Path:
    """Run 2 steps; return the folder of its final checkpoint."""
    rc, _ = run_task(work, **_fields(tiny_sd, images, 2))
    assert rc == 0
    folder = work / "checkpoints" / STEP2
    assert {p.name for p in folder.iterdir()} == FILES
    return folder


def _assert_started_over(rc: int, events: list[dict], work: Path, straight: dict[str, torch.Tensor]) -> None:
    assert rc == ExitCode.OK, events[-1]
    assert not [e for e in events if e["event"] == "resumed"]
    assert [e["step"] for e in events if e["event"] == "step"][0] == 1
    trained = lora_weights(work)
    for k, v in straight.items():
        torch.testing.assert_close(trained[k], v, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- checkpoints: no pickle, ever
@pytest.mark.parametrize("layout", ["old_format", "pickle_next_to_new_files"])
def test_a_pickled_optimizer_in_the_checkpoint_folder_is_never_unpickled(tiny_sd, images, straight3, tmp_path, layout):
    work = tmp_path / "w"
    folder = _checkpointed(tiny_sd, images, work)
    marker = tmp_path / "pwned"
    write_pickle_bomb(folder / "optimizer.pt", marker)
    if layout == "old_format":  # the layout before format 2: state.json without "format", a pickled optimizer.pt
        meta = json.loads((folder / "state.json").read_text())
        (folder / "state.json").write_text(json.dumps({"fingerprint": meta["fingerprint"], "step": 2}))
        (folder / "optimizer.safetensors").unlink()
        (folder / "optimizer.json").unlink()
    rc, events = run_task(work, **_fields(tiny_sd, images, 3))
    assert not marker.exists()
    _assert_started_over(rc, events, work, straight3)


def test_a_pickle_in_the_hub_checkpoint_is_neither_downloaded_nor_run(hub, tiny_sd, images, straight3, tmp_path):
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo("alice/sec-queue", repo_type="dataset", private=True, exist_ok=True)
    where = {"repo_id": "alice/sec-queue", "repo_type": "dataset", "path": "checkpoints/t1"}
    rc, _ = run_task(tmp_path / "first", **_fields(tiny_sd, images, 2, checkpoint=where))
    assert rc == 0
    mirrored = {f for f in api.list_repo_files("alice/sec-queue", repo_type="dataset") if f.startswith("checkpoints/")}
    assert mirrored == {f"checkpoints/t1/{STEP2}/{f}" for f in FILES}
    marker = tmp_path / "pwned"
    write_pickle_bomb(tmp_path / "optimizer.pt", marker)
    api.upload_file(path_or_fileobj=str(tmp_path / "optimizer.pt"), path_in_repo=f"checkpoints/t1/{STEP2}/optimizer.pt",
                    repo_id="alice/sec-queue", repo_type="dataset")  # fmt: skip

    rc, events = run_task(tmp_path / "elsewhere", **_fields(tiny_sd, images, 3, checkpoint=where))
    assert not marker.exists()
    assert not list((tmp_path / "elsewhere").rglob("optimizer.pt"))
    _assert_started_over(rc, events, tmp_path / "elsewhere", straight3)


def test_download_takes_only_the_checkpoint_files(hub, tmp_path):
    from huggingface_hub import CommitOperationAdd, HfApi

    from training.spec import HubFolder

    api = HfApi()
    api.create_repo("alice/dl-queue", repo_type="dataset", private=True, exist_ok=True)
    where = HubFolder("alice/dl-queue", "ck")
    ops = [CommitOperationAdd(f"ck/{STEP2}/{f}", b"{}") for f in FILES]
    api.create_commit("alice/dl-queue", ops, repo_type="dataset", commit_message="a checkpoint")
    got = ckpt_mod.download_latest_checkpoint(where, tmp_path / "a")
    assert got is not None and got.step == 2 and {p.name for p in got.path.iterdir()} == FILES
    for extra in (f"ck/{STEP2}/sub/trainable.safetensors", f"ck/{STEP2}/evil.py"):
        api.create_commit("alice/dl-queue", [CommitOperationAdd(extra, b"x")], repo_type="dataset", commit_message="x")
        assert ckpt_mod.download_latest_checkpoint(where, tmp_path / "b") is None
        api.delete_file(extra, "alice/dl-queue", repo_type="dataset")
    api.delete_file(f"ck/{STEP2}/optimizer.json", "alice/dl-queue", repo_type="dataset")  # one missing: refused too
    assert ckpt_mod.download_latest_checkpoint(where, tmp_path / "c") is None


# ---------------------------------------------------------------- state.json first, tensors only when accepted
def test_a_checkpoint_of_other_settings_is_ignored_without_reading_its_tensors(
    tiny_sd, images, straight3, tmp_path, monkeypatch, caplog
):
    work = tmp_path / "w"
    folder = _checkpointed(tiny_sd, images, work)
    for name in ("trainable.safetensors", "optimizer.safetensors"):
        (folder / name).write_bytes(b"\x00garbage, not safetensors" * 10)
    meta = json.loads((folder / "state.json").read_text())
    (folder / "state.json").write_text(json.dumps({**meta, "fingerprint": "another-run"}))
    read: list[str] = []
    real = statefile.load_file  # every tensor file of a checkpoint is read through statefile.load_tensors
    monkeypatch.setattr(statefile, "load_file", lambda path, **kw: read.append(path) or real(path, **kw))
    with caplog.at_level(logging.WARNING, logger="training.checkpoint"):
        rc, events = run_task(work, **_fields(tiny_sd, images, 3))
    assert not [p for p in read if STEP2 in p]
    assert "belongs to different settings" in caplog.text
    _assert_started_over(rc, events, work, straight3)


@pytest.mark.parametrize("tamper", ["garbage_weights", "garbage_states", "unknown_json_node", "wrong_shapes"])
def test_a_damaged_checkpoint_of_the_same_settings_starts_over_cleanly(tiny_sd, images, straight3, tmp_path, tamper):
    from safetensors.torch import load_file, save_file

    work = tmp_path / "w"
    folder = _checkpointed(tiny_sd, images, work)
    if tamper == "garbage_weights":
        (folder / "trainable.safetensors").write_bytes(b"garbage" * 100)
    elif tamper == "garbage_states":
        (folder / "optimizer.safetensors").write_bytes(b"garbage" * 100)
    elif tamper == "unknown_json_node":
        (folder / "optimizer.json").write_text(json.dumps({"format": 1, "tree": {"t": "object", "cls": "os.system"}}))
    else:
        weights = load_file(str(folder / "trainable.safetensors"))
        save_file({k: torch.zeros(3) for k in weights}, str(folder / "trainable.safetensors"))
    rc, events = run_task(work, **_fields(tiny_sd, images, 3))
    _assert_started_over(rc, events, work, straight3)


# ---------------------------------------------------------------- the new format restores exactly
def test_checkpoint_state_round_trips_exactly_without_pickle(tmp_path):
    from diffusers.optimization import get_scheduler

    def make():
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(5))]
        opt = torch.optim.AdamW([{"params": params}], lr=1e-2, betas=(0.8, 0.99), foreach=True)
        return params, opt, get_scheduler("cosine", opt, num_warmup_steps=2, num_training_steps=10)

    params, opt, sched = make()
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    for _ in range(3):
        (params[0].square().sum() + params[1].sum()).backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    states = {"optimizer": opt.state_dict(), "lr_scheduler": sched.state_dict(), "scaler": scaler.state_dict()}
    named = [(f"p{i}", p) for i, p in enumerate(params)]
    path = ckpt_mod.save_checkpoint(tmp_path, 3, {n: p for n, p in named}, states, {"fingerprint": "f"})
    assert {p.name for p in path.iterdir()} == FILES
    assert not any(p.read_bytes().startswith(b"\x80") for p in path.iterdir())  # no pickle stream anywhere

    params2, opt2, sched2 = make()
    scaler2 = torch.amp.GradScaler("cpu")
    ckpt = ckpt_mod.latest_checkpoint(tmp_path)
    assert ckpt.meta() == {"fingerprint": "f", "format": ckpt_mod.FORMAT, "step": 3}
    ckpt_mod.restore(ckpt, [(f"p{i}", p) for i, p in enumerate(params2)], opt2, sched2, scaler2)
    got = opt2.state_dict()
    assert got["param_groups"] == states["optimizer"]["param_groups"]
    assert got["param_groups"][0]["betas"] == (0.8, 0.99) and isinstance(got["param_groups"][0]["betas"], tuple)
    assert set(got["state"]) == {0, 1}
    for i in (0, 1):
        for k, v in states["optimizer"]["state"][i].items():
            torch.testing.assert_close(got["state"][i][k], v, rtol=0, atol=0)
        torch.testing.assert_close(params2[i], params[i], rtol=0, atol=0)
    assert sched2.state_dict() == states["lr_scheduler"] and scaler2.state_dict() == states["scaler"]
    (params[0].sum() + params[1].sum()).backward()  # both continue identically
    (params2[0].sum() + params2[1].sum()).backward()
    opt.step()
    opt2.step()
    torch.testing.assert_close(params2[0], params[0], rtol=0, atol=0)


# ---------------------------------------------------------------- base models: safetensors only
def test_a_pipeline_saved_without_safetensors_is_refused(tiny_sd, images, tmp_path):
    from diffusers import StableDiffusionPipeline

    binary = tmp_path / "bin-model"
    StableDiffusionPipeline.from_pretrained(str(tiny_sd)).save_pretrained(str(binary), safe_serialization=False)
    assert list(binary.glob("unet/*.bin")) and not list(binary.glob("unet/*.safetensors"))
    rc, events = run_task(tmp_path / "w", base_model=str(binary), images=str(images), params={"steps": 1})
    assert rc == ExitCode.BAD_INPUT
    err = events[-1]
    assert err["kind"] == "bad_input" and "'unet'" in err["message"] and "safetensors are required" in err["message"]
    assert "loading" not in phases(events)
    info = inspect_base_model(str(tiny_sd))
    info.base_model = str(binary)
    with pytest.raises(OSError, match="safetensors"):  # loading itself never falls back to the .bin files either
        load_components(info, unet_dtype=torch.float32, text_dtype=torch.float32)


def test_a_pickled_text_encoder_is_refused_and_never_unpickled(tiny_sd, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_sd, model)
    (model / "text_encoder" / "model.safetensors").unlink()
    marker = tmp_path / "pwned"
    write_pickle_bomb(model / "text_encoder" / "pytorch_model.bin", marker)
    with pytest.raises(BadInputError, match="'text_encoder' has no .safetensors weights; safetensors are required"):
        inspect_base_model(str(model))
    assert not marker.exists()


# ---------------------------------------------------------------- base models: allow-listed classes only
@pytest.mark.parametrize(
    ("key", "value", "shown"),
    [
        ("unet", ["os", "system"], "os.system"),
        ("text_encoder", ["diffusers", "StableDiffusionSafetyChecker"], "diffusers.StableDiffusionSafetyChecker"),
        ("text_encoder", ["transformers", "AutoModel"], "transformers.AutoModel"),
        ("tokenizer", ["transformers", "AutoTokenizer"], "transformers.AutoTokenizer"),
        ("vae", ["my_vae", "MyAutoencoder"], "my_vae.MyAutoencoder"),
        ("scheduler", ["diffusers", "RePaintScheduler"], "diffusers.RePaintScheduler"),
        ("_class_name", "MyCustomPipeline", "MyCustomPipeline"),
        ("_class_name", ["pipeline", "MyCustomPipeline"], "MyCustomPipeline"),
    ],
)
def test_a_class_outside_the_allow_list_is_refused(tiny_sd, tmp_path, key, value, shown):
    model = tmp_path / "model"
    shutil.copytree(tiny_sd, model)
    index = json.loads((model / "model_index.json").read_text())
    (model / "model_index.json").write_text(json.dumps({**index, key: value}))
    with pytest.raises(BadInputError, match="not allowed") as err:
        inspect_base_model(str(model))
    message = str(err.value)
    assert shown in message
    if key != "_class_name":
        assert f"component {key!r}" in message and "allowed:" in message
    else:
        assert "custom pipelines are refused" in message and "StableDiffusionPipeline" in message


def test_a_refused_class_fails_the_run_with_exit_code_2_before_loading(tiny_sdxl, images, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_sdxl, model)
    index = json.loads((model / "model_index.json").read_text())
    (model / "model_index.json").write_text(json.dumps({**index, "text_encoder_2": ["os", "system"]}))
    rc, events = run_task(tmp_path / "w", base_model=str(model), images=str(images), params={"steps": 1})
    assert rc == ExitCode.BAD_INPUT
    assert "'text_encoder_2'" in events[-1]["message"] and "loading" not in phases(events)


# ---------------------------------------------------------------- base models: the id
@pytest.mark.parametrize(
    "base_model",
    ["", "   ", "https://huggingface.co/alice/tiny-sd", "alice/../tiny-sd", "../../no-such-folder", "alice/tiny-sd/extra",
     "alice/tiny-sd@main", "alice/tiny--sd", "/no/such/folder"],
)  # fmt: skip
def test_an_invalid_base_model_id_is_refused_before_any_request(hub, base_model):
    hub.clear_requests()
    with pytest.raises(BadInputError, match="empty|not a valid Hub repo id"):
        inspect_base_model(base_model)
    assert hub.requests() == []
