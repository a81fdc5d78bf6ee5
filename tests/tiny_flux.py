"""Tiny random Flux.1 and Flux.2 [klein] pipelines built at test time (no download), and their pytest fixtures.

Like ``tests/tiny_models.py``: plain builders that save ordinary diffusers pipeline folders (safetensors) that
``FluxPipeline.from_pretrained`` / ``Flux2KleinPipeline.from_pretrained`` load like a Hub model, a few MB each.

- Flux.1 ([dev]-shaped): ``FluxTransformer2DModel`` with the guidance embedding, in_channels 4 x 16 (packed 2x2
  latents), a character-level CLIP text encoder (pooled conditioning) and a tiny T5 encoder over a Unigram
  vocabulary, an ``AutoencoderKL`` with 16 latent channels, no quant convs and FLUX.1's scaling/shift factors, and
  FLUX.1's ``FlowMatchEulerDiscreteScheduler`` config (dynamic shift).
- Flux.2 [klein] (base-shaped, not step-distilled): ``Flux2Transformer2DModel`` without guidance embedding,
  in_channels 4 x 32, ``AutoencoderKLFlux2`` (32 latent channels, batch-norm statistics over the 2x2 patches, set to
  non-trivial values so the normalisation matters), a Qwen3 causal LM of 28 tiny layers (the pipeline reads hidden
  states 9, 18 and 27) and a byte-level Qwen2 tokenizer with a chat template.

The VAEs have two blocks (scale factor 2), so a 32 px image is a 16 x 16 latent and 64 transformer tokens.
"""

from __future__ import annotations

import string
from pathlib import Path

import pytest

__all__ = ["build_tiny_flux1", "build_tiny_flux2_klein", "flux1_scheduler", "klein_scheduler"]

#: FLUX.1 [dev]'s VAE latent normalisation (vae/config.json of black-forest-labs/FLUX.1-dev)
FLUX1_SCALING, FLUX1_SHIFT = 0.3611, 0.1159


def flux1_scheduler():
    """FLUX.1 [dev]'s scheduler config (dynamic, resolution-dependent shift)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096,
    )  # fmt: skip


def klein_scheduler():
    """The FLUX.2 [klein] scheduler config (dynamic shift; the pipeline picks mu empirically)."""
    return flux1_scheduler()


def _t5_tokenizer(folder: Path):
    """A T5 fast tokenizer over a character Unigram vocabulary (``</s>`` appended, ``<pad>`` = 0)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import T5TokenizerFast

    chars = string.ascii_lowercase + string.digits + string.punctuation
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -1.0)]
    vocab += [(c, -2.0) for c in chars] + [("\u2581" + c, -2.5) for c in chars]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    t5 = T5TokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", extra_ids=0, model_max_length=512
    )
    t5.save_pretrained(str(folder))
    return T5TokenizerFast.from_pretrained(str(folder)), len(vocab)


#: Qwen3's chat template, reduced to what Flux2KleinPipeline uses (user turn, generation prompt, thinking off)
QWEN_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)


def _qwen_tokenizer(folder: Path):
    """A byte-level BPE Qwen2 fast tokenizer (256 byte tokens, no merges) with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import Qwen2TokenizerFast

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    qwen = Qwen2TokenizerFast(
        tokenizer_object=tok, unk_token=None, bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    qwen.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    qwen.chat_template = QWEN_CHAT_TEMPLATE
    qwen.save_pretrained(str(folder))
    return Qwen2TokenizerFast.from_pretrained(str(folder))


def _two_block_vae_args() -> dict:
    return {
        "block_out_channels": (32, 64),
        "down_block_types": ("DownEncoderBlock2D", "DownEncoderBlock2D"),
        "up_block_types": ("UpDecoderBlock2D", "UpDecoderBlock2D"),
        "layers_per_block": 1,
        "norm_num_groups": 32,
        "sample_size": 64,
    }


def build_tiny_flux1(path: str | Path, seed: int = 0) -> Path:
    """Build a random tiny FLUX.1 [dev]-shaped pipeline and save it as a diffusers folder at ``path``."""
    import shutil

    import torch
    from diffusers import AutoencoderKL, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel

    from training.demo import text_config, write_char_tokenizer

    path = Path(path)
    if (path / "model_index.json").exists():
        return path
    torch.manual_seed(seed)
    tmp = path / "_tok_tmp"
    write_char_tokenizer(tmp / "clip")
    t5_tok, t5_vocab = _t5_tokenizer(tmp / "t5")
    t5 = T5EncoderModel(
        T5Config(vocab_size=t5_vocab, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, decoder_start_token_id=0)
    )
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(4, 6, 6),
    )  # fmt: skip
    vae = AutoencoderKL(
        **_two_block_vae_args(), latent_channels=16, use_quant_conv=False, use_post_quant_conv=False,
        scaling_factor=FLUX1_SCALING, shift_factor=FLUX1_SHIFT,
    )  # fmt: skip
    pipe = FluxPipeline(
        scheduler=flux1_scheduler(),
        vae=vae,
        text_encoder=CLIPTextModel(text_config()),
        tokenizer=CLIPTokenizer.from_pretrained(str(tmp / "clip")),
        text_encoder_2=t5,
        tokenizer_2=t5_tok,
        transformer=transformer,
    )
    pipe.save_pretrained(str(path), safe_serialization=True)
    shutil.rmtree(tmp, ignore_errors=True)
    return path


#: Flux2KleinPipeline stacks the Qwen3 hidden states 9, 18 and 27: the text encoder needs 28 layers
QWEN_LAYERS = 28
QWEN_HIDDEN = 16


def build_tiny_flux2_klein(path: str | Path, seed: int = 0) -> Path:
    """Build a random tiny FLUX.2 [klein]-shaped pipeline (base, not distilled) saved as a diffusers folder."""
    import shutil

    import torch
    from diffusers import AutoencoderKLFlux2, Flux2KleinPipeline, Flux2Transformer2DModel
    from transformers import Qwen3Config, Qwen3ForCausalLM

    path = Path(path)
    if (path / "model_index.json").exists():
        return path
    torch.manual_seed(seed)
    tmp = path / "_tok_tmp"
    tokenizer = _qwen_tokenizer(tmp / "qwen")
    text_encoder = Qwen3ForCausalLM(
        Qwen3Config(
            vocab_size=len(tokenizer), hidden_size=QWEN_HIDDEN, intermediate_size=32, num_hidden_layers=QWEN_LAYERS,
            num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=1024,
            tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
        )
    )  # fmt: skip
    transformer = Flux2Transformer2DModel(
        patch_size=1, in_channels=128, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=3 * QWEN_HIDDEN, timestep_guidance_channels=32, mlp_ratio=3.0, axes_dims_rope=(4, 4, 4, 4),
        guidance_embeds=False,
    )  # fmt: skip
    vae = AutoencoderKLFlux2(**_two_block_vae_args(), latent_channels=32)
    with torch.no_grad():  # statistics as a trained VAE has them (not 0 / 1), so the normalisation is exercised
        vae.bn.running_mean.uniform_(-0.5, 0.5)
        vae.bn.running_var.uniform_(0.5, 2.0)
    pipe = Flux2KleinPipeline(
        scheduler=klein_scheduler(), vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer,
        is_distilled=False,
    )  # fmt: skip
    pipe.save_pretrained(str(path), safe_serialization=True)
    shutil.rmtree(tmp, ignore_errors=True)
    return path


@pytest.fixture(scope="session")
def tiny_flux1(tmp_path_factory) -> Path:
    """Folder of a tiny random FLUX.1 [dev]-shaped pipeline (built once per session)."""
    return build_tiny_flux1(tmp_path_factory.mktemp("tiny-flux1") / "model")


@pytest.fixture(scope="session")
def tiny_flux2_klein(tmp_path_factory) -> Path:
    """Folder of a tiny random FLUX.2 [klein]-shaped pipeline (built once per session)."""
    return build_tiny_flux2_klein(tmp_path_factory.mktemp("tiny-flux2-klein") / "model")
