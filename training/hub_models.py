"""A small transformers model's files on this machine, safetensors only: shared by the scoring models
(``training.scoring``) and the captioner (``training.captioner``).

``safetensors_folder`` gives a local folder as it is, or the Hugging Face cache's snapshot of a Hub repo holding only
the files asked for (downloaded unless already there; the cached copy only in offline mode, where a Space's
``preload_from_hub`` put it). Its weights must be safetensors: a folder with only pickle ``.bin`` files (which can run
code when loaded) is refused, with the reason. ``model_type`` reads its ``config.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from contract.setting_values import looks_like_path
from contract.settings import hub_offline


@dataclass(frozen=True)
class ModelRole:
    """How a refusal names the model and what it raises: ``what`` ("scoring model"), ``error`` (an exception class
    taking the message) and ``preload`` (the ``python -m training.preload`` arguments that put it in the cache)."""

    what: str
    error: type[Exception]
    preload: str


def hub_snapshot(model: str, files: tuple[str, ...], role: ModelRole) -> Path:
    """The Hugging Face cache's snapshot folder holding ``files`` of the Hub repo ``model`` (those it has),
    downloaded unless already there; the cached copy only in offline mode."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    offline = hub_offline()
    try:
        return Path(snapshot_download(model, allow_patterns=list(files), local_files_only=offline))
    except (RepositoryNotFoundError, GatedRepoError) as e:
        raise role.error(f"{role.what} {model!r}: no such model repo, or it is private or gated for this "
                         f"token ({type(e).__name__})") from e  # fmt: skip
    except Exception as e:  # not cached (offline), HTTP and network errors, an invalid id
        why = (f"is not in the Hugging Face cache and the Hub is offline (HF_HUB_OFFLINE=1; {type(e).__name__}): "
               f"preload it (python -m training.preload {role.preload})" if offline
               else f"could not be downloaded ({type(e).__name__}: {e})")  # fmt: skip
        raise role.error(f"{role.what} {model!r} {why}") from e


def safetensors_folder(model: str, files: tuple[str, ...], role: ModelRole) -> Path:
    """A local folder with ``model``'s ``files`` (a local folder as it is; a Hub repo's cached snapshot) whose weights
    are safetensors; ``role.error`` otherwise (a missing folder; a folder with pickle weights only)."""
    local = Path(model).expanduser()
    if not local.is_dir() and looks_like_path(model):
        raise role.error(f"{role.what} {model!r}: no such folder")
    folder = local if local.is_dir() else hub_snapshot(model, files, role)
    if (folder / "model.safetensors").is_file():
        return folder
    index = folder / "model.safetensors.index.json"
    if index.is_file():  # sharded: its shards too
        shards = tuple(sorted(set(json.loads(index.read_text()).get("weight_map", {}).values())))
        if not local.is_dir() and shards:
            folder = hub_snapshot(model, (*files, *shards), role)
        if shards and all((folder / s).is_file() for s in shards):
            return folder
    pickles = sorted(p.name for p in folder.glob("*.bin"))
    has = f" (it has {', '.join(pickles)}: pickle files, which can run code when loaded)" if pickles else ""
    raise role.error(f"{role.what} {model!r} has no model.safetensors{has}; {role.what}s load from "
                     "safetensors only: use a repo or folder with model.safetensors")  # fmt: skip


def model_type(model: str, folder: Path, role: ModelRole) -> tuple[str, dict]:
    """The ``model_type`` of ``folder``'s ``config.json`` ("" when it names none) and the config itself;
    ``role.error`` when the file is missing or not a JSON object."""
    try:
        config = json.loads((folder / "config.json").read_text())
        return str(config.get("model_type", "")), config
    except (OSError, ValueError, AttributeError) as e:
        raise role.error(f"{role.what} {model!r} has no readable config.json ({e})") from e
