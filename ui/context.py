"""What every part of the UI needs: the settings, the queue and the worker (whose status the views read)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from scheduler.queue.base import TaskQueue
from scheduler.worker import Worker

# Recipe names of the built-in trainer (training/recipes.py) and how the form shows them. The UI does not import
# ``training`` (it would pull in torch on the CPU Space); a customized recipe is added here too.
RECIPES: dict[str, str] = {
    "dreambooth-lora": "LoRA (small file, fast, fits a T4)",
    "dreambooth-full": "Full fine-tune (large model, needs a big GPU)",
}
DEFAULT_LEARNING_RATE = {"dreambooth-lora": 1e-4, "dreambooth-full": 5e-6}  # the trainer's own defaults


@dataclass
class AppContext:
    """Shared state of one app process."""

    settings: object  # scheduler.settings.Settings
    queue: TaskQueue
    worker: Worker
    api: Any = None  # HfApi on a Space (checks an output repo before a non-owner's task is queued); None locally
    public_space: bool = False  # the owner is warned while the Space is public
    recipes: dict[str, str] = field(default_factory=lambda: dict(RECIPES))

    @property
    def local(self) -> bool:
        return bool(self.settings.local)
