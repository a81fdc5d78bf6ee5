"""Loading Stable Diffusion 1.x/2.x and SDXL pipeline parts from a Hub repo id or a local folder, and using them.

A base model is untrusted input, checked by ``training.base_check`` (the one home of the allow-lists and of the
safetensors rule): an existing folder or a valid Hub repo id; ``model_index.json`` may only name allow-listed
pipeline and component classes (looked up in fixed tables, never imported by the name read from the repo); weights
load from ``.safetensors`` only (``.bin``/``.ckpt`` pickles can run code); no remote code, no custom pipeline.

Only the files ``training.files.choose_files`` picks are downloaded (into the normal Hugging Face cache, where a
Space's ``preload_from_hub`` puts them), at the commit the repo was inspected at; every component then loads from
that local snapshot with the variant chosen for it (frozen: fp16 where the repo has it; trainable: fp32).
"""

from __future__ import annotations

import glob
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from training.base_check import (  # the allow-lists and the checks live there
    BaseModelProblem,
    component_names,
    component_problem,
    hub_problem,
    id_problem,
    is_sdxl_index,
    not_a_pipeline,
    parse_json_object,
    probe_base_model,
)
from training.exitcodes import BadInputError, HubUnreachableError, TrainingError
from training.files import FileChoice, FileChoiceError, choose_files


@dataclass
class ModelInfo:
    """What the trainer needs to know about a base model before loading any weights."""

    base_model: str
    index: dict[str, Any]
    unet_config: dict[str, Any]
    vae_config: dict[str, Any]
    #: the repo's (or folder's) files, repo-relative, and the Hub commit they were listed at (None: a local folder)
    files: list[str] = field(default_factory=list)
    revision: str | None = None

    @property
    def is_sdxl(self) -> bool:
        return is_sdxl_index(self.index)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae_config.get("block_out_channels", [1, 1, 1, 1])) - 1)

    @property
    def native_resolution(self) -> int:
        return int(self.unet_config.get("sample_size", 64)) * self.vae_scale_factor

    @property
    def text_encoder_names(self) -> list[str]:
        return ["text_encoder", "text_encoder_2"] if self.is_sdxl else ["text_encoder"]

    @property
    def component_names(self) -> list[str]:
        """Every component the trainer loads."""
        return component_names(self.index)


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
    """Check the id, model_index.json (allow-listed classes), the weight files (safetensors) and read the UNet/VAE
    configs, classifying failures as ``training.base_check`` does: Hub unreachable -> ``HubUnreachableError``
    (exit 1, retried), anything else unusable -> ``BadInputError`` (exit 2). Downloads no weights."""
    probe = probe_base_model(base_model)
    if probe.problem is not None:
        raise problem_error(probe.problem)
    info = ModelInfo(base_model, probe.index, {}, {}, files=probe.files, revision=probe.revision)
    info.unet_config = _read_json(base_model, "unet/config.json", info.revision)
    info.vae_config = _read_json(base_model, "vae/config.json", info.revision)
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
        raise problem_error(e.problem) from e


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


def _transformers_class(name: str) -> type:
    """The transformers class for an allow-listed name (a fixed table: nothing is looked up by a repo's string)."""
    import transformers

    table = {
        "CLIPTextModel": transformers.CLIPTextModel,
        "CLIPTextModelWithProjection": transformers.CLIPTextModelWithProjection,
        "CLIPTokenizer": transformers.CLIPTokenizer,
        "CLIPTokenizerFast": transformers.CLIPTokenizerFast,
    }
    return table[name]


@dataclass
class Components:
    """The loaded parts of a pipeline. Text encoders and tokenizers are lists (two for SDXL)."""

    info: ModelInfo
    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoders: list[torch.nn.Module]
    tokenizers: list[Any]
    noise_scheduler: Any
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_sdxl(self) -> bool:
        return self.info.is_sdxl

    @property
    def prediction_type(self) -> str:
        return self.noise_scheduler.config.prediction_type


def load_components(
    info: ModelInfo, *, unet_dtype: torch.dtype, text_dtype: torch.dtype, trainable: Collection[str] = frozenset()
) -> Components:
    """Load UNet, VAE, text encoders, tokenizers and the DDPM scheduler from the files ``choose_model_files`` picks
    (downloaded first for a Hub repo): ``trainable`` components from their fp32 files, the others from their fp16
    variants where the repo has them, each cast to its dtype here.

    The VAE always runs in fp32 (fp16 SD/SDXL VAE activations overflow); being frozen, its weights may still come
    from the fp16 file: they are upcast on load. Weights from safetensors only; classes from the allow-list only
    (tokenizers and the scheduler hold no weights).
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    index = info.index
    for name in info.component_names:  # again here: ``info`` may not come from inspect_base_model
        check_component(info.base_model, index, name)
    choice = choose_model_files(info, trainable)
    src = str(fetch_model_files(info, choice))
    var = choice.variants
    unet = UNet2DConditionModel.from_pretrained(
        src, subfolder="unet", torch_dtype=unet_dtype, use_safetensors=True, variant=var["unet"]
    )
    vae = AutoencoderKL.from_pretrained(
        src, subfolder="vae", torch_dtype=torch.float32, use_safetensors=True, variant=var["vae"]
    )
    encoders, tokenizers = [], []
    for i, name in enumerate(info.text_encoder_names):
        cls = _transformers_class(index[name][1])  # allow-listed just above
        encoders.append(
            cls.from_pretrained(src, subfolder=name, torch_dtype=text_dtype, use_safetensors=True, variant=var[name])
        )
        tok_name = "tokenizer" if i == 0 else f"tokenizer_{i + 1}"
        tok_cls = _transformers_class(index[tok_name][1])
        tokenizers.append(tok_cls.from_pretrained(src, subfolder=tok_name))
    scheduler = DDPMScheduler.from_pretrained(src, subfolder="scheduler")
    for m in (unet, vae, *encoders):
        m.requires_grad_(False)
    return Components(info, unet, vae, encoders, tokenizers, scheduler)


def tokenize(components: Components, prompt: str) -> list[torch.Tensor]:
    """Token ids ([1, max_len]) of ``prompt`` for each text encoder."""
    return [
        tok(
            prompt, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids
        for tok in components.tokenizers
    ]


def encode_tokens(components: Components, token_ids: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Prompt embeddings (and SDXL's pooled embedding) from token ids, as the matching pipeline computes them."""
    if not components.is_sdxl:
        te = components.text_encoders[0]
        return te(token_ids[0].to(te.device))[0], None
    embeds, pooled = [], None
    for te, ids in zip(components.text_encoders, token_ids, strict=True):
        out = te(ids.to(te.device), output_hidden_states=True)
        pooled = out[0]  # the last encoder (with projection) gives SDXL's pooled embedding
        embeds.append(out.hidden_states[-2])
    return torch.cat(embeds, dim=-1), pooled


def sdxl_time_ids(original_hw: tuple[int, int], crop_tl: tuple[int, int], resolution: int) -> torch.Tensor:
    """SDXL micro-conditioning: original size, crop top-left, target size."""
    return torch.tensor([*original_hw, *crop_tl, resolution, resolution], dtype=torch.float32)


def build_pipeline(components: Components, *, unet: torch.nn.Module | None = None, text_encoders=None):
    """An inference pipeline sharing the live modules (no copies, no dtype casts) with a fast DPM-Solver scheduler."""
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    unet = unet or components.unet
    tes = text_encoders or components.text_encoders
    sched = DPMSolverMultistepScheduler.from_config(components.noise_scheduler.config)
    if components.is_sdxl:
        pipe = StableDiffusionXLPipeline(
            vae=components.vae,
            text_encoder=tes[0],
            text_encoder_2=tes[1],
            tokenizer=components.tokenizers[0],
            tokenizer_2=components.tokenizers[1],
            unet=unet,
            scheduler=sched,
        )
    else:
        pipe = StableDiffusionPipeline(
            vae=components.vae,
            text_encoder=tes[0],
            tokenizer=components.tokenizers[0],
            unet=unet,
            scheduler=sched,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def pipeline_class(components: Components):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    return StableDiffusionXLPipeline if components.is_sdxl else StableDiffusionPipeline
