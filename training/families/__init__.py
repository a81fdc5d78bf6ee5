"""The model-family registry: one family per file of this package, detected from a base model's model_index.json.

A family (``training.families.base.ModelFamily``) is registered with ``@register_family("name")`` in its module;
the built-in modules are listed in ``BUILTIN_MODULES`` (adding a family is one new file plus a line there, or, for a
customizer, a module of their own named with ``--families-module MOD`` / ``TRAINING_FAMILY_MODULES``, read by
``training.cli`` like the recipe modules). ``family_for(model_index)`` picks the family whose ``pipelines`` hold the
index's ``_class_name``; none matching is a ``BadInputError`` naming the supported pipelines.

Torch-free: family modules import torch only inside their methods, so the control plane can ask for allow-lists
and defaults (``training.base_check``, ``python -m training --list-families``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from typing import Any

from training.exitcodes import BadInputError

#: a subclass of ``training.families.base.ModelFamily`` (not imported here: that module imports this registry)
ModelFamily = Any

#: the built-in families, one module each (a new family: a new file and a line here)
BUILTIN_MODULES = (
    "training.families.sd",
    "training.families.flux",
    "training.families.flux2_klein",
    "training.families.zimage",
    "training.families.qwen_image",
    "training.families.qwen_image_edit",
)
#: the family a base model is taken for while no registered family claims its ``model_index.json`` (or it is not
#: read): the fit check then reads its memory shape from its name alone
DEFAULT_FAMILY = "sd"

_REGISTRY: dict[str, type[ModelFamily]] = {}
_loaded_builtins = False


def register_family(name: str) -> Callable[[type[ModelFamily]], type[ModelFamily]]:
    """Class decorator registering a family under ``name`` (a later registration of the same name replaces it;
    a family registered later wins when two claim the same pipeline class)."""

    def deco(cls: type[ModelFamily]) -> type[ModelFamily]:
        cls.name = name
        _REGISTRY.pop(name, None)
        _REGISTRY[name] = cls
        return cls

    return deco


def _load_builtins() -> None:
    global _loaded_builtins
    if _loaded_builtins:
        return
    _loaded_builtins = True
    for mod in BUILTIN_MODULES:
        importlib.import_module(mod)


def load_family_modules(modules: Iterable[str] = ()) -> None:
    """Import the built-in families and any extra modules (each registers its families on import)."""
    _load_builtins()
    for mod in modules:
        mod = mod.strip()
        if mod:
            importlib.import_module(mod)


def registered_families() -> list[type[ModelFamily]]:
    """The registered family classes, by name (built-ins loaded on first use)."""
    _load_builtins()
    return [_REGISTRY[n] for n in sorted(_REGISTRY)]


def get_family(name: str) -> type[ModelFamily]:
    """The family registered as ``name``; ``BadInputError`` listing the known ones otherwise."""
    _load_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise BadInputError(f"unknown model family {name!r}; known: {', '.join(sorted(_REGISTRY))}") from None


def find_family(index: dict[str, Any]) -> type[ModelFamily] | None:
    """The family that trains a pipeline with this ``model_index.json``, or None (the latest registration wins)."""
    _load_builtins()
    for cls in reversed(list(_REGISTRY.values())):
        if cls.matches(index):
            return cls
    return None


def family_or_default(index: dict[str, Any] | None) -> type[ModelFamily]:
    """The family of ``index`` (``find_family``), or the ``DEFAULT_FAMILY`` when none claims it or it is None."""
    return (find_family(index) if index else None) or get_family(DEFAULT_FAMILY)


def supported_pipelines() -> str:
    """``"sd (StableDiffusionPipeline, ...), flux1 (FluxPipeline)"``: for error messages."""
    return "; ".join(f"{cls.name}: {', '.join(sorted(cls.pipelines))}" for cls in registered_families())


def family_for(index: dict[str, Any], base_model: str = "base model") -> type[ModelFamily]:
    """The family class for ``model_index.json`` ``index``; ``BadInputError`` naming the supported ones."""
    cls = find_family(index)
    if cls is None:
        raise BadInputError(
            f"{base_model!r}: pipeline {index.get('_class_name')!r} is not allowed (custom pipelines are refused; "
            f"supported model families: {supported_pipelines()})"
        )
    return cls
