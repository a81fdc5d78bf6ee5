"""Loading Stable Diffusion 1.x/2.x and SDXL pipeline parts from a Hub repo id or a local folder, and using them."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from training.exitcodes import BadInputError


@dataclass
class ModelInfo:
    """What the trainer needs to know about a base model before loading any weights."""

    base_model: str
    index: dict[str, Any]
    unet_config: dict[str, Any]
    vae_config: dict[str, Any]

    @property
    def is_sdxl(self) -> bool:
        return "text_encoder_2" in self.index and self.index.get("text_encoder_2", [None])[0] is not None

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae_config.get("block_out_channels", [1, 1, 1, 1])) - 1)

    @property
    def native_resolution(self) -> int:
        return int(self.unet_config.get("sample_size", 64)) * self.vae_scale_factor

    @property
    def text_encoder_names(self) -> list[str]:
        return ["text_encoder", "text_encoder_2"] if self.is_sdxl else ["text_encoder"]


def _read_json(base_model: str, filename: str) -> dict[str, Any]:
    local = Path(base_model)
    if local.is_dir():
        path = local / filename
    else:
        from huggingface_hub import hf_hub_download

        path = Path(hf_hub_download(base_model, filename))
    return json.loads(path.read_text())


def inspect_base_model(base_model: str) -> ModelInfo:
    """Read model_index.json and the UNet/VAE configs; ``BadInputError`` if it is not a usable SD/SDXL pipeline."""
    from huggingface_hub.errors import EntryNotFoundError, HFValidationError, RepositoryNotFoundError

    try:
        index = _read_json(base_model, "model_index.json")
        unet = _read_json(base_model, "unet/config.json")
        vae = _read_json(base_model, "vae/config.json")
    except (RepositoryNotFoundError, EntryNotFoundError, HFValidationError, FileNotFoundError) as e:
        raise BadInputError(
            f"base model {base_model!r} is not a diffusers Stable Diffusion pipeline (repo or files missing)"
        ) from e
    if "unet" not in index or "text_encoder" not in index:
        raise BadInputError(f"base model {base_model!r} has no UNet/text encoder (only SD 1.x/2.x and SDXL train here)")
    return ModelInfo(base_model, index, unet, vae)


@dataclass
class Components:
    """The loaded parts of a pipeline. Text encoders and tokenizers are lists (two for SDXL)."""

    info: ModelInfo
    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoders: list[torch.nn.Module]
    tokenizers: list[Any]
    noise_scheduler: Any
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_sdxl(self) -> bool:
        return self.info.is_sdxl

    @property
    def prediction_type(self) -> str:
        return self.noise_scheduler.config.prediction_type


def load_components(info: ModelInfo, *, unet_dtype: torch.dtype, text_dtype: torch.dtype) -> Components:
    """Load UNet, VAE (always fp32: fp16 SD/SDXL VAEs overflow), text encoders, tokenizers and the DDPM scheduler."""
    import transformers
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    src = info.base_model
    unet = UNet2DConditionModel.from_pretrained(src, subfolder="unet", torch_dtype=unet_dtype)
    vae = AutoencoderKL.from_pretrained(src, subfolder="vae", torch_dtype=torch.float32)
    encoders, tokenizers = [], []
    for i, name in enumerate(info.text_encoder_names):
        cls = getattr(transformers, info.index[name][1])
        encoders.append(cls.from_pretrained(src, subfolder=name, torch_dtype=text_dtype))
        tok_name = "tokenizer" if i == 0 else f"tokenizer_{i + 1}"
        tok_cls = getattr(transformers, info.index[tok_name][1])
        tokenizers.append(tok_cls.from_pretrained(src, subfolder=tok_name))
    scheduler = DDPMScheduler.from_pretrained(src, subfolder="scheduler")
    for m in (unet, vae, *encoders):
        m.requires_grad_(False)
    return Components(info, unet, vae, encoders, tokenizers, scheduler)


def tokenize(components: Components, prompt: str) -> list[torch.Tensor]:
    """Token ids ([1, max_len]) of ``prompt`` for each text encoder."""
    return [
        tok(prompt, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids
        for tok in components.tokenizers
    ]


def encode_tokens(components: Components, token_ids: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Prompt embeddings (and SDXL's pooled embedding) from token ids, as the matching pipeline computes them."""
    if not components.is_sdxl:
        te = components.text_encoders[0]
        return te(token_ids[0].to(te.device))[0], None
    embeds, pooled = [], None
    for te, ids in zip(components.text_encoders, token_ids, strict=True):
        out = te(ids.to(te.device), output_hidden_states=True)
        pooled = out[0]  # the last encoder (with projection) gives SDXL's pooled embedding
        embeds.append(out.hidden_states[-2])
    return torch.cat(embeds, dim=-1), pooled


def sdxl_time_ids(original_hw: tuple[int, int], crop_tl: tuple[int, int], resolution: int) -> torch.Tensor:
    """SDXL micro-conditioning: original size, crop top-left, target size."""
    return torch.tensor([*original_hw, *crop_tl, resolution, resolution], dtype=torch.float32)


def build_pipeline(components: Components, *, unet: torch.nn.Module | None = None, text_encoders=None):
    """An inference pipeline sharing the live modules (no copies, no dtype casts) with a fast DPM-Solver scheduler."""
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    unet = unet or components.unet
    tes = text_encoders or components.text_encoders
    sched = DPMSolverMultistepScheduler.from_config(components.noise_scheduler.config)
    if components.is_sdxl:
        pipe = StableDiffusionXLPipeline(
            vae=components.vae,
            text_encoder=tes[0],
            text_encoder_2=tes[1],
            tokenizer=components.tokenizers[0],
            tokenizer_2=components.tokenizers[1],
            unet=unet,
            scheduler=sched,
        )
    else:
        pipe = StableDiffusionPipeline(
            vae=components.vae,
            text_encoder=tes[0],
            tokenizer=components.tokenizers[0],
            unet=unet,
            scheduler=sched,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def pipeline_class(components: Components):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    return StableDiffusionXLPipeline if components.is_sdxl else StableDiffusionPipeline
