"""The chosen base model's family, for the form, and the defaults the form proposes for it.

The family is found torch-free: ``training.base_check.probe_base_model`` reads the model's ``model_index.json`` (a
Hub repo with the app's token, or a local folder) and the trainer's family catalog (``contract.catalog``)
says which family trains its pipeline class. A probe that found the index is kept per base model (``PROBES``: a
small LRU cache with a time to live), so picking the model again is instant; one that did not (missing, gated,
unreachable...) is not kept and the form keeps its values. Which fields the user edited is tracked as counts of
``.input`` events (``EditCounts``), so a default that arrives late never replaces a value typed since the last
default was applied.

The form asks through ``family_for``, which knows who is asking: the Hub is asked with the owner's token, so only
the owner looks up any repo id; an allowed user looks up the offered base models only (the only ones they may
train on), and anyone else gets what is already kept for an offered model, never a request. Each caller's lookups
draw on a token bucket (``LOOKUPS``). Nobody but the owner learns anything about a repo that is not offered.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from contract.catalog import FamilyInfo, RecipeCatalogError, family_for_pipeline, load_families
from contract.settings import hub_offline
from training.base_check import DEMO_MODEL, Probe, id_problem, probe_base_model
from training.families import find_family
from ui.auth import Access
from ui.fit_check import hardware_warning, per_gpu_memory
from ui.lookups import TOO_OFTEN, ProbeCache, RateLimiter

log = logging.getLogger(__name__)

SD_FAMILY = "sd"
FORM_RANK = 4  # the form's LoRA rank for the SD family (the trainer's default)
FORM_RESOLUTION = 512
#: field name -> how many ``.input`` events it had (the touch handlers write it) / had when a default was last set
EditCounts = dict[str, int]

PHOTOS_LABEL = "Photos of your subject (3 to 20; varied backgrounds and angles)"
#: an edit model's upload (``training.pairs``)
PAIRS_LABEL = ("Before/after pairs: <name>_before and <name>_after images, the instruction in <name>.txt; a "
               "<name>_before alone is held out (the samples edit it)")  # fmt: skip
PROBES: ProbeCache[Probe] = ProbeCache()  # (endpoint, base model) -> a probe that found model_index.json
LOOKUPS = RateLimiter()  # per caller: the lookups ``family_for`` may make


def catalog_families(settings: Any = None) -> dict[str, FamilyInfo]:
    """The trainer's model families (``python -m training --list-recipes``, cached), with those of the settings'
    TRAINING_FAMILY_MODULES; none if it cannot be read."""
    try:
        return load_families(family_modules=tuple(getattr(settings, "family_modules", ())))
    except RecipeCatalogError as e:
        log.warning("the model families could not be listed: %s", e)
        return {}


def base_model_help(settings: Any, local: bool) -> str:
    """The Base model field's help: what may be named, and the model families the trainer's catalog lists (those
    of the settings' TRAINING_FAMILY_MODULES too), Stable Diffusion's first; locally, the demo model."""
    families = sorted(catalog_families(settings).values(), key=lambda f: (f.name != SD_FAMILY, f.label))
    which = f": {', '.join(f.label for f in families)}" if families else ""
    text = ("A Hub model repo id (namespace/name, e.g. stable-diffusion-v1-5/stable-diffusion-v1-5) or a local folder "
            f"holding a diffusers pipeline (with model_index.json) of a model family this app trains{which}.")  # fmt: skip
    return text + (" The demo model needs no download and trains in about a minute on a CPU." if local else "")


def cached_probe(settings: Any, base_model: str, *, fetch: bool = True) -> Probe | None:
    """The probe of ``base_model`` (kept once it found a ``model_index.json``); with ``fetch`` False only a kept
    one (no request). None when probing failed unexpectedly."""
    key = (str(getattr(settings, "hf_endpoint", "")), base_model)
    kept = PROBES.get(key)
    if kept is not None or not fetch:
        return kept
    try:
        probe = probe_base_model(base_model, token=settings.hf_token, endpoint=settings.hf_endpoint)
    except Exception as e:  # noqa: BLE001 - the form then keeps its values; the submit check reports the cause
        log.warning("could not read the family of base model %r: %s", base_model, e)
        return None
    if probe.index:
        PROBES.put(key, probe)
    return probe


def family_of(settings: Any, base_model: str | None, *, fetch: bool = True) -> FamilyInfo | None:
    """The catalog family of ``base_model`` (the demo model: the SD family); None when unknown."""
    if not base_model:
        return None
    families = catalog_families(settings)
    if base_model == DEMO_MODEL:
        return families.get(SD_FAMILY)
    probe = cached_probe(settings, base_model, fetch=fetch)
    if probe is None or not probe.index:
        return None
    return family_for_pipeline(families, probe.index.get("_class_name"))


def offered(settings: Any, base_model: str) -> bool:
    """Whether ``base_model`` is one of the form's offered base models (``DEFAULT_BASE_MODEL``, ``BASE_MODELS``)."""
    return base_model in {getattr(settings, "default_base_model", None), *getattr(settings, "base_models", ())}


def may_see(settings: Any, access: Access, base_model: str) -> bool:
    """Whether what is known of ``base_model`` may be shown to ``access``: to the owner, all; to anyone else, only
    an offered model's (never what the owner's token found about another repo: that it exists, is private...)."""
    return access.owner or offered(settings, base_model)


def family_for(settings: Any, access: Access, base_model: str | None, *, fetch: bool = True,
               warn: Callable[[str], Any] | None = None) -> FamilyInfo | None:  # fmt: skip
    """``family_of`` for the caller ``access`` (the form's handlers): the owner may look up any base model, an
    allowed user an offered one, anyone else none (only a kept probe of an offered model answers them). A Hub
    lookup draws on the caller's token bucket; an empty bucket makes no request and ``warn``s ``TOO_OFTEN``."""
    if not base_model or base_model == DEMO_MODEL:
        return family_of(settings, base_model, fetch=False)
    if not may_see(settings, access, base_model):
        return None
    fetch = fetch and (access.owner or access.allowed) and access.user is not None
    if fetch and _asks_the_hub(settings, base_model) and not LOOKUPS.take(access.user or ""):
        if warn is not None:
            warn(TOO_OFTEN)
        fetch = False
    return family_of(settings, base_model, fetch=fetch)


def _asks_the_hub(settings: Any, base_model: str) -> bool:
    """Whether looking ``base_model`` up now would ask the Hub (a valid repo id that is no local folder, not kept; in
    offline mode nothing does: the Hugging Face cache answers)."""
    if hub_offline() or cached_probe(settings, base_model, fetch=False) is not None:
        return False
    return id_problem(base_model) is None and not Path(base_model).is_dir()


def other_family(family: FamilyInfo | None) -> FamilyInfo | None:
    """``family`` unless it is the SD family (whose figures the estimate tables and memory tables hold)."""
    return family if family is not None and family.name != SD_FAMILY else None


def family_hardware(settings: Any, family: FamilyInfo | None, offered: Collection[str], gpu_default: str) -> str:
    """The GPU the form proposes for ``family``: the SD family's is the form's default (``TRAIN_HARDWARE`` or
    t4-small); another family's is its own default, unless the owner's ``TRAIN_HARDWARE`` has at least as much
    memory per GPU."""
    if other_family(family) is None:
        return gpu_default
    wanted = family.defaults.hardware
    configured = settings.train_hardware
    owner_set = settings.sources().get("train_hardware", "default") != "default"
    if owner_set and configured in offered and per_gpu_memory(configured) >= per_gpu_memory(wanted):
        return configured
    return wanted if wanted in offered else gpu_default


def hardware_note(settings: Any, base_model: str | None, flavor: str | None, access: Access | None = None) -> str:
    """The warning the fit check gives for ``base_model``'s family on ``flavor`` (``ui.fit_check.hardware_warning``: the
    family's hardware note on a GPU smaller than its default), from a kept probe only (no request); empty on a GPU
    as big as the family's default, for the SD family and for unknown models (and, with ``access``, for a model
    ``may_see`` hides from that caller)."""
    if not base_model or not flavor or base_model == DEMO_MODEL:
        return ""
    if access is not None and not may_see(settings, access, base_model):
        return ""
    probe = cached_probe(settings, base_model, fetch=False)
    family = find_family(probe.index) if probe is not None and probe.index else None
    return "\n\n".join(hardware_warning(family, flavor)) if family is not None else ""


def edited(name: str, touched: EditCounts | None, applied: EditCounts | None) -> bool:
    """Whether the user edited field ``name`` since a default was last set in it."""
    return (touched or {}).get(name, 0) > (applied or {}).get(name, 0)


def touch(touched: EditCounts | None, name: str) -> EditCounts:
    """``touched`` with one more edit of ``name`` (the handler of that field's ``.input`` event)."""
    touched = dict(touched or {})
    touched[name] = touched.get(name, 0) + 1
    return touched


def toucher(name: str) -> Callable[[EditCounts | None], EditCounts]:
    """The ``.input`` handler of field ``name``: one more edit in the ``touched`` counts."""

    def on_input(edits: EditCounts | None) -> EditCounts:
        return touch(edits, name)

    return on_input


def mark_applied(applied: EditCounts | None, touched: EditCounts | None, names: Collection[str]) -> EditCounts:
    """``applied`` with fields ``names`` set to a default now (their edits so far are overwritten)."""
    out = dict(applied or {})
    for name in names:
        out[name] = (touched or {}).get(name, 0)
    return out


def photos_label(family: FamilyInfo | None) -> Any:
    """The upload box's label: photos of a subject, or an edit model's before/after pairs (``training.pairs``)."""
    import gradio as gr

    return gr.File(label=PAIRS_LABEL if family is not None and family.edits else PHOTOS_LABEL)


def training_image_count(images: Collection[Any], family: FamilyInfo | None) -> int:
    """What the auto steps count: the photos, or an edit model's before/after pairs (``training.pairs``)."""
    if family is not None and family.edits:
        from training.pairs import sort_pairs

        return len(sort_pairs(images).pairs)
    return len(images)
