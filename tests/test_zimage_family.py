"""The Z-Image family on a tiny random Z-Image pipeline (``tests/tiny_zimage.py``), on the CPU.

The trainer runs go through ``python -m training``'s main in-process (``tests.test_flux_families.run_trainer``); the
objective and the conditioning are checked against ``ZImagePipeline`` itself (its prompt encoding, its scheduler
step and its call of the transformer); the saved LoRA files are read back only through
``ZImagePipeline.load_lora_weights``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.test_flux_families import CPU, Params, lora_deltas, model_info, run_trainer, train_lora
from tests.tiny_models import make_images
from tests.tiny_zimage import build_tiny_zimage
from training.families.base import QUANTIZED_BASE, TextCond
from training.families.flux import COMFY_NAME, WEIGHTS_NAME
from training.families.zimage import ZImage

PROMPT = "a photo of sks dog"
RES = 32
F32 = {"denoiser_dtype": torch.float32, "text_dtype": torch.float32, "weight_dtype": torch.float32}


class TinyZImage(ZImage):
    """Z-Image with 64 text tokens instead of 512 (the tiny encoder does not need more; the CPU is shared)."""

    max_sequence_length = 64


@pytest.fixture(scope="module")
def tiny_zimage(tmp_path_factory) -> Path:
    return build_tiny_zimage(tmp_path_factory.mktemp("tiny-zimage") / "model")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("zimage-instance")
    make_images(folder, 3, size=48)
    return folder


@pytest.fixture(scope="module")
def straight(tiny_zimage, images, tmp_path_factory) -> tuple[Path, list[dict]]:
    """The trainer's 6-step LoRA run with a validation prompt: (work folder, events)."""
    work = tmp_path_factory.mktemp("zimage-run") / "straight"
    rc, events = run_trainer(work, tiny_zimage, images, 6, validation_prompts=[PROMPT + " on a beach"])
    assert rc == 0, events[-3:]
    return work, events


def pipeline(model_dir: Path):
    from diffusers import ZImagePipeline

    pipe = ZImagePipeline.from_pretrained(str(model_dir), torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def image_of(pipe) -> torch.Tensor:
    out = pipe(prompt=PROMPT, height=RES, width=RES, num_inference_steps=2, guidance_scale=0.0, max_sequence_length=64,
               generator=torch.Generator().manual_seed(0), output_type="pt")  # fmt: skip
    return out.images[0]


def loaded_family(model_dir: Path, parts=("text", "vae", "scheduler", "denoiser")):
    family = TinyZImage(model_info(model_dir))
    return family, family.load(str(model_dir), {}, parts=parts, **F32)


# ---------------------------------------------------------------------------------------------------- the trainer
def test_trainer_trains_zimage_end_to_end_and_resumes_exactly(straight, tiny_zimage, images, tmp_path):
    """The real DreamBooth loop: 6 steps straight, and 3 steps then extended to 6 from the checkpoint, give the
    same LoRA bit for bit; the LoRA, its ComfyUI copy, a sample and an Apache-2.0 card are written."""
    work, events = straight
    out = work / "output"
    assert {WEIGHTS_NAME, COMFY_NAME, "README.md"} <= {p.name for p in out.iterdir()}
    assert [e["step"] for e in events if e["event"] == "sample"] == [6]
    card = (out / "README.md").read_text()
    assert "license: apache-2.0" in card and "z-image" in card and "ZImagePipeline" in card
    assert run_trainer(tmp_path / "resumed", tiny_zimage, images, 3)[0] == 0
    rc, events = run_trainer(tmp_path / "resumed", tiny_zimage, images, 6)
    assert rc == 0 and [e["step"] for e in events if e["event"] == "resumed"] == [3]
    first = load_file(str(out / WEIGHTS_NAME))
    resumed = load_file(str(tmp_path / "resumed" / "output" / WEIGHTS_NAME))
    assert first.keys() == resumed.keys() and all(torch.equal(first[k], resumed[k]) for k in first)
    ckpt = tmp_path / "resumed" / "checkpoints"
    at3, at6 = (load_file(str(ckpt / f"step-0000000{n}" / "trainable.safetensors")) for n in (3, 6))
    assert at3.keys() == at6.keys() and not all(torch.equal(at3[k], at6[k]) for k in at3)  # steps 4-6 trained


def test_the_trainers_lora_loads_whole_with_zimage_pipeline_and_changes_the_image(straight, tiny_zimage):
    """Every tensor of the diffusers file lands in the transformer's attention projections (all blocks, refiners
    included), none is left over, and the image changes."""
    from peft.utils import get_peft_model_state_dict

    saved = load_file(str(straight[0] / "output" / WEIGHTS_NAME))
    modules = {k.removeprefix("transformer.").rsplit(".", 2)[0] for k in saved}
    assert modules == {f"{block}.0.attention.{p}" for block in ("layers", "noise_refiner", "context_refiner")
                       for p in ("to_q", "to_k", "to_v", "to_out.0")}  # fmt: skip
    pipe = pipeline(tiny_zimage)
    base_image = image_of(pipe)
    pipe.load_lora_weights(str(straight[0] / "output"), adapter_name="trained")
    loaded = get_peft_model_state_dict(pipe.transformer, adapter_name="trained")
    assert {f"transformer.{k}" for k in loaded} == set(saved)  # nothing missing, nothing unexpected
    assert all(torch.equal(loaded[k.removeprefix("transformer.")], v) for k, v in saved.items())
    assert (image_of(pipe) - base_image).abs().max() > 1e-3


def test_comfy_copy_is_diffusion_model_keys_with_alpha_and_the_same_lora(straight, tiny_zimage):
    """``diffusion_model.<module>.lora_A/lora_B.weight`` plus ``.alpha`` (8 for rank 4: the run's alpha); diffusers'
    Z-Image converter reads it back to the same weight changes and image as the diffusers file."""
    out = straight[0] / "output"
    comfy = load_file(str(out / COMFY_NAME))
    assert all(k.startswith("diffusion_model.") and k.endswith((".lora_A.weight", ".lora_B.weight", ".alpha"))
               for k in comfy)  # fmt: skip
    alphas = {k: v.item() for k, v in comfy.items() if k.endswith(".alpha")}
    assert len(alphas) == 12 and set(alphas.values()) == {8.0}
    ref, other = pipeline(tiny_zimage), pipeline(tiny_zimage)
    ref.load_lora_weights(str(out))
    other.load_lora_weights(str(out), weight_name=COMFY_NAME)
    want, got = lora_deltas(ref), lora_deltas(other)
    assert set(got) == set(want) and len(want) == 12
    for m in want:
        assert torch.allclose(got[m], want[m], atol=1e-6), m
    assert torch.allclose(image_of(other), image_of(ref), atol=1e-5)


# ---------------------------------------------------------------------------------------------------- the objective
def test_target_is_the_velocity_one_euler_step_of_the_scheduler_lands_on_the_clean_latent(tiny_zimage):
    """From the family's noisy latent, the pipeline's scheduler stepping to sigma 0 with the family's target lands
    on the clean latent in the transformer's space (the VAE's shift and scale applied)."""
    family, comps = loaded_family(tiny_zimage, parts=("vae", "scheduler"))
    x, noise = torch.randn(3, 16, 8, 8), torch.randn(3, 16, 8, 8)
    cfg = comps.vae.config
    clean = (x - cfg.shift_factor) * cfg.scaling_factor
    assert torch.allclose(family.to_model_space(comps, x), clean, atol=1e-6)
    for u in (0.2, 0.5, 0.9):
        noisy, target = family.noisy_and_target(comps, x, noise, torch.full((3,), u))
        sched = family.scheduler_for_sampling(comps)
        sched.set_timesteps(sigmas=[u])  # the pipeline's way: its scheduler shifts the sigma it is given
        sigma = float(sched.sigmas[0])
        assert sigma == pytest.approx(float(family.sigmas(comps, torch.tensor([u]), x.shape)), abs=1e-6)
        assert torch.allclose(noisy, (1 - sigma) * clean + sigma * noise, atol=1e-5)
        stepped = sched.step(target, sched.timesteps[0], noisy, return_dict=False)[0]
        assert torch.allclose(stepped, clean, atol=1e-4), u


def test_predict_is_the_pipelines_velocity_at_its_timestep(tiny_zimage):
    """The family's ``predict`` is what ``ZImagePipeline`` steps with: its one Euler step from the noisy latent
    (prompt embeddings given, no CFG) is ``noisy - sigma * predict``, at several times (transformer time
    ``1 - sigma``, output negated). A family calling it at ``sigma`` or without the negation fails this."""
    family, comps = loaded_family(tiny_zimage)
    pipe = family.build_pipeline(comps)
    with torch.no_grad():
        cond = family.encode_prompt(comps, comps.text_encoders, family.tokenize(comps, PROMPT))
        for u in (0.3, 0.8):
            noisy = torch.randn(1, 16, RES // 2, RES // 2, generator=torch.Generator().manual_seed(int(u * 10)))
            t = torch.tensor([u])
            pred = family.predict(comps, comps.denoiser, noisy, t, cond, None)
            sigma = float(family.sigmas(comps, t, noisy.shape))
            out = pipe(prompt_embeds=family.cond_kwargs(comps, [TextCond([], cond)], "cpu")["prompt_embeds"],
                       sigmas=[u], num_inference_steps=1, guidance_scale=0.0, latents=noisy.clone(), height=RES,
                       width=RES, output_type="latent").images  # fmt: skip
            assert torch.allclose(out, noisy - sigma * pred, atol=1e-5), u
            assert not torch.allclose(out, noisy + sigma * pred, atol=1e-3)  # the sign matters here


def test_text_conditioning_is_the_pipelines_encode_prompt(tiny_zimage):
    """The cached conditioning, cut to its real tokens, equals ``ZImagePipeline.encode_prompt`` (chat template with
    thinking on, second-to-last hidden state, pad tokens dropped); the cached negative is the empty prompt's."""
    family, comps = loaded_family(tiny_zimage, parts=("text", "vae", "scheduler"))
    pipe = pipeline(tiny_zimage)
    prompts = [PROMPT, "sks dog, watercolour, a much longer caption than the first one"]
    with torch.no_grad():
        conds = [TextCond([], family.encode_prompt(comps, comps.text_encoders, family.tokenize(comps, p)))
                 for p in prompts]  # fmt: skip
        want, negatives = pipe.encode_prompt(prompts, do_classifier_free_guidance=True, max_sequence_length=64)
    got = family.cond_kwargs(comps, conds, "cpu")["prompt_embeds"]
    assert len({g.shape[0] for g in got}) == 2  # variable length: the pad tokens are gone
    assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))
    family.release_text_encoders(comps)
    assert comps.text_encoders == [None] and torch.equal(comps.extra["negative_embeds"], negatives[0])
    assert len(family.cond_kwargs(comps, conds, "cpu")["negative_prompt_embeds"]) == 2  # base model: CFG samples


# ---------------------------------------------------------------------------------------------------- LoRA loop
def test_lora_training_lowers_the_loss_and_the_family_samples_from_cached_conditioning(tiny_zimage, images, tmp_path):
    run = train_lora(TinyZImage, tiny_zimage, images, tmp_path / "out")
    assert run.eval_after < 0.95 * run.eval_before, (run.eval_before, run.eval_after)
    assert "negative_embeds" in run.comps.extra  # cached before the encoder was freed: the CFG samples need it
    img = run.family.generate(run.family.build_pipeline(run.comps), run.comps, [PROMPT], RES, Params(),
                              torch.Generator().manual_seed(0), CPU(), conds=[TextCond([], run.cond)])  # fmt: skip
    assert img[0].size == (RES, RES)


# ---------------------------------------------------------------------------------------------------- detection
def test_detection_allow_list_and_an_unlisted_class_refused(tiny_zimage, tmp_path):
    from tests.tiny_models import build_tiny_sd
    from training.base_check import index_problem
    from training.families import family_for

    index = json.loads((tiny_zimage / "model_index.json").read_text())
    assert family_for(index) is ZImage and isinstance(model_info(tiny_zimage).family, ZImage)
    assert index_problem("m", index) is None and ZImage.index_problem("m", index) is None
    for name, cls in (("text_encoder", "Qwen3ForCausalLM"), ("tokenizer", "Qwen2TokenizerFast")):
        assert index_problem("m", {**index, name: ["transformers", cls]}) is None  # the other allowed classes
    refused = index_problem("m", {**index, "text_encoder": ["transformers", "T5EncoderModel"]})
    assert refused is not None and refused.kind == "not_allowed" and "T5EncoderModel" in refused.message
    assert "transformer" in ZImage.index_problem("m", {k: v for k, v in index.items() if k != "transformer"}).message
    fam = ZImage(model_info(tiny_zimage))
    with pytest.raises(KeyError, match="not an allowed class"):
        fam.component_class("transformer", "FluxTransformer2DModel")  # a class of another family's slot
    assert fam.component_class("transformer", "ZImageTransformer2DModel").__name__ == "ZImageTransformer2DModel"
    sd_index = json.loads((build_tiny_sd(tmp_path / "sd") / "model_index.json").read_text())
    assert family_for(sd_index) is not ZImage
    with pytest.raises(Exception, match="ZImagePipeline"):
        family_for({"_class_name": "QwenImageEditPipeline"})  # the error names the supported pipelines, Z-Image's too


# ---------------------------------------------------------------------------------------------------- defaults
def test_defaults_card_and_quantized_base_plan(tiny_zimage):
    from accelerate import init_empty_weights
    from diffusers import ZImageTransformer2DModel

    entry = ZImage.catalog_entry()
    assert entry["name"] == "zimage" and entry["pipelines"] == ["ZImagePipeline"]
    defaults = {k: v for k, v in entry["defaults"].items() if k != "hardware_note"}
    assert defaults == {"hardware": "l40sx1", "resolution": 1024, "steps_per_image": None, "learning_rate": 1e-4,
                        "rank": 16}  # fmt: skip
    assert ZImage.memory_fit() == QUANTIZED_BASE and ZImage.memory_shape("Tongyi-MAI/Z-Image") == "zimage"
    with init_empty_weights():  # the full-size transformer (the class defaults are Z-Image's config), no memory
        full = ZImageTransformer2DModel()
    assert ZImage.denoiser_params == sum(p.numel() for p in full.parameters())
    base = ZImage(model_info(tiny_zimage))
    info = base.card_info(None)
    assert (info.license, info.pipeline_class, info.prompt_keyword) == ("apache-2.0", "ZImagePipeline", False)
    assert "z-image" in info.tags and COMFY_NAME in info.weight_notes
    assert base.native_resolution() == 1024 and base.sampling_defaults() == {"guidance_scale": 4.0}
    turbo_info = model_info(tiny_zimage)
    turbo_info.base_model = "Tongyi-MAI/Z-Image-Turbo"
    assert ZImage(turbo_info).sampling_defaults() == {"guidance_scale": 0.0}  # distilled: no CFG
