"""The form refuses a task that cannot fit its GPU flavor (GPU memory, host RAM) before anything is enqueued.

The figures are the committed ones: ``training/memory_table.json`` (the fake-CUDA estimator) and the full-size
``host_ram`` benchmark records. The submit test uses the real queue on the emulator and the real base-model check
(its file list decides which loading path, fp16 variant or fp32 files, the host-RAM check looks at).
"""

from __future__ import annotations

import shutil
import uuid

from huggingface_hub import HfApi

from contract.flavors import FLAVORS
from scheduler.host_ram import MARGIN, host_ram_gib
from scheduler.memory_fit import usable_gib
from scheduler.task import Task
from tests.conftest import ALICE_TOKEN
from tests.test_form import photos, space_ctx, values
from tests.tiny_models import add_hub_layout
from training.base_check import Probe
from ui.fit_check import FP16_WEIGHTS, FP32_WEIGHTS, check_fit, model_shape
from ui.submission import submit_task

SDXL_INDEX = {"_class_name": "StableDiffusionXLPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
              "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"]}  # fmt: skip


def task(base_model: str, recipe: str = "dreambooth-lora", hardware: str = "t4-small", **params) -> Task:
    return Task(instance_prompt="a photo of sks dog", submitted_by="alice", base_model=base_model, recipe=recipe,
                hardware=hardware, params=params)  # fmt: skip


def sdxl_probe(fp16: bool) -> Probe:
    files = ["model_index.json", "unet/diffusion_pytorch_model.safetensors"]
    if fp16:
        files.append("unet/diffusion_pytorch_model.fp16.safetensors")
    return Probe("alice/my-xl-finetune", local=False, index=SDXL_INDEX, files=files)


def test_the_committed_figures_say_what_the_checks_below_rely_on():
    # If a re-measurement moves these, the expectations of this file must be revisited (they are data, not code).
    usable_ram = MARGIN * FLAVORS["t4-small"].ram_gib
    assert host_ram_gib("sdxl", weights=FP32_WEIGHTS) > usable_ram  # fp32 files: too much for 15 GB
    assert host_ram_gib("sdxl", weights=FP16_WEIGHTS) < usable_ram
    assert host_ram_gib("sd15", weights=FP32_WEIGHTS) < usable_ram


def test_a_configuration_that_cannot_fit_the_gpu_is_refused_with_the_reason():
    refused = check_fit(task("stabilityai/stable-diffusion-xl-base-1.0", resolution=1024, prior_preservation=True))
    assert refused.problem and "Nvidia T4 small" in refused.problem and "GiB" in refused.problem
    assert "even with gradient checkpointing" in refused.problem and "a GPU with more memory" in refused.problem
    # the same task on an 80 GB GPU is fine
    assert check_fit(task("stabilityai/stable-diffusion-xl-base-1.0", hardware="a100-large", resolution=1024,
                          prior_preservation=True)).problem is None  # fmt: skip


def test_a_configuration_that_fits_only_with_memory_savings_is_queued_with_a_note():
    result = check_fit(task("stable-diffusion-v1-5/stable-diffusion-v1-5", recipe="dreambooth-full", resolution=512))
    assert result.problem is None
    assert result.notes and "8-bit Adam" in result.notes[0] and "turns that on by itself" in result.notes[0]
    plain = check_fit(task("stable-diffusion-v1-5/stable-diffusion-v1-5", resolution=512))
    assert plain.problem is None and plain.notes == []  # a LoRA at 512 px fits a T4 as it is


def test_host_ram_decides_by_the_files_the_trainer_will_read():
    # SDXL LoRA at 1024 px fits a T4's GPU memory (with the trainer's own checkpointing); the host RAM decides.
    without_fp16 = check_fit(task("alice/my-xl-finetune", resolution=1024), sdxl_probe(fp16=False))
    assert without_fp16.problem and "host RAM" in without_fp16.problem and "15 GB" in without_fp16.problem
    assert "Nvidia T4 medium" in without_fp16.problem  # the first GPU flavor with enough RAM
    assert check_fit(task("alice/my-xl-finetune", resolution=1024), sdxl_probe(fp16=True)).problem is None
    assert check_fit(task("alice/my-xl-finetune", hardware="t4-medium", resolution=1024),
                     sdxl_probe(fp16=False)).problem is None  # fmt: skip


def test_models_the_tables_do_not_know_and_cpu_flavors_are_not_checked(tiny_sd):
    assert model_shape(str(tiny_sd), None) is None
    assert check_fit(task(str(tiny_sd), recipe="dreambooth-full", resolution=4096)) == check_fit(task(str(tiny_sd)))
    assert check_fit(task(str(tiny_sd), recipe="dreambooth-full", resolution=4096)).problem is None
    big = task(
        "stabilityai/stable-diffusion-xl-base-1.0", hardware="cpu-upgrade", resolution=1024, prior_preservation=True
    )
    assert check_fit(big).problem is None
    # an SDXL pipeline with a name that says nothing is recognised by its model_index.json
    assert model_shape("alice/my-xl-finetune", sdxl_probe(fp16=False)) == "sdxl"


def flux_probe(pipeline: str = "FluxPipeline") -> Probe:
    index = {"_class_name": pipeline, "transformer": ["diffusers", "FluxTransformer2DModel"]}
    return Probe("alice/my-flux", local=False, index=index, files=["model_index.json"])


def test_a_flux_task_gets_the_quantized_base_its_trainer_will_pick_and_the_figures_behind_it():
    """FLUX.1 LoRA at 512 px, as the trainer's own plan decides it from the memory table: 8-bit on an L4, bf16 on
    an A100; on a T4 medium NF4 with the family's speed warning; on a T4 small the host RAM of loading it refuses it."""
    from training.families.flux import Flux1
    from training.memory import lookup

    def tabled(kind):
        return lookup("flux1", "dreambooth-lora", 512, gradient_checkpointing=True, precision="bf16",
                      quantized_base=kind)  # fmt: skip

    on_l4 = check_fit(task("alice/my-flux", hardware="l4x1", resolution=512), flux_probe())
    assert on_l4.problem is None and len(on_l4.notes) == 1
    # for a person: "fits Nvidia 1xL4 with an 8-bit base (int8): about 11.9 of the 18.3 GiB usable for training"
    assert "FLUX.1" in on_l4.notes[0] and "fits Nvidia 1xL4 with an 8-bit base (int8)" in on_l4.notes[0]
    assert f"about {tabled('int8'):.1f} of the 18.3 GiB usable" in on_l4.notes[0]
    assert tabled(None) > 18.3 > tabled("int8")
    on_a100 = check_fit(task("alice/my-flux", hardware="a100-large", resolution=512), flux_probe())
    assert on_a100.problem is None and "with its base in bf16" in on_a100.notes[0] and len(on_a100.notes) == 1
    assert f"about {tabled(None):.1f} of the {usable_gib(80):.1f} GiB usable" in on_a100.notes[0]
    on_t4 = check_fit(task("alice/my-flux", hardware="t4-medium", resolution=512), flux_probe())
    assert on_t4.problem is None and "with a 4-bit base (NF4)" in on_t4.notes[0]
    assert f"about {tabled('nf4'):.1f} of the 12.1 GiB usable" in on_t4.notes[0]
    assert Flux1.defaults.hardware_note.rstrip(".") in on_t4.notes[1] and "Nvidia 1xL4" in on_t4.notes[1]
    small = check_fit(task("alice/my-flux", hardware="t4-small", resolution=512), flux_probe())
    assert small.problem and "host RAM" in small.problem and "Nvidia T4 medium" in small.problem
    assert host_ram_gib("flux1") > MARGIN * FLAVORS["t4-small"].ram_gib  # the measured figure behind it
    assert check_fit(task("alice/my-flux", hardware="cpu-upgrade"), flux_probe()).notes == []
    # a Flux repo whose name reads like SDXL is estimated as FLUX.1, never with SDXL's figures
    assert model_shape("alice/sdxl-look-flux", flux_probe()) is None
    assert model_shape("alice/sdxl-look-flux", None) == "sdxl"
    assert "FLUX.1" in check_fit(task("alice/sdxl-look-flux", hardware="l4x1"), flux_probe()).notes[0]


def test_the_family_decides_the_check_and_a_variant_of_sd_is_not_checked_with_sds_figures(monkeypatch):
    """The SD family is checked with the memory table's ladder; a variant of it registered under its own name (other
    LoRA targets...) is a family the tables did not measure: noted, not estimated, whatever its name reads like."""
    from training import families
    from training.families.sd import StableDiffusion

    families.registered_families()
    monkeypatch.setattr(families, "_REGISTRY", dict(families._REGISTRY))  # this test's registration ends with it

    @families.register_family("toy-sd-fit")
    class ToySD(StableDiffusion):
        label = "Toy SD"
        pipelines = frozenset({"ToyDiffusionPipeline"})

    sd15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    sd_index = {**SDXL_INDEX, "_class_name": "StableDiffusionPipeline"}
    sd_index.pop("text_encoder_2")
    toy = Probe(sd15, local=False, index={**sd_index, "_class_name": "ToyDiffusionPipeline"}, files=[])
    assert model_shape(sd15, Probe(sd15, local=False, index=sd_index, files=[])) == "sd15"
    assert model_shape(sd15, toy) is None and ToySD.memory_shape(sd15) is None
    full = task(sd15, recipe="dreambooth-full", resolution=512)
    assert check_fit(full).notes and "8-bit Adam" in check_fit(full).notes[0]  # SD's ladder
    assert check_fit(full, toy).notes == ["**Memory:** no estimate for the Toy SD family yet: not checked."]


def test_a_flux_task_that_cannot_fit_even_quantized_is_refused_and_an_explicit_choice_is_checked():
    klein9b_1024 = task("alice/klein-9b", hardware="t4-medium", resolution=1024, gradient_checkpointing=False)
    refused = check_fit(klein9b_1024, flux_probe("Flux2KleinPipeline"))
    assert refused.problem and "would not fit Nvidia T4 medium" in refused.problem and "NF4" in refused.problem
    # the task asks for bf16 (no quantization) on an L4: its estimate is too big for 24 GB
    plain = check_fit(task("alice/my-flux", hardware="l4x1", quantize_base="none"), flux_probe())
    assert plain.problem and "with its base in bf16" in plain.problem and "on its 24 GB GPU" in plain.problem
    assert "more than the 18.3 GiB usable for training" in plain.problem, plain.problem
    # fp8 needs compute capability 8.9: refused on a T4 with the trainer's own reason
    fp8 = check_fit(task("alice/my-flux", hardware="t4-medium", quantize_base="fp8"), flux_probe())
    assert fp8.problem and "compute capability" in fp8.problem and "7.5" in fp8.problem
    klein4b = check_fit(task("alice/my-klein", hardware="l4x1"), flux_probe("Flux2KleinPipeline"))
    assert klein4b.problem is None and "its base in bf16" in klein4b.notes[0] and "FLUX.2 [klein]" in klein4b.notes[0]
    full = check_fit(task("alice/my-flux", recipe="dreambooth-full", hardware="l4x1"), flux_probe())
    assert full.problem is None and "no estimate for a FLUX.1" in full.notes[0]


def test_submit_refuses_a_model_whose_weights_would_not_fit_the_flavors_ram(hub, tmp_path, tiny_sdxl, monkeypatch):
    import ui.submission

    monkeypatch.setattr(ui.submission, "WORKER_REPLY_S", 0.1)
    ctx = space_ctx(hub, tmp_path)
    api = HfApi(endpoint=hub.url, token=ALICE_TOKEN)
    plain = f"alice/xl-{uuid.uuid4().hex[:6]}"  # an SDXL pipeline with fp32 files only
    api.create_repo(plain)
    api.upload_folder(repo_id=plain, folder_path=str(tiny_sdxl))
    answer = submit_task(
        ctx, "alice", photos(tmp_path), values(base_model=plain, resolution=1024, output_repo="alice/o1")
    )
    assert answer.startswith("**Nothing was queued.") and "host RAM" in answer and "Nvidia T4 medium" in answer
    assert ctx.queue.list() == []

    with_fp16 = f"alice/xl-{uuid.uuid4().hex[:6]}"  # the same with fp16 variant files, as the real SDXL repo has
    folder = shutil.copytree(tiny_sdxl, tmp_path / "xl-fp16")
    add_hub_layout(folder, decoys=False)
    api.create_repo(with_fp16)
    api.upload_folder(repo_id=with_fp16, folder_path=str(folder))
    answer = submit_task(
        ctx, "alice", photos(tmp_path), values(base_model=with_fp16, resolution=1024, output_repo="alice/o2")
    )
    assert "queued" in answer and "Nothing was queued" not in answer
    assert [t.base_model for t in ctx.queue.list()] == [with_fp16]


def test_submit_answers_a_flux_task_with_the_trainers_plan_and_refuses_a_t4_small_for_its_host_ram(
    hub, tmp_path, monkeypatch
):
    """A tiny FLUX.1 pipeline on the emulator (checked as the full-size FLUX.1 it is a family member of): on a T4
    small nothing is queued (loading FLUX.1 needs more host RAM than 15 GB); on a T4 medium it is queued with the
    NF4 base and the family's speed warning."""
    import ui.submission
    from tests.tiny_flux import build_tiny_flux1

    monkeypatch.setattr(ui.submission, "WORKER_REPLY_S", 0.1)
    ctx = space_ctx(hub, tmp_path)
    api = HfApi(endpoint=hub.url, token=ALICE_TOKEN)
    repo = f"alice/flux-{uuid.uuid4().hex[:6]}"
    api.create_repo(repo)
    api.upload_folder(repo_id=repo, folder_path=str(build_tiny_flux1(tmp_path / "flux")))
    answer = submit_task(
        ctx, "alice", photos(tmp_path), values(base_model=repo, resolution=512, output_repo="alice/f1")
    )
    assert answer.startswith("**Nothing was queued.") and "host RAM" in answer and "Nvidia T4 medium" in answer
    assert ctx.queue.list() == []
    answer = submit_task(ctx, "alice", photos(tmp_path),
                         values(base_model=repo, resolution=512, hardware="t4-medium", output_repo="alice/f2"))  # fmt: skip
    assert "queued" in answer and "Nothing was queued" not in answer, answer
    assert "4-bit base (NF4)" in answer and "Nvidia 1xL4" in answer
    assert [(t.base_model, t.hardware) for t in ctx.queue.list()] == [(repo, "t4-medium")]
