"""Loading a base model's pipeline parts from a Hub repo id or a local folder (the model family does the loading).

A base model is untrusted input, checked by ``training.base_check`` (the one home of the checks and of the
safetensors rule) against its model family's allow-list (``training.families``): an existing folder or a valid Hub
repo id; ``model_index.json`` may only name allow-listed pipeline and component classes (looked up in fixed tables,
never imported by the name read from the repo); weights load from ``.safetensors`` only (``.bin``/``.ckpt``
pickles can run code); no remote code, no custom pipeline.

Only the files ``training.files.choose_files`` picks are downloaded (into the normal Hugging Face cache, where a
Space's ``preload_from_hub`` puts them), at the commit the repo was inspected at; every component then loads from
that local snapshot with the variant chosen for it (frozen: fp16 where the repo has it; trainable: fp32). In offline
mode (``HF_HUB_OFFLINE=1``) the cached copy is used, and only its files are chosen (``training.base_check``).
"""

from __future__ import annotations

import glob
import logging
from collections.abc import Collection
from pathlib import Path
from typing import Any

import torch

from contract.settings import hub_offline
from training.base_check import (  # the checks live there
    BaseModelProblem,
    component_problem,
    hub_problem,
    id_problem,
    not_a_pipeline,
    offline_problem,
    parse_json_object,
    probe_base_model,
)
from training.exitcodes import BadInputError, HubUnreachableError, TrainingError
from training.families.base import Components, ModelInfo
from training.files import FileChoice, FileChoiceError, choose_files

__all__ = ["build_pipeline", "choose_model_files", "encode_tokens", "fetch_model_files",
           "inspect_base_model", "load_components", "pipeline_class", "sdxl_time_ids", "tokenize"]  # fmt: skip
log = logging.getLogger(__name__)


def problem_error(problem: BaseModelProblem) -> TrainingError:
    """The trainer's exception for a base-model problem: a retryable one (Hub unreachable) exits 1, so the worker
    tries again; every other one is bad input (exit 2)."""
    if problem.retryable:
        return HubUnreachableError(problem.message)
    return BadInputError(problem.message)


def check_base_model_id(base_model: str) -> bool:
    """True for an existing local folder, False for a valid Hub repo id; ``BadInputError`` for anything else."""
    problem = id_problem(base_model)
    if problem is not None:
        raise problem_error(problem)
    return Path(base_model).is_dir()


def _hub_call(base_model: str, call, *args, **kwargs):
    """``call(*args, **kwargs)`` with Hub failures classified as ``training.base_check`` does."""
    try:
        return call(*args, **kwargs)
    except Exception as e:
        problem = hub_problem(base_model, e)
        if problem is None:
            raise
        raise problem_error(problem) from e


def _read_json(base_model: str, filename: str, revision: str | None = None) -> dict[str, Any]:
    local = Path(base_model)
    if local.is_dir():
        path = local / filename
        if not path.is_file():
            raise BadInputError(not_a_pipeline(base_model, f"{filename} is missing").message)
    else:
        from huggingface_hub import hf_hub_download

        path = Path(_hub_call(base_model, hf_hub_download, base_model, filename, revision=revision))
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        text = ""
    data = parse_json_object(base_model, filename, text)
    if isinstance(data, BaseModelProblem):
        raise problem_error(data)
    return data


def check_component(base_model: str, index: dict[str, Any], name: str) -> str:
    """The class ``model_index.json`` names for component ``name`` if it is allow-listed; else ``BadInputError``."""
    problem = component_problem(base_model, index, name)
    if problem is not None:
        raise problem_error(problem)
    return index[name][1]


def inspect_base_model(base_model: str) -> ModelInfo:
    """Check the id, model_index.json (a known model family, its allow-listed classes), the weight files
    (safetensors) and read the denoiser's and the VAE's configs, classifying failures as ``training.base_check``
    does: Hub unreachable -> ``HubUnreachableError`` (exit 1, retried), anything else unusable -> ``BadInputError``
    (exit 2). Downloads no weights."""
    probe = probe_base_model(base_model)
    if probe.problem is not None:
        raise problem_error(probe.problem)
    if probe.note:  # offline mode: the cached copy
        log.info("%s", probe.note)
    info = ModelInfo(base_model, probe.index, {}, {}, files=probe.files, revision=probe.revision)
    denoiser, vae = info.family.config_components()
    info.denoiser_config = _read_json(base_model, f"{denoiser}/config.json", info.revision)
    info.vae_config = _read_json(base_model, f"{vae}/config.json", info.revision)
    return info


def choose_model_files(info: ModelInfo, trainable: Collection[str] = frozenset()) -> FileChoice:
    """``training.files.choose_files`` for this model (a sharded checkpoint's index is read to list its shards);
    ``BadInputError`` when a needed file is missing."""
    try:
        return choose_files(
            info.files,
            info.index,
            trainable=trainable,
            base_model=info.base_model,
            read_index=lambda path: _read_json(info.base_model, path, info.revision),
        )
    except FileChoiceError as e:
        problem = e.problem
        if hub_offline() and not Path(info.base_model).is_dir():  # only the cached files were there to choose from
            problem = offline_problem(info.base_model, f"is only partly in the Hugging Face cache ({problem.message})")
        raise problem_error(problem) from e


def fetch_model_files(info: ModelInfo, choice: FileChoice) -> Path:
    """The local folder holding ``choice.files``: a local base model as it is; for a Hub repo, exactly those files
    downloaded (at ``info.revision``) into the Hugging Face cache, whose snapshot folder is returned. Files already
    there (a Space's ``preload_from_hub``, an earlier run) are not downloaded again."""
    if Path(info.base_model).is_dir():
        return Path(info.base_model)
    from huggingface_hub import snapshot_download

    exact = [glob.escape(f) for f in choice.files]  # patterns that match these names only
    folder = _hub_call(
        info.base_model, snapshot_download, info.base_model, revision=info.revision, allow_patterns=exact
    )
    return Path(folder)


def load_components(
    info: ModelInfo,
    *,
    unet_dtype: torch.dtype,
    text_dtype: torch.dtype,
    trainable: Collection[str] = frozenset(),
    weight_dtype: torch.dtype | None = None,
    parts: Collection[str] | None = None,
    into: Components | None = None,
    quantization_config: Any = None,
) -> Components:
    """Load the model family's components from the files ``choose_model_files`` picks (downloaded first for a Hub
    repo): ``trainable`` components from their fp32 files, the others from their fp16 variants where the repo has
    them, each cast to its dtype by the family (``unet_dtype``: the denoiser's, whatever the family calls it;
    ``weight_dtype``: frozen weights', default ``text_dtype``). ``parts``/``into``: staged loading;
    ``quantization_config``: a quantized frozen denoiser (``ModelFamily.load``). Weights from safetensors only; classes from the allow-list only."""
    index = info.index
    for name in info.component_names:  # again here: ``info`` may not come from inspect_base_model
        check_component(info.base_model, index, name)
    choice = choose_model_files(info, trainable)
    src = str(fetch_model_files(info, choice))
    return info.family.load(
        src, choice.variants, denoiser_dtype=unet_dtype, text_dtype=text_dtype,
        weight_dtype=weight_dtype or text_dtype, parts=parts, into=into, quantization_config=quantization_config,
    )  # fmt: skip


# ---------------------------------------------------------------- the family's pieces under their older names
def tokenize(components: Components, prompt: str) -> list[torch.Tensor]:
    """Token ids ([1, max_len]) of ``prompt`` for each text encoder."""
    return components.family.tokenize(components, prompt)


def encode_tokens(components: Components, token_ids: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """SD prompt embeddings (and SDXL's pooled embedding) from token ids, as the matching pipeline computes them."""
    out = components.family.encode_prompt(components, components.text_encoders, token_ids)
    return out["embeds"], out.get("pooled")


def sdxl_time_ids(original_hw: tuple[int, int], crop_tl: tuple[int, int], resolution: int) -> torch.Tensor:
    """SDXL micro-conditioning: original size, crop top-left, target size."""
    from training.families.sd import sdxl_time_ids as time_ids

    return time_ids(original_hw, crop_tl, resolution)


def build_pipeline(components: Components, *, unet: torch.nn.Module | None = None, text_encoders=None):
    """The family's inference pipeline sharing the live modules (no copies, no dtype casts)."""
    return components.family.build_pipeline(components, denoiser=unet, text_encoders=text_encoders)


def pipeline_class(components: Components):
    return components.family.pipeline_class()
