"""What every part of the UI needs: the settings, the queue and the worker (whose status the views read)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from scheduler.queue.base import TaskQueue
from scheduler.worker import Worker
from ui.duplicates import RecentSubmissions

if TYPE_CHECKING:
    from scheduler.recipes_catalog import RecipeInfo


DEFAULT_RECIPE = "dreambooth-lora"


def default_recipe(recipes: dict[str, RecipeInfo]) -> str:
    """The recipe the form starts with: the built-in LoRA when installed, else the catalog's first."""
    return DEFAULT_RECIPE if DEFAULT_RECIPE in recipes else next(iter(recipes))


def default_recipes() -> dict[str, RecipeInfo]:
    """The trainer's recipe catalog (built-in and TRAINING_RECIPES_MODULES ones), read once and cached. The UI does
    not import ``training``'s recipes (torch on the CPU Space): the catalog asks ``python -m training``."""
    from scheduler.recipes_catalog import load_catalog

    return dict(load_catalog())


@dataclass
class AppContext:
    """Shared state of one app process."""

    settings: object  # scheduler.settings.Settings
    queue: TaskQueue
    worker: Worker
    api: Any = None  # HfApi on a Space (checks an output repo before a non-owner's task is queued); None locally
    public_space: bool = False  # the owner is warned while the Space is public
    recipes: dict[str, RecipeInfo] = field(default_factory=default_recipes)
    recent: RecentSubmissions = field(default_factory=RecentSubmissions)  # asks before queueing the same task twice

    @property
    def local(self) -> bool:
        return bool(self.settings.local)
