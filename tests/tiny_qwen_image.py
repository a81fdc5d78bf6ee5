"""A tiny random Qwen-Image pipeline built at test time (no download), and its pytest fixture.

Like ``tests/tiny_zimage.py``: a plain builder that saves an ordinary diffusers folder (safetensors) that
``QwenImagePipeline.from_pretrained`` loads like a Hub model, about 1 MB:

- a ``QwenImageTransformer2DModel`` of two blocks (two heads of 16 = RoPE axes 4 + 6 + 6, text width 16), in 64
  channels (16 x the 2x2 patch) and out 16, as the real one;
- a ``Qwen2_5_VLForConditionalGeneration`` of two text layers (multimodal RoPE sections 2 + 1 + 1) and a one-block
  vision tower the pipeline never calls, with the byte-level Qwen2 tokenizer of ``tests/tiny_flux.py`` plus the
  words of the pipeline's prompt template as tokens of their own, so its system turn is 34 tokens as with the real
  tokenizer (the pipeline drops exactly those);
- an ``AutoencoderKLQwenImage`` with 16 latent channels, one spatial downsample (scale factor 2, so a 32 px image
  is a 16 x 16 latent and 64 transformer tokens) and Qwen-Image's per-channel ``latents_mean`` / ``latents_std``;
- Qwen-Image's ``FlowMatchEulerDiscreteScheduler`` config (scheduler/scheduler_config.json of Qwen/Qwen-Image:
  dynamic exponential shift 0.5 .. 0.9 over 256 .. 8192 tokens, terminal sigma 0.02).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.tiny_flux import _qwen_tokenizer

__all__ = ["TEMPLATE_WORDS", "build_tiny_qwen_image", "build_tiny_qwen_image_edit", "qwen_image_scheduler"]

#: the tokens Qwen2.5-VL marks an image with in a prompt (the edit pipeline's "Picture 1: ..." turn)
VISION_TOKENS = ["<|vision_start|>", "<|image_pad|>", "<|vision_end|>"]

#: the tiny text encoder's width (the transformer's ``joint_attention_dim``)
QWEN_HIDDEN = 16
#: the words of ``QwenImagePipeline``'s prompt template that the real tokenizer keeps whole
TEMPLATE_WORDS = ["system", "Describe", " the", " image", " by", " detailing", " color", " shape", " size",
                  " texture", " quantity", " text", " spatial", " relationships", " of", " objects", " and",
                  " background", "user"]  # fmt: skip


def qwen_image_scheduler():
    """Qwen-Image's scheduler config: dynamic shift (its own base / max shift and lengths), terminal sigma 0.02."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=0.9,
        base_image_seq_len=256, max_image_seq_len=8192, shift_terminal=0.02, time_shift_type="exponential",
    )  # fmt: skip


def build_tiny_qwen_image(path: str | Path, seed: int = 0) -> Path:
    """Build a random tiny Qwen-Image-shaped pipeline and save it as a diffusers folder at ``path``."""
    from diffusers import AutoencoderKLQwenImage, QwenImagePipeline

    path = Path(path)
    if (path / "model_index.json").exists():
        return path
    tokenizer, text_encoder, transformer = _tiny_qwen_parts(path / "_tok_tmp", seed)
    vae = AutoencoderKLQwenImage(base_dim=8, z_dim=16, dim_mult=[1, 2], num_res_blocks=1, temperal_downsample=[False])
    pipe = QwenImagePipeline(scheduler=qwen_image_scheduler(), vae=vae, text_encoder=text_encoder,
                             tokenizer=tokenizer, transformer=transformer)  # fmt: skip
    pipe.save_pretrained(str(path), safe_serialization=True)
    shutil.rmtree(path / "_tok_tmp", ignore_errors=True)
    return path


def build_tiny_qwen_image_edit(path: str | Path, seed: int = 0) -> Path:
    """Build a random tiny Qwen-Image-Edit-shaped pipeline (``QwenImageEditPlusPipeline``: Qwen-Image's parts and a
    ``processor/`` folder as the Hub repos have it: Qwen2-VL's image processor config and the tokenizer, which knows
    the vision tokens) and save it as a diffusers folder at ``path``. ``Qwen2VLProcessor`` itself cannot be built
    here (its video part needs torchvision), so its folder is written from its two parts and ``model_index.json``
    names it as the real repos do. The VAE downsamples 8x (three levels): the pipeline encodes the source at about
    1024 x 1024 px whatever the output size, which is then 4,096 transformer tokens, not 65,536."""
    import json

    from diffusers import AutoencoderKLQwenImage, QwenImageEditPlusPipeline
    from transformers import Qwen2VLImageProcessorPil

    path = Path(path)
    if (path / "model_index.json").exists():
        return path
    tokenizer, text_encoder, transformer = _tiny_qwen_parts(path / "_tok_tmp", seed, vision_tokens=True)
    vae = AutoencoderKLQwenImage(base_dim=4, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                                 temperal_downsample=[False, False, False])  # fmt: skip
    pipe = QwenImageEditPlusPipeline(scheduler=qwen_image_scheduler(), vae=vae, text_encoder=text_encoder,
                                     tokenizer=tokenizer, processor=None, transformer=transformer)  # fmt: skip
    pipe.save_pretrained(str(path), safe_serialization=True)
    tokenizer.save_pretrained(str(path / "processor"))
    Qwen2VLImageProcessorPil().save_pretrained(str(path / "processor"))
    index = json.loads((path / "model_index.json").read_text())
    index["processor"] = ["transformers", "Qwen2VLProcessor"]
    (path / "model_index.json").write_text(json.dumps(index, indent=2))
    shutil.rmtree(path / "_tok_tmp", ignore_errors=True)
    return path


def _tiny_qwen_parts(tmp: Path, seed: int, vision_tokens: bool = False):
    """The tokenizer, Qwen2.5-VL text encoder and transformer both tiny Qwen-Image pipelines share."""
    import torch
    from diffusers import QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(seed)
    tokenizer = _qwen_tokenizer(tmp / "qwen")
    tokenizer.add_tokens(TEMPLATE_WORDS)
    ids = {}
    if vision_tokens:
        tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>", *VISION_TOKENS]})
        ids = dict(zip(("vision_start_token_id", "image_token_id", "vision_end_token_id"),
                       tokenizer.convert_tokens_to_ids(VISION_TOKENS), strict=True))  # fmt: skip
    text = {"vocab_size": len(tokenizer), "hidden_size": QWEN_HIDDEN, "intermediate_size": 32, "num_hidden_layers": 2,
            "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 2048,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 1, 1]},
            "pad_token_id": tokenizer.pad_token_id, "bos_token_id": None, "eos_token_id": tokenizer.eos_token_id}  # fmt: skip
    vision = {"depth": 1, "hidden_size": 16, "intermediate_size": 32, "num_heads": 2, "out_hidden_size": QWEN_HIDDEN,
              "fullatt_block_indexes": [0]}  # fmt: skip
    text_encoder = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(text_config=text, vision_config=vision, **ids))
    transformer = QwenImageTransformer2DModel(
        patch_size=2, in_channels=64, out_channels=16, num_layers=2, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=QWEN_HIDDEN, axes_dims_rope=(4, 6, 6),
    )  # fmt: skip
    return tokenizer, text_encoder, transformer


@pytest.fixture(scope="session")
def tiny_qwen_image(tmp_path_factory) -> Path:
    """Folder of a tiny random Qwen-Image-shaped pipeline (built once per session)."""
    return build_tiny_qwen_image(tmp_path_factory.mktemp("tiny-qwen-image") / "model")


@pytest.fixture(scope="session")
def tiny_qwen_image_edit(tmp_path_factory) -> Path:
    """Folder of a tiny random Qwen-Image-Edit-shaped pipeline (built once per session)."""
    return build_tiny_qwen_image_edit(tmp_path_factory.mktemp("tiny-qwen-image-edit") / "model")
