"""The model_index.json rules the model families share: the Stable Diffusion allow-lists and what a refused base
model is told. Standard library only, so the families and ``training.base_check`` (the CPU Space's check) both
import it without an import circle."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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
#: every kind of ``BaseModelProblem``
KINDS = ("invalid", "unreachable", "missing", "gated", "private", "not_a_pipeline", "not_allowed", "no_safetensors")


@dataclass(frozen=True)
class BaseModelProblem:
    """Why a base model cannot be used: ``kind`` (one of ``KINDS``), a message for people, and whether a later
    retry may succeed (only "unreachable")."""

    kind: str
    message: str
    retryable: bool = False


def is_sdxl_index(index: dict[str, Any]) -> bool:
    entry = index.get("text_encoder_2")
    return isinstance(entry, list) and bool(entry) and entry[0] is not None


def sd_component_names(index: dict[str, Any]) -> list[str]:
    """Every component the trainer loads for a Stable Diffusion pipeline with this ``model_index.json``."""
    sdxl = ["text_encoder_2", "tokenizer_2"] if is_sdxl_index(index) else []
    return ["unet", "vae", "scheduler", "text_encoder", "tokenizer", *sdxl]


def not_a_pipeline(base_model: str, why: str, what: str = "Stable Diffusion pipeline") -> BaseModelProblem:
    """The problem of a model_index.json that does not describe ``what`` (a family's pipeline, by its label)."""
    return BaseModelProblem("not_a_pipeline", f"base model {base_model!r} is not a diffusers {what} ({why})")
