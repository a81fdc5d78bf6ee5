"""Which training script runs: ``training/train.py``, or a customizer's copy named by ``TRAINING_SCRIPT``."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from training.exitcodes import BadInputError

DEFAULT_SCRIPT = "training.train"


def load_training_script(script: str | None = None) -> ModuleType:
    """The training script as a module: ``training.train`` for None; a ``.py`` path (relative to the working
    folder, the app's folder when the app runs it) is loaded from that file; anything else is a module name. The
    script must define ``train(ctx, recipe)``."""
    if not script or script == DEFAULT_SCRIPT:
        module = importlib.import_module(DEFAULT_SCRIPT)
    elif script.endswith(".py"):
        path = Path(script).resolve()
        if not path.is_file():
            raise BadInputError(f"training script {script!r} does not exist (TRAINING_SCRIPT / --script)")
        name = f"training_script_{path.stem}"
        module = sys.modules.get(name)
        if module is None or getattr(module, "__file__", None) != str(path):
            spec = importlib.util.spec_from_file_location(name, path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module  # dataclasses and pickling-free tools look the module up by name
            spec.loader.exec_module(module)
    else:
        module = importlib.import_module(script)
    if not callable(getattr(module, "train", None)):
        raise BadInputError(f"training script {script!r} has no train(ctx, recipe) function")
    return module
