"""Fault-injecting recipes for the scenario tests (loaded by the trainer through TRAINING_RECIPES_MODULES).

- ``faults-slow-lora``: the real DreamBooth LoRA recipe on the tiny model, with a pause after each step so that a
  test can kill the trainer between checkpoints (its checkpoints resume with the real recipe's).
- ``faults-crash``: reports step 1, then raises (a deterministic bug in the trainer: exit code 1).
- ``faults-hang``: says it is training, then never reports progress or ends (a stuck dataloader or download).
Importing this module only registers them; it holds no tests.
"""

from __future__ import annotations

import time

from training.lora import DreamBoothLoRA
from training.recipe_base import Recipe, RunContext, ensure_dirs
from training.recipes import register_recipe

STEP_PAUSE_S = 0.6


@register_recipe("faults-slow-lora")
class SlowLoRA(DreamBoothLoRA):
    """``dreambooth-lora`` that pauses after every step (training itself is unchanged)."""

    def on_step(self, step: int, ctx: RunContext) -> None:
        time.sleep(STEP_PAUSE_S)


@register_recipe("faults-crash")
class CrashAtStepOne(Recipe):
    def run(self, ctx: RunContext) -> None:
        ensure_dirs(ctx)
        ctx.progress.phase("training")
        ctx.progress.step(step=1, total=10, loss=1.0, lr=1e-4, steps_per_s=1.0, eta_s=9.0, peak_mem_gib=0.0)
        raise RuntimeError("simulated trainer bug at step 1")


@register_recipe("faults-hang")
class Hang(Recipe):
    def run(self, ctx: RunContext) -> None:
        ensure_dirs(ctx)
        ctx.progress.phase("training")
        time.sleep(3600)
