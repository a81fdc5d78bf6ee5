"""Loading Stable Diffusion 1.x/2.x and SDXL pipeline parts from a Hub repo id or a local folder, and using them.

A base model is untrusted input. Its id must be an existing folder or a valid Hub repo id; its ``model_index.json``
may only name the pipeline and component classes allowed below (looked up in fixed tables, never imported by the
name read from the repo); weights load from ``.safetensors`` only (``.bin``/``.ckpt`` pickles can run code); no
remote code, no custom pipeline.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from training.exitcodes import BadInputError

PIPELINES = frozenset({"StableDiffusionPipeline", "StableDiffusionXLPipeline", "StableDiffusionImg2ImgPipeline",
                       "StableDiffusionXLImg2ImgPipeline"})  # fmt: skip
TEXT_ENCODERS = frozenset({"CLIPTextModel", "CLIPTextModelWithProjection"})
TOKENIZERS = frozenset({"CLIPTokenizer", "CLIPTokenizerFast"})
SCHEDULERS = frozenset({
    "DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "LMSDiscreteScheduler", "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler", "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler",
    "DPMSolverSDEScheduler", "DEISMultistepScheduler", "UniPCMultistepScheduler", "HeunDiscreteScheduler",
    "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler",
})  # fmt: skip
#: component -> (library, allowed classes) for every part the trainer loads
ALLOWED_COMPONENTS: dict[str, tuple[str, frozenset[str]]] = {
    "unet": ("diffusers", frozenset({"UNet2DConditionModel"})),
    "vae": ("diffusers", frozenset({"AutoencoderKL"})),
    "scheduler": ("diffusers", SCHEDULERS),
    "text_encoder": ("transformers", TEXT_ENCODERS),
    "text_encoder_2": ("transformers", TEXT_ENCODERS),
    "tokenizer": ("transformers", TOKENIZERS),
    "tokenizer_2": ("transformers", TOKENIZERS),
}
WEIGHT_COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")


@dataclass
class ModelInfo:
    """What the trainer needs to know about a base model before loading any weights."""

    base_model: str
    index: dict[str, Any]
    unet_config: dict[str, Any]
    vae_config: dict[str, Any]

    @property
    def is_sdxl(self) -> bool:
        entry = self.index.get("text_encoder_2")
        return isinstance(entry, list) and bool(entry) and entry[0] is not None

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae_config.get("block_out_channels", [1, 1, 1, 1])) - 1)

    @property
    def native_resolution(self) -> int:
        return int(self.unet_config.get("sample_size", 64)) * self.vae_scale_factor

    @property
    def text_encoder_names(self) -> list[str]:
        return ["text_encoder", "text_encoder_2"] if self.is_sdxl else ["text_encoder"]

    @property
    def component_names(self) -> list[str]:
        """Every component the trainer loads."""
        sdxl = ["text_encoder_2", "tokenizer_2"] if self.is_sdxl else []
        return ["unet", "vae", "scheduler", "text_encoder", "tokenizer", *sdxl]


def _not_a_pipeline(base_model: str, why: str) -> BadInputError:
    return BadInputError(f"base model {base_model!r} is not a diffusers Stable Diffusion pipeline ({why})")


def check_base_model_id(base_model: str) -> bool:
    """True for an existing local folder, False for a valid Hub repo id; ``BadInputError`` for anything else."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if not isinstance(base_model, str) or not base_model.strip():
        raise BadInputError("base model is empty: give a Hub repo id (namespace/name) or a local folder")
    if Path(base_model).is_dir():
        return True
    try:
        validate_repo_id(base_model)
    except HFValidationError as e:
        raise _not_a_pipeline(base_model, f"no such local folder, and not a valid Hub repo id: {e}") from e
    return False


def _read_json(base_model: str, filename: str) -> dict[str, Any]:
    local = Path(base_model)
    if local.is_dir():
        path = local / filename
    else:
        from huggingface_hub import hf_hub_download

        path = Path(hf_hub_download(base_model, filename))
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, ValueError) as e:
        raise _not_a_pipeline(base_model, f"{filename} is not valid JSON") from e
    if not isinstance(data, dict):
        raise _not_a_pipeline(base_model, f"{filename} is not a JSON object")
    return data


def check_component(base_model: str, index: dict[str, Any], name: str) -> str:
    """The class ``model_index.json`` names for component ``name`` if it is allow-listed; else ``BadInputError``."""
    library, allowed = ALLOWED_COMPONENTS[name]
    entry = index.get(name)
    if not (isinstance(entry, list) and len(entry) == 2 and all(isinstance(x, str) for x in entry)):
        raise _not_a_pipeline(base_model, f"model_index.json has no usable {name!r} entry: {entry!r}")
    if entry[0] != library or entry[1] not in allowed:
        raise BadInputError(
            f"base model {base_model!r}: component {name!r} is {entry[0]}.{entry[1]}, which is not allowed "
            f"(allowed: {', '.join(f'{library}.{c}' for c in sorted(allowed))})"
        )
    return entry[1]


def _check_index(info: ModelInfo) -> None:
    """The pipeline class and every component the trainer loads must be on the allow-lists."""
    base_model, index = info.base_model, info.index
    if "unet" not in index or "text_encoder" not in index:
        raise BadInputError(f"base model {base_model!r} has no UNet/text encoder (only SD 1.x/2.x and SDXL train here)")
    pipeline = index.get("_class_name")
    if not isinstance(pipeline, str) or pipeline not in PIPELINES:
        raise BadInputError(
            f"base model {base_model!r}: pipeline {pipeline!r} is not allowed (custom pipelines are refused; "
            f"allowed: {', '.join(sorted(PIPELINES))})"
        )
    for name in info.component_names:
        check_component(base_model, index, name)


def _check_safetensors(base_model: str, components: list[str], local: bool) -> None:
    """Each weight-bearing component folder must hold ``.safetensors`` weights (others are never loaded)."""
    if local:
        have = {c for c in components if any((Path(base_model) / c).glob("*.safetensors"))}
    else:
        from huggingface_hub import HfApi

        files = HfApi().list_repo_files(base_model)
        have = {f.split("/")[0] for f in files if f.count("/") == 1 and f.endswith(".safetensors")}
    for name in components:
        if name not in have:
            raise BadInputError(
                f"base model {base_model!r}: component {name!r} has no .safetensors weights; safetensors are required "
                "(pickle-based .bin/.ckpt weights are never loaded)"
            )


def inspect_base_model(base_model: str) -> ModelInfo:
    """Check the id, model_index.json (allow-listed classes), the weight files (safetensors) and read the UNet/VAE
    configs; ``BadInputError`` if it is not a usable SD/SDXL pipeline. Downloads no weights."""
    from huggingface_hub.errors import EntryNotFoundError, HFValidationError, RepositoryNotFoundError

    local = check_base_model_id(base_model)
    try:
        info = ModelInfo(base_model, _read_json(base_model, "model_index.json"), {}, {})
        _check_index(info)
        _check_safetensors(base_model, [c for c in WEIGHT_COMPONENTS if c in info.component_names], local)
        info.unet_config = _read_json(base_model, "unet/config.json")
        info.vae_config = _read_json(base_model, "vae/config.json")
    except (RepositoryNotFoundError, EntryNotFoundError, HFValidationError, FileNotFoundError) as e:
        raise _not_a_pipeline(base_model, "repo or files missing") from e
    return info


def _transformers_class(name: str) -> type:
    """The transformers class for an allow-listed name (a fixed table: nothing is looked up by a repo's string)."""
    import transformers

    table = {
        "CLIPTextModel": transformers.CLIPTextModel,
        "CLIPTextModelWithProjection": transformers.CLIPTextModelWithProjection,
        "CLIPTokenizer": transformers.CLIPTokenizer,
        "CLIPTokenizerFast": transformers.CLIPTokenizerFast,
    }
    return table[name]


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
    """Load UNet, VAE (always fp32: fp16 SD/SDXL VAEs overflow), text encoders, tokenizers and the DDPM scheduler.

    Weights from safetensors only; classes from the allow-list only (tokenizers and the scheduler hold no weights).
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    src, index = info.base_model, info.index
    for name in info.component_names:  # again here: ``info`` may not come from inspect_base_model
        check_component(src, index, name)
    unet = UNet2DConditionModel.from_pretrained(src, subfolder="unet", torch_dtype=unet_dtype, use_safetensors=True)
    vae = AutoencoderKL.from_pretrained(src, subfolder="vae", torch_dtype=torch.float32, use_safetensors=True)
    encoders, tokenizers = [], []
    for i, name in enumerate(info.text_encoder_names):
        cls = _transformers_class(index[name][1])  # allow-listed just above
        encoders.append(cls.from_pretrained(src, subfolder=name, torch_dtype=text_dtype, use_safetensors=True))
        tok_name = "tokenizer" if i == 0 else f"tokenizer_{i + 1}"
        tok_cls = _transformers_class(index[tok_name][1])
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
