"""Tiny random diffusion models built at test time, and their pytest fixtures.

Importable without pytest side effects: the builders (`build_tiny_sd`, which is the demo model's builder in
``training.demo``, and `build_tiny_sdxl`) and `make_images` are plain functions; the fixtures below only register
when this module is loaded as a pytest plugin (conftest does that).
The models have random weights and tiny configs (a few MB), a character-level CLIP vocabulary with empty merges and
``model_max_length=77``, and are saved as ordinary diffusers pipeline folders that load like a Hub model.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from training.demo import build_tiny_sd, ddpm_scheduler, text_config, tiny_unet, tiny_vae, write_char_tokenizer

__all__ = ["DECOYS", "add_hub_layout", "build_tiny_sd", "build_tiny_sdxl", "make_images"]


def build_tiny_sdxl(path: str | Path, seed: int = 0) -> Path:
    """Build a random tiny SDXL-style pipeline (two text encoders, text_time conditioning) saved at ``path``."""
    import torch
    from diffusers import StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    path = Path(path)
    if (path / "model_index.json").exists():
        return path
    torch.manual_seed(seed)
    unet = tiny_unet(
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=80,  # 6 * addition_time_embed_dim + text_encoder_2 projection_dim
        cross_attention_dim=64,  # text_encoder hidden + text_encoder_2 hidden
    )
    tok_dir = path / "_tok_tmp"
    write_char_tokenizer(tok_dir)
    pipe = StableDiffusionXLPipeline(
        unet=unet,
        vae=tiny_vae(),
        text_encoder=CLIPTextModel(text_config()),
        text_encoder_2=CLIPTextModelWithProjection(text_config(act="gelu")),
        tokenizer=CLIPTokenizer.from_pretrained(str(tok_dir)),
        tokenizer_2=CLIPTokenizer.from_pretrained(str(tok_dir)),
        scheduler=ddpm_scheduler(),
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


#: files a real Stable Diffusion repo holds beside the ones training reads (never fetched): pickles, a root
#: single-file checkpoint, a safety checker, exports for other runtimes
DECOYS = {
    "v1-5-pruned-emaonly.safetensors": b"a single-file checkpoint: training never fetches it",
    "v1-5-pruned-emaonly.ckpt": b"a pickle: never fetched",
    "unet/diffusion_pytorch_model.bin": b"a pickle: never fetched",
    "unet/diffusion_pytorch_model.fp16.bin": b"a pickle: never fetched",
    "unet/diffusion_flax_model.msgpack": b"flax weights: never fetched",
    "unet/model.onnx": b"an ONNX export: never fetched",
    "vae/diffusion_pytorch_model.bin": b"a pickle: never fetched",
    "text_encoder/pytorch_model.bin": b"a pickle: never fetched",
    "text_encoder/pytorch_model.fp16.bin": b"a pickle: never fetched",
    "safety_checker/config.json": b"{}",
    "safety_checker/model.safetensors": b"safety checker weights: never fetched",
    "feature_extractor/preprocessor_config.json": b"{}",
}


def add_hub_layout(folder: str | Path, *, fp16: bool = True, decoys: bool = True) -> Path:
    """Make a saved pipeline folder look like a real Hub repo, in place. ``fp16``: every weights file gets its fp16
    variant (``<name>.fp16.safetensors``, the fp32 values rounded to fp16) and the UNet a non-EMA copy; ``decoys``:
    the ``DECOYS`` files, which training must never fetch."""
    import shutil

    from safetensors.torch import load_file, save_file

    folder = Path(folder)
    if fp16:
        for plain in sorted(folder.glob("*/*.safetensors")):
            if plain.name.count(".") != 1:  # already a variant
                continue
            half = {k: v.half() if v.is_floating_point() else v for k, v in load_file(str(plain)).items()}
            fp16_file = plain.with_name(plain.name.replace(".safetensors", ".fp16.safetensors"))
            save_file(half, str(fp16_file), metadata={"format": "pt"})
        unet = folder / "unet" / "diffusion_pytorch_model.safetensors"
        shutil.copyfile(unet, unet.with_name("diffusion_pytorch_model.non_ema.safetensors"))
    if decoys:
        for path, data in DECOYS.items():
            (folder / path).parent.mkdir(parents=True, exist_ok=True)
            (folder / path).write_bytes(data)
    return folder
