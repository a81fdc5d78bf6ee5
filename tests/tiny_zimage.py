"""A tiny random Z-Image pipeline built at test time (no download), and its pytest fixture.

Like ``tests/tiny_flux.py``: a plain builder that saves an ordinary diffusers folder (safetensors) that
``ZImagePipeline.from_pretrained`` loads like a Hub model, about 4 MB: a ``ZImageTransformer2DModel`` of one layer
and one noise / context refiner each (dim 32, two heads of 16 = RoPE axes 4 + 6 + 6), a two-layer ``Qwen3Model`` text
encoder (the pipeline reads its second-to-last hidden state) with the byte-level Qwen2 tokenizer of
``tests/tiny_flux.py`` (its chat template adds an empty think block only when ``enable_thinking`` is off), an
``AutoencoderKL`` with 16 latent channels and FLUX.1's scaling / shift factors, and Z-Image's
``FlowMatchEulerDiscreteScheduler`` config (static shift 3). The VAE has two blocks (scale factor 2), so a 32 px
image is a 16 x 16 latent and 64 transformer tokens.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.tiny_flux import FLUX1_SCALING, FLUX1_SHIFT, _qwen_tokenizer, _two_block_vae_args

__all__ = ["build_tiny_zimage", "zimage_scheduler"]

#: the tiny text encoder's width (the transformer's ``cap_feat_dim``)
QWEN_HIDDEN = 16


def zimage_scheduler():
    """Z-Image's scheduler config (scheduler/scheduler_config.json of Tongyi-MAI/Z-Image-Turbo): static shift 3."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False)


def build_tiny_zimage(path: str | Path, seed: int = 0) -> Path:
    """Build a random tiny Z-Image-shaped pipeline and save it as a diffusers folder at ``path``."""
    import torch
    from diffusers import AutoencoderKL, ZImagePipeline, ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    path = Path(path)
    if (path / "model_index.json").exists():
        return path
    torch.manual_seed(seed)
    tmp = path / "_tok_tmp"
    tokenizer = _qwen_tokenizer(tmp / "qwen")
    text_encoder = Qwen3Model(
        Qwen3Config(
            vocab_size=len(tokenizer), hidden_size=QWEN_HIDDEN, intermediate_size=32, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=1024,
            pad_token_id=tokenizer.pad_token_id,
        )
    )  # fmt: skip
    transformer = ZImageTransformer2DModel(
        in_channels=16, dim=32, n_layers=1, n_refiner_layers=1, n_heads=2, n_kv_heads=2, cap_feat_dim=QWEN_HIDDEN,
        axes_dims=[4, 6, 6], axes_lens=[1024, 64, 64],
    )  # fmt: skip
    with torch.no_grad():  # the pad tokens start at zero; random ones, so they are not a constant the tests miss
        transformer.x_pad_token.normal_()
        transformer.cap_pad_token.normal_()
    vae = AutoencoderKL(
        **_two_block_vae_args(), latent_channels=16, use_quant_conv=False, use_post_quant_conv=False,
        scaling_factor=FLUX1_SCALING, shift_factor=FLUX1_SHIFT,
    )  # fmt: skip
    pipe = ZImagePipeline(
        scheduler=zimage_scheduler(), vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer
    )
    pipe.save_pretrained(str(path), safe_serialization=True)
    shutil.rmtree(tmp, ignore_errors=True)
    return path


@pytest.fixture(scope="session")
def tiny_zimage(tmp_path_factory) -> Path:
    """Folder of a tiny random Z-Image-shaped pipeline (built once per session)."""
    return build_tiny_zimage(tmp_path_factory.mktemp("tiny-zimage") / "model")
