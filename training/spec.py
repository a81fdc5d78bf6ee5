"""The training task: ``TrainSpec`` parsed and validated from the task JSON the worker writes.

Missing ``params`` keys take defaults; unknown keys are an error (a typo must not silently train with defaults).
Values left ``None`` here ("auto") are resolved later, when the model and the images are known.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from contract.hub_dataset import DatasetSource

# The bounds and choices of the params are the contract's (torch-free, one table shared with the form and the CLI).
from contract.params import (
    DEFAULT_LR_SCHEDULER,
    DEFAULT_LR_WARMUP_STEPS,
    DEFAULT_SNR_GAMMA,
    FULL_RECIPES,
    LR_SCHEDULER_CHOICES,
    MAX_PROMPT_CHARS,
    MIXED_PRECISION_CHOICES,
    PARAMS,
    QUANTIZE_BASE_CHOICES,
    text_problem,
    validation_prompts_problem,
)
from training.exitcodes import BadInputError

Auto = Literal["auto"]
TriState = bool | Auto


@dataclass
class HubFolder:
    """A folder inside a Hub repo (images to download, or where checkpoints live)."""

    repo_id: str
    path: str = ""
    repo_type: str = "dataset"
    revision: str | None = None


@dataclass
class OutputRepo:
    """The model repo the outputs are uploaded to."""

    repo_id: str
    private: bool = True


@dataclass
class TrainParams:
    """Hyper-parameters. ``None``/"auto" means: chosen by the trainer from the model, the images and the GPU."""

    steps: int | None = None
    learning_rate: float | None = None
    rank: int = 4
    alpha: float | None = None
    resolution: int | None = None
    seed: int = 0
    batch_size: int = 1
    lr_warmup_steps: int = DEFAULT_LR_WARMUP_STEPS  # the schedule's defaults are the contract's (the form shows them)
    lr_scheduler: str = DEFAULT_LR_SCHEDULER
    train_text_encoder: bool = False
    prior_preservation: bool = False
    num_class_images: int = 50
    prior_loss_weight: float = 1.0
    snr_gamma: float | None = DEFAULT_SNR_GAMMA
    noise_offset: float = 0.0
    random_flip: bool = True
    checkpoint_every: int | None = 100
    checkpoints_to_keep: int = 2
    validation_prompts: list[str] = field(default_factory=list)
    validation_every: int | None = None
    sample_inference_steps: int = 25
    mixed_precision: str = "auto"
    gradient_checkpointing: TriState = "auto"
    use_8bit_adam: TriState = "auto"
    compile: bool = False
    memory_budget_gib: float | None = None
    log_every: int | None = None
    quantize_base: str = "auto"
    #: score each sampling point and the base model, and give the user the best checkpoint (``contract.scores``)
    score: bool = True
    #: before training, a vision-language model (``CAPTION_MODEL``: ``training.captioner``) writes a caption for
    #: every photo without its own ``.txt``; the captions are saved in the output's ``captions/`` folder
    auto_captions: bool = False


@dataclass
class TrainSpec:
    """One training task, as given to ``python -m training --task TASK.json``."""

    task_id: str
    base_model: str
    instance_prompt: str
    images: str | HubFolder | DatasetSource  # a folder, a Hub folder, or a dataset read with ``datasets``
    recipe: str = "dreambooth-lora"
    class_prompt: str | None = None
    class_images: str | HubFolder | None = None
    params: TrainParams = field(default_factory=TrainParams)
    output: OutputRepo | None = None
    checkpoint: HubFolder | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainSpec:
        """Parse and validate a task dict; raises ``BadInputError`` with a message naming the offending key."""
        if not isinstance(data, dict):
            raise BadInputError("the task must be a JSON object")
        _reject_unknown(data, cls, "task")
        for key in ("task_id", "base_model", "instance_prompt", "images"):
            if data.get(key) in (None, ""):
                raise BadInputError(f"task key {key!r} is required")
        params = data.get("params") or {}
        if not isinstance(params, dict):
            raise BadInputError("task key 'params' must be an object")
        _reject_unknown(params, TrainParams, "params")
        spec = cls(
            task_id=_typed(data, "task_id", str),
            base_model=_typed(data, "base_model", str),
            instance_prompt=_typed(data, "instance_prompt", str).strip(),
            images=_image_source(data["images"], "images"),
            recipe=_typed(data, "recipe", str, default="dreambooth-lora") or "dreambooth-lora",
            class_prompt=_typed(data, "class_prompt", str, default=None),
            class_images=_image_source(data["class_images"], "class_images") if data.get("class_images") else None,
            params=_params(params),
            output=_hub_obj(data.get("output"), OutputRepo, "output"),
            checkpoint=_hub_obj(data.get("checkpoint"), HubFolder, "checkpoint"),
        )
        spec.validate()
        return spec

    @classmethod
    def load(cls, path: str | Path) -> TrainSpec:
        """Read a task JSON file."""
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError as e:
            raise BadInputError(f"task file not found: {path}") from e
        except json.JSONDecodeError as e:
            raise BadInputError(f"task file is not valid JSON: {e}") from e
        return cls.from_dict(data)

    def with_params(self, overrides: dict[str, Any], where: str = "fixed params") -> TrainSpec:
        """A copy whose params have ``overrides`` applied (a recipe's ``fixed_params``), checked like the task's."""
        if not overrides:
            return self
        _reject_unknown(overrides, TrainParams, where)
        parsed = _params(dict(overrides))
        params = dataclasses.replace(self.params, **{k: getattr(parsed, k) for k in overrides})
        spec = dataclasses.replace(self, params=params)
        spec.validate()
        return spec

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (for the model card and checkpoints)."""
        return dataclasses.asdict(self)

    def validate(self) -> None:
        """Check value ranges and combinations; raises ``BadInputError``. The numbers' bounds are
        ``contract.params.PARAMS``, the ones the form and the CLI check too."""
        p = self.params
        if not self.instance_prompt:
            raise BadInputError("instance_prompt must not be empty")
        for key in ("instance_prompt", "class_prompt"):
            prompt = getattr(self, key) or ""
            if len(prompt) > MAX_PROMPT_CHARS:
                raise BadInputError(f"{key} has {len(prompt)} characters; at most {MAX_PROMPT_CHARS} are allowed")
        for key in ("instance_prompt", "class_prompt", "base_model", "recipe"):  # the form's rule (contract.params)
            if problem := text_problem(getattr(self, key) or ""):
                raise BadInputError(f"{key} {problem}")
        for key, bound in PARAMS.items():
            value = getattr(p, key)
            if value is not None and not bound.is_number(value):
                kind = "an integer" if bound.kind is int else "a number"
                raise BadInputError(f"params.{key} must be {kind} (got {value!r})")
            if value is not None and not bound.admits(value):
                raise BadInputError(f"params.{key} must be {bound.broken(float(value))} (got {value})")
        if p.prior_preservation and not (self.class_prompt or "").strip():
            raise BadInputError("prior_preservation needs a class_prompt (e.g. 'a photo of a dog')")
        if p.mixed_precision not in MIXED_PRECISION_CHOICES:
            raise BadInputError(f"params.mixed_precision must be one of {', '.join(MIXED_PRECISION_CHOICES)}")
        for key in ("gradient_checkpointing", "use_8bit_adam"):
            if getattr(p, key) not in (True, False, "auto"):
                raise BadInputError(f"params.{key} must be true, false or 'auto'")
        if p.quantize_base not in QUANTIZE_BASE_CHOICES:
            raise BadInputError(f"params.quantize_base must be one of {', '.join(QUANTIZE_BASE_CHOICES)}")
        if self.recipe in FULL_RECIPES and p.quantize_base not in ("auto", "none"):
            raise BadInputError(f"params.quantize_base={p.quantize_base!r}: {self.recipe} trains the base weights "
                                "themselves, which cannot be quantized; use a LoRA recipe or 'none'")  # fmt: skip
        if p.lr_scheduler not in LR_SCHEDULER_CHOICES:
            raise BadInputError(f"params.lr_scheduler must be one of {', '.join(LR_SCHEDULER_CHOICES)}")
        problem = validation_prompts_problem(p.validation_prompts)
        if problem:
            raise BadInputError(f"params.validation_prompts {problem}")


def _reject_unknown(data: dict, cls: type, where: str) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise BadInputError(f"unknown {where} key(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})")


def _typed(data: dict, key: str, typ: type, default: Any = ...) -> Any:
    value = data.get(key, None if default is ... else default)
    if value is None:
        return default if default is not ... else None
    if not isinstance(value, typ):
        raise BadInputError(f"task key {key!r} must be a {typ.__name__}")
    return value


def _image_source(value: Any, key: str) -> str | HubFolder | DatasetSource:
    if isinstance(value, dict) and "dataset" in value and key == "images":
        try:
            return DatasetSource.from_dict(value, key)
        except ValueError as e:
            raise BadInputError(str(e)) from e
    if isinstance(value, str):
        if not Path(value).is_absolute():
            raise BadInputError(f"{key} must be an absolute folder path or a Hub location")
        return value
    if isinstance(value, dict):
        return _hub_obj(value, HubFolder, key)
    raise BadInputError(f"{key} must be an absolute folder path or a Hub location object")


def _hub_obj(value: Any, cls: type, key: str) -> Any:
    if value is None:
        return None
    if not isinstance(value, dict) or not value.get("repo_id"):
        raise BadInputError(f"{key} must be null or an object with a repo_id")
    _reject_unknown(value, cls, key)
    return cls(**value)


_BOOL_KEYS = {"train_text_encoder", "prior_preservation", "random_flip", "compile", "score", "auto_captions"}
_INT_KEYS = {key for key, bound in PARAMS.items() if bound.kind is int}
#: keys with a concrete default that null stands for
_NULL_IS_DEFAULT = {"rank", "seed", "batch_size", "lr_warmup_steps", "num_class_images", "quantize_base"}
_FLOAT_KEYS = {key for key, bound in PARAMS.items() if bound.kind is float}


def _params(raw: dict[str, Any]) -> TrainParams:
    values: dict[str, Any] = {}
    for key, v in raw.items():
        if v is None:
            if key in _BOOL_KEYS or key in _NULL_IS_DEFAULT:
                continue  # null means "default" for keys that have a concrete default
            values[key] = None
            continue
        if key in _BOOL_KEYS and not isinstance(v, bool):
            raise BadInputError(f"params.{key} must be true or false")
        if key in _INT_KEYS and (isinstance(v, bool) or not isinstance(v, int)):
            raise BadInputError(f"params.{key} must be an integer (got {v!r})")
        if key in _FLOAT_KEYS:
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise BadInputError(f"params.{key} must be a number (got {v!r})")
            v = float(v)
        if key == "quantize_base" and not isinstance(v, str):
            raise BadInputError(f"params.quantize_base must be a string, one of {', '.join(QUANTIZE_BASE_CHOICES)}")
        if key == "validation_prompts" and not isinstance(v, list):
            raise BadInputError("params.validation_prompts must be a list of strings")
        values[key] = v
    return TrainParams(**values)
