"""What every recipe implements, and what it is given to run."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from contract.catalog import clamp_steps  # noqa: F401 - the steps policy; train.py (and copies of it) import it here
from training.progress import Progress
from training.spec import TrainParams, TrainSpec

if TYPE_CHECKING:
    import torch

    from training.families.base import Components, ModelFamily
    from training.utils.results import RunResult


@dataclass
class RunContext:
    """Everything a recipe needs: the task, the work folder layout and the progress reporter."""

    spec: TrainSpec
    workdir: Path
    progress: Progress
    #: the training script that runs a DreamBooth recipe: None for ``training/train.py``, else a copy's path
    #: (``TRAINING_SCRIPT`` / ``--script``) or a module name
    script: str | None = None
    #: where ``output_dir`` points instead of ``workdir/output`` (a scored checkpoint's folder inside it)
    output_override: Path | None = None

    @property
    def output_dir(self) -> Path:
        """Weights, model card README.md and samples/*.png: what gets uploaded."""
        return self.output_override or self.workdir / "output"

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
    #: what the form shows for this recipe
    label: str = ""
    #: ``steps`` left to the recipe: ``steps_per_image`` per photo, clamped to [min_steps, max_steps]
    steps_per_image: int = 150
    min_steps: int = 500
    max_steps: int = 2400
    #: params this recipe sets itself: applied over the task's params before training; the form shows them read-only
    fixed_params: ClassVar[dict[str, Any]] = {}
    #: which optional form fields apply to this recipe (e.g. ("rank",) for LoRA)
    form_fields: tuple[str, ...] = ()
    #: ``learning_rate`` left to the recipe
    default_learning_rate: float = 1e-4

    @abstractmethod
    def run(self, ctx: RunContext) -> RunResult | None:
        """Train according to ``ctx.spec`` and write the outputs into ``ctx.output_dir``; return what the run was
        (``RunResult``: the model card and the app's run record read it), or None."""

    @classmethod
    def trainable_components(cls, params: TrainParams, family: type[ModelFamily] | None = None) -> frozenset[str]:
        """The base-model components this recipe trains in place ("unet", "text_encoder", ...) for a model of
        ``family`` (None: Stable Diffusion): they load from their fp32 files, every other one from its fp16 variant
        where the repo has it (``training.files.choose_files``). Asked by the trainer and by the preload list
        (``python -m training.preload``). Adapters (LoRA) are new weights: their base stays frozen, so the default is
        none."""
        return frozenset()

    @classmethod
    def catalog_entry(cls) -> dict[str, Any]:
        """This recipe as ``python -m training --list-recipes`` prints it (read by ``contract.catalog``)."""
        return {
            "name": cls.name,
            "label": cls.label or cls.name,
            "steps_per_image": cls.steps_per_image,
            "min_steps": cls.min_steps,
            "max_steps": cls.max_steps,
            "fixed_params": dict(cls.fixed_params),
            "form_fields": list(cls.form_fields),
            "default_learning_rate": cls.default_learning_rate,
        }


def ensure_dirs(ctx: RunContext) -> None:
    for d in (ctx.output_dir, ctx.checkpoint_dir, ctx.class_images_dir):
        Path(d).mkdir(parents=True, exist_ok=True)


class DreamBoothRecipe(Recipe):
    """A DreamBooth recipe: what trains (``configure_trainable``) and how it is saved (``save_outputs``); the
    training script (``training/train.py``, or the copy named by ``TRAINING_SCRIPT``) runs the loop."""

    #: checkpoints resume across recipes of the same family (e.g. a variant with other labels)
    checkpoint_family = "dreambooth"
    #: whether checkpoints are mirrored to the task's Hub folder (full fine-tunes are several GB: local only)
    hub_checkpoints = True
    max_checkpoints_kept: int | None = None
    #: whether each scored sampling point's weights are kept in the output (``checkpoints/step-NNNNNN/``) for the
    #: picked one to become the model (a full fine-tune keeps only its last weights: each copy is several GB)
    keeps_scored_weights = True

    def run(self, ctx: RunContext) -> RunResult:
        import logging

        from training.script import load_training_script

        script = load_training_script(ctx.script)
        logging.getLogger(__name__).info("training script: %s", script.__file__)
        return script.train(ctx, self)

    def configure_trainable(self, comps: Components, ctx: RunContext) -> dict[str, torch.nn.Module]:
        """Make parameters trainable; return the modules holding them by name ("unet", "text_encoder", ...)."""
        raise NotImplementedError

    def save_outputs(self, comps: Components, modules: dict[str, torch.nn.Module], ctx: RunContext) -> list[str]:
        """Write the trained weights into ``ctx.output_dir``; return the written file names."""
        raise NotImplementedError

    def on_step(self, step: int, ctx: RunContext) -> None:
        """Called after every optimizer step (1-based); a plug-in point for extra logging or fault injection."""
