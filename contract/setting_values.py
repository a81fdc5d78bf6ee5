"""Parsers of the settings' values (``contract.settings``): each reads one variable's text and returns its value, or
raises ``SettingsError`` with a message that names the variable and the fix. Reads no environment."""

from __future__ import annotations

import os
import re
from typing import Any

from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from contract.caption_models import DEFAULT_CAPTION_MODEL
from contract.scoring_models import DEFAULT_CLIP_MODEL, DEFAULT_DINO_MODEL, PIXELS, off


class SettingsError(ValueError):
    """An environment variable has a value the app cannot use; the message names the variable and the fix."""


def parse_namespace(name: str, value: str) -> str:
    """A user or organization name (what may stand before the ``/`` of a repo id)."""
    try:
        validate_repo_id(f"{value}/x")
    except HFValidationError:
        raise SettingsError(f"{name}={value!r} is not a user or organization name.") from None
    return value


def parse_bool(var: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("", "0", "false", "no", "off"):
        return False
    raise SettingsError(f"{var}={raw!r} is not a boolean. Use true or false.")


def parse_number(var: str, raw: str, kind: type, minimum: float) -> Any:
    try:
        value = kind(raw.strip())
    except ValueError:
        raise SettingsError(f"{var}={raw!r} is not a{'n integer' if kind is int else ' number'}.") from None
    if value < minimum:
        raise SettingsError(f"{var}={raw!r} must be at least {minimum}.")
    return value


def parse_list(raw: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def check_repo_id(var: str, repo_id: str, *, need_namespace: bool) -> None:
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise SettingsError(f"{var}={repo_id!r} is not a valid repo id: {exc}") from None
    if need_namespace and "/" not in repo_id:
        raise SettingsError(f"{var}={repo_id!r} must be of the form owner/name.")


def looks_like_path(value: str) -> bool:
    return value.startswith(("/", ".", "~")) or value.count("/") > 1 or os.sep in value.replace("/", "")


def parse_modules(var: str, raw: str, example: str) -> tuple[str, ...]:
    """A comma-separated list of importable module names (``my_family``, ``pkg.families``)."""
    modules = parse_list(raw)
    for module in modules:
        if module.endswith(".py") or not all(part.isidentifier() for part in module.split(".")):
            raise SettingsError(f"{var}={raw!r}: {module!r} is not a Python module name (e.g. {example} or "
                                f"pkg.{example}; comma-separated, without .py).")  # fmt: skip
    return modules


HOST_NAME = re.compile(r"^(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*|\[[0-9a-f:.]+\])"
                        r"(?::[0-9]{1,5})?$")  # fmt: skip


def parse_exposure(raw: str) -> tuple[bool, tuple[str, ...]]:
    """LOCAL_EXPOSE_TO_NETWORK: ``false`` (127.0.0.1 only), ``true`` (all interfaces; served as localhost only, e.g.
    a container's published port), or the host names (``name`` or ``name:port``) the network reaches it by."""
    if raw.strip().lower() in ("1", "true", "yes", "on", "", "0", "false", "no", "off"):
        return parse_bool("LOCAL_EXPOSE_TO_NETWORK", raw), ()
    names = tuple(name.lower() for name in parse_list(raw))
    for name in names:
        if not HOST_NAME.match(name):
            raise SettingsError(f"LOCAL_EXPOSE_TO_NETWORK={raw!r}: {name!r} is not a host name (e.g. mybox.lan, "
                                "192.168.1.20 or mybox.lan:7860; comma-separated), nor true or false.")  # fmt: skip
    return True, names


def parse_scoring_model(var: str, raw: str) -> str | None:
    """SCORING_DINO_MODEL / SCORING_CLIP_MODEL: a Hub repo id or a local folder (``contract.scoring_models``), the
    built-in pixel embedding for DINO, or empty / none / off: None (the measure is off)."""
    value, dino = raw.strip(), var == "SCORING_DINO_MODEL"
    if off(value):
        return None
    if value == PIXELS and not dino:
        raise SettingsError(f"{var}={raw!r}: {PIXELS} embeds images only, and CLIP-T needs a text encoder too. Set a "
                            f"CLIP model repo id (e.g. {DEFAULT_CLIP_MODEL}), or none to turn CLIP off.")  # fmt: skip
    if value != PIXELS and not looks_like_path(value):
        try:
            validate_repo_id(value)
        except HFValidationError as exc:
            example = DEFAULT_DINO_MODEL if dino else DEFAULT_CLIP_MODEL
            raise SettingsError(f"{var}={raw!r} is not a model repo id (e.g. {example}), a local folder"
                                f"{f', {PIXELS}' if dino else ''} or none (off): {exc}") from None  # fmt: skip
    return value


def parse_caption_model(raw: str) -> str:
    """CAPTION_MODEL: the model that writes captions (``contract.caption_models``): a Hub repo id or a local folder."""
    value = raw.strip()
    if not looks_like_path(value):
        try:
            validate_repo_id(value)
        except HFValidationError as exc:
            raise SettingsError(f"CAPTION_MODEL={raw!r} is not a model repo id (e.g. {DEFAULT_CAPTION_MODEL}) nor a "
                                f"local folder: {exc}") from None  # fmt: skip
    return value
