"""The README's ``preload_from_hub`` item for a base model: the files the recipes load, and nothing else.

    python -m training.preload stable-diffusion-v1-5/stable-diffusion-v1-5 --layout benchmarks/layouts/sd15.json
    python -m training.preload REPO --files listing.txt --index model_index.json
    python -m training.preload REPO                # asks the Hub for the file list and model_index.json
    python -m training.preload --scoring           # the scoring models' items (SCORING_DINO_MODEL, SCORING_CLIP_MODEL)
    python -m training.preload --captions          # the captioning model's item (CAPTION_MODEL)

prints ``REPO f1,f2,...`` (with ``--revision SHA``: ``REPO f1,f2,... SHA``), the item form a Space's
``preload_from_hub`` takes. The files are the union, over the recipes (default: every registered one, the built-in
``dreambooth-lora`` and ``dreambooth-full``) and over ``train_text_encoder`` off and on, of what
``training.files.choose_files`` picks for them: LoRA reads fp16 weights throughout, a full fine-tune the fp32 UNet
(and the fp32 text encoders when it trains them), so one preloaded Space serves every built-in recipe without a
download. ``--scoring`` prints the scoring models' items too (``scoring_items``), so a Space scores runs without a
download either; ``--captions`` the captioning model's (``caption_items``), for a Space that captions photos.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from contract import caption_models
from contract.scoring_models import CLIP_FILES, DINO_FILES, PIXELS, PRELOAD_FILES, off
from training.files import FROZEN_VARIANT, FileChoiceError, choose_files
from training.spec import TrainParams


def recipe_trainable_sets(recipes: Iterable[type]) -> list[frozenset[str]]:
    """The distinct ``trainable_components`` of ``recipes`` (Recipe classes), text encoder training off and on."""
    sets = {cls.trainable_components(TrainParams(train_text_encoder=te)) for cls in recipes for te in (False, True)}
    return sorted(sets, key=sorted)


def preload_files(
    repo_files: Iterable[str],
    index: dict[str, Any],
    trainable_sets: Iterable[frozenset[str]],
    *,
    base_model: str = "base model",
    variant: str | None = FROZEN_VARIANT,
) -> list[str]:
    """Every file ``choose_files`` picks for any of ``trainable_sets`` (sorted)."""
    repo_files = list(repo_files)
    chosen: set[str] = set()
    for trainable in trainable_sets:
        choice = choose_files(repo_files, index, trainable=trainable, variant=variant, base_model=base_model)
        chosen.update(choice.files)
    return sorted(chosen)


def preload_item(repo_id: str, files: Sequence[str], revision: str | None = None) -> str:
    """``"repo f1,f2"`` or ``"repo f1,f2 <sha>"``: one ``preload_from_hub`` entry."""
    item = f"{repo_id} {','.join(files)}"
    return f"{item} {revision}" if revision else item


def _listed_files(model: str, wanted: tuple[str, ...], known: dict[str, tuple[str, ...]], list_files) -> tuple[str, ...]:
    """The files of ``wanted`` that the Hub repo ``model`` has: ``known[model]`` when known, else its listing."""
    if model in known:
        return known[model]
    if list_files is None:
        from huggingface_hub import HfApi

        list_files = HfApi().list_repo_files
    return tuple(sorted(set(list_files(model)) & set(wanted)))


def scoring_items(dino: str | None, clip: str | None, list_files=None) -> list[str]:
    """The ``preload_from_hub`` items of the scoring models ``dino`` and ``clip`` that are Hub repos (not off, not
    ``PIXELS``, not a local folder): the files ``training.scoring`` loads, those of the repo. The default models' are
    known (``PRELOAD_FILES``: no request); another repo's files are listed by ``list_files(repo)`` (default: the
    Hub's listing)."""
    items = []
    for model, wanted in ((dino, DINO_FILES), (clip, CLIP_FILES)):
        if off(model) or model == PIXELS or Path(str(model)).expanduser().is_dir():
            continue
        assert model is not None
        items.append(preload_item(model, _listed_files(model, wanted, PRELOAD_FILES, list_files)))
    return items


def caption_items(model: str, list_files=None) -> list[str]:
    """The ``preload_from_hub`` item of the captioning model ``model`` when it is a Hub repo (none for a local
    folder): the files ``training.captioner`` loads, those of the repo (the default's from
    ``contract.caption_models.PRELOAD_FILES``; another repo's listed by ``list_files(repo)``, default the Hub's)."""
    if Path(model).expanduser().is_dir():
        return []
    files = _listed_files(model, caption_models.CAPTION_FILES, caption_models.PRELOAD_FILES, list_files)
    return [preload_item(model, files)]


def read_layout(path: Path) -> tuple[list[str], dict[str, Any]]:
    """The file paths and ``model_index.json`` of a layout file (``benchmarks/layouts/*.json``)."""
    layout = json.loads(Path(path).read_text())
    return [f["path"] for f in layout["files"]], layout["model_index"]


def _from_hub(repo_id: str) -> tuple[list[str], dict[str, Any]]:
    from training.base_check import probe_base_model

    probe = probe_base_model(repo_id)
    if probe.problem is not None:
        raise SystemExit(f"error: {probe.problem.message}")
    return probe.files, probe.index


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.preload", description=__doc__.splitlines()[0])
    ap.add_argument("repo_id", nargs="?", help="the base model (optional with --scoring)")
    ap.add_argument("--scoring", action="store_true", help="print the scoring models' items too (one a line)")
    ap.add_argument("--captions", action="store_true", help="print the captioning model's item too (CAPTION_MODEL)")
    source = ap.add_mutually_exclusive_group()
    source.add_argument("--layout", type=Path, help="a layout file (benchmarks/layouts/*.json): files + model_index")
    source.add_argument("--files", type=Path, help="a file listing the repo's paths, one a line (needs --index)")
    ap.add_argument("--index", type=Path, help="the repo's model_index.json (with --files)")
    ap.add_argument("--recipe", action="append", default=[], help="only these recipes (repeatable; default: all)")
    ap.add_argument("--recipes-module", action="append", default=[], help="extra module registering recipes")
    ap.add_argument("--revision", help="pin the item to this commit sha")
    args = ap.parse_args(argv)
    if args.scoring:
        from contract.settings import load_trainer_settings

        settings = load_trainer_settings(variables=("SCORING_DINO_MODEL", "SCORING_CLIP_MODEL"))
        print("\n".join(scoring_items(settings.scoring_dino_model, settings.scoring_clip_model)))
    if args.captions:
        from contract.settings import load_trainer_settings

        print("\n".join(caption_items(load_trainer_settings(variables=("CAPTION_MODEL",)).caption_model)))
    if args.repo_id is None:
        if not (args.scoring or args.captions):
            ap.error("give a base model repo id, --scoring or --captions")
        return 0
    if args.layout is not None:
        files, index = read_layout(args.layout)
    elif args.files is not None:
        if args.index is None:
            ap.error("--files needs --index")
        files = [line.strip() for line in args.files.read_text().splitlines() if line.strip()]
        index = json.loads(args.index.read_text())
    else:
        files, index = _from_hub(args.repo_id)

    from training.recipes import get_recipe, load_recipe_modules, registered_recipes

    load_recipe_modules(args.recipes_module)
    recipes = [type(get_recipe(name)) for name in args.recipe] if args.recipe else registered_recipes()
    try:
        chosen = preload_files(files, index, recipe_trainable_sets(recipes), base_model=args.repo_id)
    except FileChoiceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(preload_item(args.repo_id, chosen, args.revision))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
