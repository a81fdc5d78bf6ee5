"""Tiny random diffusion models built at test time, and their pytest fixtures.

Importable without pytest side effects: the builders (`build_tiny_sd`, `build_tiny_sdxl`) and `make_images` are plain
functions; the fixtures below only register when this module is loaded as a pytest plugin (conftest does that).
The models have random weights and tiny configs (a few MB), a character-level CLIP vocabulary with empty merges and
``model_max_length=77``, and are saved as ordinary diffusers pipeline folders that load like a Hub model.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import pytest

SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")
TINY_VOCAB_SIZE = 256


def _write_char_tokenizer(folder: Path) -> None:
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


def _text_config(hidden: int = 32, projection_dim: int = 32, act: str = "quick_gelu"):
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


def _tiny_vae():
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


def _scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000, clip_sample=False
    )


def _tiny_unet(**arch):
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
    """Build a random tiny Stable Diffusion 1.x-style pipeline and save it as a diffusers folder at ``path``."""
    import torch
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTextModel, CLIPTokenizer

    path = Path(path)
    if (path / "model_index.json").exists():
        return path
    torch.manual_seed(seed)
    unet = _tiny_unet(cross_attention_dim=32, attention_head_dim=8)
    vae = _tiny_vae()
    text_encoder = CLIPTextModel(_text_config())
    tok_dir = path / "_tok_tmp"
    _write_char_tokenizer(tok_dir)
    tokenizer = CLIPTokenizer.from_pretrained(str(tok_dir))
    pipe = StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(str(path), safe_serialization=True)
    _rmtree(tok_dir)
    return path


def build_tiny_sdxl(path: str | Path, seed: int = 0) -> Path:
    """Build a random tiny SDXL-style pipeline (two text encoders, text_time conditioning) saved at ``path``."""
    import torch
    from diffusers import StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    path = Path(path)
    if (path / "model_index.json").exists():
        return path
    torch.manual_seed(seed)
    unet = _tiny_unet(
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=80,  # 6 * addition_time_embed_dim + text_encoder_2 projection_dim
        cross_attention_dim=64,  # text_encoder hidden + text_encoder_2 hidden
    )
    tok_dir = path / "_tok_tmp"
    _write_char_tokenizer(tok_dir)
    pipe = StableDiffusionXLPipeline(
        unet=unet,
        vae=_tiny_vae(),
        text_encoder=CLIPTextModel(_text_config()),
        text_encoder_2=CLIPTextModelWithProjection(_text_config(act="gelu")),
        tokenizer=CLIPTokenizer.from_pretrained(str(tok_dir)),
        tokenizer_2=CLIPTokenizer.from_pretrained(str(tok_dir)),
        scheduler=_scheduler(),
    )
    pipe.save_pretrained(str(path), safe_serialization=True)
    _rmtree(tok_dir)
    return path


def _rmtree(p: Path) -> None:
    import shutil

    shutil.rmtree(p, ignore_errors=True)


def make_images(folder: str | Path, n: int, size: int = 64) -> list[Path]:
    """Write ``n`` distinct small photos into ``folder`` (PNG and JPEG; the first JPEG carries an EXIF rotation).

    The EXIF-rotated image is stored as ``size`` x ``size*3/4`` pixels with orientation 6 (rotate 90 degrees), so it
    is portrait once transposed.
    """
    import numpy as np
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1234 + n)
    paths: list[Path] = []
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(n):
        base = rng.uniform(40, 215, size=3)
        # A smooth gradient, a disc and mild noise: distinct, photo-like and compressible.
        img = np.stack([base[c] + 40 * np.sin((xx * (c + 1) + yy * (i + 1)) * np.pi) for c in range(3)], axis=-1)
        cx, cy, r = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.15, 0.3)
        disc = (xx - cx) ** 2 + (yy - cy) ** 2 < r**2
        img[disc] = rng.uniform(0, 255, size=3)
        img += rng.normal(0, 4, size=img.shape)
        arr = np.clip(img, 0, 255).astype(np.uint8)
        if i % 2 == 0:
            p = folder / f"img{i:02d}.png"
            Image.fromarray(arr).save(p)
        else:
            p = folder / f"img{i:02d}.jpg"
            pic = Image.fromarray(arr)
            if i == 1:
                pic = pic.crop((0, 0, size, size * 3 // 4))
                exif = Image.Exif()
                exif[0x0112] = 6  # Orientation: rotate 90 CW to display
                pic.save(p, quality=92, exif=exif)
            else:
                pic.save(p, quality=92)
        paths.append(p)
    return paths


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory) -> Path:
    """Folder of a tiny random SD 1.x-style diffusers pipeline (built once per session)."""
    return build_tiny_sd(tmp_path_factory.mktemp("tiny-sd") / "model")


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory) -> Path:
    """Folder of a tiny random SDXL-style diffusers pipeline (built once per session)."""
    return build_tiny_sdxl(tmp_path_factory.mktemp("tiny-sdxl") / "model")
