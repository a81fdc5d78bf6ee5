"""Bytes the trainer downloads for one task's base model, before and after ``training.files``, on the Hub emulator.

    python benchmarks/downloads.py                 # sd15, sdxl, zimage, qwen-image: sparse stand-ins of the real
                                                   # repos (~5 min for SD; the caches written take up to 58 GB)
    python benchmarks/downloads.py --shapes zimage qwen-image   # the transformer families' (benchmarks/layouts_flow.py)
    python benchmarks/downloads.py --tiny          # the tiny model laid out like a real repo (seconds; a test runs it)
    python benchmarks/downloads.py layouts         # rewrite benchmarks/layouts/{sd15,sdxl,zimage,qwen-image}.json

It starts its own emulator (temporary root) and commits a repo with the file layout of ``benchmarks/layouts/<shape>
.json``: every file is a stand-in of its real size, hard-linked into the emulator's store without being read into
memory. Weights are valid safetensors files (the real tensor names and shapes in the header, the data a sparse hole
of zeros), so the trainer could load them; other files are sparse holes, configs their generated text.

Each case runs in a fresh process with an empty Hugging Face cache (``HF_HOME``), as a new GPU container does:

- ``before``: what the previous trainer fetched, the plain fp32 safetensors of every component plus configs and
  tokenizer files (``choose_files(..., variant=None)``, downloaded file by file). With ``--tiny`` the previous
  loading code itself runs (``from_pretrained(repo, subfolder=..., use_safetensors=True)`` per component, no
  variant), and its downloads are checked to be exactly that plan, which is what the full-size runs rely on;
- ``after``: the trainer's own download step (``inspect_base_model``, ``choose_model_files``, ``fetch_model_files``;
  with ``--tiny`` the whole ``load_components``);
- ``preloaded``: the cache pre-filled with the preload list (README ``preload_from_hub``, else what
  ``python -m training.preload`` prints for the layout), then ``after``.

Z-Image (Tongyi-MAI/Z-Image-Turbo) and Qwen-Image (Qwen/Qwen-Image) ship one copy of each component's weights, sharded
(``benchmarks/layouts_flow.py``): no variants or single-file checkpoints to skip, so ``before`` and ``after`` fetch
the same files, and what the rule leaves out is the rest of the repo (README, licence, generation configs).

Bytes are counted from the emulator's request log (every 200 GET of a file of that repo, times its size) and checked
against the size of the cache's blobs. ``files`` lists the files fetched, ``chosen_files`` the ones asked for: the
client skips a file whose content it already holds (same blob id), e.g. SDXL's ``tokenizer_2`` stand-ins, byte for
byte those of ``tokenizer`` (the real repo's ``vocab.json`` and ``merges.txt`` are too; its other two differ, ~1 KB).
Records (``benchmark: downloads``, the project's GPU benchmark method) go to
``benchmarks/results/downloads-<date>-cpu.jsonl`` (``--tiny``: ``...-cpu-tiny.jsonl``), one per case.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from functools import cache
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LAYOUTS = ROOT / "benchmarks" / "layouts"
RESULTS = ROOT / "benchmarks" / "results"
TOKEN = "hf_downloads_bench_write"  # a fake token of the emulator's only user
USER = "bench"
GB = 1e9

# ---------------------------------------------------------------- the real architectures (benchmarks README)
CLIP_L = dict(
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    projection_dim=768,
    bos_token_id=49406,
    eos_token_id=49407,
    pad_token_id=49407,
)
OPENCLIP_G = dict(
    CLIP_L,
    hidden_size=1280,
    intermediate_size=5120,
    num_hidden_layers=32,
    num_attention_heads=20,
    hidden_act="gelu",
    projection_dim=1280,
)
VAE = dict(
    block_out_channels=[128, 256, 512, 512],
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    layers_per_block=2,
    latent_channels=4,
    sample_size=512,
)
SD15_UNET = dict(
    sample_size=64,
    cross_attention_dim=768,
    attention_head_dim=8,
    block_out_channels=[320, 640, 1280, 1280],
    layers_per_block=2,
)
SDXL_UNET = dict(
    sample_size=128,
    block_out_channels=[320, 640, 1280],
    layers_per_block=2,
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    transformer_layers_per_block=[1, 2, 10],
    attention_head_dim=[5, 10, 20],
    cross_attention_dim=2048,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)
SAFETY_CHECKER = dict(
    text_config=CLIP_L,
    projection_dim=768,
    vision_config=dict(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        patch_size=14,
        image_size=224,
        projection_dim=768,
    ),
)
# position_ids were a saved buffer when the 2022 conversions were made (SD 1.5's text encoder, its safety checker)
POS_IDS = [["text_model.embeddings.position_ids", "I64", [1, 77]]]
VISION_POS_IDS = [["vision_model.vision_model.embeddings.position_ids", "I64", [1, 257]]]

SD15_INDEX = {
    "_class_name": "StableDiffusionPipeline",
    "_diffusers_version": "0.6.0",
    "feature_extractor": ["transformers", "CLIPImageProcessor"],
    "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
    "scheduler": ["diffusers", "PNDMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}
SDXL_INDEX = {
    "_class_name": "StableDiffusionXLPipeline",
    "_diffusers_version": "0.19.0.dev0",
    "force_zeros_for_empty_prompt": True,
    "add_watermarker": None,
    "scheduler": ["diffusers", "EulerDiscreteScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "tokenizer_2": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}
SCHEDULER = {
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}
SD15_SCHEDULER = {"_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", **SCHEDULER}
SDXL_SCHEDULER = {
    "_class_name": "EulerDiscreteScheduler",
    "_diffusers_version": "0.19.0.dev0",
    **SCHEDULER,
    "interpolation_type": "linear",
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "timestep_spacing": "leading",
    "use_karras_sigmas": False,
}


def _model(library: str, cls: str, config: dict, extra: list | None = None) -> dict:
    return {"library": library, "class": cls, "config": config, "extra_tensors": extra or []}


# Per shape: the models whose files are computed, and every file of the real repo: (path, how), where how is
# ("weights", model, dtype), ("config", model), ("json", obj) or an approximate size in bytes (the sizes the Hub
# lists for these files where known, else plausible ones).
TOKENIZER = [
    ("merges.txt", 524619),
    ("special_tokens_map.json", 472),
    ("tokenizer_config.json", 806),
    ("vocab.json", 1059962),
]
SHAPES: dict[str, dict[str, Any]] = {
    "sd15": {
        "repo_id": "stable-diffusion-v1-5/stable-diffusion-v1-5",
        "model_index": SD15_INDEX,
        "models": {
            "unet": _model("diffusers", "UNet2DConditionModel", SD15_UNET),
            "vae": _model("diffusers", "AutoencoderKL", VAE),
            "text_encoder": _model("transformers", "CLIPTextModel", CLIP_L, POS_IDS),
            "safety_checker": _model("diffusers", "StableDiffusionSafetyChecker", SAFETY_CHECKER, VISION_POS_IDS),
        },
        "files": [
            (".gitattributes", 1548),
            ("README.md", 14461),
            ("model_index.json", ("json", SD15_INDEX)),
            ("v1-5-pruned-emaonly.ckpt", 4265380512),
            ("v1-5-pruned-emaonly.safetensors", 4265146304),
            ("v1-5-pruned.ckpt", 7703807346),
            ("v1-5-pruned.safetensors", 7703324286),
            ("v1-inference.yaml", 1873),
            ("feature_extractor/preprocessor_config.json", 342),
            ("safety_checker/config.json", ("config", "safety_checker")),
            ("safety_checker/model.fp16.safetensors", ("weights", "safety_checker", "F16")),
            ("safety_checker/model.safetensors", ("weights", "safety_checker", "F32")),
            ("safety_checker/pytorch_model.bin", 1216061799),
            ("safety_checker/pytorch_model.fp16.bin", 608103564),
            ("scheduler/scheduler_config.json", ("json", SD15_SCHEDULER)),
            ("text_encoder/config.json", ("config", "text_encoder")),
            ("text_encoder/model.fp16.safetensors", ("weights", "text_encoder", "F16")),
            ("text_encoder/model.safetensors", ("weights", "text_encoder", "F32")),
            ("text_encoder/pytorch_model.bin", 492305335),
            ("text_encoder/pytorch_model.fp16.bin", 246187076),
            *((f"tokenizer/{name}", size) for name, size in TOKENIZER),
            ("unet/config.json", ("config", "unet")),
            ("unet/diffusion_pytorch_model.bin", 3438354725),
            ("unet/diffusion_pytorch_model.fp16.bin", 1719327893),
            ("unet/diffusion_pytorch_model.fp16.safetensors", ("weights", "unet", "F16")),
            ("unet/diffusion_pytorch_model.non_ema.bin", 3438366373),
            ("unet/diffusion_pytorch_model.non_ema.safetensors", ("weights", "unet", "F32")),
            ("unet/diffusion_pytorch_model.safetensors", ("weights", "unet", "F32")),
            ("vae/config.json", ("config", "vae")),
            ("vae/diffusion_pytorch_model.bin", 334707217),
            ("vae/diffusion_pytorch_model.fp16.bin", 167405651),
            ("vae/diffusion_pytorch_model.fp16.safetensors", ("weights", "vae", "F16")),
            ("vae/diffusion_pytorch_model.safetensors", ("weights", "vae", "F32")),
        ],
    },
    "sdxl": {
        "repo_id": "stabilityai/stable-diffusion-xl-base-1.0",
        "model_index": SDXL_INDEX,
        "models": {
            "unet": _model("diffusers", "UNet2DConditionModel", SDXL_UNET),
            "vae": _model(
                "diffusers", "AutoencoderKL", dict(VAE, sample_size=1024, scaling_factor=0.13025, force_upcast=True)
            ),
            "text_encoder": _model("transformers", "CLIPTextModel", CLIP_L),
            "text_encoder_2": _model("transformers", "CLIPTextModelWithProjection", OPENCLIP_G),
        },
        "files": [
            (".gitattributes", 1683),
            ("01.png", 4608613),
            ("LICENSE.md", 14011),
            ("README.md", 8556),
            ("comparison.png", 130362),
            ("files.txt", 1712),
            ("model_index.json", ("json", SDXL_INDEX)),
            ("pipeline.png", 80321),
            ("sd_xl_base_1.0.safetensors", 6938078334),
            ("sd_xl_base_1.0_0.9vae.safetensors", 6938078334),
            ("sd_xl_offset_example-lora_1.0.safetensors", 49553604),
            ("scheduler/scheduler_config.json", ("json", SDXL_SCHEDULER)),
            ("text_encoder/config.json", ("config", "text_encoder")),
            ("text_encoder/flax_model.msgpack", 492248682),
            ("text_encoder/model.fp16.safetensors", ("weights", "text_encoder", "F16")),
            ("text_encoder/model.onnx", 492587457),
            ("text_encoder/model.safetensors", ("weights", "text_encoder", "F32")),
            ("text_encoder/openvino_model.bin", 492242672),
            ("text_encoder/openvino_model.xml", 1057789),
            ("text_encoder_2/config.json", ("config", "text_encoder_2")),
            ("text_encoder_2/flax_model.msgpack", 2778657095),
            ("text_encoder_2/model.fp16.safetensors", ("weights", "text_encoder_2", "F16")),
            ("text_encoder_2/model.onnx", 702000),
            ("text_encoder_2/model.onnx_data", 2778639360),
            ("text_encoder_2/model.safetensors", ("weights", "text_encoder_2", "F32")),
            ("text_encoder_2/openvino_model.bin", 2778640120),
            ("text_encoder_2/openvino_model.xml", 2790191),
            *((f"tokenizer/{name}", size) for name, size in TOKENIZER),
            *((f"tokenizer_2/{name}", size) for name, size in TOKENIZER),
            ("unet/config.json", ("config", "unet")),
            ("unet/diffusion_flax_model.msgpack", 10269915611),
            ("unet/diffusion_pytorch_model.fp16.safetensors", ("weights", "unet", "F16")),
            ("unet/diffusion_pytorch_model.safetensors", ("weights", "unet", "F32")),
            ("unet/model.onnx", 7293842),
            ("unet/model.onnx_data", 10269854720),
            ("unet/openvino_model.bin", 10269856428),
            ("unet/openvino_model.xml", 22577438),
            ("vae/config.json", ("config", "vae")),
            ("vae/diffusion_flax_model.msgpack", 334623853),
            ("vae/diffusion_pytorch_model.fp16.safetensors", ("weights", "vae", "F16")),
            ("vae/diffusion_pytorch_model.safetensors", ("weights", "vae", "F32")),
            ("vae_1_0/config.json", ("config", "vae")),
            ("vae_1_0/diffusion_pytorch_model.fp16.safetensors", ("weights", "vae", "F16")),
            ("vae_1_0/diffusion_pytorch_model.safetensors", ("weights", "vae", "F32")),
            ("vae_decoder/config.json", 624),
            ("vae_decoder/model.onnx", 198093688),
            ("vae_decoder/openvino_model.bin", 197961232),
            ("vae_decoder/openvino_model.xml", 984000),
            ("vae_encoder/config.json", 624),
            ("vae_encoder/model.onnx", 136775724),
            ("vae_encoder/openvino_model.bin", 136655184),
            ("vae_encoder/openvino_model.xml", 766000),
        ],
    },
}
ABOUT = (
    "Every file of the Hub repo {repo} as known to us (from its published file listing), with its size in bytes. "
    "size_is 'computed': a safetensors weights file, sized exactly as 8 + its JSON header + the sum of parameters "
    "x dtype bytes, from the real architecture (the configs under 'models', from the project's GPU benchmark method) "
    "built on torch's meta device with diffusers {diffusers} / transformers {transformers}; tensor names as the "
    "real checkpoints spell them (text_model./vision_model.vision_model. prefixes, the position_ids buffers the "
    "2022 conversions saved); benchmarks/downloads.py re-derives names and shapes from 'models'. Checked against "
    "the sizes the Hub lists for these weights files: equal to the byte for all SDXL ones and the SD 1.5 fp16 ones, "
    "within 8 bytes for the SD 1.5 fp32 ones (their headers differ a little). 'generated': a config or JSON file "
    "whose text (stored here) is generated from the same config (the real one differs a little). 'approximate': "
    "the size the Hub lists for that file where known (.bin/.ckpt pickles, root single-file checkpoints, "
    "ONNX/OpenVINO/Flax exports, images, vocab.json), else a plausible one (small text files)."
)


# ---------------------------------------------------------------- safetensors headers from meta models
DTYPE_BYTES = {"F16": 2, "BF16": 2, "F32": 4, "I64": 8}
#: safetensors' dtype order: tensors are laid out by dtype, largest first, then by name
DTYPE_ORDER = [
    "BOOL",
    "U8",
    "I8",
    "F8_E5M2",
    "F8_E4M3",
    "I16",
    "U16",
    "F16",
    "BF16",
    "I32",
    "U32",
    "F32",
    "F64",
    "I64",
    "U64",
]


def safetensors_header(tensors: list[tuple[str, str, list[int]]]) -> tuple[bytes, int]:
    """The first bytes (length + JSON header, space-padded to 8) of a safetensors file holding ``tensors``
    (name, dtype, shape) as ``safetensors.torch.save_file(..., metadata={"format": "pt"})`` writes it, and the size
    of its data section."""
    order = sorted(tensors, key=lambda t: (-DTYPE_ORDER.index(t[1]), t[0]))
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, dtype, shape in order:
        size = DTYPE_BYTES[dtype] * math.prod(shape)
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text, offset


def _legacy_name(cls: str, key: str) -> str:
    """The tensor name the real (2022-2023) checkpoints use: transformers 5 dropped a ``text_model.`` level from
    CLIPTextModel and a ``vision_model.`` level from CLIPVisionModel inside the safety checker."""
    if cls == "CLIPTextModel" and not key.startswith("text_model."):
        return "text_model." + key
    if (
        cls == "StableDiffusionSafetyChecker"
        and key.startswith("vision_model.")
        and not key.startswith("vision_model.vision_model.")
    ):
        return "vision_model." + key
    return key


@cache
def _meta_model(model_json: str):
    """The model described by ``model_json`` (library, class, config), built on the meta device (no memory)."""
    import torch

    model = json.loads(model_json)
    cls, cfg = model["class"], model["config"]
    with torch.device("meta"):
        if cls == "StableDiffusionSafetyChecker":
            from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
            from transformers import CLIPConfig

            return StableDiffusionSafetyChecker(CLIPConfig(**cfg))
        if model["library"] == "diffusers":
            import diffusers

            table = {"UNet2DConditionModel": diffusers.UNet2DConditionModel, "AutoencoderKL": diffusers.AutoencoderKL}
            return table[cls](**cfg)
        import transformers

        table = {
            "CLIPTextModel": transformers.CLIPTextModel,
            "CLIPTextModelWithProjection": transformers.CLIPTextModelWithProjection,
        }
        return table[cls](transformers.CLIPTextConfig(**cfg))


def tensor_specs(model: dict, dtype: str) -> list[tuple[str, str, list[int]]]:
    """The tensors of ``model``'s weights file in ``dtype`` (extra buffers keep their own dtype)."""
    module = _meta_model(json.dumps(model, sort_keys=True))
    specs = [(_legacy_name(model["class"], k), dtype, list(t.shape)) for k, t in module.state_dict().items()]
    return specs + [(name, dtype_, list(shape)) for name, dtype_, shape in model.get("extra_tensors", [])]


def config_text(model: dict) -> str:
    """The config.json the library writes for ``model`` (generated from its config: not the real file's text)."""
    module = _meta_model(json.dumps(model, sort_keys=True))
    if hasattr(module, "to_json_string") and model["class"] != "StableDiffusionSafetyChecker":
        return module.to_json_string()  # diffusers: _class_name, _diffusers_version and every argument
    module.config.architectures = [model["class"]]
    return module.config.to_json_string()


def build_layout(shape: str) -> dict[str, Any]:
    """The layout file of ``shape`` (see ABOUT)."""
    import diffusers
    import transformers

    spec = SHAPES[shape]
    files = []
    for path, how in spec["files"]:
        entry: dict[str, Any] = {"path": path}
        if isinstance(how, int):
            entry.update(size=how, size_is="approximate")
        elif how[0] == "weights":
            header, data = safetensors_header(tensor_specs(spec["models"][how[1]], how[2]))
            entry.update(size=len(header) + data, size_is="computed", weights={"model": how[1], "dtype": how[2]})
        else:
            text = config_text(spec["models"][how[1]]) if how[0] == "config" else json.dumps(how[1], indent=2)
            entry.update(size=len(text.encode()), size_is="generated", text=text)
        files.append(entry)
    about = ABOUT.format(repo=spec["repo_id"], diffusers=diffusers.__version__, transformers=transformers.__version__)
    return {
        "repo_id": spec["repo_id"],
        "about": about,
        "model_index": spec["model_index"],
        "models": spec["models"],
        "files": files,
    }


def write_layouts(shapes: list[str] | None = None) -> None:
    from benchmarks.layouts_flow import FLOW_SHAPES, build_flow_layout

    LAYOUTS.mkdir(parents=True, exist_ok=True)
    for shape in shapes or [*SHAPES, *FLOW_SHAPES]:
        layout = build_flow_layout(shape, safetensors_header) if shape in FLOW_SHAPES else build_layout(shape)
        (LAYOUTS / f"{shape}.json").write_text(json.dumps(layout, indent=1) + "\n")
        total = sum(f["size"] for f in layout["files"])
        print(f"{shape}: {len(layout['files'])} files, {total / GB:.2f} GB -> {LAYOUTS / f'{shape}.json'}")


def load_layout(shape: str) -> dict[str, Any]:
    return json.loads((LAYOUTS / f"{shape}.json").read_text())


# ---------------------------------------------------------------- stand-in repos
def write_standins(layout: dict[str, Any], folder: Path) -> dict[str, Path]:
    """Every file of ``layout`` under ``folder``, of its size: weights as valid safetensors (header + a sparse hole
    of zeros), generated text as is, the rest sparse holes. Costs no disk beyond the headers and texts."""
    out: dict[str, Path] = {}
    for entry in layout["files"]:
        dst = folder / entry["path"]
        dst.parent.mkdir(parents=True, exist_ok=True)
        if "text" in entry:
            dst.write_text(entry["text"])
        else:
            with open(dst, "wb") as f:
                if "weights" in entry:
                    w = entry["weights"]
                    header, data = safetensors_header(tensor_specs(layout["models"][w["model"]], w["dtype"]))
                    if len(header) + data != entry["size"]:
                        raise SystemExit(f"{entry['path']}: layout size {entry['size']} != {len(header) + data}")
                    f.write(header)
                f.truncate(entry["size"])
        out[entry["path"]] = dst
    return out


def tiny_repo(folder: Path) -> tuple[dict[str, Path], dict[str, Any]]:
    """The tiny SD model laid out like a real repo (fp16 variants, non-EMA copy, pickles and checkpoint decoys)."""
    from tests.tiny_models import add_hub_layout, build_tiny_sd

    model = add_hub_layout(build_tiny_sd(folder / "tiny-sd"))
    files = {p.relative_to(model).as_posix(): p for p in sorted(model.rglob("*")) if p.is_file()}
    return files, json.loads((model / "model_index.json").read_text())


# ---------------------------------------------------------------- one case, in a fresh process
def previous_loading(repo: str, index: dict[str, Any]) -> None:
    """The loading code of the trainer before ``training.files`` (from the Hub id, no variant), for ``--tiny``."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    UNet2DConditionModel.from_pretrained(repo, subfolder="unet", torch_dtype=torch.float32, use_safetensors=True)
    AutoencoderKL.from_pretrained(repo, subfolder="vae", torch_dtype=torch.float32, use_safetensors=True)
    encoders = ["text_encoder", "text_encoder_2"] if "text_encoder_2" in index else ["text_encoder"]
    for i, name in enumerate(encoders):
        cls = CLIPTextModelWithProjection if index[name][1] == "CLIPTextModelWithProjection" else CLIPTextModel
        cls.from_pretrained(repo, subfolder=name, torch_dtype=torch.float32, use_safetensors=True)
        CLIPTokenizer.from_pretrained(repo, subfolder="tokenizer" if i == 0 else f"tokenizer_{i + 1}")
    DDPMScheduler.from_pretrained(repo, subfolder="scheduler")


def fetch_case(repo: str, phase: str, recipe: str, load: bool) -> dict[str, Any]:
    """Run one case's download in this process (the Hub and cache come from the environment)."""
    from huggingface_hub import hf_hub_download

    from training.files import choose_files
    from training.models import choose_model_files, fetch_model_files, inspect_base_model, load_components
    from training.recipes import get_recipe, load_recipe_modules
    from training.spec import TrainParams

    info = inspect_base_model(repo)  # as the trainer starts: the id, model_index.json, the UNet/VAE configs
    if phase == "before":
        plan = choose_files(info.files, info.index, variant=None, base_model=repo)
        if load:
            previous_loading(repo, info.index)
        else:
            for f in plan.files:
                hf_hub_download(repo, f, revision=info.revision)
        return {"files": plan.files, "variants": plan.variants}
    load_recipe_modules()
    trainable = get_recipe(recipe).trainable_components(TrainParams())
    choice = choose_model_files(info, trainable)
    if load:
        import torch

        load_components(info, unet_dtype=torch.float32, text_dtype=torch.float32, trainable=trainable)
    else:
        fetch_model_files(info, choice)
    return {"files": choice.files, "variants": choice.variants}


def run_case(hub_url: str, home: Path, repo: str, phase: str, recipe: str, load: bool) -> dict[str, Any]:
    env = {
        **os.environ,
        "HF_ENDPOINT": hub_url,
        "HF_TOKEN": TOKEN,
        "HF_HOME": str(home),
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "NO_PROXY": "127.0.0.1,localhost",
    }
    cmd = [sys.executable, __file__, "fetch", "--repo", repo, "--phase", phase, "--recipe", recipe]
    proc = subprocess.run([*cmd, *(["--load"] if load else [])], env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"case {phase}/{recipe} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def downloaded(hub, repo: str, sizes: dict[str, int]) -> tuple[list[str], int]:
    """Files of ``repo`` served with a 200/206 GET since the log was cleared, and their bytes."""
    prefix = f"/{repo}/resolve/"
    files = []
    for r in hub.requests("GET"):
        if r.path.startswith(prefix) and r.status in (200, 206):
            files.append(r.path[len(prefix) :].split("/", 1)[1])
    return sorted(files), sum(sizes[f] for f in files)


def cache_bytes(home: Path) -> int:
    return sum(p.stat().st_size for p in (home / "hub").glob("models--*/blobs/*") if p.is_file())


def readme_preload(repo: str) -> list[str] | None:
    """The files README.md's ``preload_from_hub`` lists for ``repo`` (None when it has no such item)."""
    import yaml

    front = (ROOT / "README.md").read_text().split("---")[1]
    for item in yaml.safe_load(front).get("preload_from_hub") or []:
        name, _, rest = item.partition(" ")
        if name == repo and rest:
            return rest.split(" ")[0].split(",")
    return None


def measure(args) -> list[dict[str, Any]]:
    from huggingface_hub import hf_hub_download

    from benchmarks.layouts_flow import FLOW_SHAPES
    from tests.fakehub.auth import User
    from tests.fakehub.fixtures import run_fakehub
    from training.preload import preload_files, recipe_trainable_sets
    from training.recipes import load_recipe_modules, registered_recipes

    load_recipe_modules()
    shapes = ["tiny-sd"] if args.tiny else args.shapes
    date = dt.date.today().isoformat()
    records: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="downloads-bench-", dir=args.tmp) as tmp:
        tmp = Path(tmp)
        with run_fakehub(tmp / "hub", users=[User(USER, TOKEN, "write")]) as hub:
            for shape in shapes:
                t0 = time.time()
                if shape == "tiny-sd":
                    repo = f"{USER}/tiny-sd"
                    files, index = tiny_repo(tmp / "model")
                    whole = None
                else:
                    layout = load_layout(shape)
                    repo, index = layout["repo_id"], layout["model_index"]
                    files = write_standins(layout, tmp / "standins" / shape)
                    whole = sum(f["size"] for f in layout["files"])
                hub.commit_files(repo, files, author=USER, summary=f"{shape} stand-in")
                sizes = {path: p.stat().st_size for path, p in files.items()}
                print(f"{shape}: {len(files)} files committed in {time.time() - t0:.0f}s", flush=True)
                cases = [("before", "dreambooth-lora", False), ("after", "dreambooth-lora", False)]
                if shape not in FLOW_SHAPES:  # the transformer families train LoRA only
                    cases.append(("after", "dreambooth-full", False))
                if shape in ("sd15", "tiny-sd", *FLOW_SHAPES):
                    cases.append(("after", "dreambooth-lora", True))
                for phase, recipe, preloaded in cases:
                    home = tmp / "home"
                    shutil.rmtree(home, ignore_errors=True)
                    extra: dict[str, Any] = {}
                    if preloaded:
                        listed = readme_preload(repo) if shape == "sd15" else None
                        trainable_sets = recipe_trainable_sets(registered_recipes())
                        plist = listed or preload_files(list(files), index, trainable_sets, base_model=repo)
                        for f in plist:  # what the Space build does for a "repo f1,f2" item
                            hf_hub_download(repo, f, cache_dir=home / "hub", endpoint=hub.url, token=TOKEN)
                        extra = {
                            "preload_list_bytes": sum(sizes[f] for f in plist),
                            "whole_repo_bytes": whole,
                            "preload_list": "README.md" if listed else "training.preload",
                        }
                    hub.clear_requests()
                    t1 = time.time()
                    out = run_case(hub.url, home, repo, phase, recipe, load=args.tiny)
                    got, nbytes = downloaded(hub, repo, sizes)
                    in_cache = cache_bytes(home) - (extra.get("preload_list_bytes") or 0)
                    record = {
                        "benchmark": "downloads",
                        "model_shape": shape,
                        "recipe": recipe,
                        "bytes": nbytes,
                        "files": got,
                        "preloaded": preloaded,
                        "variant": "fp16" if phase == "after" else None,
                        "device": "cpu",
                        "date": date,
                        "phase": phase,
                        "variants": out["variants"],
                        "chosen_files": out["files"],
                        "cache_bytes_added": in_cache,
                        "wall_s": round(time.time() - t1, 1),
                        "method": _method(phase, args.tiny),
                        **extra,
                    }
                    records.append(record)
                    print(
                        f"  {phase:6} {recipe:16} preloaded={preloaded!s:5} {nbytes / GB:7.3f} GB "
                        f"in {len(got)} files ({record['wall_s']}s)",
                        flush=True,
                    )
                    shutil.rmtree(home, ignore_errors=True)
                shutil.rmtree(tmp / "standins", ignore_errors=True)
    return records


def _method(phase: str, tiny: bool) -> str:
    if phase == "before":
        if tiny:
            return "previous loading code: from_pretrained(repo, subfolder, use_safetensors=True) per component"
        return "previous file set: choose_files(variant=None), hf_hub_download per file"
    if tiny:
        return "trainer: inspect_base_model + load_components"
    return "trainer: inspect_base_model + choose_model_files + fetch_model_files"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", nargs="?", default="run", choices=["run", "layouts", "fetch"])
    ap.add_argument("--tiny", action="store_true", help="the tiny model instead of the full-size stand-ins")
    from benchmarks.layouts_flow import FLOW_SHAPES

    every = [*SHAPES, *FLOW_SHAPES]
    ap.add_argument("--shapes", nargs="+", default=every, choices=every)
    ap.add_argument("--out", type=Path, default=None, help="results file (default benchmarks/results/...)")
    ap.add_argument("--tmp", default=None, help="where the emulator and the caches live (default: the system tmp)")
    # the "fetch" command (one case, run by "run" in a fresh process)
    ap.add_argument("--repo")
    ap.add_argument("--phase", choices=["before", "after"])
    ap.add_argument("--recipe", default="dreambooth-lora")
    ap.add_argument("--load", action="store_true")
    args = ap.parse_args(argv)
    if args.command == "layouts":
        write_layouts(args.shapes)
        return 0
    if args.command == "fetch":
        print(json.dumps(fetch_case(args.repo, args.phase, args.recipe, args.load)))
        return 0
    records = measure(args)
    suffix = "-tiny" if args.tiny else ""
    out = args.out or RESULTS / f"downloads-{dt.date.today().isoformat()}-cpu{suffix}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    print(f"{len(records)} records -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
