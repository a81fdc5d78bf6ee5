"""Random-weight full-size SD 1.5 / SDXL diffusers folders for the benchmarks (shapes: ../shared/benchmarks/README.md).

Two layouts:

- ``build_full_size``: the speed benchmark's folder, built on the GPU when there is one, saved in fp16 under the
  plain file names.
- ``build_full_size_with_variants``: the real repos' layout, both the plain fp32 weight files and the ``fp16``
  variant files (``*.fp16.safetensors``), built on the CPU with low memory: the modules are made in fp16 and the
  fp32 files are written from the fp16 ones one tensor at a time (SDXL's fp32 UNet alone is 10 GB).
"""

from __future__ import annotations

import contextlib
import json
import string
from collections.abc import Iterator
from pathlib import Path

SHAPES = ("sd15", "sdxl")
VARIANT = "fp16"
#: diffusers shards above 10 GB by default; the real repos keep each component in one file (SDXL's fp32 UNet: 10.3 GB)
ONE_FILE = "100GB"


def synthetic_clip_tokenizer(folder: Path) -> None:
    """A CLIPTokenizer over a synthetic 49,408-entry vocab (characters and filler tokens, empty merges)."""
    from transformers import CLIPTokenizer

    vocab: dict[str, int] = {}
    for c in string.printable.strip():
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    i = 0
    while len(vocab) < 49406:
        vocab[f"tok{i}</w>"] = len(vocab)
        i += 1
    vocab["<|startoftext|>"] = 49406
    vocab["<|endoftext|>"] = 49407
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77).save_pretrained(folder)


def clip_config(hidden: int, inter: int, layers: int, heads: int, act: str, proj: int = 768):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=49408, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                          num_attention_heads=heads, max_position_embeddings=77, hidden_act=act, projection_dim=proj,
                          bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)  # fmt: skip


def full_size_modules(shape: str) -> dict:
    """The random-init weighted modules of ``shape`` ("sd15" or "sdxl"): unet, vae, text_encoder(, text_encoder_2).

    Built on the current default device and dtype (the caller sets them)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    if shape not in SHAPES:
        raise ValueError(f"unknown full-size shape {shape!r}; known: {', '.join(SHAPES)}")
    sdxl = shape == "sdxl"
    torch.manual_seed(0)
    if sdxl:
        unet = UNet2DConditionModel(
            sample_size=128,
            block_out_channels=(320, 640, 1280),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 10),
            attention_head_dim=(5, 10, 20),
            cross_attention_dim=2048,
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816,
        )
    else:
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8,
                                    block_out_channels=(320, 640, 1280, 1280), layers_per_block=2)  # fmt: skip
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        latent_channels=4,
        sample_size=1024 if sdxl else 512,
    )
    modules = {"unet": unet, "vae": vae, "text_encoder": CLIPTextModel(clip_config(768, 3072, 12, 12, "quick_gelu"))}
    if sdxl:
        modules["text_encoder_2"] = CLIPTextModelWithProjection(clip_config(1280, 5120, 32, 20, "gelu", 1280))
    return modules


def full_size_pipeline(shape: str, modules: dict, tokenizer_dir: Path):
    """A pipeline object over ``modules`` with the synthetic tokenizer (written to ``tokenizer_dir``) and DDPM."""
    from diffusers import DDPMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline
    from transformers import CLIPTokenizer

    sched = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                          clip_sample=False)  # fmt: skip
    synthetic_clip_tokenizer(tokenizer_dir)
    tok = CLIPTokenizer.from_pretrained(tokenizer_dir)
    if shape == "sdxl":
        return StableDiffusionXLPipeline(**modules, tokenizer=tok, tokenizer_2=tok, scheduler=sched)
    return StableDiffusionPipeline(**modules, tokenizer=tok, scheduler=sched, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)  # fmt: skip


def build_full_size(shape: str, path: Path) -> Path:
    """Random-init SD 1.5 or SDXL shapes (README of ../shared/benchmarks), built on the GPU, saved in fp16."""
    import torch

    if (path / "model_index.json").exists():
        return path
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        modules = full_size_modules(shape)
    for m in modules.values():
        m.to(torch.float16)
    pipe = full_size_pipeline(shape, modules, path / "_tok")
    pipe.save_pretrained(path, safe_serialization=True)
    del pipe, modules
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return path


# ---------------------------------------------------------------------------------------------- the real repo layout
@contextlib.contextmanager
def default_dtype(dtype) -> Iterator[None]:
    import torch

    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def variant_name(plain: Path, variant: str = VARIANT) -> Path:
    """``x/model.safetensors`` -> ``x/model.fp16.safetensors`` (the Hub's variant naming)."""
    return plain.with_name(f"{plain.name.removesuffix('.safetensors')}.{variant}.safetensors")


def is_variant_file(path: Path) -> bool:
    parts = path.name.split(".")
    return len(parts) >= 3 and parts[-1] == "safetensors"


_ST_DTYPES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def write_cast_copy(src: Path, dst: Path, dtype) -> Path:
    """Write ``src`` (a safetensors file) to ``dst`` with its floating-point tensors cast to ``dtype``.

    Streams one tensor at a time (memory: one tensor, not the file), keeping names, shapes, order and metadata."""
    import torch
    from safetensors import safe_open

    st_name = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}[dtype]
    with safe_open(str(src), framework="pt") as f:
        names = list(f.keys())
        metadata = f.metadata()
        entries, offset = {}, 0
        for name in names:
            sl = f.get_slice(name)
            kind, shape = sl.get_dtype(), list(sl.get_shape())
            kind = st_name if kind in ("F64", "F32", "F16", "BF16") else kind
            n = _ST_DTYPES[kind]
            for d in shape:
                n *= d
            entries[name] = {"dtype": kind, "shape": shape, "data_offsets": [offset, offset + n]}
            offset += n
        header: dict = ({"__metadata__": metadata} if metadata else {}) | entries
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)  # the data starts 8-byte aligned
        tmp = dst.with_name(dst.name + ".part")
        with tmp.open("wb") as out:
            out.write(len(blob).to_bytes(8, "little"))
            out.write(blob)
            for name in names:
                t = f.get_tensor(name)
                if t.is_floating_point():
                    t = t.to(dtype)
                out.write(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
                del t
    tmp.replace(dst)
    return dst


def weight_files(folder: Path) -> list[Path]:
    """The plain (non-variant) safetensors weight files of a diffusers folder's components."""
    return sorted(p for p in folder.glob("*/*.safetensors") if not is_variant_file(p))


def add_fp16_variants(folder: Path) -> Path:
    """Give every plain weight file of ``folder`` an ``fp16`` variant copy next to it (as the real repos ship)."""
    import torch

    for plain in weight_files(folder):
        target = variant_name(plain)
        if not target.exists():
            write_cast_copy(plain, target, torch.float16)
    return folder


def build_full_size_with_variants(shape: str, path: Path) -> Path:
    """The real repos' layout at full size, random weights: plain fp32 files and ``fp16`` variant files.

    Low memory: the modules are made in fp16 (SDXL: about 7 GB) and saved as the variant, then each plain fp32 file
    is streamed from its variant file. The folder is complete once ``model_index.json`` exists (written last)."""
    import torch

    if (path / "model_index.json").exists():
        return path
    path.mkdir(parents=True, exist_ok=True)
    with torch.device("cpu"), default_dtype(torch.float16):
        modules = full_size_modules(shape)
    pipe = full_size_pipeline(shape, modules, path / "_tok")
    pipe.save_pretrained(path, safe_serialization=True, variant=VARIANT, max_shard_size=ONE_FILE)
    del pipe, modules
    index = path / "model_index.json"
    index_text = index.read_text()
    index.unlink()  # until the fp32 files are written too
    for variant in sorted(path.glob(f"*/*.{VARIANT}.safetensors")):
        plain = variant.with_name(variant.name.replace(f".{VARIANT}.safetensors", ".safetensors"))
        write_cast_copy(variant, plain, torch.float32)
    index.write_text(index_text)
    return path
