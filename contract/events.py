"""What the trainer tells the app while it runs: typed progress events and exit codes. Torch-free.

``python -m training --progress EVENTS.jsonl`` appends one event per line, a JSON object with ``event`` (its
kind), ``time`` (unix seconds) and the kind's fields below; the app reads them back with ``parse_event`` (a line
that is not a known, well-formed event is None: it is ignored, never trusted). The trainer's exit status is an
``ExitCode``.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

#: the phases of a run, in the order they come
PHASES = (
    "loading",
    "validating_input",
    "captioning",
    "generating_class_images",
    "caching_latents",
    "training",
    "sampling",
    "scoring",
    "saving",
    "uploading",
    "done",
)


class ExitCode(IntEnum):
    """Process exit status of a training run."""

    OK = 0
    FAILURE = 1  # anything else (a bug, a crash, an interrupted run)
    BAD_INPUT = 2  # the task or its images are invalid; retrying will not help
    OUT_OF_MEMORY = 3  # the accelerator ran out of memory; a bigger GPU or lighter settings may help
    UPLOAD_FAILED = 4  # training finished, weights are in DIR/output and a checkpoint, but the upload failed
    UPLOAD_REFUSED = 5  # training finished, but the Hub refused the upload (401/403/404): training again won't help


class BaseEvent(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    #: unix seconds, set when the event is written
    time: float | None = None


class Phase(BaseEvent):
    event: Literal["phase"] = "phase"
    phase: str


class Step(BaseEvent):
    """A logged optimizer step: ``loss`` is the mean since the previous logged step."""

    event: Literal["step"] = "step"
    step: int
    total: int
    loss: float | None = None
    lr: float | None = None
    steps_per_s: float | None = None
    eta_s: float | None = None
    peak_mem_gib: float | None = None


class Sample(BaseEvent):
    """Validation samples written at ``step`` (absolute paths, in prompt order)."""

    event: Literal["sample"] = "sample"
    step: int
    paths: list[str]


class Captions(BaseEvent):
    """The photos' captions as the run trains with them (``params.auto_captions``): stored photo stem -> caption,
    and the stems whose caption the captioning model wrote (the others came with their photo)."""

    event: Literal["captions"] = "captions"
    captions: dict[str, str]
    written: list[str] = Field(default_factory=list)


class Scores(BaseEvent):
    """The scores of the sampling point at ``step`` (0: the base model); ``contract.scores`` says what each is."""

    event: Literal["scores"] = "scores"
    step: int
    dino: float | None = None
    clip_i: float | None = None
    clip_t: float | None = None
    val_loss: float | None = None


class Checkpoint(BaseEvent):
    event: Literal["checkpoint"] = "checkpoint"
    step: int
    path: str


class Resumed(BaseEvent):
    """The run continues from a checkpoint of ``step``."""

    event: Literal["resumed"] = "resumed"
    step: int


class MemoryPlan(BaseEvent):
    """What the run turned on to fit its GPU, and the estimate it went by; ``device``: where it trains ("cuda",
    "cpu": torch's device type; None when not said)."""

    event: Literal["memory_plan"] = "memory_plan"
    quantized_base: str = "none"
    gradient_checkpointing: bool = False
    use_8bit_adam: bool = False
    estimate_gib: float | None = None
    source: str | None = None
    device: str | None = None
    #: the scoring models' memory while they score (``contract.scoring_models.scoring_memory_gib``): at sampling
    #: time, on top of the resident weights, not of the training peak; None: the run does not score
    scoring_gib: float | None = None


class Done(BaseEvent):
    """The run ended well: its output folder, the model repo's URL when uploaded, and the run record's figures."""

    event: Literal["done"] = "done"
    output_dir: str | None = None
    repo_url: str | None = None
    run: dict[str, Any] = Field(default_factory=dict)


class Error(BaseEvent):
    """The run failed: ``kind`` is the error's kind ("bad_input", "oom", "upload", "internal", ...)."""

    event: Literal["error"] = "error"
    kind: str
    message: str


Event = Annotated[Phase | Step | Sample | Captions | Scores | Checkpoint | Resumed | MemoryPlan | Done | Error, Field(discriminator="event")]
_EVENT = TypeAdapter(Event)


def parse_event(record: Any) -> Event | None:
    """The typed event of one decoded JSON line, or None for anything that is not a known, well-formed event."""
    try:
        return _EVENT.validate_python(record)
    except ValidationError:
        return None


def event_record(event: BaseEvent) -> dict[str, Any]:
    """The JSON object of ``event`` as it is written (``event`` first)."""
    data = event.model_dump(mode="json", exclude_none=False)
    return {"event": data.pop("event"), **data}
