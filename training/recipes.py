"""The recipe registry: the place a customizer plugs in a trainer.

A recipe is a class with a ``run(ctx)`` method (see ``training.recipe_base.Recipe``). Register it with
``@register_recipe("my-recipe")`` in any module and name that module with ``--recipes-module MOD`` or the
``TRAINING_RECIPES_MODULES`` environment variable (comma separated); a task then selects it with ``"recipe"``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from training.exitcodes import BadInputError

if TYPE_CHECKING:
    from training.recipe_base import Recipe

_REGISTRY: dict[str, type[Recipe]] = {}
BUILTIN_MODULES = ("training.lora", "training.full")


def register_recipe(name: str) -> Callable[[type[Recipe]], type[Recipe]]:
    """Class decorator registering a recipe under ``name`` (a later registration of the same name replaces it)."""

    def deco(cls: type[Recipe]) -> type[Recipe]:
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def load_recipe_modules(modules: Iterable[str] = ()) -> None:
    """Import the built-in recipes and any extra modules (each registers its recipes on import)."""
    for mod in (*BUILTIN_MODULES, *modules):
        mod = mod.strip()
        if mod:
            importlib.import_module(mod)


def get_recipe(name: str) -> Recipe:
    """A new instance of the recipe registered as ``name``; ``BadInputError`` listing the known ones otherwise."""
    try:
        return _REGISTRY[name]()
    except KeyError:
        raise BadInputError(f"unknown recipe {name!r}; known recipes: {', '.join(sorted(_REGISTRY))}") from None


def recipe_names() -> list[str]:
    return sorted(_REGISTRY)


def registered_recipes() -> list[type[Recipe]]:
    """The registered recipe classes, by name."""
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]
