"""Qwen-Image's full-size memory shape ("qwen-image"): the estimator's full-size modules, its committed rows in
``training/memory_table.json`` (``python -m tools.memory_estimate --add-missing``), and what reads them: the form's
fit check (``ui.fit_check``, through the trainer's quantization plan) and the trainer's memory plan.

The table is the committed one; the modules are built on the meta device (no weights, no memory). One slow test
re-estimates the family's default row (1024 px, gradient checkpointing) on fake CUDA tensors in a child process.
"""

from __future__ import annotations

import functools

import pytest

from scheduler.memory_fit import GIB_PER_NOMINAL_GB, usable_gib
from scheduler.task import Task
from tests.staged_memory import check_staged_lora_rows, lora_row
from training import memory
from training.base_check import Probe
from training.families.qwen_image import QwenImage
from ui.fit_check import check_fit

#: Qwen2.5-VL-7B-Instruct as the repo ships it and the trainer loads it: language model, LM head, vision tower
QWEN25_VL_LM, QWEN25_VL_HEAD, QWEN25_VL_VISION = 7_070_619_136, 544_997_376, 676_550_144
QWEN25_VL = QWEN25_VL_LM + QWEN25_VL_HEAD + QWEN25_VL_VISION
#: LoRA rank 16 on to_q / to_k / to_v / to_out.0 (3072 -> 3072) of each of the 60 blocks' image-stream attention
QWEN_IMAGE_LORA = 60 * 4 * 16 * (3072 + 3072)
PROBE = Probe("Qwen/Qwen-Image", local=False, files=["model_index.json"],
              index={"_class_name": "QwenImagePipeline", "transformer": ["diffusers", "QwenImageTransformer2DModel"]})  # fmt: skip


row = functools.partial(lora_row, "qwen-image")


def test_the_full_size_modules_are_qwen_images_real_configs():
    import torch

    from benchmarks.full_size_flux import flux_modules, model_index, param_count
    from training.families import family_for

    with torch.device("meta"):
        mods = flux_modules("qwen-image")
    transformer, text_encoder, vae = mods["transformer"], mods["text_encoder"], mods["vae"]
    assert param_count(transformer) == QwenImage.denoiser_params == 20_430_401_088
    assert (transformer.config.num_layers, transformer.config.num_attention_heads) == (60, 24)
    # the whole Qwen2.5-VL: the trainer loads the class of model_index.json, vision tower and LM head included
    assert type(text_encoder).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert param_count(text_encoder) == QWEN25_VL == 8_292_166_656
    assert param_count(text_encoder.model.visual) == QWEN25_VL_VISION
    assert param_count(text_encoder.lm_head) == QWEN25_VL_HEAD  # not tied to the embeddings
    text = text_encoder.config.text_config
    assert text.hidden_size == transformer.config.joint_attention_dim == 3584 and text.num_hidden_layers == 28
    assert type(vae).__name__ == "AutoencoderKLQwenImage"
    assert (vae.config.z_dim, len(vae.config.latents_mean), len(vae.config.latents_std)) == (16, 16, 16)
    assert family_for(model_index("qwen-image")) is QwenImage
    assert set(mods) | {"tokenizer", "scheduler"} == set(QwenImage.components)
    # the family's scale factor, 2 per temporal-downsample flag: a 1024 px image is a 128 x 128 latent
    assert 2 ** len(vae.config.temperal_downsample) == 8
    # the estimator recorded the same count, which the trainer's memory plan recognises the shape by
    assert memory.load_table()["unet_params"]["qwen-image"] == QwenImage.denoiser_params
    assert memory.shape_for_unet_params(QwenImage.denoiser_params) == "qwen-image"


def test_the_committed_rows_hold_the_transformer_the_text_encoder_and_the_lora_state():
    """LoRA in bf16 at rank 16 (the family's defaults), 512 and 1024 px, with and without gradient checkpointing,
    each also with an 8-bit and a 4-bit base. Staged like FLUX: the Qwen2.5-VL encoder caches without the
    transformer, the step holds the bf16 transformer and the adapters' fp32 weights, gradients and Adam moments."""
    check_staged_lora_rows("qwen-image", QwenImage, lora_params=QWEN_IMAGE_LORA, text_encoder_params=QWEN25_VL,
                           caching_margin_gib=4.5, quantized_saving_gib=15.0)  # fmt: skip
    # with a 4-bit base and checkpointing the text encoder's caching is the peak: more than a T4 has at any size
    assert row(512, True, "nf4")["estimated_peak_gib"] == row(512)["phases_gib"]["caching"] > usable_gib(16)


def qwen_task(hardware: str, **params) -> Task:
    return Task(instance_prompt="a photo of sks dog", submitted_by="alice", base_model="Qwen/Qwen-Image",
                recipe="dreambooth-lora", hardware=hardware, params=params)  # fmt: skip


@pytest.mark.parametrize(
    ("flavor", "base", "kind"),
    [
        ("l40sx1", "an 8-bit base (int8)", "int8"),  # 48 GB: bf16 needs about 41.9 of 37.1 GiB; int8 about 23.2
        ("a100-large", "its base in bf16", None),  # 80 GB: about 41.9 of 62.1 GiB
    ],
)  # fmt: skip
def test_the_fit_check_answers_a_1024_px_lora_from_the_rows(flavor, base, kind):
    """The form's check of a Qwen-Image LoRA at its default 1024 px: the base the trainer's plan picks for the GPU
    (the lightest that fits, from the table's rows with gradient checkpointing, on by default) and its estimate."""
    from contract.flavors import FLAVORS

    gpu = FLAVORS[flavor].gpu_memory_gib
    if kind is not None:  # the unquantized base did not fit: that is why a quantized one is taken
        plain = memory.lookup("qwen-image", "dreambooth-lora", 1024, gradient_checkpointing=True, precision="bf16")
        assert plain > usable_gib(gpu)

    result = check_fit(qwen_task(flavor), PROBE)
    tabled = memory.lookup("qwen-image", "dreambooth-lora", 1024, gradient_checkpointing=True, precision="bf16",
                           quantized_base=kind)  # fmt: skip
    assert result.problem is None, result.problem
    fits = f"fits {FLAVORS[flavor].label} with {base}: about {tabled:.1f} of the {usable_gib(gpu):.1f} GiB usable"
    assert fits in result.notes[0], result.notes[0]
    assert "(Qwen-Image LoRA at 1024 px)" in result.notes[0] and len(result.notes) == 1


def test_the_familys_default_gpu_takes_the_8_bit_base_its_defaults_name():
    """The family's default flavor (an L40S) with the form's defaults: the fit check accepts it with an 8-bit base,
    as the family's hardware note says."""
    d = QwenImage.defaults
    result = check_fit(qwen_task(d.hardware, resolution=d.resolution), PROBE)
    assert result.problem is None and "with an 8-bit base (int8)" in result.notes[0]
    assert "8-bit base" in d.hardware_note


@pytest.mark.parametrize("flavor", ["l4x1", "a10g-large", "t4-medium"])
def test_below_48_gb_1024_px_is_refused_even_with_a_4_bit_base(flavor):
    """24 GB (L4, A10G) and 16 GB (T4) GPUs: at 1024 px even NF4 needs about 19.5 GiB, more than their 18.3 / 12.1
    GiB usable (the caching phase: the 15.4 GiB text encoder and the VAE encoding the image)."""
    from contract.flavors import FLAVORS

    nf4 = row(1024, True, "nf4")["estimated_peak_gib"]
    gpu = FLAVORS[flavor].gpu_memory_gib
    refused = check_fit(qwen_task(flavor), PROBE)
    assert refused.problem and f"would not fit {FLAVORS[flavor].label}" in refused.problem
    assert "with a 4-bit base (NF4)" in refused.problem
    assert f"needs about {nf4:.1f} GiB, more than the {usable_gib(gpu):.1f} GiB usable" in refused.problem


def test_a_24_gb_gpu_fits_512_px_with_a_4_bit_base_and_a_t4_fits_nothing():
    """At 512 px with NF4 the peak is the text encoder's caching, about 16.6 GiB: within an L4's 18.3 GiB, beyond a
    T4's 12.1 GiB (the family's hardware note follows below its default GPU)."""
    l4 = check_fit(qwen_task("l4x1", resolution=512), PROBE)
    nf4 = row(512, True, "nf4")["estimated_peak_gib"]
    assert l4.problem is None and f"with a 4-bit base (NF4): about {nf4:.1f} of the 18.3 GiB" in l4.notes[0]
    assert len(l4.notes) == 2 and QwenImage.defaults.hardware_note.rstrip(".") in l4.notes[1]
    t4 = check_fit(qwen_task("t4-medium", resolution=512), PROBE)
    assert t4.problem and f"needs about {nf4:.1f} GiB, more than the 12.1 GiB usable" in t4.problem


def test_the_trainers_memory_plan_reads_the_rows():
    """``training.precision.plan_memory`` finds the shape by the transformer's size and takes the table's figure:
    unquantized on an A100, and with the 8-bit base the quantization plan picks on an L40S."""
    import torch

    from training.precision import plan_memory

    common = dict(device=torch.device("cuda"), frozen_params=QwenImage.denoiser_params,
                  trainable_params=QWEN_IMAGE_LORA, unet_params=QwenImage.denoiser_params, latent_size=128,
                  samples_per_step=1, weight_bytes=2, gradient_checkpointing="auto", use_8bit_adam="auto")  # fmt: skip
    for gb, kind in ((80, None), (48, "int8")):
        budget = gb * GIB_PER_NOMINAL_GB
        plan = plan_memory(**common, budget_gib=budget, quantized_base=kind or "none")
        assert plan.source == "table" and plan.gradient_checkpointing
        want = memory.lookup("qwen-image", "dreambooth-lora", 1024, gradient_checkpointing=True, precision="bf16",
                             quantized_base=kind)  # fmt: skip
        assert plan.estimate_gib == pytest.approx(want) and want <= memory.usable_allocated_gib(budget)


@pytest.mark.slow
def test_a_fresh_estimate_of_the_default_row_runs_qwen_images_step_and_matches_the_table():
    """The estimator runs the family's own caching (Qwen2.5-VL on the template, the video VAE on a one-frame clip),
    step (the mask read to cut the batch to its longest prompt: ``tools.fake_fill``) and sample (the video VAE's
    decode) at 1024 px with checkpointing, in a child process (about 30 s), and agrees with the committed row."""
    from tests.test_memory_estimate import _shim_or_skip
    from tools import memory_estimate as estimator

    _shim_or_skip()
    cfg = estimator.MemoryConfig("qwen-image", "dreambooth-lora", 1024, 1, "bf16", gradient_checkpointing=True,
                                 rank=estimator.FLUX_RANK)  # fmt: skip
    (e,) = estimator.estimate_many([cfg])
    committed = row(1024, True)
    assert e.trainable_params == QWEN_IMAGE_LORA and e.denoiser_params == QwenImage.denoiser_params
    assert e.peak_gib == pytest.approx(committed["estimated_peak_gib"], rel=0.01)
    for phase, gib in committed["phases_gib"].items():
        assert e.phases_gib[phase] == pytest.approx(gib, rel=0.01), phase
