"""The chosen base model's family, for the form, and the defaults the form proposes for it.

The family is found torch-free: ``training.base_check.probe_base_model`` reads the model's ``model_index.json`` (a
Hub repo with the app's token, or a local folder) and the trainer's family catalog (``scheduler.recipes_catalog``)
says which family trains its pipeline class. A probe that found the index is kept per base model, so picking the
model again is instant; one that did not (missing, gated, unreachable...) is not kept and the form keeps its
values. Which fields the user edited is tracked as counts of ``.input`` events (``EditCounts``), so a default that
arrives late never replaces a value typed since the last default was applied.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection
from typing import Any

from scheduler.recipes_catalog import FamilyInfo, RecipeCatalogError, family_for_pipeline, load_families
from training.base_check import DEMO_MODEL, Probe, probe_base_model
from training.families import find_family
from ui.fit_check import hardware_warning, per_gpu_memory

log = logging.getLogger(__name__)

SD_FAMILY = "sd"
FORM_RANK = 4  # the form's LoRA rank for the SD family (the trainer's default)
FORM_RESOLUTION = 512
#: field name -> how many ``.input`` events it had (the touch handlers write it) / had when a default was last set
EditCounts = dict[str, int]

_probes: dict[tuple[str, str], Probe] = {}
_lock = threading.Lock()


def catalog_families(settings: Any = None) -> dict[str, FamilyInfo]:
    """The trainer's model families (``python -m training --list-recipes``, cached), with those of the settings'
    TRAINING_FAMILY_MODULES; none if it cannot be read."""
    try:
        return load_families(family_modules=tuple(getattr(settings, "family_modules", ())))
    except RecipeCatalogError as e:
        log.warning("the model families could not be listed: %s", e)
        return {}


def cached_probe(settings: Any, base_model: str, *, fetch: bool = True) -> Probe | None:
    """The probe of ``base_model`` (kept once it found a ``model_index.json``); with ``fetch`` False only a kept
    one (no request). None when probing failed unexpectedly."""
    key = (str(getattr(settings, "hf_endpoint", "")), base_model)
    with _lock:
        kept = _probes.get(key)
    if kept is not None or not fetch:
        return kept
    try:
        probe = probe_base_model(base_model, token=settings.hf_token, endpoint=settings.hf_endpoint)
    except Exception as e:  # noqa: BLE001 - the form then keeps its values; the submit check reports the cause
        log.warning("could not read the family of base model %r: %s", base_model, e)
        return None
    if probe.index:
        with _lock:
            _probes[key] = probe
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


def hardware_note(settings: Any, base_model: str | None, flavor: str | None) -> str:
    """The warning the fit check gives for ``base_model``'s family on ``flavor`` (``ui.fit_check.hardware_warning``: the
    family's hardware note on a GPU smaller than its default), from a kept probe only (no request); empty on a GPU
    as big as the family's default, for the SD family and for unknown models."""
    if not base_model or not flavor or base_model == DEMO_MODEL:
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


def mark_applied(applied: EditCounts | None, touched: EditCounts | None, names: Collection[str]) -> EditCounts:
    """``applied`` with fields ``names`` set to a default now (their edits so far are overwritten)."""
    out = dict(applied or {})
    for name in names:
        out[name] = (touched or {}).get(name, 0)
    return out
