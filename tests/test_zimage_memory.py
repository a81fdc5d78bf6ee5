"""Z-Image's full-size memory shape ("zimage"): the estimator's full-size modules, its committed rows in
``training/memory_table.json`` (``python -m tools.memory_estimate --add-missing``), and what reads them: the form's
fit check (``ui.fit_check``, through the trainer's quantization plan) and the trainer's memory plan.

The table is the committed one (its rows are re-estimated by the tool, not here); the modules are built on the meta
device (no weights, no memory).
"""

from __future__ import annotations

import functools

import pytest

from scheduler.memory_fit import GIB_PER_NOMINAL_GB, usable_gib
from scheduler.task import Task
from tests.staged_memory import check_staged_lora_rows, lora_row
from training import memory
from training.base_check import Probe
from training.families.zimage import ZImage
from ui.fit_check import check_fit

QWEN3_4B = 4_022_468_096  # Qwen3-4B's parameters (embeddings tied: no LM head of its own)
#: LoRA rank 16 on q/k/v/out (3840 -> 3840) of every attention: 30 layers, 2 noise and 2 context refiner layers
ZIMAGE_LORA = (30 + 2 + 2) * 4 * 16 * (3840 + 3840)
PROBE = Probe("Tongyi-MAI/Z-Image", local=False, files=["model_index.json"],
              index={"_class_name": "ZImagePipeline", "transformer": ["diffusers", "ZImageTransformer2DModel"]})  # fmt: skip


row = functools.partial(lora_row, "zimage")


def test_the_full_size_modules_are_z_images_real_configs():
    import torch

    from benchmarks.full_size_flux import flux_modules, model_index, param_count
    from training.families import family_for

    with torch.device("meta"):
        mods = flux_modules("zimage")
    transformer, text_encoder, vae = mods["transformer"], mods["text_encoder"], mods["vae"]
    assert param_count(transformer) == ZImage.denoiser_params == 6_154_908_736
    assert (transformer.config.dim, transformer.config.n_layers, transformer.config.n_refiner_layers) == (3840, 30, 2)
    assert type(text_encoder).__name__ == "Qwen3Model" and param_count(text_encoder) == QWEN3_4B
    assert text_encoder.config.hidden_size == transformer.config.cap_feat_dim == 2560
    assert text_encoder.config.num_hidden_layers == 36
    assert (vae.config.latent_channels, vae.config.scaling_factor, vae.config.shift_factor) == (16, 0.3611, 0.1159)
    assert family_for(model_index("zimage")) is ZImage
    assert set(mods) | {"tokenizer", "scheduler"} == set(ZImage.components)
    # the estimator recorded the same count, which the trainer's memory plan recognises the shape by
    assert memory.load_table()["unet_params"]["zimage"] == ZImage.denoiser_params
    assert memory.shape_for_unet_params(ZImage.denoiser_params) == "zimage"


def test_the_committed_rows_hold_the_transformer_the_text_encoder_and_the_lora_state():
    """LoRA in bf16 at rank 16 (the family's defaults), 512 and 1024 px, with and without gradient checkpointing,
    each also with an 8-bit and a 4-bit base. Staged like FLUX: the Qwen3 encoder caches without the transformer,
    the step holds the bf16 transformer and the adapters' fp32 weights, gradients and Adam moments."""
    check_staged_lora_rows("zimage", ZImage, lora_params=ZIMAGE_LORA, text_encoder_params=QWEN3_4B,
                           caching_margin_gib=3.0, quantized_saving_gib=4.0)  # fmt: skip


def zimage_task(hardware: str, **params) -> Task:
    return Task(instance_prompt="a photo of sks dog", submitted_by="alice", base_model="Tongyi-MAI/Z-Image",
                recipe="dreambooth-lora", hardware=hardware, params=params)  # fmt: skip


@pytest.mark.parametrize(
    ("flavor", "base", "kind"),
    [
        ("l40sx1", "its base in bf16", None),  # 48 GB: about 14.1 of 37.1 GiB
        ("l4x1", "its base in bf16", None),  # 24 GB: about 14.1 of 18.3 GiB
        ("a10g-large", "its base in bf16", None),
        ("t4-medium", "an 8-bit base (int8)", "int8"),  # 16 GB: bf16 needs 14.1 of 12.1 GiB; int8 about 10.2
    ],
)  # fmt: skip
def test_the_fit_check_answers_a_1024_px_lora_from_the_rows(flavor, base, kind):
    """The form's check of a Z-Image LoRA at its default 1024 px: the base the trainer's plan picks for the GPU
    (the lightest that fits, from the table's rows with gradient checkpointing, on by default) and its estimate."""
    from contract.flavors import FLAVORS

    if kind is not None:  # the unquantized base did not fit: that is why a quantized one is taken
        plain = memory.lookup("zimage", "dreambooth-lora", 1024, gradient_checkpointing=True, precision="bf16")
        assert plain > usable_gib(FLAVORS[flavor].gpu_memory_gib)

    result = check_fit(zimage_task(flavor), PROBE)
    gpu = FLAVORS[flavor].gpu_memory_gib
    tabled = memory.lookup("zimage", "dreambooth-lora", 1024, gradient_checkpointing=True, precision="bf16",
                           quantized_base=kind)  # fmt: skip
    assert result.problem is None, result.problem
    fits = f"fits {FLAVORS[flavor].label} with {base}: about {tabled:.1f} of the {usable_gib(gpu):.1f} GiB usable"
    assert fits in result.notes[0], result.notes[0]
    assert "(Z-Image LoRA at 1024 px)" in result.notes[0]
    # below the family's default GPU (an L40S) the family's hardware note follows
    assert (len(result.notes) == 2) == (gpu < 48)


def test_without_checkpointing_1024_px_fits_no_48_gb_gpu_even_in_nf4():
    """Asked without gradient checkpointing, the step keeps every block's activations (about 36 GiB at 1024 px):
    refused on an L40S with the reason; 512 px fits it unquantized."""
    refused = check_fit(zimage_task("l40sx1", gradient_checkpointing=False), PROBE)
    nf4 = row(1024, False, "nf4")["estimated_peak_gib"]
    assert refused.problem and "would not fit Nvidia 1xL40S" in refused.problem
    assert "4-bit base (NF4)" in refused.problem
    assert f"needs about {nf4:.1f} GiB, more than the {usable_gib(48):.1f} GiB usable" in refused.problem
    at512 = check_fit(zimage_task("l40sx1", gradient_checkpointing=False, resolution=512), PROBE)
    assert at512.problem is None and "its base in bf16" in at512.notes[0] and "at 512 px" in at512.notes[0]


def test_the_trainers_memory_plan_reads_the_rows():
    """``training.precision.plan_memory`` finds the shape by the transformer's size and takes the table's figure."""
    import torch

    from training.precision import plan_memory

    budget = 48 * GIB_PER_NOMINAL_GB  # an L40S, the family's default GPU
    plan = plan_memory(device=torch.device("cuda"), frozen_params=ZImage.denoiser_params, trainable_params=ZIMAGE_LORA,
                       unet_params=ZImage.denoiser_params, latent_size=128, samples_per_step=1, weight_bytes=2,
                       gradient_checkpointing="auto", use_8bit_adam="auto", budget_gib=budget)  # fmt: skip
    assert plan.source == "table"
    want = memory.lookup("zimage", "dreambooth-lora", 1024, gradient_checkpointing=plan.gradient_checkpointing,
                         precision="bf16")  # fmt: skip
    assert plan.estimate_gib == pytest.approx(want) and want <= memory.usable_allocated_gib(budget)
