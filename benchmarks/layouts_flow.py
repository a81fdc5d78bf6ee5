"""The file layouts of the Z-Image and Qwen-Image base repos, for the downloads benchmark (``benchmarks/downloads.py``).

    python benchmarks/downloads.py layouts     # rewrites benchmarks/layouts/{zimage,qwen-image}.json too

Like the SD layouts, every file of the repo as known to us with its size, but for transformer families: the weights
are sharded (``<stem>-0000i-of-0000n.safetensors`` plus an index JSON), split here with ``huggingface_hub``'s
``split_torch_state_dict_into_shards`` (what ``save_pretrained`` calls) at the repo's shard size, from the real
architectures built on torch's meta device (``benchmarks/full_size_flux.flux_modules``). The stand-ins of these
shards are sparse holes of the computed size (the full-size benchmark only downloads them); the index files, configs
and the scheduler config are generated text.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

#: ``benchmarks.downloads.safetensors_header``: (name, dtype, shape) list -> (header bytes, data size)
HeaderFn = Callable[[list[tuple[str, str, list[int]]]], tuple[bytes, int]]

#: tokenizer files of the Qwen2 byte-level tokenizers with the sizes the Hub lists (approximate where unknown)
QWEN_VOCAB, QWEN_MERGES = ("vocab.json", 2776833), ("merges.txt", 1671853)
#: per shape: the repo, each weight-bearing component's stored dtype and shard size (None: one file), and the
#: repo's other files with their sizes (the Hub's where known, else plausible ones)
FLOW_SHAPES: dict[str, dict[str, Any]] = {
    "zimage": {
        "repo_id": "Tongyi-MAI/Z-Image-Turbo",
        "weights": {
            "transformer": ("F32", 10_000_000_000),
            "text_encoder": ("BF16", 4_000_000_000),
            "vae": ("BF16", None),
        },  # fmt: skip
        "files": [
            (".gitattributes", 1519),
            ("README.md", 12044),
            ("text_encoder/generation_config.json", 239),
            QWEN_MERGES,
            ("tokenizer.json", 11422654),
            ("tokenizer_config.json", 9732),
            QWEN_VOCAB,
        ],  # fmt: skip
    },
    "qwen-image": {
        "repo_id": "Qwen/Qwen-Image",
        "weights": {
            "transformer": ("BF16", 5_000_000_000),
            "text_encoder": ("BF16", 5_000_000_000),
            "vae": ("BF16", None),
        },  # fmt: skip
        "files": [
            (".gitattributes", 1519),
            ("LICENSE", 11343),
            ("README.md", 14807),
            ("text_encoder/generation_config.json", 244),
            ("added_tokens.json", 605),
            ("chat_template.jinja", 1017),
            QWEN_MERGES,
            ("special_tokens_map.json", 613),
            ("tokenizer_config.json", 4686),
            QWEN_VOCAB,
        ],  # fmt: skip
    },
}
#: the tokenizer's files (the bare names in ``files``) live under tokenizer/
TOKENIZER_NAMES = {"vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "added_tokens.json",
                   "chat_template.jinja", "special_tokens_map.json"}  # fmt: skip
STEMS = {"transformer": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model", "text_encoder": "model"}
ABOUT = (
    "Every file of the Hub repo {repo} as known to us (published file listings: the Z-Image-Turbo repo also holds "
    "an assets/ folder of example images, left out here), with its size in bytes. size_is 'computed': a "
    "safetensors shard or file, sized as 8 + its JSON header + its tensors' bytes, the tensors of the real "
    "architecture (benchmarks/full_size_flux.flux_modules, diffusers {diffusers} / transformers {transformers}) "
    "in the stored dtype, split into shards by huggingface_hub's split_torch_state_dict_into_shards at the repo's "
    "shard size. Checked against the sizes published for these files: Qwen-Image's 9 transformer shards and VAE "
    "and Z-Image-Turbo's VAE equal to the byte, the text encoders' shards within 4 KB (their tensor names differ "
    "a little), Z-Image-Turbo's fp32 transformer 24.6 GB in all. 'generated': an index, config or model_index "
    "whose text (stored here) is generated from the same modules. 'approximate': tokenizer files, README, "
    "LICENSE and the like (the Hub's sizes where known, else plausible ones)."
)


def _text_entry(path: str, text: str) -> dict[str, Any]:
    return {"path": path, "size": len(text.encode()), "size_is": "generated", "text": text}


def _config_text(module: Any) -> str:
    if hasattr(module, "to_json_string"):  # diffusers: _class_name, _diffusers_version and every argument
        return module.to_json_string()
    module.config.architectures = [type(module).__name__]
    return module.config.to_json_string()


def weight_files(name: str, module: Any, dtype: str, shard_bytes: int | None, header_fn: HeaderFn
                 ) -> list[dict[str, Any]]:  # fmt: skip
    """The layout entries of ``module``'s weights in ``dtype``: one file, or shards plus their index."""
    import torch
    from huggingface_hub import split_torch_state_dict_into_shards

    from benchmarks.full_size_flux import _unique_tensors

    torch_dtype = {"F32": torch.float32, "BF16": torch.bfloat16}[dtype]
    state = {n: t.to(torch_dtype) if t.is_floating_point() else t for n, t in _unique_tensors(module)}
    stem = STEMS[name]
    if shard_bytes is None:
        split = {f"{stem}.safetensors": list(state)}
    else:
        pattern = f"{stem}{{suffix}}.safetensors"
        plan = split_torch_state_dict_into_shards(state, filename_pattern=pattern, max_shard_size=shard_bytes)
        split = plan.filename_to_tensors
    st_name = {torch.float32: "F32", torch.bfloat16: "BF16", torch.int64: "I64"}
    entries, weight_map, total = [], {}, 0
    for fname, names in split.items():
        header, data = header_fn([(n, st_name[state[n].dtype], list(state[n].shape)) for n in names])
        entries.append({"path": f"{name}/{fname}", "size": len(header) + data, "size_is": "computed",
                        "shard": {"model": name, "dtype": dtype, "tensors": len(names)}})  # fmt: skip
        weight_map.update(dict.fromkeys(names, fname))
        total += data
    if len(split) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        entries.append(_text_entry(f"{name}/{stem}.safetensors.index.json", json.dumps(index, indent=2)))
    return entries


def build_flow_layout(shape: str, header_fn: HeaderFn) -> dict[str, Any]:
    """The layout file of ``shape`` ("zimage" or "qwen-image"; see ``ABOUT``); ``header_fn`` sizes a safetensors
    file's header (``benchmarks.downloads.safetensors_header``)."""
    import diffusers
    import torch
    import transformers

    from benchmarks.full_size_flux import flux_modules, model_index
    from tests.tiny_qwen_image import qwen_image_scheduler
    from tests.tiny_zimage import zimage_scheduler

    spec = FLOW_SHAPES[shape]
    with torch.device("meta"):
        modules = flux_modules(shape)
    index = model_index(shape)
    scheduler = {"zimage": zimage_scheduler, "qwen-image": qwen_image_scheduler}[shape]()
    files = [_text_entry("model_index.json", json.dumps(index, indent=2)),
             _text_entry("scheduler/scheduler_config.json", scheduler.to_json_string())]  # fmt: skip
    for name, (dtype, shard_bytes) in spec["weights"].items():
        files.append(_text_entry(f"{name}/config.json", _config_text(modules[name])))
        files += weight_files(name, modules[name], dtype, shard_bytes, header_fn)
    for path, size in spec["files"]:
        path = f"tokenizer/{path}" if path in TOKENIZER_NAMES else path
        files.append({"path": path, "size": size, "size_is": "approximate"})
    about = ABOUT.format(repo=spec["repo_id"], diffusers=diffusers.__version__, transformers=transformers.__version__)
    return {"repo_id": spec["repo_id"], "about": about, "model_index": index,
            "files": sorted(files, key=lambda f: f["path"])}  # fmt: skip
