"""``python -m training --task TASK.json --workdir DIR [--progress EVENTS.jsonl] [--recipes-module MOD]``.

``python -m training --list-recipes [--recipes-module MOD ...] [--families-module MOD ...]`` prints the registered
recipes and model families as one JSON line (``{"recipes": [{"name", "label", "steps_per_image", ...}],
"families": [{"name", "label", "pipelines", "defaults", ...}]}``; read by ``contract.catalog``);
``--list-families`` prints only ``{"families": [...]}``.

Runs one task end to end (train, write outputs, upload) and exits with a code from ``training.exitcodes``. Under
``accelerate launch`` / ``torchrun`` every process runs this; only the main one writes events, outputs and uploads.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from pathlib import Path
from typing import Any

from contract.events import ExitCode
from contract.settings import Settings, SettingsError, load_trainer_settings
from training.exitcodes import BadInputError, TrainingError, is_out_of_memory


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m training", description=__doc__.splitlines()[0])
    ap.add_argument("--task", help="task JSON file")
    ap.add_argument("--workdir", help="work folder (output/, checkpoints/, class_images/)")
    ap.add_argument("--progress", default=None, help="append JSON-lines progress events to this file")
    ap.add_argument("--recipes-module", action="append", default=[], help="extra module registering recipes")
    ap.add_argument("--progress-bar", choices=["auto", "on", "off"], default="auto", help="console bar (auto: tty)")
    ap.add_argument("--families-module", action="append", default=[], help="extra module registering model families")
    ap.add_argument("--script", default=None,
                    help="a copy of training/train.py to run instead (a .py path or a module; default: $TRAINING_SCRIPT, "
                         "relative to the app's folder)")
    ap.add_argument("--list-recipes", action="store_true", help="print the registered recipes (and families) as JSON")
    ap.add_argument("--list-families", action="store_true", help="print the registered model families as JSON")
    args = ap.parse_args(argv)
    if not (args.list_recipes or args.list_families) and not (args.task and args.workdir):
        ap.error("--task and --workdir are required (unless --list-recipes / --list-families)")
    return args


def _settings(args: argparse.Namespace) -> Settings:
    """The trainer's settings (TRAINING_RECIPES_MODULES, TRAINING_FAMILY_MODULES, and TRAINING_SCRIPT unless
    ``--script`` is given); a bad value is bad input (exit code 2) with the settings' message."""
    variables = ("TRAINING_RECIPES_MODULES", "TRAINING_FAMILY_MODULES") + (() if args.script else ("TRAINING_SCRIPT",))
    try:
        return load_trainer_settings(variables=variables)
    except SettingsError as e:
        raise BadInputError(str(e)) from None


def _recipe_modules(args: argparse.Namespace, settings: Settings) -> list[str]:
    """``--recipes-module`` flags, then TRAINING_RECIPES_MODULES."""
    return [m for m in [*args.recipes_module, *settings.recipes_modules] if m.strip()]


def _family_modules(args: argparse.Namespace, settings: Settings) -> list[str]:
    """``--families-module`` flags, then TRAINING_FAMILY_MODULES."""
    return [m for m in [*args.families_module, *settings.family_modules] if m.strip()]


def _script(args: argparse.Namespace, settings: Settings) -> str | None:
    """``--script`` as given (a ``.py`` path or a module name), else TRAINING_SCRIPT as an absolute path (a relative
    one is in the app's folder, as the app resolves it), else None (``training/train.py``)."""
    if args.script:
        return args.script
    path = settings.training_script_path
    return None if path is None else str(path)


def _load_plugins(args: argparse.Namespace, settings: Settings) -> None:
    """The built-in and extra model families, then the recipes (a recipe module may register families too)."""
    from training.families import load_family_modules
    from training.recipes import load_recipe_modules

    load_family_modules(_family_modules(args, settings))
    load_recipe_modules(_recipe_modules(args, settings))


def list_recipes(args: argparse.Namespace) -> int:
    """Print ``{"recipes": [...], "families": [...]}`` (one line) for the built-in recipes and model families and
    those of the extra modules (``--list-families``: only the families)."""
    import json

    from training.families import registered_families
    from training.recipes import registered_recipes

    _load_plugins(args, _settings(args))
    families = [cls.catalog_entry() for cls in registered_families()]
    if args.list_families and not args.list_recipes:
        print(json.dumps({"families": families}))
    else:
        print(json.dumps({"recipes": [cls.catalog_entry() for cls in registered_recipes()], "families": families}))
    return ExitCode.OK


def _scrub(message: str) -> str:
    """Remove the Hub token from a message, should any library have echoed it."""
    from huggingface_hub import get_token

    token = get_token()
    return message.replace(token, "***") if token else message


def _quiet_import_noise() -> None:
    """Silence messages that say nothing about the run (transformers without torchvision, bitsandbytes on a CPU,
    HTTP clients logging each request), so the log tail the app shows is about training. Errors still print."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()  # "Loading weights" bars; the run has its own progress
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    for client in ("httpx", "httpx2", "httpcore"):  # one INFO line per Hub request (the checkpoint mirror's lookups)
        logging.getLogger(client).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    """Run a task; return the exit code."""
    args = parse_args(argv)
    if args.list_recipes or args.list_families:
        _quiet_import_noise()
        try:
            return list_recipes(args)
        except BadInputError as e:  # a bad TRAINING_RECIPES_MODULES / TRAINING_FAMILY_MODULES value
            print(f"error ({e.kind}): {e}", file=sys.stderr)
            return e.exit_code
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    _quiet_import_noise()
    import torch
    from accelerate import PartialState

    from training.progress import Progress
    from training.stopping import sigterm_handler

    state = PartialState(cpu=not torch.cuda.is_available())  # cpu=True: torchrun on CPUs means gloo processes
    bar = {"auto": None, "on": True, "off": False}[args.progress_bar]
    progress = Progress(args.progress, enabled=state.is_main_process, bar=bar)
    try:
        with sigterm_handler():
            return _run(args, progress, state.is_main_process)
    except TrainingError as e:
        progress.error(e.kind, _scrub(str(e)))
        print(f"error ({e.kind}): {_scrub(str(e))}", file=sys.stderr)
        return e.exit_code
    except BaseException as e:  # noqa: BLE001 - every failure must become an event and an exit code
        if is_out_of_memory(e):
            progress.error("oom", _scrub(f"out of memory: {e}"))
            print(f"error (oom): {_scrub(str(e))}", file=sys.stderr)
            return ExitCode.OUT_OF_MEMORY
        if isinstance(e, KeyboardInterrupt):
            message = f"interrupted: {e}" if str(e) else "interrupted"
        else:
            message = f"{type(e).__name__}: {e}"
        progress.error("internal", _scrub(message))
        traceback.print_exc()
        return ExitCode.FAILURE
    finally:
        progress.close()


def _run(args: argparse.Namespace, progress, is_main: bool) -> int:
    from contract.events import Done
    from training.recipe_base import RunContext
    from training.recipes import get_recipe
    from training.spec import TrainSpec

    settings = _settings(args)
    _load_plugins(args, settings)
    spec = TrainSpec.load(args.task)
    recipe = get_recipe(spec.recipe)
    spec = spec.with_params(recipe.fixed_params, where=f"recipe {spec.recipe!r} fixed_params")
    ctx = RunContext(spec=spec, workdir=Path(args.workdir).resolve(), progress=progress, script=_script(args, settings))
    result = recipe.run(ctx)
    repo_url = None
    if spec.output is not None and is_main:
        from training.upload import upload_outputs

        progress.phase("uploading")
        repo_url = upload_outputs(ctx.output_dir, spec.output, commit_message=f"DreamBooth task {spec.task_id}")
    progress.phase("done")
    report = run_report(result, spec) if is_main else {}
    progress.emit(Done(output_dir=str(ctx.output_dir), repo_url=repo_url, run=report))
    return ExitCode.OK


def model_family(info: Any, base_model: str) -> str | None:
    """The model family the run record names (``ModelFamily.run_record_family``: ``sd15``, ``sd2`` or ``sdxl`` for a
    full-size Stable Diffusion base model, the family's name (``flux1``, ...) for another); None for a tiny SD test
    model or when it cannot be read. Uses the run's ``info`` (``ModelInfo``) when there is one, else reads the
    model's configs again (cached files, no weights)."""
    try:
        if info is None:
            from training.demo import resolve_demo
            from training.models import inspect_base_model

            info = inspect_base_model(resolve_demo(base_model))
        return info.family.run_record_family()
    except Exception:  # noqa: BLE001 - the family only refines later estimates; it never fails a finished run
        return None


def run_report(result: Any, spec: Any) -> dict[str, Any]:
    """What the "done" event says of the run, for the app's run record: the steady steps/s and the wall-clock times
    of the first and last logged steps (``RunMetrics.timing``; none for a recipe that returns no ``RunResult``), the
    settings it really trained with (steps, resolution, batch size, prior preservation, text encoder) and the model
    family."""
    from training.metrics import RunMetrics
    from training.utils.results import RunResult

    p = spec.params
    trained = isinstance(result, RunResult) and isinstance(result.metrics, RunMetrics)
    timing = result.metrics.timing() if trained else {}
    return {
        **timing,
        "steps": result.steps if trained else p.steps,
        "resolution": result.resolution if trained else p.resolution,
        "batch_size": int(p.batch_size),
        "prior_preservation": bool(p.prior_preservation),
        "train_text_encoder": bool(p.train_text_encoder),
        "family": model_family(result.model_info, spec.base_model) if trained else None,
    }
