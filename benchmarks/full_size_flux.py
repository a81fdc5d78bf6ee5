"""Random-weight full-size FLUX.1 [dev], FLUX.2 [klein] 4B / 9B, Z-Image and Qwen-Image diffusers folders, written
without holding them (the bf16 flow-matching shapes of ``training.memory.BF16_SHAPES``).

Shapes (the public configs of the repos): FLUX.1 [dev] = ``FluxTransformer2DModel`` 19 double + 38
single blocks, 24 heads x 128, guidance embedding (11.9 B parameters), CLIP-L (123 M), T5-v1.1-XXL encoder (4.76 B),
``AutoencoderKL`` with 16 latent channels; FLUX.2 [klein] 4B = ``Flux2Transformer2DModel`` 5 + 20 blocks, 24 heads,
text width 3 x 2560, with a Qwen3-4B text encoder; 9B = 8 + 24 blocks, 32 heads, text width 3 x 4096, Qwen3-8B;
Z-Image (Tongyi-MAI/Z-Image and Z-Image-Turbo, one config) = ``ZImageTransformer2DModel`` dim 3840, 30 layers, 30
heads, 2 noise + 2 context refiner layers (6.15 B parameters), a Qwen3-4B ``Qwen3Model`` text encoder and FLUX.1's
16-channel ``AutoencoderKL``; Qwen-Image (Qwen/Qwen-Image) = ``QwenImageTransformer2DModel`` 60 blocks, 24 heads x 128,
text width 3584 (20.43 B parameters), the whole Qwen2.5-VL-7B-Instruct ``Qwen2_5_VLForConditionalGeneration`` as the
repo ships and the trainer loads it (7.07 B language model, 0.54 B LM head, 0.68 B vision tower the pipeline never
calls: 8.29 B) and the 16-channel video VAE ``AutoencoderKLQwenImage`` (0.13 B).

Every module is made on the meta device from its config and its weights are streamed into safetensors files one
tensor at a time (values from a small random pool: their values do not matter to memory), sharded at 10 GB like the
real repos' large components and stored in bf16 as they are. The tokenizers are synthetic (the test suite's small
vocabularies: the ids stay inside the full-size embeddings). A 34 GB FLUX.1 folder is written with about 1 GB of
host memory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SHAPES = ("flux1", "klein4b", "klein9b", "zimage", "qwen-image")
#: diffusers and transformers shard at 10 GB by default (FLUX.1 [dev]'s transformer: 3 shards)
SHARD_BYTES = 10 * 10**9
POOL_ELEMENTS = 1 << 24
_ST_NAME = {"torch.float32": "F32", "torch.float16": "F16", "torch.bfloat16": "BF16", "torch.int64": "I64"}

FLUX1_TRANSFORMER = dict(
    patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128, num_attention_heads=24,
    joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56),
)  # fmt: skip
T5_XXL = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
              feed_forward_proj="gated-gelu", relative_attention_num_buckets=32, relative_attention_max_distance=128,
              layer_norm_epsilon=1e-6, tie_word_embeddings=False, decoder_start_token_id=0)  # fmt: skip
#: FLUX.1's VAE (16 latent channels), Z-Image's too
FLUX1_VAE = dict(
    block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=16, sample_size=1024,
    scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False,
)  # fmt: skip
#: Qwen3-4B's width (with ``QWEN3``): FLUX.2 [klein] 4B's text encoder and Z-Image's
QWEN3_4B = dict(hidden_size=2560, intermediate_size=9728, tie_word_embeddings=True)
KLEIN = {
    "klein4b": (dict(num_layers=5, num_single_layers=20, num_attention_heads=24, joint_attention_dim=7680),
                QWEN3_4B),
    "klein9b": (dict(num_layers=8, num_single_layers=24, num_attention_heads=32, joint_attention_dim=12288),
                dict(hidden_size=4096, intermediate_size=12288, tie_word_embeddings=False)),
}  # fmt: skip
QWEN3 = dict(vocab_size=151936, num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
             max_position_embeddings=40960, rope_theta=1000000.0, rms_norm_eps=1e-6)  # fmt: skip
#: Z-Image's transformer/config.json (Z-Image and Z-Image-Turbo share it)
ZIMAGE_TRANSFORMER = dict(
    all_patch_size=[2], all_f_patch_size=[1], in_channels=16, dim=3840, n_layers=30, n_refiner_layers=2, n_heads=30,
    n_kv_heads=30, norm_eps=1e-5, qk_norm=True, cap_feat_dim=2560, rope_theta=256.0, t_scale=1000.0,
    axes_dims=[32, 48, 48], axes_lens=[1536, 512, 512],
)  # fmt: skip
#: Qwen-Image's transformer/config.json
QWEN_IMAGE_TRANSFORMER = dict(
    patch_size=2, in_channels=64, out_channels=16, num_layers=60, attention_head_dim=128, num_attention_heads=24,
    joint_attention_dim=3584, guidance_embeds=False, axes_dims_rope=(16, 56, 56),
)  # fmt: skip
#: Qwen-Image's vae/config.json (its per-channel latent statistics are the class defaults)
QWEN_IMAGE_VAE = dict(base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                      temperal_downsample=[False, True, True], dropout=0.0)  # fmt: skip
#: Qwen-Image's text_encoder/config.json (Qwen2.5-VL-7B-Instruct): the language model, then the vision tower
QWEN25_VL_TEXT = dict(
    vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
    num_key_value_heads=4, hidden_act="silu", max_position_embeddings=128000, rms_norm_eps=1e-6, max_window_layers=28,
    sliding_window=32768, use_sliding_window=False, bos_token_id=151643, eos_token_id=151645,
    rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
)  # fmt: skip
QWEN25_VL_VISION = dict(
    depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, in_channels=3, out_hidden_size=3584,
    patch_size=14, spatial_merge_size=2, temporal_patch_size=2, tokens_per_second=2, window_size=112,
    fullatt_block_indexes=[7, 15, 23, 31], hidden_act="silu",
)  # fmt: skip
QWEN25_VL_TOKENS = dict(image_token_id=151655, video_token_id=151656, vision_start_token_id=151652,
                        vision_end_token_id=151653, tie_word_embeddings=False)  # fmt: skip


def flux_modules(shape: str) -> dict[str, Any]:
    """The weighted modules of ``shape`` (``SHAPES``) on the current default device: transformer, vae and the
    text encoder(s). Call under ``torch.device("meta")`` to get them without memory."""
    from diffusers import (
        AutoencoderKL,
        AutoencoderKLFlux2,
        AutoencoderKLQwenImage,
        Flux2Transformer2DModel,
        FluxTransformer2DModel,
        QwenImageTransformer2DModel,
        ZImageTransformer2DModel,
    )
    from transformers import (
        CLIPTextModel,
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen3Config,
        Qwen3ForCausalLM,
        Qwen3Model,
        T5Config,
        T5EncoderModel,
    )

    from benchmarks.full_size import clip_config

    if shape == "flux1":
        return {
            "transformer": FluxTransformer2DModel(**FLUX1_TRANSFORMER),
            "vae": AutoencoderKL(**FLUX1_VAE),
            "text_encoder": CLIPTextModel(clip_config(768, 3072, 12, 12, "quick_gelu")),
            "text_encoder_2": T5EncoderModel(T5Config(**T5_XXL)),
        }
    if shape in KLEIN:
        dit, qwen = KLEIN[shape]
        transformer = Flux2Transformer2DModel(
            patch_size=1, in_channels=128, attention_head_dim=128, timestep_guidance_channels=256, mlp_ratio=3.0,
            axes_dims_rope=(32, 32, 32, 32), rope_theta=2000, guidance_embeds=False, **dit,
        )  # fmt: skip
        return {
            "transformer": transformer,
            "vae": AutoencoderKLFlux2(),
            "text_encoder": Qwen3ForCausalLM(Qwen3Config(**QWEN3, **qwen)),
        }
    if shape == "zimage":
        return {
            "transformer": ZImageTransformer2DModel(**ZIMAGE_TRANSFORMER),
            "vae": AutoencoderKL(**FLUX1_VAE),
            "text_encoder": Qwen3Model(Qwen3Config(**QWEN3, **QWEN3_4B)),
        }
    if shape == "qwen-image":
        vl = Qwen2_5_VLConfig(text_config=QWEN25_VL_TEXT, vision_config=QWEN25_VL_VISION, **QWEN25_VL_TOKENS)
        return {
            "transformer": QwenImageTransformer2DModel(**QWEN_IMAGE_TRANSFORMER),
            "vae": AutoencoderKLQwenImage(**QWEN_IMAGE_VAE),
            "text_encoder": Qwen2_5_VLForConditionalGeneration(vl),
        }
    raise ValueError(f"unknown Flux shape {shape!r}; known: {', '.join(SHAPES)}")


def model_index(shape: str) -> dict[str, Any]:
    """The ``model_index.json`` of the pipeline (the real repos' classes)."""
    if shape == "flux1":
        return {"_class_name": "FluxPipeline", "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
                "text_encoder": ["transformers", "CLIPTextModel"], "text_encoder_2": ["transformers", "T5EncoderModel"],
                "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "T5TokenizerFast"],
                "transformer": ["diffusers", "FluxTransformer2DModel"], "vae": ["diffusers", "AutoencoderKL"]}  # fmt: skip
    if shape == "zimage":
        return {"_class_name": "ZImagePipeline", "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
                "text_encoder": ["transformers", "Qwen3Model"], "tokenizer": ["transformers", "Qwen2Tokenizer"],
                "transformer": ["diffusers", "ZImageTransformer2DModel"], "vae": ["diffusers", "AutoencoderKL"]}  # fmt: skip
    if shape == "qwen-image":
        return {"_class_name": "QwenImagePipeline", "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
                "text_encoder": ["transformers", "Qwen2_5_VLForConditionalGeneration"],
                "tokenizer": ["transformers", "Qwen2Tokenizer"],
                "transformer": ["diffusers", "QwenImageTransformer2DModel"],
                "vae": ["diffusers", "AutoencoderKLQwenImage"]}  # fmt: skip
    return {"_class_name": "Flux2KleinPipeline", "is_distilled": False,
            "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
            "text_encoder": ["transformers", "Qwen3ForCausalLM"], "tokenizer": ["transformers", "Qwen2TokenizerFast"],
            "transformer": ["diffusers", "Flux2Transformer2DModel"], "vae": ["diffusers", "AutoencoderKLFlux2"]}  # fmt: skip


def param_count(module: Any) -> int:
    """Parameters of ``module``, tied ones once."""
    return sum(p.numel() for p in {id(p): p for p in module.parameters()}.values())


def _unique_tensors(module: Any) -> list[tuple[str, Any]]:
    """(name, tensor) of the state dict, a tied tensor under its first name only (what the libraries save)."""
    seen: set[int] = set()
    out = []
    for name, t in module.state_dict(keep_vars=True).items():
        if id(t) not in seen:
            seen.add(id(t))
            out.append((name, t))
    return out


def _pool(dtype):
    import torch

    g = torch.Generator().manual_seed(0)
    return (torch.randn(POOL_ELEMENTS, generator=g) * 0.02).to(dtype)


def write_streamed(module: Any, folder: Path, stem: str, dtype, shard_bytes: int = SHARD_BYTES) -> list[Path]:
    """Write ``module``'s weights (meta tensors: only their shapes are read) as ``{stem}.safetensors`` or, above
    ``shard_bytes``, ``{stem}-0000i-of-0000n.safetensors`` plus ``{stem}.safetensors.index.json``, floating-point
    tensors in ``dtype``; values from a random pool (variances as ones). Memory: one tensor at a time."""
    import torch

    pool = _pool(dtype)
    entries = []
    for name, t in _unique_tensors(module):
        kind = dtype if t.is_floating_point() else t.dtype
        entries.append((name, tuple(t.shape), kind, t.numel() * torch.empty((), dtype=kind).element_size()))
    shards: list[list] = [[]]
    size = 0
    for e in entries:
        if shards[-1] and size + e[3] > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(e)
        size += e[3]
    folder.mkdir(parents=True, exist_ok=True)
    n = len(shards)
    names = [f"{stem}.safetensors"] if n == 1 else [f"{stem}-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    offset_in_pool = 0
    for fname, shard in zip(names, shards, strict=True):
        header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
        off = 0
        for name, shape, kind, nbytes in shard:
            header[name] = {"dtype": _ST_NAME[str(kind)], "shape": list(shape), "data_offsets": [off, off + nbytes]}
            off += nbytes
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)
        with (folder / fname).open("wb") as out:
            out.write(len(blob).to_bytes(8, "little"))
            out.write(blob)
            for name, shape, kind, _ in shard:
                numel = 1
                for d in shape:
                    numel *= d
                if not torch.empty((), dtype=kind).is_floating_point():
                    out.write(torch.zeros(numel, dtype=kind).numpy().tobytes())
                    continue
                if "running_var" in name or name.endswith("norm.weight") or ".norm" in name and "weight" in name:
                    chunk = torch.ones(numel, dtype=kind)
                    out.write(chunk.view(torch.uint8).numpy().tobytes())
                    continue
                left = numel
                while left:
                    take = min(left, POOL_ELEMENTS - offset_in_pool)
                    out.write(pool[offset_in_pool : offset_in_pool + take].view(torch.uint8).numpy().tobytes())
                    offset_in_pool = (offset_in_pool + take) % POOL_ELEMENTS
                    left -= take
    if n > 1:
        weight_map = {name: fname for fname, shard in zip(names, shards, strict=True) for name, *_ in shard}
        total = sum(e[3] for e in entries)
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (folder / f"{stem}.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return [folder / f for f in names]


def build_full_size_flux(shape: str, path: Path, transformer_dtype: Any = None) -> Path:
    """The diffusers folder of ``shape`` at ``path`` (built once; bf16 weights, synthetic tokenizers).

    ``transformer_dtype``: the transformer's stored dtype instead (e.g. ``torch.float32``, as Tongyi-MAI/Z-Image-Turbo
    ships its transformer: 24.6 GB of fp32 shards next to a bf16 text encoder and VAE)."""
    import shutil

    import torch

    from benchmarks.full_size import synthetic_clip_tokenizer
    from tests.tiny_flux import _qwen_tokenizer, _t5_tokenizer, flux1_scheduler, klein_scheduler
    from tests.tiny_qwen_image import TEMPLATE_WORDS, qwen_image_scheduler
    from tests.tiny_zimage import zimage_scheduler

    if (path / "model_index.json").exists():
        return path
    shutil.rmtree(path, ignore_errors=True)
    with torch.device("meta"):
        modules = flux_modules(shape)
    for name, module in modules.items():
        folder = path / name
        if name in ("transformer", "vae"):
            module.save_config(folder)
            dtype = transformer_dtype if name == "transformer" and transformer_dtype is not None else torch.bfloat16
            write_streamed(module, folder, "diffusion_pytorch_model", dtype)
        else:
            module.config.dtype = torch.bfloat16
            module.config.save_pretrained(folder)
            write_streamed(module, folder, "model", torch.bfloat16)
    schedulers = {"flux1": flux1_scheduler, "zimage": zimage_scheduler, "qwen-image": qwen_image_scheduler}
    schedulers.get(shape, klein_scheduler)().save_pretrained(path / "scheduler")
    if shape == "flux1":
        synthetic_clip_tokenizer(path / "tokenizer")
        _t5_tokenizer(path / "tokenizer_2")
    elif shape == "qwen-image":  # the prompt template's words as tokens: its system turn is 34 tokens, as the real one
        tokenizer = _qwen_tokenizer(path / "tokenizer")
        tokenizer.add_tokens(TEMPLATE_WORDS)
        tokenizer.save_pretrained(path / "tokenizer")
    else:
        _qwen_tokenizer(path / "tokenizer")
    (path / "model_index.json").write_text(json.dumps(model_index(shape), indent=2))
    return path
