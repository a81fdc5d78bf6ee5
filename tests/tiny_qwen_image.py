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

__all__ = ["TEMPLATE_WORDS", "build_tiny_qwen_image", "qwen_image_scheduler"]

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
    import torch
    from diffusers import AutoencoderKLQwenImage, QwenImagePipeline, QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    path = Path(path)
    if (path / "model_index.json").exists():
        return path
    torch.manual_seed(seed)
    tmp = path / "_tok_tmp"
    tokenizer = _qwen_tokenizer(tmp / "qwen")
    tokenizer.add_tokens(TEMPLATE_WORDS)
    text = {"vocab_size": len(tokenizer), "hidden_size": QWEN_HIDDEN, "intermediate_size": 32, "num_hidden_layers": 2,
            "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 2048,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 1, 1]},
            "pad_token_id": tokenizer.pad_token_id, "bos_token_id": None, "eos_token_id": tokenizer.eos_token_id}  # fmt: skip
    vision = {"depth": 1, "hidden_size": 16, "intermediate_size": 32, "num_heads": 2, "out_hidden_size": QWEN_HIDDEN,
              "fullatt_block_indexes": [0]}  # fmt: skip
    text_encoder = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(text_config=text, vision_config=vision))
    transformer = QwenImageTransformer2DModel(
        patch_size=2, in_channels=64, out_channels=16, num_layers=2, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=QWEN_HIDDEN, axes_dims_rope=(4, 6, 6),
    )  # fmt: skip
    vae = AutoencoderKLQwenImage(base_dim=8, z_dim=16, dim_mult=[1, 2], num_res_blocks=1, temperal_downsample=[False])
    pipe = QwenImagePipeline(scheduler=qwen_image_scheduler(), vae=vae, text_encoder=text_encoder,
                             tokenizer=tokenizer, transformer=transformer)  # fmt: skip
    pipe.save_pretrained(str(path), safe_serialization=True)
    shutil.rmtree(tmp, ignore_errors=True)
    return path


@pytest.fixture(scope="session")
def tiny_qwen_image(tmp_path_factory) -> Path:
    """Folder of a tiny random Qwen-Image-shaped pipeline (built once per session)."""
    return build_tiny_qwen_image(tmp_path_factory.mktemp("tiny-qwen-image") / "model")
