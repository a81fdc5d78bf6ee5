"""What every part of the UI needs: the settings, the queue and the worker (whose status the views read)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from scheduler.queue.base import TaskQueue
from scheduler.worker import Worker
from ui.duplicates import RecentSubmissions
from ui.uploads import UploadHolders

if TYPE_CHECKING:
    from contract.catalog import RecipeInfo


DEFAULT_RECIPE = "dreambooth-lora"


def default_recipe(recipes: dict[str, RecipeInfo]) -> str:
    """The recipe the form starts with: the built-in LoRA when installed, else the catalog's first."""
    return DEFAULT_RECIPE if DEFAULT_RECIPE in recipes else next(iter(recipes))


def default_recipes(settings: Any = None) -> dict[str, RecipeInfo]:
    """The trainer's recipe catalog (built-in and TRAINING_RECIPES_MODULES ones), read once and cached. The UI does
    not import ``training``'s recipes (torch on the CPU Space): the catalog asks ``python -m training`` (with the
    settings' TRAINING_FAMILY_MODULES, as ``ui.model_family.catalog_families`` does: one listing for both)."""
    from contract.catalog import load_catalog

    return dict(load_catalog(family_modules=tuple(getattr(settings, "family_modules", ()))))


class FamilyModuleError(RuntimeError):
    """A TRAINING_FAMILY_MODULES module could not be imported in the app's process."""

    def __init__(self, module: str, cause: BaseException) -> None:
        self.module = module
        super().__init__(
            f"TRAINING_FAMILY_MODULES names {module!r}, which this app could not import "
            f"({type(cause).__name__}: {cause})."
        )


def load_family_modules(settings: Any) -> None:
    """Register the model families of ``settings.family_modules`` (TRAINING_FAMILY_MODULES) in this process, so the
    form's base-model check (``training.base_check``, ``training.families.find_family``) knows them as the trainer
    does. Torch-free: a family module imports torch only inside its methods. Importing is done once per module;
    ``FamilyModuleError`` names the first one that fails."""
    from training.families import load_family_modules as load

    for module in getattr(settings, "family_modules", ()):
        try:
            load([module])
        except Exception as exc:  # noqa: BLE001 - any failure of a customizer's module is a set-up problem
            raise FamilyModuleError(module, exc) from exc


@dataclass
class AppContext:
    """Shared state of one app process."""

    settings: object  # contract.settings.Settings
    queue: TaskQueue
    worker: Worker
    api: Any = None  # HfApi on a Space (checks an output repo before a non-owner's task is queued); None locally
    public_space: bool = False  # the owner is warned while the Space is public
    recipes: dict[str, RecipeInfo] = None  # type: ignore[assignment]  # None: the trainer's (``default_recipes``)
    recent: RecentSubmissions = field(default_factory=RecentSubmissions)  # asks before queueing the same task twice
    uploads: UploadHolders = field(default_factory=UploadHolders)  # which tabs show which upload copies

    def __post_init__(self) -> None:
        load_family_modules(self.settings)  # before any base-model check; FamilyModuleError if one cannot load
        if self.recipes is None:
            self.recipes = default_recipes(self.settings)

    @property
    def local(self) -> bool:
        return bool(self.settings.local)
