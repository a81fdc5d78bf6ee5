"""The Qwen-Image family on a tiny random Qwen-Image pipeline (``tests/tiny_qwen_image.py``), on the CPU.

The trainer runs go through ``python -m training``'s main in-process (``tests.test_flux_families.run_trainer``); the
objective, the latent normalisation and the conditioning are checked against ``QwenImagePipeline`` itself (its
prompt encoding, its scheduler step, its call of the transformer, its decode) and against the formulas of
diffusers' ``train_dreambooth_lora_qwen_image.py``; the saved LoRA files are read back only through
``QwenImagePipeline.load_lora_weights``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.test_flux_families import CPU, Params, lora_deltas, model_info, run_trainer, train_lora
from tests.tiny_models import make_images
from tests.tiny_qwen_image import build_tiny_qwen_image
from training.families.base import QUANTIZED_BASE, TextCond
from training.families.flux import COMFY_NAME, WEIGHTS_NAME
from training.families.qwen_image import PROMPT_TEMPLATE, TEMPLATE_DROP, QwenImage

PROMPT = "a photo of sks dog"
RES = 32
F32 = {"denoiser_dtype": torch.float32, "text_dtype": torch.float32, "weight_dtype": torch.float32}
#: the tiny transformer's LoRA'd modules (two blocks, the official script's four targets each)
LORA_MODULES = {f"transformer_blocks.{i}.attn.{p}" for i in range(2) for p in ("to_q", "to_k", "to_v", "to_out.0")}


class TinyQwenImage(QwenImage):
    """Qwen-Image with 128 text tokens instead of 512 (the tiny encoder does not need more; the CPU is shared)."""

    max_sequence_length = 128


@pytest.fixture(scope="module")
def tiny_qwen_image(tmp_path_factory) -> Path:
    return build_tiny_qwen_image(tmp_path_factory.mktemp("tiny-qwen-image") / "model")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("qwen-image-instance")
    make_images(folder, 3, size=48)
    return folder


@pytest.fixture(scope="module")
def straight(tiny_qwen_image, images, tmp_path_factory) -> tuple[Path, list[dict]]:
    """The trainer's 6-step LoRA run with a validation prompt: (work folder, events)."""
    work = tmp_path_factory.mktemp("qwen-image-run") / "straight"
    rc, events = run_trainer(work, tiny_qwen_image, images, 6, validation_prompts=[PROMPT + " on a beach"])
    assert rc == 0, events[-3:]
    return work, events


def pipeline(model_dir: Path, terminal: bool = True):
    """The pipeline as saved; ``terminal=False``: its scheduler without the terminal stretch (which moves a single
    sigma to 0.02, so a one-step call would not run at the sigma given)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, QwenImagePipeline

    pipe = QwenImagePipeline.from_pretrained(str(model_dir), torch_dtype=torch.float32)
    if not terminal:
        pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config, shift_terminal=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def image_of(pipe, output_type: str = "pt") -> torch.Tensor:
    """A true-CFG sample (the blank negative) as pixels, or as the final latent (``output_type="latent"``)."""
    out = pipe(prompt=PROMPT, negative_prompt=" ", true_cfg_scale=4.0, height=RES, width=RES, num_inference_steps=2,
               max_sequence_length=128, generator=torch.Generator().manual_seed(0), output_type=output_type)  # fmt: skip
    return out.images[0]


def loaded_family(model_dir: Path, parts=("text", "vae", "scheduler", "denoiser")):
    family = TinyQwenImage(model_info(model_dir))
    return family, family.load(str(model_dir), {}, parts=parts, **F32)


def encoded(family, comps, prompts: list[str]) -> list[TextCond]:
    with torch.no_grad():
        return [TextCond([], family.encode_prompt(comps, comps.text_encoders, family.tokenize(comps, p)))
                for p in prompts]  # fmt: skip


def packed(latents: torch.Tensor) -> torch.Tensor:
    from diffusers import QwenImagePipeline

    b, c, h, w = latents.shape
    return QwenImagePipeline._pack_latents(latents, b, c, h, w)


# ---------------------------------------------------------------------------------------------------- the trainer
def test_trainer_trains_qwen_image_end_to_end_and_resumes_exactly(straight, tiny_qwen_image, images, tmp_path):
    """The real DreamBooth loop: 6 steps straight, and 3 steps then extended to 6 from the checkpoint, give the
    same LoRA bit for bit; the LoRA, its ComfyUI copy, a sample and an Apache-2.0 card are written."""
    work, events = straight
    out = work / "output"
    assert {WEIGHTS_NAME, COMFY_NAME, "README.md"} <= {p.name for p in out.iterdir()}
    assert [e["step"] for e in events if e["event"] == "sample"] == [6]
    card = (out / "README.md").read_text()
    assert "license: apache-2.0" in card and "qwen-image" in card and "QwenImagePipeline" in card
    assert run_trainer(tmp_path / "resumed", tiny_qwen_image, images, 3)[0] == 0
    rc, events = run_trainer(tmp_path / "resumed", tiny_qwen_image, images, 6)
    assert rc == 0 and [e["step"] for e in events if e["event"] == "resumed"] == [3]
    first = load_file(str(out / WEIGHTS_NAME))
    resumed = load_file(str(tmp_path / "resumed" / "output" / WEIGHTS_NAME))
    assert first.keys() == resumed.keys() and all(torch.equal(first[k], resumed[k]) for k in first)
    ckpt = tmp_path / "resumed" / "checkpoints"
    at3, at6 = (load_file(str(ckpt / f"step-0000000{n}" / "trainable.safetensors")) for n in (3, 6))
    assert at3.keys() == at6.keys() and not all(torch.equal(at3[k], at6[k]) for k in at3)  # steps 4-6 trained


def test_the_trainers_lora_loads_whole_with_qwen_image_pipeline_and_changes_the_image(straight, tiny_qwen_image):
    """Every tensor of the diffusers file lands in the image-stream attention projections of every block, none is
    left over, and the (true-CFG) sample changes (its final latent: six small steps barely move the tiny VAE's
    pixels)."""
    from peft.utils import get_peft_model_state_dict

    saved = load_file(str(straight[0] / "output" / WEIGHTS_NAME))
    assert {k.removeprefix("transformer.").rsplit(".", 2)[0] for k in saved} == LORA_MODULES
    pipe = pipeline(tiny_qwen_image)
    base_latent = image_of(pipe, "latent")
    pipe.load_lora_weights(str(straight[0] / "output"), adapter_name="trained")
    loaded = get_peft_model_state_dict(pipe.transformer, adapter_name="trained")
    assert {f"transformer.{k}" for k in loaded} == set(saved)  # nothing missing, nothing unexpected
    assert all(torch.equal(loaded[k.removeprefix("transformer.")], v) for k, v in saved.items())
    assert (image_of(pipe, "latent") - base_latent).abs().max() > 1e-3  # about 1e-2; unchanged: exactly 0


def test_comfy_copy_is_diffusion_model_keys_with_alpha_and_the_same_lora(straight, tiny_qwen_image):
    """``diffusion_model.<module>.lora_A/lora_B.weight`` plus ``.alpha`` (8 for rank 4: the run's alpha); diffusers'
    Qwen-Image converter reads it back to the same weight changes and image as the diffusers file."""
    out = straight[0] / "output"
    comfy = load_file(str(out / COMFY_NAME))
    assert all(k.startswith("diffusion_model.") and k.endswith((".lora_A.weight", ".lora_B.weight", ".alpha"))
               for k in comfy)  # fmt: skip
    alphas = {k.removeprefix("diffusion_model.").removesuffix(".alpha"): v.item()
              for k, v in comfy.items() if k.endswith(".alpha")}  # fmt: skip
    assert set(alphas) == LORA_MODULES and set(alphas.values()) == {8.0}
    ref, other = pipeline(tiny_qwen_image), pipeline(tiny_qwen_image)
    ref.load_lora_weights(str(out))
    other.load_lora_weights(str(out), weight_name=COMFY_NAME)
    want, got = lora_deltas(ref), lora_deltas(other)
    assert set(got) == set(want) == LORA_MODULES
    for m in want:
        assert torch.allclose(got[m], want[m], atol=1e-6), m
    assert torch.allclose(image_of(other), image_of(ref), atol=1e-5)


# ---------------------------------------------------------------------------------------------------- the objective
def test_target_is_the_official_scripts_and_one_scheduler_step_lands_on_the_clean_latent(tiny_qwen_image):
    """The model-space latent is the official script's ``(x - latents_mean) * (1 / latents_std)``; noisy input and
    target are its ``(1 - s) x + s noise`` and ``noise - x``; the sigma is the pipeline's (its dynamic shift ``mu``
    for this image's token count); and the scheduler stepping to sigma 0 with the target lands on the clean latent."""
    from diffusers.pipelines.qwenimage.pipeline_qwenimage import calculate_shift

    family, comps = loaded_family(tiny_qwen_image, parts=("vae", "scheduler"))
    x, noise = torch.randn(3, 16, 8, 8), torch.randn(3, 16, 8, 8)
    cfg = comps.vae.config
    mean, std = (torch.tensor(v).view(1, 16, 1, 1) for v in (cfg.latents_mean, cfg.latents_std))
    clean = (x - mean) * (1.0 / std)
    assert torch.allclose(family.to_model_space(comps, x), clean, atol=1e-6)
    sched_cfg = comps.noise_scheduler.config
    mu = calculate_shift(packed(x).shape[1], sched_cfg.base_image_seq_len, sched_cfg.max_image_seq_len,
                         sched_cfg.base_shift, sched_cfg.max_shift)  # fmt: skip
    for u in (0.2, 0.5, 0.9):
        noisy, target = family.noisy_and_target(comps, x, noise, torch.full((3,), u))
        sched = pipeline(tiny_qwen_image, terminal=False).scheduler
        sched.set_timesteps(sigmas=[u], mu=mu)  # the pipeline's way: the scheduler shifts the sigma it is given
        sigma = float(sched.sigmas[0])
        assert sigma == pytest.approx(float(family.sigmas(comps, torch.tensor([u]), x.shape)), abs=1e-6)
        assert torch.allclose(noisy, (1 - sigma) * clean + sigma * noise, atol=1e-5)
        assert torch.allclose(target, noise - clean, atol=1e-5)
        stepped = sched.step(target, sched.timesteps[0], noisy, return_dict=False)[0]
        assert torch.allclose(stepped, clean, atol=1e-4), u


def test_cached_latents_are_the_vaes_and_the_pipelines_decode_undoes_their_normalisation(tiny_qwen_image, images):
    """The cached posterior is the VAE's (one-frame clip, frame axis dropped, flip included). Both ways: a cached
    image latent taken into model space by the family and handed to ``QwenImagePipeline`` as
    its final latent decodes to the very image the VAE decodes from the raw latent (the pipeline's
    ``latents / (1 / latents_std) + latents_mean``); an unnormalised latent would not."""
    import numpy as np

    from training.data import load_images

    family, comps = loaded_family(tiny_qwen_image)
    photo = load_images(images, RES)[:1]
    cached = family.encode_images(comps, photo, RES, flip=True)
    pix = torch.from_numpy(np.asarray(photo[0].image, dtype=np.float32)).permute(2, 0, 1)[None] / 127.5 - 1.0
    with torch.no_grad():  # the VAE's own posterior of the photo and its flip as one-frame clips
        dist = comps.vae.encode(torch.cat([pix, pix.flip(3)]).unsqueeze(2)).latent_dist
    for got, want in ((cached.mean, dist.mean[:1]), (cached.std, dist.std[:1]), (cached.flip_mean, dist.mean[1:]),
                      (cached.flip_std, dist.std[1:])):  # fmt: skip
        assert torch.allclose(got, want[:, :, 0], atol=1e-6)
    raw = cached.mean
    assert raw.shape == (1, 16, RES // 2, RES // 2)
    pipe = family.build_pipeline(comps)
    cond = family.cond_kwargs(comps, encoded(family, comps, [PROMPT]), "cpu")

    def decoded(model_latent: torch.Tensor) -> torch.Tensor:
        swap = lambda p, i, t, kw: {"latents": packed(model_latent)}  # noqa: E731 - the final latent, replaced
        return pipe(**cond, height=RES, width=RES, num_inference_steps=2, callback_on_step_end=swap,
                    output_type="pt").images[0]  # fmt: skip

    with torch.no_grad():
        want = (comps.vae.decode(raw.unsqueeze(2)).sample[0, :, 0] / 2 + 0.5).clamp(0, 1)
        assert torch.allclose(decoded(family.to_model_space(comps, raw)), want, atol=1e-5)
        assert not torch.allclose(decoded(raw), want, atol=1e-2)


def test_predict_is_the_pipelines_velocity_at_its_timestep(tiny_qwen_image):
    """The family's ``predict`` is what ``QwenImagePipeline`` steps with: its one Euler step from the noisy latents
    (cached prompt embeddings of two lengths with their mask, no CFG) is ``noisy - sigma * predict``, at several
    times (transformer time ``sigma``, packed 2x2 with ``img_shapes``, the velocity as is)."""
    from diffusers import QwenImagePipeline

    family, comps = loaded_family(tiny_qwen_image)
    pipe = pipeline(tiny_qwen_image, terminal=False)
    conds = encoded(family, comps, [PROMPT, "sks dog, a longer caption than the first"])
    batch = {k: torch.cat([c.tensors[k] for c in conds]) for k in ("embeds", "mask")}
    kwargs = family.cond_kwargs(comps, conds, "cpu")
    assert kwargs["prompt_embeds_mask"].all(dim=1).tolist() == [False, True]  # two lengths: the mask matters
    with torch.no_grad():
        for u in (0.3, 0.8):
            noisy = torch.randn(2, 16, RES // 2, RES // 2, generator=torch.Generator().manual_seed(int(u * 10)))
            t = torch.full((2,), u)
            pred = family.predict(comps, comps.denoiser, noisy, t, batch, None)
            sigma = float(family.sigmas(comps, t[:1], noisy.shape))
            out = pipe(**kwargs, sigmas=[u], num_inference_steps=1, true_cfg_scale=1.0, latents=packed(noisy),
                       height=RES, width=RES, output_type="latent").images  # fmt: skip
            out = QwenImagePipeline._unpack_latents(out, RES, RES, pipe.vae_scale_factor).squeeze(2)
            assert torch.allclose(out, noisy - sigma * pred, atol=1e-5), u
            assert not torch.allclose(out, noisy + sigma * pred, atol=1e-3)  # the sign matters here


def test_text_conditioning_is_the_pipelines_encode_prompt(tiny_qwen_image):
    """The cached conditioning, cut to the batch's longest prompt, equals ``QwenImagePipeline.encode_prompt``
    (template, its 34-token system turn dropped, last hidden state, zero padding and mask), a prompt past
    ``max_sequence_length`` cut like the pipeline's; the cached negative is the blank prompt's."""
    family, comps = loaded_family(tiny_qwen_image, parts=("text", "vae", "scheduler"))
    pipe = pipeline(tiny_qwen_image)
    assert (pipe.prompt_template_encode, pipe.prompt_template_encode_start_idx) == (PROMPT_TEMPLATE, TEMPLATE_DROP)
    system_turn = comps.tokenizers[0](PROMPT_TEMPLATE.split("{}")[0]).input_ids
    assert len(system_turn) == TEMPLATE_DROP  # the tiny tokenizer splits it as the real one: the drop is that turn
    prompts = [PROMPT, "sks dog, watercolour, a much longer caption than the first one", "sks " * 60]
    conds = encoded(family, comps, prompts)
    with torch.no_grad():
        want, want_mask = pipe.encode_prompt(prompts, max_sequence_length=128)
        negative, negative_mask = pipe.encode_prompt([" "], max_sequence_length=128)
    got = family.cond_kwargs(comps, conds, "cpu")
    assert want_mask.sum(dim=1).tolist()[2] == 128 and len(set(want_mask.sum(dim=1).tolist())) == 3
    assert torch.equal(got["prompt_embeds_mask"].long(), want_mask)
    assert torch.allclose(got["prompt_embeds"], want, atol=1e-6)
    family.release_text_encoders(comps)
    assert comps.text_encoders == [None]
    assert len(got := family.cond_kwargs(comps, conds[:2], "cpu")["negative_prompt_embeds"]) == 2  # CFG samples
    assert torch.allclose(got[0], negative[0], atol=1e-6) and negative_mask is None  # one prompt: no padding


# ---------------------------------------------------------------------------------------------------- LoRA loop
def test_lora_training_lowers_the_loss_and_the_family_samples_from_cached_conditioning(tiny_qwen_image, images,
                                                                                        tmp_path):  # fmt: skip
    run = train_lora(TinyQwenImage, tiny_qwen_image, images, tmp_path / "out")
    assert run.eval_after < 0.95 * run.eval_before, (run.eval_before, run.eval_after)
    assert "negative_embeds" in run.comps.extra  # cached before the encoder was freed: the CFG samples need it
    img = run.family.generate(run.family.build_pipeline(run.comps), run.comps, [PROMPT], RES, Params(),
                              torch.Generator().manual_seed(0), CPU(), conds=[TextCond([], run.cond)])  # fmt: skip
    assert img[0].size == (RES, RES)


def test_samples_from_the_live_encoder_and_from_the_cache_are_the_same_true_cfg_image(tiny_qwen_image):
    """Class images sample with the live encoder (prompt and the blank negative), validation samples from the
    cache: both give the same image, and it is a CFG image (without the negative it differs)."""
    import numpy as np

    family, comps = loaded_family(tiny_qwen_image)
    pipe = family.build_pipeline(comps)
    conds = encoded(family, comps, [PROMPT])
    family.cache_before_release(comps)

    def sample(**kw):
        (img,) = family.generate(pipe, comps, [PROMPT], RES, Params(), torch.Generator().manual_seed(0), CPU(), **kw)
        return np.asarray(img, dtype=np.int16)

    live, cached = sample(), sample(conds=conds)
    assert np.abs(live - cached).max() <= 1  # 8-bit images of the same float image
    no_cfg = family.cond_kwargs(comps, conds, "cpu")
    no_cfg = pipe(prompt_embeds=no_cfg["prompt_embeds"], prompt_embeds_mask=no_cfg["prompt_embeds_mask"], height=RES,
                  width=RES, num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images[0]  # fmt: skip
    assert np.abs(np.asarray(no_cfg, dtype=np.int16) - cached).max() > 1


# ---------------------------------------------------------------------------------------------------- detection
def test_detection_allow_list_and_an_unlisted_class_refused(tiny_qwen_image, tmp_path):
    from tests.tiny_models import build_tiny_sd
    from training.base_check import index_problem
    from training.families import family_for

    index = json.loads((tiny_qwen_image / "model_index.json").read_text())
    assert family_for(index) is QwenImage and isinstance(model_info(tiny_qwen_image).family, QwenImage)
    assert index_problem("m", index) is None and QwenImage.index_problem("m", index) is None
    assert index_problem("m", {**index, "tokenizer": ["transformers", "Qwen2TokenizerFast"]}) is None
    refused = index_problem("m", {**index, "text_encoder": ["transformers", "Qwen3ForCausalLM"]})
    assert refused is not None and refused.kind == "not_allowed" and "Qwen3ForCausalLM" in refused.message
    refused = index_problem("m", {**index, "vae": ["diffusers", "AutoencoderKL"]})
    assert refused is not None and refused.kind == "not_allowed"
    assert "transformer" in QwenImage.index_problem("m", {k: v for k, v in index.items() if k != "transformer"}).message
    fam = QwenImage(model_info(tiny_qwen_image))
    with pytest.raises(KeyError, match="not an allowed class"):
        fam.component_class("transformer", "FluxTransformer2DModel")  # a class of another family's slot
    for name, cls in (("transformer", "QwenImageTransformer2DModel"), ("vae", "AutoencoderKLQwenImage"),
                      ("text_encoder", "Qwen2_5_VLForConditionalGeneration")):  # fmt: skip
        assert fam.component_class(name, cls).__name__ == cls
    sd_index = json.loads((build_tiny_sd(tmp_path / "sd") / "model_index.json").read_text())
    assert family_for(sd_index) is not QwenImage
    with pytest.raises(Exception, match="QwenImagePipeline"):
        family_for({"_class_name": "QwenImageEditPipeline"})  # the error names the supported pipelines, Qwen's too


# ---------------------------------------------------------------------------------------------------- defaults
def test_defaults_card_and_quantized_base_plan(tiny_qwen_image):
    import subprocess
    import sys

    from accelerate import init_empty_weights
    from diffusers import QwenImageTransformer2DModel

    from contract.flavors import FLAVORS
    from training.exitcodes import BadInputError
    from training.spec import TrainParams

    entry = QwenImage.catalog_entry()
    assert entry["name"] == "qwen-image" and entry["pipelines"] == ["QwenImagePipeline"]
    defaults = {k: v for k, v in entry["defaults"].items() if k != "hardware_note"}
    assert defaults == {"hardware": "l40sx1", "resolution": 1024, "steps_per_image": None, "learning_rate": 1e-4,
                        "rank": 16}  # fmt: skip
    assert FLAVORS[defaults["hardware"]].gpu_memory_gib >= 48 and "8-bit" in entry["defaults"]["hardware_note"]
    listed = subprocess.run([sys.executable, "-m", "training", "--list-families"], cwd=Path(__file__).parents[1],
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert listed.returncode == 0, listed.stderr[-2000:]
    built_in = {f["name"]: f for f in json.loads(listed.stdout.strip().splitlines()[-1])["families"]}
    assert built_in["qwen-image"] == entry  # a built-in family: what the form's catalog reads
    assert QwenImage.memory_fit() == QUANTIZED_BASE and QwenImage.memory_shape("Qwen/Qwen-Image") == "qwen-image"
    with init_empty_weights():  # the full-size transformer (transformer/config.json of Qwen/Qwen-Image), no memory
        full = QwenImageTransformer2DModel(
            patch_size=2, in_channels=64, out_channels=16, num_layers=60, attention_head_dim=128,
            num_attention_heads=24, joint_attention_dim=3584, guidance_embeds=False, axes_dims_rope=(16, 56, 56),
        )  # fmt: skip
    assert QwenImage.denoiser_params == sum(p.numel() for p in full.parameters())
    family = QwenImage(model_info(tiny_qwen_image))
    info = family.card_info(None)
    assert (info.license, info.pipeline_class, info.prompt_keyword) == ("apache-2.0", "QwenImagePipeline", False)
    assert {"qwen-image", "qwen-image-diffusers"} <= set(info.tags) and COMFY_NAME in info.weight_notes
    assert family.native_resolution() == 1024 and family.sampling_defaults() == {"true_cfg_scale": 4.0}
    assert family.vae_scale_factor() == 2 and family.latent_multiple() == 4  # the tiny VAE: one downsample
    real = model_info(tiny_qwen_image)
    real.vae_config = {**real.vae_config, "temperal_downsample": [False, True, True]}  # Qwen-Image's VAE
    assert QwenImage(real).vae_scale_factor() == 8 and QwenImage(real).latent_multiple() == 16
    with pytest.raises(BadInputError, match="multiple of 16"):
        QwenImage(real).check_params(TrainParams(resolution=1000))
    with pytest.raises(ValueError, match="transformer only"):
        family.lora_targets("text_encoder")
