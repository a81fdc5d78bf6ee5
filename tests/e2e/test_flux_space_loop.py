"""The self-upgrading Space loop with the transformer families' base models, on the emulator, driven by a real browser.

The tiny random FLUX.1 [dev]-shaped and FLUX.2 [klein]-shaped pipelines (``tests/tiny_flux.py``), Z-Image-shaped
(``tests/tiny_zimage.py``) and Qwen-Image-shaped (``tests/tiny_qwen_image.py``) ones are committed to the emulator
as alice's model repos, so they reach the Space the way a user's base model does: a Hub repo id that the form checks
(``model_index.json``, safetensors) and the worker downloads. The app runs as alice's Space on cpu-basic; the owner
signs in and submits a FLUX.1 task and a FLUX.2 [klein] task on the Flux families' default flavor (``l4x1``), then a
Z-Image and a Qwen-Image task on the same flavor at 256 px (their own default is an L40S: the form warns, and the
fit check picks the base the trainer's plan takes on an L4: bf16 for Z-Image, 4-bit for Qwen-Image). The Space
moves there once (CUDA is absent, ALLOW_CPU_TRAINING=1 lets the tiny models train on the CPU, unquantized: bitsandbytes
quantizes on a GPU only), trains all four in one paid period, uploads each LoRA (diffusers file and ComfyUI copy) with
a card carrying the family's licence and ``base_model``, marks them DONE and goes back to cpu-basic. The uploaded
LoRAs, and the Z-Image / Qwen-Image / klein ComfyUI copies, load with the families' own diffusers pipelines onto the
tiny models with nothing missing and nothing unexpected.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest
from huggingface_hub import HfApi, ModelCard, hf_hub_download

from contract.settings import load_settings
from scheduler.queue import make_queue
from scheduler.task import TaskStatus
from tests.conftest import ALICE_TOKEN
from tests.e2e.harness import (
    browser,
    create_app_space,
    fill_form,
    free_port,
    open_page,
    shot,
    sign_in_owner,
    upload_photos,
    wait_for,
    wait_http,
)
from tests.e2e.test_results_view import wait_for_images
from tests.e2e.test_space_loop import hardware_sequence, open_served_by, space_log_tail
from tests.test_pairs import pair_upload
from tests.tiny_flux import build_tiny_flux1, build_tiny_flux2_klein
from tests.tiny_models import make_images
from tests.tiny_qwen_image import build_tiny_qwen_image, build_tiny_qwen_image_edit
from tests.tiny_zimage import build_tiny_zimage
from training.families.flux import COMFY_NAME, WEIGHTS_NAME

pytestmark = [pytest.mark.slow, pytest.mark.browser]

SWITCH_DELAY_S = 4.0
#: the switch to the GPU is held this long at most while the four tasks are submitted in the cpu-basic container
#: (a real build takes minutes): the form's answers then all come from that container, whatever the machine's load
HOLD_SWITCH_S = 600.0
FLAVOR, FLAVOR_LABEL = "l4x1", "Nvidia 1xL4"
#: the Z-Image and Qwen-Image families' own default GPU, named by the form's warning on the L4
THEIR_DEFAULT_LABEL = "Nvidia 1xL40S"


def commit_model_folder(hub, repo_id: str, folder: Path) -> None:
    """Put a saved diffusers pipeline folder on the emulator as ``repo_id`` (alice's, public)."""
    files = {p.relative_to(folder).as_posix(): p for p in folder.rglob("*") if p.is_file()}
    hub.commit_files(repo_id, files, author="alice", summary="tiny random pipeline")


def lora_keys_after_loading(pipe, folder: Path, weight_name: str, adapter: str) -> tuple[set[str], set[str]]:
    """(the file's keys, the LoRA keys peft holds on the transformer after ``load_lora_weights``, prefixed with
    ``transformer.``): equal sets mean nothing was missing and nothing unexpected."""
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file

    saved = set(load_file(str(folder / weight_name)))
    pipe.load_lora_weights(str(folder), weight_name=weight_name, adapter_name=adapter)
    loaded = get_peft_model_state_dict(pipe.transformer, adapter_name=adapter)
    return saved, {f"transformer.{k}" for k in loaded}


def test_space_trains_flux_zimage_and_qwen_image_tasks_in_one_gpu_period_and_goes_back(hub, tmp_path):
    from playwright.sync_api import expect

    tiny_flux1 = build_tiny_flux1(tmp_path / "tiny-flux1")
    tiny_flux2_klein = build_tiny_flux2_klein(tmp_path / "tiny-flux2-klein")
    tiny_zimage = build_tiny_zimage(tmp_path / "tiny-zimage")
    tiny_qwen_image = build_tiny_qwen_image(tmp_path / "tiny-qwen-image")
    tiny_edit = build_tiny_qwen_image_edit(tmp_path / "tiny-qwen-image-edit")

    suffix = uuid.uuid4().hex[:6]
    flux_repo, klein_repo = f"alice/tiny-flux1-{suffix}", f"alice/tiny-flux2-klein-{suffix}"
    zimage_repo, qwen_repo = f"alice/tiny-zimage-{suffix}", f"alice/tiny-qwen-image-{suffix}"
    edit_repo = f"alice/tiny-qwen-image-edit-{suffix}"
    for model_repo, folder in ((flux_repo, tiny_flux1), (klein_repo, tiny_flux2_klein), (zimage_repo, tiny_zimage),
                               (qwen_repo, tiny_qwen_image), (edit_repo, tiny_edit)):  # fmt: skip
        commit_model_folder(hub, model_repo, folder)

    repo = f"alice/flux-trainer-{suffix}"
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    cwd = tmp_path / "space"
    cwd.mkdir()
    create_app_space(
        hub, repo, cwd, port, switch_delay_s=SWITCH_DELAY_S,
        variables={"ALLOW_CPU_TRAINING": "1", "BASE_MODELS": f"{flux_repo},{klein_repo},{zimage_repo},{qwen_repo},{edit_repo}",
                   "POLL_INTERVAL_S": "1", "LEASE_S": "120"},
        env={"OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    images = make_images(tmp_path / "photos", 3, size=128)
    (tmp_path / "pairs").mkdir()
    pairs = pair_upload(tmp_path / "pairs", n_pairs=2, held_out=1)  # with their instructions (.txt)
    try:
        hub.wait_for_stage(repo, "RUNNING", timeout_s=60)
        wait_http(url, 90)
        with browser() as b:
            page = open_page(b, url)
            sign_in_owner(page)
            hub.set_switch_delay(repo, HOLD_SWITCH_S)

            # FLUX.1 [dev]: the first offered base model, on the family's default flavor.
            fill_form(page, images, "a photo of sks dog", steps=3)
            expect(page.get_by_label("Base model")).to_have_value(flux_repo)
            choose_flavor(page)
            page.get_by_role("button", name="Train").click()
            message = page.locator("#submit-message")
            expect(message).to_have_text(re.compile(rf"Task \w+ queued with 3 photos\. The Space is moving to "
                                                    rf"{FLAVOR_LABEL}"), timeout=30_000)  # fmt: skip
            first_message = message.inner_text()
            # Queued on the family's default flavor (an L4) with the trainer's plan for it: an 8-bit base from the
            # memory table's FLUX.1 rows, and no T4 warning.
            assert "FLUX.1" in first_message and "8-bit base (int8)" in first_message, first_message
            assert "NF4" not in first_message, first_message

            # FLUX.2 [klein]: the second offered base model, in the same GPU period.
            expect(page.get_by_text("Drop File Here", exact=False).first).to_be_visible(timeout=20_000)
            upload_photos(page, images)
            page.get_by_label("Base model").click()
            page.get_by_role("option", name=klein_repo).click()
            page.get_by_label("Instance prompt").fill("a photo of zwx cat")
            page.get_by_label("Instance prompt").blur()
            set_steps_once_settled(page, 3)
            choose_flavor(page)
            expect(page.get_by_label("Output model repo")).to_have_value("alice/dreambooth-zwx-cat")
            page.get_by_role("button", name="Train").click()
            expect(message).not_to_have_text(first_message, timeout=20_000)
            expect(message).to_have_text(re.compile(r"Task \w+ queued with 3 photos"), timeout=20_000)

            # Z-Image and Qwen-Image on the same L4, at 256 px (the form warns: their default is an L40S): the fit
            # check's plan for an L4 is bf16 for Z-Image's 6B transformer and a 4-bit base for Qwen-Image's 20B one.
            for model_repo, prompt, output_repo, family, plan in (
                (zimage_repo, "a photo of qzx toy", "alice/dreambooth-qzx-toy", "Z-Image", "its base in bf16"),
                (qwen_repo, "a photo of vbn mug", "alice/dreambooth-vbn-mug", "Qwen-Image", "a 4-bit base (NF4)"),
            ):
                submit_another(page, images, model_repo, prompt, output_repo)
                expect(message).to_contain_text(f"({family} LoRA at 256 px)", timeout=30_000)
                expect(message).not_to_contain_text("processing")
                text = message.inner_text()
                assert re.search(r"Task \w+ queued with 3 photos", text), text
                assert f"with {plan}" in text and f"Its default GPU is {THEIR_DEFAULT_LABEL}" in text, text

            # Qwen-Image-Edit on before/after pairs (two pairs and a held-out source, each with its instruction):
            # the upload box asks for pairs once the model is picked.
            expect(page.get_by_text("Drop File Here", exact=False).first).to_be_visible(timeout=20_000)
            page.get_by_label("Base model").click()
            page.get_by_role("option", name=edit_repo).click()
            expect(page.locator("#photos")).to_contain_text("Before/after pairs", timeout=30_000)
            page.locator("input[type=file]").first.set_input_files(pairs)
            expect(page.locator("#photo-preview img")).to_have_count(5, timeout=30_000)
            page.get_by_label("Instance prompt").fill("invert the colors")
            page.get_by_label("Instance prompt").blur()
            set_steps_once_settled(page, 3)
            page.get_by_label("Resolution (px)").click()
            page.get_by_role("option", name="256", exact=True).click()
            choose_flavor(page)
            page.get_by_role("button", name="Train").click()
            expect(message).to_contain_text("(Qwen-Image-Edit LoRA at 256 px)", timeout=30_000)
            assert re.search(r"Task \w+ queued with 2 before/after pairs and 1 held-out source\.",
                             message.inner_text()), message.inner_text()  # fmt: skip
            shot(page, "families-space-edit-pairs-queued")
            assert hub.space_runtime(repo)["hardware"] == {"current": "cpu-basic", "requested": FLAVOR}
            hub.set_switch_delay(repo, SWITCH_DELAY_S)  # the build ends now + SWITCH_DELAY_S

            wait_for(lambda: hub.space_runtime(repo)["hardware"]["current"] == FLAVOR, 60, f"the switch to {FLAVOR}")
            open_served_by(page, url, FLAVOR_LABEL, 120)
            page.get_by_role("tab", name="Run").click()
            expect(page.get_by_text(re.compile(r"[1-3] / 3 steps"))).to_be_visible(timeout=120_000)
            page.close(run_before_unload=False)

            wait_for(lambda: hardware_sequence(hub.ledger(repo))[-1:] == ["cpu-basic"]
                     and hub.space_runtime(repo)["stage"] == "RUNNING", 420, "the release to cpu-basic")  # fmt: skip
            wait_http(url, 90)
            page = open_page(b, url)
            page.get_by_role("button", name=re.compile("Sign in with Hugging Face")).click()
            expect(page.get_by_role("button", name=re.compile(r"Logout \(alice\)"))).to_be_visible(timeout=30_000)
            page.get_by_role("tab", name="Queue").click()
            expect(page.get_by_role("cell", name="DONE", exact=True)).to_have_count(5, timeout=30_000)
            page.get_by_role("tab", name="Run").click()
            expect(page.get_by_text(re.compile(r"Last finished: task \w+ \(DONE, invert the colors"))).to_be_visible(
                timeout=30_000)  # fmt: skip
            page.get_by_role("button", name="See the last finished task's results").click()
            expect(page.locator("#results-summary").get_by_text(re.compile(r"Task \w+: DONE"))).to_be_visible(
                timeout=30_000)  # fmt: skip
            wait_for_images(page, "#results-samples")  # the edit's sample (source | result), before the shot
            shot(page, "families-space-done")
    except Exception:
        print(space_log_tail(hub, repo))
        raise
    finally:
        hub.stop_space(repo)

    settings = load_settings({"SPACE_ID": repo, "HF_TOKEN": ALICE_TOKEN, "HF_ENDPOINT": hub.url})
    tasks = sorted(make_queue(settings).list(), key=lambda t: t.started_at or 0)
    assert [(t.base_model, t.hardware, t.status) for t in tasks] == [
        (flux_repo, FLAVOR, TaskStatus.DONE), (klein_repo, FLAVOR, TaskStatus.DONE),
        (zimage_repo, FLAVOR, TaskStatus.DONE), (qwen_repo, FLAVOR, TaskStatus.DONE),
        (edit_repo, FLAVOR, TaskStatus.DONE)]  # fmt: skip
    assert [t.params.get("resolution") for t in tasks[2:]] == [256] * 3  # not their family's 1024 px default

    # The model repos: the diffusers LoRA, the ComfyUI copy, samples and a card with the family's licence.
    api = HfApi(endpoint=hub.url, token=ALICE_TOKEN)
    licences = {
        flux_repo: {"license": "other", "license_name": "flux-1-dev-non-commercial-license"},
        klein_repo: {"license": "apache-2.0"},
        zimage_repo: {"license": "apache-2.0"},
        qwen_repo: {"license": "apache-2.0"},
        edit_repo: {"license": "apache-2.0"},
    }
    downloaded: dict[str, Path] = {}
    for task in tasks:
        files = api.list_repo_files(task.output_repo)
        assert {WEIGHTS_NAME, COMFY_NAME, "README.md"} <= set(files), files
        assert any(f.startswith("samples/") and f.endswith(".png") for f in files), files
        card = ModelCard.load(task.output_repo, token=ALICE_TOKEN).data.to_dict()
        assert card["base_model"] == task.base_model
        for key, value in licences[task.base_model].items():
            assert card.get(key) == value, (key, card)
        folder = tmp_path / "loras" / task.id
        for name in (WEIGHTS_NAME, COMFY_NAME):
            hf_hub_download(task.output_repo, name, local_dir=folder, token=ALICE_TOKEN)
        downloaded[task.base_model] = folder

    # Each LoRA loads with its family's pipeline onto the tiny base: nothing missing, nothing unexpected.
    import torch
    from diffusers import Flux2KleinPipeline, FluxPipeline, QwenImageEditPlusPipeline, QwenImagePipeline, ZImagePipeline
    from PIL import Image
    from safetensors.torch import load_file

    for pipeline_cls, base, model_dir in ((FluxPipeline, flux_repo, tiny_flux1),
                                          (Flux2KleinPipeline, klein_repo, tiny_flux2_klein),
                                          (ZImagePipeline, zimage_repo, tiny_zimage),
                                          (QwenImagePipeline, qwen_repo, tiny_qwen_image),
                                          (QwenImageEditPlusPipeline, edit_repo, tiny_edit)):  # fmt: skip
        # (the edit pipeline's processor needs torchvision, absent here and not needed to load a LoRA)
        extra = {"processor": None} if base == edit_repo else {}
        pipe = pipeline_cls.from_pretrained(str(model_dir), torch_dtype=torch.float32, **extra)
        saved, loaded = lora_keys_after_loading(pipe, downloaded[base], WEIGHTS_NAME, "trained")
        assert saved and saved == loaded, (base, sorted(saved ^ loaded)[:6])
        # The ComfyUI copies: kohya names over BFL modules for FLUX.1 (diffusers' kohya converter hard-codes
        # FLUX.1's full widths for the single blocks, so the tiny one is not read back here;
        # tests/test_flux_families.py checks its shapes); ``diffusion_model.`` names for the others, which their
        # diffusers loaders read back onto the same modules.
        comfy_keys = load_file(str(downloaded[base] / COMFY_NAME))
        if base == flux_repo:
            assert all(k.startswith("lora_unet_") for k in comfy_keys)
            continue
        assert all(k.startswith("diffusion_model.") for k in comfy_keys), base
        _, comfy = lora_keys_after_loading(pipe, downloaded[base], COMFY_NAME, "comfy")
        assert comfy == loaded and len(pipe.get_list_adapters()["transformer"]) == 2, base

    # The edit's sample is the held-out source (left) beside its edit (right); its card is an image-to-image one.
    edit_task = tasks[-1]
    [sample] = [f for f in api.list_repo_files(edit_task.output_repo) if f.startswith("samples/")]
    with Image.open(hf_hub_download(edit_task.output_repo, sample, token=ALICE_TOKEN)) as im:
        assert im.size == (512, 256)
    card = ModelCard.load(edit_task.output_repo, token=ALICE_TOKEN)
    assert "image-to-image" in card.data.tags and "| pair instructions | yes (2 of 2 images) |" in card.text
    assert [w["text"] for w in card.data.widget] == ["002_before.png: invert the colors"]

    # One paid period on the flavor, every task inside it, then back on cpu-basic.
    ledger = hub.ledger(repo)
    assert hardware_sequence(ledger) == ["cpu-basic", FLAVOR, "cpu-basic"]
    gpu_periods = [p for p in ledger if p["hardware"] == FLAVOR]
    assert len({p["container"] for p in gpu_periods}) == 1
    for task in tasks:
        assert gpu_periods[0]["started_at"] <= task.started_at and task.finished_at <= gpu_periods[-1]["ended_at"]
        assert task.run is not None and task.run.flavor == FLAVOR and task.run.steps == 3
    _, periods = make_queue(settings).list_with_billing()
    [period] = periods
    assert (period.hardware, period.closed_by) == (FLAVOR, "release")


def submit_another(page, images: list, model_repo: str, prompt: str, output_repo: str) -> None:
    """After a submission: upload ``images`` again, pick ``model_repo``, type ``prompt``, 3 steps at 256 px on the
    L4, check the proposed output repo and press Train."""
    from playwright.sync_api import expect

    expect(page.get_by_text("Drop File Here", exact=False).first).to_be_visible(timeout=20_000)
    upload_photos(page, images)
    page.get_by_label("Base model").click()
    page.get_by_role("option", name=model_repo).click()
    page.get_by_label("Instance prompt").fill(prompt)
    page.get_by_label("Instance prompt").blur()
    set_steps_once_settled(page, 3)
    page.get_by_label("Resolution (px)").click()
    page.get_by_role("option", name="256", exact=True).click()
    choose_flavor(page)
    expect(page.get_by_label("Output model repo")).to_have_value(output_repo)
    page.get_by_role("button", name="Train").click()


def choose_flavor(page) -> None:
    """Pick the Flux families' default flavor in the GPU dropdown."""
    page.locator("#hardware-choice input").click()
    page.get_by_role("option", name=re.compile(re.escape(FLAVOR_LABEL) + r" \(")).click()


def set_steps_once_settled(page, steps: int, tries: int = 10) -> None:
    """Type ``steps`` into the steps box until it stays there: the base-model change and the upload each answer
    with the auto steps, and an answer arriving after the typing would overwrite it."""
    box = page.get_by_label("Steps (auto from the photo count; editable)")
    for _ in range(tries):
        box.fill(str(steps))
        box.blur()
        page.wait_for_timeout(1_500)
        if box.input_value() == str(steps):
            return
    raise AssertionError(f"the steps box does not keep {steps}: {box.input_value()}")
