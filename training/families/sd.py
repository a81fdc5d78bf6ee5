"""The Stable Diffusion family: SD 1.x / 2.x and SDXL (UNet, DDPM epsilon or v-prediction loss, min-SNR weighting,
SDXL micro-conditioning), the kohya/A1111 copy of its LoRA and its model-card licence."""

from __future__ import annotations

import re
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from training.families import register_family
from training.families.base import (
    LADDER,
    QUANTIZED_BASE,
    CardInfo,
    Components,
    FamilyDefaults,
    LatentSet,
    ModelFamily,
)
from training.families.rules import ALLOWED_COMPONENTS, PIPELINES, is_sdxl_index, not_a_pipeline, sd_component_names

if TYPE_CHECKING:
    import torch

    from training.data import PreparedImage
    from training.families.rules import BaseModelProblem
    from training.spec import TrainParams

UNET_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
KOHYA_NAME = "pytorch_lora_weights_kohya.safetensors"
#: the UNet's cross-attention width (the text encoders' hidden size) tells the full-size models apart
RUN_FAMILY_BY_CROSS_ATTENTION = {768: "sd15", 1024: "sd2", 2048: "sdxl"}


@register_family("sd")
class StableDiffusion(ModelFamily):
    """SD 1.x/2.x (one CLIP text encoder) and SDXL (two, pooled embedding and time ids)."""

    label = "Stable Diffusion 1.x / 2.x / SDXL"
    pipelines = PIPELINES
    components = ALLOWED_COMPONENTS
    denoiser_name = "unet"
    text_encoder_components = ("text_encoder", "text_encoder_2")
    defaults = FamilyDefaults(hardware="t4-small")
    lora_file_uses_diffusers_names = True
    denoiser_params = 860_000_000  # SD 1.5 (SDXL: 2.6 B)

    # ---------------------------------------------------------------------------------------- torch-free
    @classmethod
    def component_names(cls, index: dict[str, Any]) -> list[str]:
        return sd_component_names(index)

    @classmethod
    def text_encoder_names(cls, index: dict[str, Any]) -> list[str]:
        return ["text_encoder", "text_encoder_2"] if is_sdxl_index(index) else ["text_encoder"]

    @classmethod
    def index_problem(cls, base_model: str, index: dict[str, Any]) -> BaseModelProblem | None:
        if "unet" not in index or "text_encoder" not in index:
            return not_a_pipeline(base_model, "no UNet/text encoder: only SD 1.x/2.x and SDXL train here")
        return None

    @classmethod
    def as_shipped(cls) -> bool:
        """Whether this is the SD family itself, whose models the memory tables and the run records tell apart by size
        ("sd15", "sdxl", ...). A variant registered under a name of its own (other LoRA targets, another loss...)
        is not what they measured: it is checked and recorded as a family of its own."""
        return cls.name == StableDiffusion.name

    @classmethod
    def memory_fit(cls) -> str:
        return LADDER if cls.as_shipped() else QUANTIZED_BASE

    @classmethod
    def memory_shape(cls, base_model: str, index: dict[str, Any] | None = None) -> str | None:
        """By the name: "sdxl" for SDXL repos, "sd15" for SD 1.x and 2.x (a 2.x UNet has about the SD 1.5 size);
        else "sdxl" for an SDXL ``index``; None for anything else (a tiny or custom model: not checked) and for a
        variant (``as_shipped``)."""
        if not cls.as_shipped():
            return None
        name = base_model.lower()
        if re.search(r"sdxl|sd[-_]xl|stable-diffusion-xl", name):
            return "sdxl"
        if re.search(r"stable-diffusion-(v-?)?[12]|sd[-_]?v?[12]([-_.]|$)", name):
            return "sd15"
        return "sdxl" if index and is_sdxl_index(index) else None

    @property
    def is_sdxl(self) -> bool:
        return is_sdxl_index(self.info.index)

    def run_record_family(self) -> str | None:
        """The full-size model's kind, "sd15", "sd2" or "sdxl" (by the UNet's cross-attention width, which must agree
        with the index's SDXL-ness); None for a tiny test model. A variant (``as_shipped``): its own name."""
        if not self.as_shipped():
            return super().run_record_family()
        family = RUN_FAMILY_BY_CROSS_ATTENTION.get(self.info.denoiser_config.get("cross_attention_dim"))
        return family if family is not None and (family == "sdxl") == self.info.is_sdxl else None

    # ---------------------------------------------------------------------------------------- loading
    def load(
        self,
        src,
        variants,
        *,
        denoiser_dtype,
        text_dtype,
        weight_dtype,
        parts=None,
        into=None,
        quantization_config=None,
    ) -> Components:
        """UNet, VAE (always fp32: fp16 SD/SDXL VAE activations overflow; its fp16 weights are upcast), the CLIP
        text encoders and tokenizers, and a DDPM scheduler for training whatever the repo ships."""
        import torch
        from diffusers import DDPMScheduler

        want = _parts(parts)
        comps = into or Components(self.info, None, None, [], [], None)
        index = self.info.index
        if want("denoiser"):
            cls = self.component_class("unet", index["unet"][1])
            quantized = {} if quantization_config is None else {"quantization_config": quantization_config}
            comps.denoiser = cls.from_pretrained(
                src, subfolder="unet", torch_dtype=denoiser_dtype, use_safetensors=True, variant=variants["unet"],
                **quantized,
            )  # fmt: skip
        if want("vae"):
            cls = self.component_class("vae", index["vae"][1])
            comps.vae = cls.from_pretrained(
                src, subfolder="vae", torch_dtype=torch.float32, use_safetensors=True, variant=variants["vae"]
            )
        if want("text"):
            comps.text_encoders, comps.tokenizers = [], []
            for name, tok_name in zip(self.text_encoder_names(index), self.tokenizer_names(index), strict=True):
                cls = self.component_class(name, index[name][1])
                comps.text_encoders.append(
                    cls.from_pretrained(src, subfolder=name, torch_dtype=text_dtype, use_safetensors=True,
                                        variant=variants[name])
                )  # fmt: skip
                comps.tokenizers.append(self.component_class(tok_name, index[tok_name][1]).from_pretrained(
                    src, subfolder=tok_name))  # fmt: skip
        if want("scheduler"):
            comps.noise_scheduler = DDPMScheduler.from_pretrained(src, subfolder="scheduler")
        for m in (comps.denoiser, comps.vae, *comps.text_encoders):
            if m is not None:
                m.requires_grad_(False)
        return comps

    # ---------------------------------------------------------------------------------------- caching
    def encode_images(self, comps: Components, images: list[PreparedImage], resolution: int, flip: bool) -> LatentSet:
        import numpy as np
        import torch

        vae = comps.vae
        means, stds, fmeans, fstds = [], [], [], []
        with torch.no_grad():
            for img in images:
                arr = torch.from_numpy(np.asarray(img.image, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1.0
                pix = arr.unsqueeze(0)
                if flip:
                    pix = torch.cat([pix, torch.flip(pix, dims=[3])])
                dist = vae.encode(pix.to(vae.device, vae.dtype)).latent_dist
                means.append(dist.mean[:1].float().cpu())
                stds.append(dist.std[:1].float().cpu())
                if flip:
                    fmeans.append(dist.mean[1:].float().cpu())
                    fstds.append(dist.std[1:].float().cpu())
        time_ids = torch.stack([sdxl_time_ids(i.original_size, i.crop_top_left, resolution) for i in images])
        return LatentSet(
            torch.cat(means),
            torch.cat(stds),
            torch.cat(fmeans) if flip else None,
            torch.cat(fstds) if flip else None,
            time_ids,
        )

    def tokenize(self, comps: Components, prompt: str) -> list[torch.Tensor]:
        return [
            tok(
                prompt, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt"
            ).input_ids
            for tok in comps.tokenizers
        ]

    def encode_prompt(self, comps: Components, encoders: list[Any], token_ids: list[torch.Tensor]) -> dict:
        """{"embeds"} (SD 1.x/2.x: the last hidden state) or {"embeds", "pooled"} (SDXL: both encoders' penultimate
        hidden states side by side, and the second's projected pooled output), as the pipelines compute them."""
        import torch

        if not self.is_sdxl:
            te = encoders[0]
            return {"embeds": te(token_ids[0].to(_device_of(te)))[0]}
        embeds, pooled = [], None
        for te, ids in zip(encoders, token_ids, strict=True):
            out = te(ids.to(_device_of(te)), output_hidden_states=True)
            pooled = out[0]  # the last encoder (with projection) gives SDXL's pooled embedding
            embeds.append(out.hidden_states[-2])
        return {"embeds": torch.cat(embeds, dim=-1), "pooled": pooled}

    # ---------------------------------------------------------------------------------------- the step
    def num_train_timesteps(self, comps: Components) -> int:
        return comps.noise_scheduler.config.num_train_timesteps

    def draw_time(self, g, comps: Components, params: TrainParams) -> int:
        """A DDPM timestep, uniform over the scheduler's grid."""
        return uniform_timestep(g, self.num_train_timesteps(comps))

    def noisy_and_target(self, comps, latents, noise, times):
        """Latents shifted and scaled as the VAE config says, noised by DDPM ``add_noise``; the target is the
        noise (epsilon) or the velocity (v-prediction, SD 2.x 768)."""
        sched, vae_config = comps.noise_scheduler, comps.vae.config
        scaling, shift = vae_config.scaling_factor, getattr(vae_config, "shift_factor", None) or 0.0
        latents = (latents - shift) * scaling
        noisy = sched.add_noise(latents, noise, times)
        target = sched.get_velocity(latents, noise, times) if comps.prediction_type == "v_prediction" else noise
        return noisy, target

    def predict(self, comps, denoiser, noisy, times, cond, time_ids):
        kwargs = {}
        if self.is_sdxl:
            pooled = cond["pooled"]
            kwargs["added_cond_kwargs"] = {
                "text_embeds": pooled,
                "time_ids": time_ids.to(pooled.device, dtype=pooled.dtype),
            }
        return denoiser(noisy.to(comps.denoiser.dtype), times, cond["embeds"], **kwargs).sample

    def loss_weights(self, comps, times, params):
        """Min-SNR-gamma weights (Hang et al. 2023) when ``snr_gamma``: min(SNR, gamma) / SNR for epsilon,
        / (SNR + 1) for v-prediction."""
        if not params.snr_gamma:
            return None
        import torch

        a = comps.noise_scheduler.alphas_cumprod.to(times.device)[times]
        snr = a / (1 - a)
        if comps.prediction_type == "v_prediction":
            return torch.clamp(snr, max=params.snr_gamma) / (snr + 1)
        return torch.clamp(snr, max=params.snr_gamma) / snr

    # ---------------------------------------------------------------------------------------- LoRA
    def lora_targets(self, component: str) -> list[str]:
        return list(UNET_TARGETS if component == "unet" else TEXT_TARGETS)

    # ---------------------------------------------------------------------------------------- sampling
    def pipeline_class(self) -> type:
        from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

        return StableDiffusionXLPipeline if self.is_sdxl else StableDiffusionPipeline

    def build_pipeline(self, comps: Components, *, denoiser=None, text_encoders=None):
        """A pipeline sharing the live modules (no copies, no dtype casts) with a fast DPM-Solver scheduler."""
        from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

        unet = denoiser or comps.denoiser
        tes = text_encoders or comps.text_encoders
        sched = DPMSolverMultistepScheduler.from_config(comps.noise_scheduler.config)
        if self.is_sdxl:
            pipe = StableDiffusionXLPipeline(
                vae=comps.vae,
                text_encoder=tes[0],
                text_encoder_2=tes[1],
                tokenizer=comps.tokenizers[0],
                tokenizer_2=comps.tokenizers[1],
                unet=unet,
                scheduler=sched,
            )
        else:
            pipe = StableDiffusionPipeline(
                vae=comps.vae,
                text_encoder=tes[0],
                tokenizer=comps.tokenizers[0],
                unet=unet,
                scheduler=sched,
                safety_checker=None,
                feature_extractor=None,
                requires_safety_checker=False,
            )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def generate(self, pipe, comps, prompts, resolution, params, generator, acc, conds=None):
        """Denoise under autocast, then decode with the fp32 VAE outside autocast (fp16 SD/SDXL VAEs overflow)."""
        import torch
        from PIL import Image

        with torch.no_grad(), acc.autocast():
            latents = pipe(
                prompts,
                height=resolution,
                width=resolution,
                num_inference_steps=params.sample_inference_steps,
                generator=generator,
                output_type="latent",
                **self.sampling_defaults(),
            ).images
        with torch.no_grad(), torch.autocast(acc.device.type, enabled=False):
            vae = comps.vae
            shift = getattr(vae.config, "shift_factor", None) or 0.0
            z = latents.to(vae.device, torch.float32) / vae.config.scaling_factor + shift
            img = vae.decode(z).sample
        arr = ((img.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        return [Image.fromarray(a) for a in arr]

    # ---------------------------------------------------------------------------------------- outputs
    def extra_lora_outputs(self, out_dir, written: list[str]) -> list[str]:
        """The kohya/A1111 layout of the LoRA (for AUTOMATIC1111 and ComfyUI)."""
        from training.export.kohya import write_kohya_file

        out = Path(out_dir)
        write_kohya_file(out / written[0], out / KOHYA_NAME)
        return [KOHYA_NAME]

    def card_info(self, comps: Components) -> CardInfo:
        sdxl = self.is_sdxl
        return CardInfo(
            license="openrail++" if sdxl else "creativeml-openrail-m",
            tags=("stable-diffusion-xl" if sdxl else "stable-diffusion",),
            weight_notes={
                "pytorch_lora_weights.safetensors": "in diffusers format",
                KOHYA_NAME: "the same LoRA in the kohya/A1111 layout for AUTOMATIC1111 and ComfyUI",
            },
        )


def sdxl_time_ids(original_hw: tuple[int, int], crop_tl: tuple[int, int], resolution: int) -> torch.Tensor:
    """SDXL micro-conditioning: original size, crop top-left, target size."""
    import torch

    return torch.tensor([*original_hw, *crop_tl, resolution, resolution], dtype=torch.float32)


def uniform_timestep(g, n_timesteps: int) -> int:
    """A timestep uniform over [0, n_timesteps) from generator ``g``."""
    import torch

    return int(torch.randint(0, n_timesteps, (1,), generator=g))


def _device_of(module: Any):
    """The device of a module's first parameter (works through DDP wrappers, which have no ``.device``)."""
    return next(module.parameters()).device


def _parts(parts: Collection[str] | None):
    """``want(role)`` for ``load``'s ``parts`` (``training.families.base.LOAD_PARTS``)."""
    return (lambda role: True) if parts is None else (lambda role: role in parts)
