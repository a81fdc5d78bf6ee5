"""Which files of a base model the trainer loads: the one rule behind the trainer's download and the preload list.

A Stable Diffusion repo holds far more than training reads: single-file checkpoints at the root, ``.bin`` copies,
fp32, fp16 and non-EMA variants, ONNX/OpenVINO/Flax exports, the safety checker. ``choose_files`` picks, from the
repo's file list alone, ``model_index.json`` and for each component the trainer loads (``component_names``: the
model family's components, ``training.families``):

- its config (``config.json``; the scheduler's ``scheduler_config.json``; the tokenizer's text files);
- its weights, ``.safetensors`` only: a frozen component takes the ``fp16`` variant when the repo has one (half the
  bytes; it is cast to the training dtype on load), else the plain file; a trainable component takes the plain fp32
  file (its master weights), and the fp16 one only when the repo has no plain file. The VAE always *runs* in fp32
  (fp16 SD/SDXL VAE activations overflow), but it is frozen, so its weights come from the fp16 file, upcast.

A sharded checkpoint is its index file (``<name>.safetensors.index.json``, the variant's
``<name>.safetensors.index.fp16.json``: the names diffusers and transformers load) plus the shards it lists.
This module imports only the standard library and ``training.base_check`` (no torch): the preload list is computed
with it on the control plane's side (``python -m training.preload``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

from training.base_check import (
    BaseModelProblem,
    component_names,
    index_problem,
    no_safetensors,
    not_a_pipeline,
    weight_components,
)

#: the variant frozen weights are read from when the repo has it
FROZEN_VARIANT = "fp16"
#: weights file stem per library (diffusers models / transformers models)
WEIGHT_STEMS = {"diffusers": "diffusion_pytorch_model", "transformers": "model"}
#: the tokenizer files loaded when present (CLIP / Qwen: vocab.json + merges.txt, or a fast tokenizer.json; T5: its
#: sentencepiece model; Qwen: a chat template; an edit model's processor: its image processor's config)
TOKENIZER_FILES = (
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "merges.txt",
    "preprocessor_config.json",
    "special_tokens_map.json",
    "spiece.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
)
#: the text encoder names a recipe may train
TEXT_ENCODER_COMPONENTS = frozenset({"text_encoder", "text_encoder_2"})


@dataclass(frozen=True)
class FileChoice:
    """The files to fetch (sorted, repo-relative) and, per weight-bearing component, the variant read (None: the
    plain fp32 file)."""

    files: list[str]
    variants: dict[str, str | None] = field(default_factory=dict)


class FileChoiceError(ValueError):
    """The repo lacks a file the trainer needs; ``problem`` is the base-model problem (``training.base_check``)."""

    def __init__(self, problem: BaseModelProblem) -> None:
        super().__init__(problem.message)
        self.problem = problem


def with_variant(filename: str, variant: str | None) -> str:
    """``diffusion_pytorch_model.safetensors`` -> ``diffusion_pytorch_model.fp16.safetensors`` (the variant goes
    before the last extension, as diffusers and transformers name it)."""
    if variant is None:
        return filename
    stem, _, ext = filename.rpartition(".")
    return f"{stem}.{variant}.{ext}"


def _weights(
    folder: str,
    stem: str,
    variant: str | None,
    have: set[str],
    read_index: Callable[[str], dict[str, Any]] | None,
    base_model: str,
) -> list[str] | None:
    """The files of one weights variant in ``folder`` (sharded index + shards, or the single file), or None."""
    index_file = f"{folder}/{with_variant(f'{stem}.safetensors.index.json', variant)}"
    if index_file in have:  # what the libraries load first, when it exists
        if read_index is not None:
            weight_map = read_index(index_file).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise FileChoiceError(not_a_pipeline(base_model, f"{index_file} has no weight_map"))
            shards = sorted({f"{folder}/{v}" for v in weight_map.values() if isinstance(v, str)})
        else:  # the names both libraries save shards under
            name = f"{folder}/{stem}.{variant}" if variant else f"{folder}/{stem}"
            pattern = re.compile(rf"{re.escape(name)}-\d+-of-\d+\.safetensors")
            shards = sorted(f for f in have if pattern.fullmatch(f))
        missing = [s for s in shards if s not in have or not s.endswith(".safetensors")]
        if missing or not shards:
            why = f"lists missing shards {missing[:3]}" if missing else "has no shards beside it"
            raise FileChoiceError(not_a_pipeline(base_model, f"{index_file} {why}"))
        return [index_file, *shards]
    single = f"{folder}/{with_variant(f'{stem}.safetensors', variant)}"
    return [single] if single in have else None


def choose_files(
    repo_files: Iterable[str],
    index: dict[str, Any],
    *,
    trainable: Collection[str] = frozenset(),
    variant: str | None = FROZEN_VARIANT,
    base_model: str = "base model",
    read_index: Callable[[str], dict[str, Any]] | None = None,
) -> FileChoice:
    """The files the trainer loads from a repo holding ``repo_files``, whose ``model_index.json`` is ``index``.

    ``trainable``: the components a recipe trains (``Recipe.trainable_components``), read from their plain fp32
    files; every other weight-bearing component reads ``variant`` when the repo has it (``variant=None``: the plain
    files throughout, what diffusers' ``from_pretrained(..., use_safetensors=True)`` reads without a variant).
    ``read_index(path)`` returns a sharded checkpoint's index JSON (its shards are otherwise found by name).
    Raises ``FileChoiceError`` (with ``training.base_check``'s problem kinds) for an unusable repo.
    """
    problem = index_problem(base_model, index)  # allow-listed classes only (and so a known library per component)
    if problem is not None:
        raise FileChoiceError(problem)
    have = set(repo_files)
    if "model_index.json" not in have:
        raise FileChoiceError(
            BaseModelProblem("missing", f"base model {base_model!r} has no model_index.json: not a diffusers pipeline")
        )
    files: set[str] = {"model_index.json"}
    variants: dict[str, str | None] = {}
    weights = set(weight_components(index))  # the model family's (``training.families``)
    for name in component_names(index):
        if name in weights:
            config = f"{name}/config.json"
            if config not in have:
                raise FileChoiceError(not_a_pipeline(base_model, f"{config} is missing"))
            stem = WEIGHT_STEMS[index[name][0]]
            order = [None, variant] if name in trainable else [variant, None]
            for v in dict.fromkeys(order):  # unique, in order (variant None: just the plain file)
                chosen = _weights(name, stem, v, have, read_index, base_model)
                if chosen is not None:
                    files.update([config, *chosen])
                    variants[name] = v
                    break
            else:
                raise FileChoiceError(no_safetensors(base_model, name))
        elif name == "scheduler":
            if "scheduler/scheduler_config.json" not in have:
                raise FileChoiceError(not_a_pipeline(base_model, "scheduler/scheduler_config.json is missing"))
            files.add("scheduler/scheduler_config.json")
        else:  # a tokenizer: text files only, never weights
            found = [f"{name}/{f}" for f in TOKENIZER_FILES if f"{name}/{f}" in have]
            if not found:
                raise FileChoiceError(not_a_pipeline(base_model, f"{name}/ has no tokenizer files"))
            files.update(found)
    return FileChoice(sorted(files), variants)
