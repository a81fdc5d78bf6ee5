"""What every recipe implements, and what it is given to run."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from training.progress import Progress
from training.spec import TrainSpec


@dataclass
class RunContext:
    """Everything a recipe needs: the task, the work folder layout and the progress reporter."""

    spec: TrainSpec
    workdir: Path
    progress: Progress

    @property
    def output_dir(self) -> Path:
        """Weights, model card README.md and samples/*.png: what gets uploaded."""
        return self.workdir / "output"

    @property
    def checkpoint_dir(self) -> Path:
        """Resumable training state (never uploaded with the outputs)."""
        return self.workdir / "checkpoints"

    @property
    def class_images_dir(self) -> Path:
        """Cache of generated class images for prior preservation."""
        return self.workdir / "class_images"


class Recipe(ABC):
    """A training recipe. ``run`` trains and leaves the uploadable result in ``ctx.output_dir``.

    ``run`` raises ``training.exitcodes.BadInputError`` for unusable input (exit code 2); out-of-memory errors map to
    exit code 3 and anything else to 1. Uploading is done by the caller afterwards, from ``ctx.output_dir``.
    """

    name: str = ""

    @abstractmethod
    def run(self, ctx: RunContext) -> None:
        """Train according to ``ctx.spec`` and write the outputs into ``ctx.output_dir``."""

    def output_files_hint(self) -> list[str]:
        """Names of the main weight files (for logs and the model card)."""
        return []


def ensure_dirs(ctx: RunContext) -> None:
    for d in (ctx.output_dir, ctx.checkpoint_dir, ctx.class_images_dir):
        Path(d).mkdir(parents=True, exist_ok=True)
