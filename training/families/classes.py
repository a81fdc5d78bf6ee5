"""The fixed table from an allow-listed class name to the Python class (nothing is looked up by a repo's string).

Every name a built-in family allows is here; a family with other classes overrides ``ModelFamily.component_class``
(or adds to ``EXTRA``). Imported lazily: the libraries load only when a class is asked for.
"""

from __future__ import annotations

#: class name -> (module, attribute)
TABLE: dict[str, tuple[str, str]] = {
    # diffusers models
    "UNet2DConditionModel": ("diffusers", "UNet2DConditionModel"),
    "AutoencoderKL": ("diffusers", "AutoencoderKL"),
    "AutoencoderKLFlux2": ("diffusers", "AutoencoderKLFlux2"),
    "FluxTransformer2DModel": ("diffusers", "FluxTransformer2DModel"),
    "Flux2Transformer2DModel": ("diffusers", "Flux2Transformer2DModel"),
    "ZImageTransformer2DModel": ("diffusers", "ZImageTransformer2DModel"),
    "QwenImageTransformer2DModel": ("diffusers", "QwenImageTransformer2DModel"),
    "AutoencoderKLQwenImage": ("diffusers", "AutoencoderKLQwenImage"),
    # diffusers schedulers (tokenizers and schedulers hold no weights)
    "DDPMScheduler": ("diffusers", "DDPMScheduler"),
    "FlowMatchEulerDiscreteScheduler": ("diffusers", "FlowMatchEulerDiscreteScheduler"),
    # transformers text encoders and tokenizers
    "CLIPTextModel": ("transformers", "CLIPTextModel"),
    "CLIPTextModelWithProjection": ("transformers", "CLIPTextModelWithProjection"),
    "CLIPTokenizer": ("transformers", "CLIPTokenizer"),
    "CLIPTokenizerFast": ("transformers", "CLIPTokenizerFast"),
    "T5EncoderModel": ("transformers", "T5EncoderModel"),
    "T5TokenizerFast": ("transformers", "T5TokenizerFast"),
    "T5Tokenizer": ("transformers", "T5Tokenizer"),
    "Qwen3ForCausalLM": ("transformers", "Qwen3ForCausalLM"),
    "Qwen3Model": ("transformers", "Qwen3Model"),
    "Qwen2_5_VLForConditionalGeneration": ("transformers", "Qwen2_5_VLForConditionalGeneration"),
    "Qwen2TokenizerFast": ("transformers", "Qwen2TokenizerFast"),
    "Qwen2Tokenizer": ("transformers", "Qwen2Tokenizer"),
}
#: more entries a customizer's family may add (same form as ``TABLE``)
EXTRA: dict[str, tuple[str, str]] = {}


def component_class(class_name: str) -> type:
    """The class for ``class_name`` from the fixed tables; ``KeyError`` for anything else."""
    import importlib

    module, attr = {**TABLE, **EXTRA}[class_name]
    return getattr(importlib.import_module(module), attr)
