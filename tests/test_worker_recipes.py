"""Recipes used by the worker tests (loaded by the trainer subprocess with ``--recipes-module``).

They stand in for a real training where the tiny model cannot show the behaviour under test: a trainer that hangs
(with a child process, to check that the whole process group is killed) and one that steps slowly (cancel, lease).
Importing this module only registers them; it holds no tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from training.recipe_base import Recipe, RunContext, ensure_dirs
from training.recipes import register_recipe


@register_recipe("test-hang")
class HangRecipe(Recipe):
    """Starts a child process, records both pids in the work folder, then never finishes."""

    def run(self, ctx: RunContext) -> None:
        ensure_dirs(ctx)
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        (ctx.workdir / "pids.txt").write_text(f"{os.getpid()} {child.pid}")
        ctx.progress.phase("training")
        time.sleep(600)


@register_recipe("test-slow")
class SlowRecipe(Recipe):
    """Emits one step event every 0.2 s for ``params.steps`` steps, then writes a dummy output."""

    def run(self, ctx: RunContext) -> None:
        ensure_dirs(ctx)
        total = int(ctx.spec.params.steps or 10)
        ctx.progress.phase("training")
        for step in range(1, total + 1):
            time.sleep(0.2)
            ctx.progress.step(step=step, total=total, loss=1.0 / step, lr=1e-4, steps_per_s=5.0,
                              eta_s=(total - step) * 0.2, peak_mem_gib=0.0)  # fmt: skip
        Path(ctx.output_dir, "weights.txt").write_text("not a model")
