"""The trainer (``python -m training``) on tiny random models, on the CPU.

Most runs call ``training.cli.main`` in-process (same code path as the CLI, without paying the import time again);
a few run the real command line (exit codes, progress bar on a terminal, torchrun with two processes).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from contract.events import ExitCode
from tests.conftest import ALICE_TOKEN, BOB_TOKEN
from tests.tiny_models import make_images
from training.cli import main
from training.lora import DreamBoothLoRA
from training.recipes import register_recipe
from training.spec import TrainSpec

REPO_ROOT = Path(__file__).resolve().parents[1]
FAST = {"resolution": 32, "checkpoint_every": 0, "sample_inference_steps": 2}


# ---------------------------------------------------------------- a fault-injecting recipe (used via --recipes-module)
class Interrupted(KeyboardInterrupt):
    """Stands in for Ctrl-C / a stop signal in the middle of training."""


@register_recipe("test-lora-interrupt-at-4")
class LoRAInterruptedAtStep4(DreamBoothLoRA):
    """The LoRA recipe, interrupted right after optimizer step 4 (its checkpoints are compatible with LoRA's)."""

    def on_step(self, step, ctx):
        if step == 4:
            raise Interrupted()


# ---------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("instance")
    make_images(folder, 3, size=48)
    return folder


def write_task(path: Path, **fields) -> Path:
    params = {**FAST, **fields.pop("params", {})}
    task = {"task_id": "t1", "instance_prompt": "a photo of sks dog", "params": params, "output": None,
            "checkpoint": None, **fields}  # fmt: skip
    path.write_text(json.dumps(task))
    return path


def run_task(workdir: Path, *extra: str, **fields) -> tuple[int, list[dict]]:
    """Run a task in-process; return (exit code, progress events)."""
    workdir.mkdir(parents=True, exist_ok=True)
    task = write_task(workdir.parent / f"{workdir.name}-task.json", **fields)
    events = workdir / "events.jsonl"
    events.unlink(missing_ok=True)  # the trainer appends; each run here reads only its own events
    rc = main(["--task", str(task), "--workdir", str(workdir), "--progress", str(events), "--progress-bar", "off", *extra])
    return rc, [json.loads(line) for line in events.read_text().splitlines()] if events.exists() else []


def phases(events: list[dict]) -> list[str]:
    return [e["phase"] for e in events if e["event"] == "phase"]


def lora_weights(workdir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(workdir / "output" / "pytorch_lora_weights.safetensors"))


def unet_eval_loss(model_dir: Path, image_dir: Path, lora_dir: Path | None = None) -> float:
    """Denoising loss of the (LoRA-loaded) model on fixed noise and timesteps for the training images."""
    import numpy as np
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(model_dir))
    if lora_dir is not None:
        pipe.load_lora_weights(str(lora_dir))
    from training.data import load_images

    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        ids = pipe.tokenizer("a photo of sks dog", padding="max_length", max_length=77, return_tensors="pt").input_ids
        emb = pipe.text_encoder(ids)[0]
        losses = []
        for img in load_images(image_dir, 32):
            pix = torch.from_numpy(np.asarray(img.image, dtype=np.float32)).permute(2, 0, 1)[None] / 127.5 - 1
            lat = pipe.vae.encode(pix).latent_dist.mean * pipe.vae.config.scaling_factor
            for t in (100, 300, 500, 700, 900):
                noise = torch.randn(lat.shape, generator=g)
                ts = torch.tensor([t])
                noisy = pipe.scheduler.add_noise(lat, noise, ts)  # the tiny model ships a DDPMScheduler
                pred = pipe.unet(noisy, ts, emb).sample
                losses.append(torch.mean((pred - noise) ** 2).item())
    return sum(losses) / len(losses)


# ---------------------------------------------------------------- spec
def test_spec_defaults_unknown_keys_and_ranges(tiny_sd, images):
    spec = TrainSpec.from_dict(
        {"task_id": "a", "base_model": str(tiny_sd), "instance_prompt": " sks ", "images": str(images), "params": {}}
    )
    assert spec.recipe == "dreambooth-lora" and spec.params.rank == 4 and spec.params.steps is None
    assert spec.instance_prompt == "sks" and spec.output is None
    with pytest.raises(ValueError, match="unknown params key.*stepz"):
        TrainSpec.from_dict({"task_id": "a", "base_model": "m", "instance_prompt": "p", "images": "/x", "params": {"stepz": 1}})
    with pytest.raises(ValueError, match="class_prompt"):
        TrainSpec.from_dict({"task_id": "a", "base_model": "m", "instance_prompt": "p", "images": "/x",
                             "params": {"prior_preservation": True}})  # fmt: skip
    from training.lora import DreamBoothLoRA
    from training.recipe_base import clamp_steps

    r = DreamBoothLoRA
    assert clamp_steps(3, r.steps_per_image, r.min_steps, r.max_steps) == 500  # 3 x 150, clamped up
    assert clamp_steps(8, r.steps_per_image, r.min_steps, r.max_steps) == 1200
    assert clamp_steps(40, r.steps_per_image, r.min_steps, r.max_steps) == 2400  # clamped down
    with pytest.raises(ValueError, match="absolute"):
        TrainSpec.from_dict({"task_id": "a", "base_model": "m", "instance_prompt": "p", "images": "rel/path"})


def test_images_are_exif_transposed_resized_and_cropped(tmp_path):
    from training.data import load_images

    make_images(tmp_path, 3, size=64)  # img01.jpg: stored 64x48 (landscape) with EXIF "rotate 90"
    prepared = {p.source.name: p for p in load_images(tmp_path, 32)}
    assert prepared["img01.jpg"].original_size == (64, 48)  # (height, width): portrait once transposed
    assert prepared["img01.jpg"].crop_top_left == (5, 0)  # 48x64 -> 32x43, centre crop
    assert all(p.image.size == (32, 32) and p.image.mode == "RGB" for p in prepared.values())


# ---------------------------------------------------------------- LoRA: learns, loads, exports
@pytest.fixture(scope="module")
def lora_run(tiny_sd, images, tmp_path_factory) -> tuple[Path, list[dict]]:
    workdir = tmp_path_factory.mktemp("lora") / "work"
    rc, events = run_task(
        workdir,
        base_model=str(tiny_sd),
        images=str(images),
        params={"steps": 60, "learning_rate": 3e-2, "rank": 8, "validation_prompts": ["a photo of sks dog"],
                "validation_every": 30, "checkpoint_every": 25, "log_every": 10},
    )  # fmt: skip
    assert rc == ExitCode.OK, events[-3:]
    return workdir, events


def test_lora_lowers_the_loss_on_its_images(lora_run, tiny_sd, images):
    # LoRA on the two attention blocks of a random tiny UNet learns slowly (about -10% here); full fine-tuning
    # below shows the strong overfit. Both would fail if the optimizer did nothing.
    workdir, _ = lora_run
    before = unet_eval_loss(tiny_sd, images)
    after = unet_eval_loss(tiny_sd, images, workdir / "output")
    assert after < 0.95 * before, (before, after)


def test_lora_loads_into_the_pipeline_and_changes_its_output(lora_run, tiny_sd):
    from diffusers import StableDiffusionPipeline

    workdir, _ = lora_run
    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_sd), safety_checker=None)
    kw = dict(num_inference_steps=2, height=32, width=32, output_type="np")
    base = pipe("a photo of sks dog", generator=torch.Generator().manual_seed(1), **kw).images
    pipe.load_lora_weights(str(workdir / "output"))
    tuned = pipe("a photo of sks dog", generator=torch.Generator().manual_seed(1), **kw).images
    assert abs(base - tuned).mean() > 1e-3
    keys = lora_weights(workdir)
    assert keys and all(k.startswith("unet.") and "lora" in k for k in keys)


def test_kohya_copy_has_the_a1111_key_layout(lora_run):
    workdir, _ = lora_run
    diffusers_sd = lora_weights(workdir)
    kohya = load_file(str(workdir / "output" / "pytorch_lora_weights_kohya.safetensors"))
    modules = {k.rsplit(".", 2)[0] for k in kohya}
    assert all(m.startswith("lora_unet_") and "." not in m for m in modules)
    for m in modules:
        assert {f"{m}.lora_down.weight", f"{m}.lora_up.weight", f"{m}.alpha"} <= set(kohya)
        assert kohya[f"{m}.lora_down.weight"].shape[0] == 8  # the rank
    assert len(modules) * 2 == len(diffusers_sd)


def test_progress_events_samples_checkpoints_and_model_card(lora_run, tiny_sd):
    workdir, events = lora_run
    assert all("event" in e and isinstance(e["time"], float) for e in events)
    # no scoring model is set (tests/conftest.py): the base model's validation loss is scored, and nothing is sampled
    # before the first step (tests/test_scores_run.py has the base model sampled and scored)
    assert phases(events)[:4] == ["validating_input", "loading", "caching_latents", "training"]
    assert phases(events)[-2:] == ["saving", "done"]
    steps = [e for e in events if e["event"] == "step"]
    assert [e["step"] for e in steps] == [10, 20, 30, 40, 50, 60]
    assert all(e["total"] == 60 and e["loss"] > 0 and e["steps_per_s"] > 0 and "eta_s" in e for e in steps)
    samples = [e for e in events if e["event"] == "sample"]
    assert [s["step"] for s in samples] == [30, 60]
    for s in samples:
        assert all(Image.open(p).size == (32, 32) for p in s["paths"])
    assert [e["step"] for e in events if e["event"] == "checkpoint"] == [25, 50, 60]
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["step-00000050", "step-00000060"]
    assert events[-1]["event"] == "done" and events[-1]["repo_url"] is None
    card = (workdir / "output" / "README.md").read_text()
    assert str(tiny_sd) in card and "a photo of sks dog" in card and "samples/step60_0.png" in card
    for f in (workdir / "output").rglob("*"):
        if f.is_file():
            assert ALICE_TOKEN.encode() not in f.read_bytes()


# ---------------------------------------------------------------- other recipes and options
def test_prior_preservation_with_text_encoder_lora(tiny_sd, images, tmp_path):
    params = {"steps": 3, "prior_preservation": True, "num_class_images": 3, "train_text_encoder": True,
              "snr_gamma": 5.0, "noise_offset": 0.05}  # fmt: skip
    fields = dict(base_model=str(tiny_sd), images=str(images), class_prompt="a photo of a dog", params=params)
    rc, events = run_task(tmp_path / "w", **fields)
    assert rc == 0, events[-1]
    assert "generating_class_images" in phases(events)
    (cache,) = (tmp_path / "w" / "class_images").iterdir()
    assert len(list(cache.glob("*.png"))) == 3
    keys = lora_weights(tmp_path / "w")
    assert any(k.startswith("text_encoder.") for k in keys) and any(k.startswith("unet.") for k in keys)
    kohya = load_file(str(tmp_path / "w" / "output" / "pytorch_lora_weights_kohya.safetensors"))
    assert any(k.startswith("lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down") for k in kohya)
    # a second task on the same work folder reuses the cached class images
    fields["params"] = {**params, "steps": 4}
    rc, events = run_task(tmp_path / "w", **fields)
    assert rc == 0 and "generating_class_images" not in phases(events)


def test_full_finetune_overfits_and_saves_a_loadable_pipeline(tiny_sd, images, tmp_path):
    from diffusers import StableDiffusionPipeline

    rc, events = run_task(tmp_path / "w", recipe="dreambooth-full", base_model=str(tiny_sd), images=str(images),
                          params={"steps": 40, "learning_rate": 1e-3, "log_every": 10})  # fmt: skip
    assert rc == 0, events[-1]
    losses = [e["loss"] for e in events if e["event"] == "step"]
    assert losses[-1] < 0.5 * losses[0], losses
    before, after = unet_eval_loss(tiny_sd, images), unet_eval_loss(tmp_path / "w" / "output", images)
    assert after < 0.5 * before, (before, after)
    tuned = StableDiffusionPipeline.from_pretrained(str(tmp_path / "w" / "output"))
    base = StableDiffusionPipeline.from_pretrained(str(tiny_sd))
    diff = [(a - b).abs().max().item() for a, b in zip(tuned.unet.parameters(), base.unet.parameters(), strict=True)]
    assert max(diff) > 1e-4
    assert "dreambooth-full" in (tmp_path / "w" / "output" / "README.md").read_text()


def test_sdxl_lora_with_both_text_encoders(tiny_sdxl, images, tmp_path):
    rc, events = run_task(tmp_path / "w", base_model=str(tiny_sdxl), images=str(images),
                          params={"steps": 3, "train_text_encoder": True, "resolution": 64})  # fmt: skip
    assert rc == 0, events[-1]
    prefixes = {k.split(".")[0] for k in lora_weights(tmp_path / "w")}
    assert prefixes == {"unet", "text_encoder", "text_encoder_2"}
    kohya = load_file(str(tmp_path / "w" / "output" / "pytorch_lora_weights_kohya.safetensors"))
    assert {k.split("_text_model_")[0] for k in kohya if "_te" in k.split(".")[0][:9]} == {"lora_te1", "lora_te2"}
    card = (tmp_path / "w" / "output" / "README.md").read_text()
    assert "stable-diffusion-xl" in card


def test_sdxl_full_finetune_with_prior_preservation(tiny_sdxl, images, tmp_path):
    rc, events = run_task(tmp_path / "w", recipe="dreambooth-full", base_model=str(tiny_sdxl), images=str(images),
                          class_prompt="a photo of a dog",
                          params={"steps": 2, "prior_preservation": True, "num_class_images": 1})  # fmt: skip
    assert rc == 0, events[-1]
    assert json.loads((tmp_path / "w" / "output" / "model_index.json").read_text())["_class_name"] == (
        "StableDiffusionXLPipeline"
    )


# ---------------------------------------------------------------- resume
def test_interrupted_run_resumes_to_the_uninterrupted_weights(tiny_sd, images, tmp_path):
    fields = dict(base_model=str(tiny_sd), images=str(images),
                  params={"steps": 6, "learning_rate": 1e-3, "checkpoint_every": 3, "batch_size": 2})  # fmt: skip
    rc, _ = run_task(tmp_path / "straight", **fields)
    assert rc == 0
    rc, events = run_task(tmp_path / "resumed", recipe="test-lora-interrupt-at-4", **fields)
    assert rc == ExitCode.FAILURE and events[-1]["event"] == "error"
    assert not (tmp_path / "resumed" / "output" / "pytorch_lora_weights.safetensors").exists()
    rc, events = run_task(tmp_path / "resumed", **fields)
    assert rc == 0
    assert [e["step"] for e in events if e["event"] == "resumed"] == [3]
    assert [e["step"] for e in events if e["event"] == "step"][0] == 4
    straight, resumed = lora_weights(tmp_path / "straight"), lora_weights(tmp_path / "resumed")
    assert straight.keys() == resumed.keys()
    for k in straight:
        torch.testing.assert_close(resumed[k], straight[k], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- bad input
def _bad_folder(tmp_path: Path, case: str) -> Path:
    folder = tmp_path / case
    folder.mkdir()
    if case == "text_as_png":
        make_images(folder, 2, size=48)
        (folder / "notes.png").write_text("this is not an image")
    elif case == "one_pixel":
        make_images(folder, 2, size=48)
        Image.new("RGB", (1, 1), (255, 0, 0)).save(folder / "dot.png")
    return folder


@pytest.mark.parametrize(
    ("case", "fields", "message"),
    [
        ("zero_images", {}, "found 0 instance image"),
        ("text_as_png", {}, "notes.png: not a readable image"),
        ("one_pixel", {}, "dot.png: too small"),
        ("steps_zero", {"params": {"steps": 0}}, "steps must be at least 1"),
        ("unknown_recipe", {"recipe": "dreambooth-magic"}, "unknown recipe 'dreambooth-magic'"),
        ("missing_model", {"base_model": "/nonexistent/model"}, "not a diffusers Stable Diffusion pipeline"),
    ],
)
def test_bad_input_is_a_clear_error_with_exit_code_2_and_no_upload(tiny_sd, images, tmp_path, case, fields, message):
    img = str(_bad_folder(tmp_path, case)) if case in ("zero_images", "text_as_png", "one_pixel") else str(images)
    fields = {"base_model": str(tiny_sd), "images": img, "output": {"repo_id": "alice/never-created"}, **fields}
    rc, events = run_task(tmp_path / "w", **fields)
    assert rc == ExitCode.BAD_INPUT == 2
    err = events[-1]
    assert err["event"] == "error" and err["kind"] == "bad_input" and message in err["message"], err
    assert "loading" not in phases(events) or case == "missing_model"
    assert "uploading" not in phases(events)
    assert not (tmp_path / "w" / "output" / "pytorch_lora_weights.safetensors").exists()


def test_cli_exit_code_for_bad_input(tmp_path):
    task = write_task(tmp_path / "t.json", base_model="x", images="/nonexistent", params={"steps": 0})
    proc = subprocess.run([sys.executable, "-m", "training", "--task", str(task), "--workdir", str(tmp_path / "w")],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "steps must be at least 1" in proc.stderr


# ---------------------------------------------------------------- the command line with a progress bar
@pytest.mark.slow
def test_cli_on_a_terminal_shows_a_progress_bar(tiny_sd, images, tmp_path):
    """Run ``python -m training`` with its stderr on a pseudo-terminal, as a person would."""
    import fcntl
    import pty
    import struct
    import termios

    task = write_task(tmp_path / "t.json", base_model=str(tiny_sd), images=str(images), params={"steps": 5})
    cmd = [sys.executable, "-m", "training", "--task", str(task), "--workdir", str(tmp_path / "w")]
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # a 120-column terminal
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=follower, stderr=follower)
    os.close(follower)
    out = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    assert proc.wait(timeout=120) == 0, out.decode(errors="replace")[-2000:]
    text = out.decode(errors="replace")
    assert "5/5" in text and "step" in text and "caching latents" in text


# ---------------------------------------------------------------- two processes
@pytest.mark.slow
def test_two_processes_agree_with_one_process_of_double_batch(tiny_sd, images, tmp_path):
    """torchrun with 2 CPU processes (gloo), batch 1 each == one process with batch 2 (same samples, same math).

    With text-encoder LoRA and prior preservation (user-supplied class images), so several modules are distributed.
    """
    fields = dict(base_model=str(tiny_sd), images=str(images), class_prompt="a photo of a dog", class_images=str(images),
                  params={"steps": 4, "learning_rate": 1e-3, "train_text_encoder": True, "prior_preservation": True})  # fmt: skip
    task = write_task(tmp_path / "t2.json", **fields)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "training", "--task", str(task), "--workdir", str(tmp_path / "two"),
           "--progress", str(tmp_path / "two.jsonl")]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = [json.loads(x) for x in (tmp_path / "two.jsonl").read_text().splitlines()]
    assert sum(e["event"] == "done" for e in events) == 1  # only the main process reports
    fields["params"]["batch_size"] = 2
    rc, _ = run_task(tmp_path / "one", **fields)
    assert rc == 0
    two, one = lora_weights(tmp_path / "two"), lora_weights(tmp_path / "one")
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- Hub: images in, model out, checkpoints mirrored
def _upload_images(api, repo_id: str, folder: Path) -> str:
    api.create_repo(repo_id, repo_type="dataset", private=True, exist_ok=True)
    info = api.upload_folder(repo_id=repo_id, repo_type="dataset", folder_path=str(folder), path_in_repo="tasks/t1/images")
    return info.oid


def test_hub_model_hub_images_upload_and_checkpoint_mirror(hub, tiny_sd, images, tmp_path):
    from huggingface_hub import HfApi

    api = HfApi()
    rev = _upload_images(api, "alice/space-queue", images)
    api.create_repo("alice/tiny-sd", exist_ok=True)
    api.upload_folder(repo_id="alice/tiny-sd", folder_path=str(tiny_sd))
    fields = dict(
        base_model="alice/tiny-sd",  # loaded from the (emulated) Hub through HF_ENDPOINT
        images={"repo_id": "alice/space-queue", "repo_type": "dataset", "revision": rev, "path": "tasks/t1/images"},
        output={"repo_id": "alice/sks-dog-lora", "private": True},
        checkpoint={"repo_id": "alice/space-queue", "repo_type": "dataset", "path": "checkpoints/t1"},
        params={"steps": 4, "checkpoint_every": 2, "validation_prompts": ["a photo of sks dog"]},
    )
    rc, events = run_task(tmp_path / "w", **fields)
    assert rc == 0, events[-1]
    assert events[-1]["repo_url"].endswith("alice/sks-dog-lora")
    assert phases(events)[-2:] == ["uploading", "done"]
    files = set(api.list_repo_files("alice/sks-dog-lora"))
    assert {"pytorch_lora_weights.safetensors", "pytorch_lora_weights_kohya.safetensors", "README.md",
            "samples/step4_0.png"} <= files  # fmt: skip
    # the scored checkpoint's LoRA is uploaded (contract.scores), the resumable training state never is
    assert "checkpoints/step-000004/pytorch_lora_weights.safetensors" in files
    state = ("trainable.safetensors", "optimizer.safetensors", "optimizer.json", "state.json")
    assert not any(f.endswith(".pt") or f.rsplit("/", 1)[-1] in state or f.startswith("step-") for f in files)
    assert api.model_info("alice/sks-dog-lora").private
    from huggingface_hub import ModelCard

    card = ModelCard.load("alice/sks-dog-lora")
    assert card.data.base_model == "alice/tiny-sd" and card.data.instance_prompt == "a photo of sks dog"
    assert card.data.widget[0]["output"]["url"] == "samples/step4_0.png"
    mirrored = [f for f in api.list_repo_files("alice/space-queue", repo_type="dataset") if f.startswith("checkpoints/")]
    # the final state is mirrored too (a failed upload can then finish elsewhere); older ones are pruned
    assert {f.split("/")[2] for f in mirrored} == {"step-00000004"}
    for _, data in hub.stored_bytes():
        assert ALICE_TOKEN.encode() not in data

    # A fresh work folder (another container) resumes from the mirrored checkpoint.
    rc, events = run_task(tmp_path / "elsewhere", **{**fields, "output": None})
    assert rc == 0
    assert [e["step"] for e in events if e["event"] == "resumed"] == [4]
    assert not [e for e in events if e["event"] == "step"]
    first, again = lora_weights(tmp_path / "w"), lora_weights(tmp_path / "elsewhere")
    assert all(torch.equal(first[k], again[k]) for k in first)


def test_upload_refused_exits_5_and_keeps_the_weights(hub, tiny_sd, images, tmp_path):
    # alice's token cannot write into bob's namespace: the Hub answers 403, which is not retried, and the exit code
    # tells the worker that training again would not help (issue 21: it used to be 4, and the task trained twice).
    rc, events = run_task(tmp_path / "w", base_model=str(tiny_sd), images=str(images),
                          output={"repo_id": "bob/not-yours"}, params={"steps": 2})  # fmt: skip
    assert rc == ExitCode.UPLOAD_REFUSED == 5
    assert events[-1]["event"] == "error" and events[-1]["kind"] == "upload_refused"
    assert events[-1]["message"].startswith("HTTP 403 for bob/not-yours; the token may not create or write")
    assert BOB_TOKEN not in events[-1]["message"] and ALICE_TOKEN not in events[-1]["message"]
    assert (tmp_path / "w" / "output" / "pytorch_lora_weights.safetensors").exists()
    assert (tmp_path / "w" / "checkpoints" / "step-00000002" / "trainable.safetensors").exists()


def test_upload_retries_transient_errors(hub, tiny_sd, images, tmp_path):
    hub.inject_fault("POST", r"^/api/models/alice/retry-lora/commit/", status=503, count=1)
    rc, events = run_task(tmp_path / "w", base_model=str(tiny_sd), images=str(images),
                          output={"repo_id": "alice/retry-lora"}, params={"steps": 2})  # fmt: skip
    assert rc == 0, events[-1]
    assert len(hub.requests("POST", r"^/api/models/alice/retry-lora/commit/")) >= 2


# ---------------------------------------------------------------- the plug-in point for customizers
PLUGIN = '''
import torch
from training.recipe_base import Recipe
from training.recipes import register_recipe


@register_recipe("plugin-echo")
class Echo(Recipe):
    """Trains nothing: writes a file and one step event (what a customizer's trainer must do at least)."""

    def run(self, ctx):
        ctx.progress.phase("training")
        ctx.progress.step(step=1, total=1, loss=0.5, lr=1e-4, steps_per_s=1.0, eta_s=0.0, peak_mem_gib=0.0)
        ctx.output_dir.mkdir(parents=True, exist_ok=True)
        (ctx.output_dir / "weights.txt").write_text(ctx.spec.instance_prompt)


@register_recipe("plugin-oom")
class OutOfMemory(Recipe):
    def run(self, ctx):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


@register_recipe("plugin-crash")
class Crash(Recipe):
    def run(self, ctx):
        raise RuntimeError("boom")
'''


@pytest.mark.parametrize(
    ("recipe", "code", "last"),
    [("plugin-echo", ExitCode.OK, "done"), ("plugin-oom", ExitCode.OUT_OF_MEMORY, "oom"),
     ("plugin-crash", ExitCode.FAILURE, "internal")],
)  # fmt: skip
def test_recipes_plug_in_through_the_environment(tmp_path, monkeypatch, images, recipe, code, last):
    modname = f"plugin_recipes_{recipe.replace('-', '_')}"
    (tmp_path / f"{modname}.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("TRAINING_RECIPES_MODULES", f"{modname}")
    rc, events = run_task(tmp_path / "w", recipe=recipe, base_model="unused", images=str(images))
    assert rc == code
    assert (events[-1].get("kind") or events[-1]["event"]) == last
    if code == ExitCode.OK:
        assert (tmp_path / "w" / "output" / "weights.txt").read_text() == "a photo of sks dog"
        assert [e["step"] for e in events if e["event"] == "step"] == [1]


# ---------------------------------------------------------------- precision and memory policy (pure functions)
def test_precision_policy_distrusts_emulated_bf16(monkeypatch):
    # No GPU here: the capability query is replaced, as a T4 (7.5) and an A100/H100 (8.0/9.0) would answer it.
    from training import precision

    cuda = torch.device("cuda", 0)
    assert precision.resolve_mixed_precision("auto", torch.device("cpu")) == "no"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert precision.resolve_mixed_precision("auto", cuda) == "fp16"
    assert precision.resolve_mixed_precision("bf16", cuda) == "fp16"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert precision.resolve_mixed_precision("auto", cuda) == "bf16"
    assert precision.resolve_mixed_precision("fp16", cuda) == "fp16"


@pytest.mark.parametrize(
    ("what", "trainable", "unet", "latent", "samples", "budget", "gc", "adam8"),
    [
        ("SD1.5 LoRA on an H100", 0.8e6, 860e6, 64, 1, 80, False, False),
        ("SD1.5 LoRA+prior on a T4", 0.8e6, 860e6, 64, 2, 15, False, False),
        ("SD1.5 full on a T4", 860e6, 860e6, 64, 1, 15, True, True),
        ("SDXL LoRA 1024 on a T4", 2.5e6, 2567e6, 128, 1, 15, True, False),
    ],
)
def test_memory_plan_turns_on_savings_only_when_needed(what, trainable, unet, latent, samples, budget, gc, adam8):
    from training.precision import plan_memory

    frozen = unet + 123e6 + (817e6 if unet > 1e9 else 0) - (trainable if trainable > 1e8 else 0)
    plan = plan_memory(device=torch.device("cuda"), frozen_params=int(frozen), trainable_params=int(trainable),
                       unet_params=int(unet), latent_size=latent, samples_per_step=samples, weight_bytes=2,
                       gradient_checkpointing="auto", use_8bit_adam="auto", budget_gib=budget)  # fmt: skip
    assert (plan.gradient_checkpointing, plan.use_8bit_adam) == (gc, adam8), (what, plan)
    assert plan.estimate_gib < budget


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_the_next_run_resumes_from_it(tiny_sd, images, tmp_path):
    import signal
    import time

    fields = dict(base_model=str(tiny_sd), images=str(images), params={"steps": 2000, "checkpoint_every": 0})
    task = write_task(tmp_path / "t.json", **fields)
    events = tmp_path / "w" / "events.jsonl"
    cmd = [sys.executable, "-m", "training", "--task", str(task), "--workdir", str(tmp_path / "w"), "--progress", str(events)]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and '"event": "step"' not in (events.read_text() if events.exists() else ""):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == ExitCode.FAILURE, proc.stderr.read()[-2000:]
    last = json.loads(events.read_text().splitlines()[-1])
    assert last["event"] == "error" and "stopped by SIGTERM after step" in last["message"], last
    stopped_at = int(last["message"].split("after step ")[1].split(";")[0])
    assert 1 <= stopped_at < 2000
    assert (tmp_path / "w" / "checkpoints" / f"step-{stopped_at:08d}" / "trainable.safetensors").exists()
    fields["params"]["steps"] = stopped_at + 2
    rc, evs = run_task(tmp_path / "w", **fields)
    assert rc == 0 and [e["step"] for e in evs if e["event"] == "resumed"] == [stopped_at]
