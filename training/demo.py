"""The built-in demo model: a tiny random Stable Diffusion 1.x-shaped pipeline, built on first use (no download).

It lets the whole loop (submit, progress, loss curve, samples, outputs, model card) run on any laptop CPU in about
a minute. Its weights are random and it produces noise: its VAE decodes every latent to about the same grey noise,
so not even the photos' colours come through.

``DEMO_STEPS`` = 100, measured here: a whole LoRA task on it via ``python -m training`` (3 photos at 64 px, 100 steps,
4 samples of 25 denoising steps, model card, weights, checkpoint) took 59 s wall clock on first use, building the
model included (4 s), on 2 CPU cores shared with other jobs (load average 4.5; torch 2.13 CPU). A quiet laptop CPU
is faster.

This module imports no torch or diffusers at import time (the CPU Space's form imports its constants).
"""

from __future__ import annotations

import json
import shutil
import string
import tempfile
from pathlib import Path

from contract.settings import DEMO_DIR_VAR, load_trainer_settings
from training.base_check import DEMO_MODEL

__all__ = ["DEMO_LABEL", "DEMO_MODEL", "DEMO_RESOLUTION", "DEMO_STEPS", "build_demo_model", "build_tiny_sd",
           "demo_model_dir", "resolve_demo"]  # fmt: skip

DEMO_LABEL = "Demo model (tiny and random: trains in about a minute on a CPU, produces noise)"
#: its native resolution (UNet sample size 32 x VAE scale factor 2)
DEMO_RESOLUTION = 64
#: steps the form defaults to for the demo model (see the module docstring for the measured time)
DEMO_STEPS = 100

SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")
TINY_VOCAB_SIZE = 256


def demo_model_dir() -> Path:
    """Where the demo model lives: ``$DREAMBOOTH_DEMO_DIR`` (the settings' ``demo_dir``), else
    ``~/.cache/dreambooth-trainer/demo-sd``. Read on each call: only this variable, so no other setting can stop it."""
    return load_trainer_settings(variables=(DEMO_DIR_VAR,)).demo_dir


def build_demo_model(path: str | Path | None = None) -> Path:
    """Build the demo model at ``path`` (default ``demo_model_dir()``) unless it is there already; return ``path``.

    Built into a temporary folder beside it and renamed into place, so a crash never leaves half a model."""
    path = Path(path) if path is not None else demo_model_dir()
    if (path / "model_index.json").is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-building-", dir=path.parent))
    try:
        build_tiny_sd(tmp / "model")
        try:
            (tmp / "model").rename(path)
        except OSError:  # another process finished first: keep theirs
            if not (path / "model_index.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def resolve_demo(base_model: str) -> str:
    """``DEMO_MODEL`` -> the demo model's folder (built on first use); any other base model unchanged."""
    if base_model != DEMO_MODEL:
        return base_model
    return str(build_demo_model())


# ---------------------------------------------------------------- the tiny model (also the tests' tiny_sd fixture)
def write_char_tokenizer(folder: Path) -> None:
    """Write a character-level CLIP tokenizer (vocab.json + empty merges.txt) into ``folder``."""
    from transformers import CLIPTokenizer

    chars = string.ascii_lowercase + string.digits + string.punctuation
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for c in chars:
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    assert len(vocab) <= TINY_VOCAB_SIZE
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)
    tok.save_pretrained(str(folder))


def text_config(hidden: int = 32, projection_dim: int = 32, act: str = "quick_gelu"):
    """A two-layer CLIP text encoder config over the character vocabulary."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=TINY_VOCAB_SIZE,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act=act,
        projection_dim=projection_dim,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )


def tiny_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=32,
        sample_size=64,
    )


def ddpm_scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000, clip_sample=False,
        steps_offset=1,  # as SD 1.x ships it (an older value makes every pipeline print a deprecation warning)
    )


def tiny_unet(**arch):
    """A two-block UNet (32 and 64 channels, one layer each); ``arch`` adds the SD- or SDXL-specific parts."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=32,
        **arch,
    )


def build_tiny_sd(path: str | Path, seed: int = 0) -> Path:
    """Build a random tiny Stable Diffusion 1.x-style pipeline and save it (safetensors) as a diffusers folder."""
    import torch
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTextModel, CLIPTokenizer

    path = Path(path)
    if (path / "model_index.json").exists():
        return path
    torch.manual_seed(seed)
    unet = tiny_unet(cross_attention_dim=32, attention_head_dim=8)
    vae = tiny_vae()
    text_encoder = CLIPTextModel(text_config())
    tok_dir = path / "_tok_tmp"
    write_char_tokenizer(tok_dir)
    tokenizer = CLIPTokenizer.from_pretrained(str(tok_dir))
    pipe = StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=ddpm_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(str(path), safe_serialization=True)
    shutil.rmtree(tok_dir, ignore_errors=True)
    return path
