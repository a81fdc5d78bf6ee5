"""The ComfyUI / BFL copy of a Flux-family LoRA: the diffusers LoRA mapped onto the original (Black Forest Labs)
module names.

diffusers splits some of BFL's fused projections (``img_attn.qkv``, ``single_blocks.N.linear1`` = q/k/v/mlp) into
several modules, each with its own LoRA. ``fuse_to_bfl`` gives a fused projection one block-diagonal LoRA: the
diffusers LoRAs' down matrices stacked, their up matrices on the diagonal, zero blocks for untrained parts, so the
weight change is exactly the same. Two layouts: kohya's ``lora_unet_*`` with ``.alpha`` (Flux.1: what ComfyUI and
diffusers' kohya loader read) and ``diffusion_model.*`` with the scale baked into ``lora_B`` (Flux.2: what ComfyUI
reads and diffusers' Flux.2 loader converts). ``flux1_bfl_groups`` / ``flux2_bfl_groups`` name the modules.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_comfy_copy(diffusers_file: Path, comfy_file: Path, groups: dict[str, list], *, kohya: bool) -> None:
    """Write the BFL-named copy of the diffusers LoRA file (its scales from the file's adapter metadata)."""
    from safetensors.torch import load_file, save_file

    comfy = fuse_to_bfl(load_file(str(diffusers_file)), lora_scales(diffusers_file), groups, kohya=kohya)
    save_file({k: v.contiguous() for k, v in comfy.items()}, str(comfy_file))


def lora_scales(path: str | Path):
    """``scale(module)`` = lora_alpha / r of the diffusers LoRA file at ``path`` (from the adapter metadata
    ``save_lora_weights`` writes; patterns matched by module-name suffix); 1.0 without metadata (what diffusers
    assumes when it loads a file without it)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        raw = (f.metadata() or {}).get("lora_adapter_metadata")
    meta = json.loads(raw) if raw else {}
    conf = {k.split(".", 1)[1]: v for k, v in meta.items() if k.startswith("transformer.")}
    r, alpha = conf.get("r"), conf.get("lora_alpha")
    rank_pattern, alpha_pattern = conf.get("rank_pattern") or {}, conf.get("alpha_pattern") or {}

    def pick(pattern: dict, module: str, default):
        for key, value in pattern.items():
            if module == key or module.endswith("." + key):
                return value
        return default

    def scale(module: str) -> float:
        if r is None or alpha is None:
            return 1.0
        return float(pick(alpha_pattern, module, alpha)) / float(pick(rank_pattern, module, r))

    return scale


def flux1_bfl_groups(n_double: int, n_single: int, inner: int, mlp_ratio: float = 4.0) -> dict[str, list]:
    """BFL module name -> [(diffusers module, output rows)] of the diffusers modules fused into it (FLUX.1)."""
    mlp = int(inner * mlp_ratio)
    groups: dict[str, list] = {
        "img_in": [("x_embedder", None)], "txt_in": [("context_embedder", None)],
        "final_layer.linear": [("proj_out", None)],
        "time_in.in_layer": [("time_text_embed.timestep_embedder.linear_1", None)],
        "time_in.out_layer": [("time_text_embed.timestep_embedder.linear_2", None)],
        "guidance_in.in_layer": [("time_text_embed.guidance_embedder.linear_1", None)],
        "guidance_in.out_layer": [("time_text_embed.guidance_embedder.linear_2", None)],
        "vector_in.in_layer": [("time_text_embed.text_embedder.linear_1", None)],
        "vector_in.out_layer": [("time_text_embed.text_embedder.linear_2", None)],
    }  # fmt: skip
    _double_blocks(groups, n_double, inner, (
        ("img_mlp.0", "ff.net.0.proj"), ("img_mlp.2", "ff.net.2"),
        ("txt_mlp.0", "ff_context.net.0.proj"), ("txt_mlp.2", "ff_context.net.2"),
        ("img_mod.lin", "norm1.linear"), ("txt_mod.lin", "norm1_context.linear"),
    ))  # fmt: skip
    for i in range(n_single):
        s, b = f"single_transformer_blocks.{i}", f"single_blocks.{i}"
        groups[f"{b}.linear1"] = [(f"{s}.attn.to_{x}", inner) for x in "qkv"] + [(f"{s}.proj_mlp", mlp)]
        groups[f"{b}.linear2"] = [(f"{s}.proj_out", None)]
        groups[f"{b}.modulation.lin"] = [(f"{s}.norm.linear", None)]
    return groups


def lora_modules(diffusers_sd: dict) -> dict[str, tuple[Any, Any]]:
    """diffusers module name (without ``transformer.``) -> (lora_A [r, in], lora_B [out, r]), from either of the
    names diffusers writes (``lora_A``/``lora_B`` or ``lora.down``/``lora.up``)."""
    suffixes = {".lora_A.weight": 0, ".lora_B.weight": 1, ".lora.down.weight": 0, ".lora.up.weight": 1}
    out: dict[str, list] = {}
    for key, value in diffusers_sd.items():
        suffix = next((s for s in suffixes if key.endswith(s)), None)
        if not key.startswith("transformer.") or suffix is None:
            raise ValueError(f"unexpected LoRA key {key!r} (a transformer LoRA has lora_A/lora_B weights only)")
        out.setdefault(key[len("transformer.") : -len(suffix)], [None, None])[suffixes[suffix]] = value
    return {m: (a, b) for m, (a, b) in out.items()}


def fuse_to_bfl(diffusers_sd: dict, scales, groups: dict[str, list], *, kohya: bool) -> dict:
    """Map a diffusers LoRA onto BFL module names. A group of several diffusers modules (a fused projection)
    becomes one LoRA: their down matrices stacked (zeros for untrained parts, each block of the group's rank),
    their up matrices block-diagonal (zero rows for untrained parts), so ``up @ down`` is exactly the diffusers
    modules' updates side by side. ``kohya``: ``lora_unet_<name with _>.lora_down/up.weight`` + ``.alpha`` (the
    common alpha/rank kept, else baked in); else ``diffusion_model.<name>.lora_A/B.weight`` with the scale baked
    into ``lora_B`` (no alpha: diffusers' Flux.2 converter accepts none). Raises for a module it cannot place."""
    import torch

    mods = lora_modules(diffusers_sd)
    owner = {m: bfl for bfl, parts in groups.items() for m, _ in parts}
    unplaced = sorted(set(mods) - set(owner))
    if unplaced:
        raise ValueError(f"no ComfyUI name for LoRA modules {unplaced[:4]}")
    out: dict[str, Any] = {}
    for bfl, parts in groups.items():
        present = [m for m, _ in parts if m in mods]
        if not present:
            continue
        ranks = {mods[m][0].shape[0] for m in present}
        group_scales = {scales(m) for m in present}
        rank = max(ranks)
        keep_alpha = kohya and len(group_scales) == 1
        common = group_scales.pop() if keep_alpha else 1.0
        downs, ups = [], []
        ref_a = mods[present[0]][0]
        for m, rows in parts:
            if m in mods:
                a, b = mods[m]
                s = 1.0 if keep_alpha else scales(m)
                pad = rank - a.shape[0]  # a smaller rank in the group: zero-padded to the block width
                downs.append(torch.cat([a, a.new_zeros(pad, a.shape[1])]) if pad else a)
                ups.append(torch.cat([b * s, b.new_zeros(b.shape[0], pad)], dim=1) if pad else b * s)
            else:
                downs.append(ref_a.new_zeros(rank, ref_a.shape[1]))
                ups.append(ref_a.new_zeros(rows, rank))
        down = torch.cat(downs) if len(parts) > 1 else downs[0]
        up = torch.block_diag(*ups) if len(parts) > 1 else ups[0]
        if kohya:
            name = "lora_unet_" + bfl.replace(".", "_")
            out[f"{name}.lora_down.weight"] = down
            out[f"{name}.lora_up.weight"] = up
            out[f"{name}.alpha"] = torch.tensor(common * down.shape[0], dtype=down.dtype)
        else:
            out[f"diffusion_model.{bfl}.lora_A.weight"] = down
            out[f"diffusion_model.{bfl}.lora_B.weight"] = up
    return out


def flux2_bfl_groups(n_double: int, n_single: int, inner: int) -> dict[str, list]:
    """BFL module name -> [(diffusers module, output rows)] of the diffusers modules fused into it (FLUX.2). The
    final layer's modulation is left out: BFL and diffusers order its shift/scale halves differently and diffusers'
    converter does not swap them, so a copy could not load the same in both."""
    groups: dict[str, list] = {
        "img_in": [("x_embedder", None)], "txt_in": [("context_embedder", None)],
        "final_layer.linear": [("proj_out", None)],
        "time_in.in_layer": [("time_guidance_embed.timestep_embedder.linear_1", None)],
        "time_in.out_layer": [("time_guidance_embed.timestep_embedder.linear_2", None)],
        "single_stream_modulation.lin": [("single_stream_modulation.linear", None)],
        "double_stream_modulation_img.lin": [("double_stream_modulation_img.linear", None)],
        "double_stream_modulation_txt.lin": [("double_stream_modulation_txt.linear", None)],
    }  # fmt: skip
    _double_blocks(groups, n_double, inner, (
        ("img_mlp.0", "ff.linear_in"), ("img_mlp.2", "ff.linear_out"),
        ("txt_mlp.0", "ff_context.linear_in"), ("txt_mlp.2", "ff_context.linear_out"),
    ))  # fmt: skip
    for i in range(n_single):
        s, b = f"single_transformer_blocks.{i}", f"single_blocks.{i}"
        groups[f"{b}.linear1"] = [(f"{s}.attn.to_qkv_mlp_proj", None)]
        groups[f"{b}.linear2"] = [(f"{s}.attn.to_out", None)]
    return groups


def _double_blocks(groups: dict[str, list], n_double: int, inner: int, one_to_one: tuple) -> None:
    """The double-stream blocks' groups of both Flux generations: the image and text q/k/v fused into ``qkv``, the
    attention outputs, and ``one_to_one`` (BFL name, diffusers name) pairs of the generation's other modules."""
    for i in range(n_double):
        d, b = f"transformer_blocks.{i}", f"double_blocks.{i}"
        groups[f"{b}.img_attn.qkv"] = [(f"{d}.attn.to_{x}", inner) for x in "qkv"]
        groups[f"{b}.txt_attn.qkv"] = [(f"{d}.attn.add_{x}_proj", inner) for x in "qkv"]
        for bfl, dif in (("img_attn.proj", "attn.to_out.0"), ("txt_attn.proj", "attn.to_add_out"), *one_to_one):
            groups[f"{b}.{bfl}"] = [(f"{d}.{dif}", None)]
