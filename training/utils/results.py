"""What a training run returns: read by the model card and by the "done" event's run record. Torch-free."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class RunResult:
    """The run as it really trained (the task's params filled in by the recipe's and the family's defaults)."""

    recipe: str
    steps: int
    resolution: int
    learning_rate: float
    warmup_steps: int
    mixed_precision: str
    #: the base model as inspected (``training.families.base.ModelInfo``: the family, configs, files)
    model_info: Any = None
    #: the quantized-base choice (``training.precision.QuantizationChoice``) and the memory plan (``MemoryPlan``)
    quantization: Any = None
    memory_plan: Any = None
    #: the loss curve and step times (``training.metrics.RunMetrics``)
    metrics: Any = None
    #: validation prompt -> its last sample's path
    sample_paths: dict[str, str] = field(default_factory=dict)
    #: (images with their own caption, all images)
    captioned: tuple[int, int] = (0, 0)
    #: the captions written before training (``training.utils.auto_captions.WrittenCaptions``; None: not asked for)
    captions: Any = None
    #: the weight files written into the output folder
    saved_files: list[str] = field(default_factory=list)
    #: the last logged mean loss
    last_loss: float | None = None
    #: the scores of the sampling points and the picked checkpoint (``contract.scores.ScoreRecord``; None: unscored)
    scores: Any = None
