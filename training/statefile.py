"""Nested training state (optimizer, LR-scheduler, grad-scaler state dicts) as safetensors + JSON, never pickle.

``save_state`` splits a tree of dicts, lists, tuples, scalars and tensors into a safetensors file (the tensors, keyed
by their path in the tree) and a JSON file (the tree, with ``{"t": "tensor", "key": ...}`` placeholders). Dicts are
stored as key/value pairs, so integer keys (the optimizer's per-parameter state) and tuples (Adam's betas) come back
exactly as they were. ``load_state`` accepts only that format and raises ``StateFormatError`` on anything else.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

Scalar = bool | int | float | str | None
_SCALARS = (bool, int, float, str, type(None))


class StateFormatError(ValueError):
    """The files do not hold a state tree in this module's format (corrupt, tampered or from another version)."""


def flatten(tree: Any, tensors: dict[str, torch.Tensor], path: str = "") -> Any:
    """The JSON form of ``tree``; its tensors are copied (to the CPU) into ``tensors``."""
    if isinstance(tree, torch.Tensor):
        key = path or "root"
        if key in tensors:
            key = f"{key}#{len(tensors)}"
        tensors[key] = tree.detach().to("cpu", copy=True).contiguous()  # a copy: shared tensors cannot be saved
        return {"t": "tensor", "key": key}
    if isinstance(tree, _SCALARS):
        return tree
    if isinstance(tree, list | tuple):
        items = [flatten(v, tensors, f"{path}.{i}") for i, v in enumerate(tree)]
        return items if isinstance(tree, list) else {"t": "tuple", "items": items}
    if isinstance(tree, dict):
        pairs = []
        for k, v in tree.items():
            if isinstance(k, bool) or not isinstance(k, str | int):
                raise TypeError(f"state key {k!r} at {path or 'root'!r} is not a string or an integer")
            pairs.append([k, flatten(v, tensors, f"{path}.{k}" if path else str(k))])
        return {"t": "dict", "items": pairs}
    where = path or "root"
    raise TypeError(f"cannot store a {type(tree).__name__} at {where!r} (only tensors, scalars and containers)")


def unflatten(node: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of ``flatten``; ``StateFormatError`` for anything ``flatten`` does not write."""
    if isinstance(node, _SCALARS):
        return node
    if isinstance(node, list):
        return [unflatten(v, tensors) for v in node]
    if not isinstance(node, dict):
        raise StateFormatError(f"unexpected {type(node).__name__} in the state tree")
    kind = node.get("t")
    if kind == "tensor" and set(node) == {"t", "key"}:
        if not isinstance(node["key"], str) or node["key"] not in tensors:
            raise StateFormatError(f"tensor {node['key']!r} is missing from the state file")
        return tensors[node["key"]]
    if kind == "tuple" and set(node) == {"t", "items"} and isinstance(node["items"], list):
        return tuple(unflatten(v, tensors) for v in node["items"])
    if kind == "dict" and set(node) == {"t", "items"} and isinstance(node["items"], list):
        out = {}
        for pair in node["items"]:
            ok = isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str | int)
            if not ok or isinstance(pair[0], bool):
                raise StateFormatError("malformed dict entry in the state tree")
            out[pair[0]] = unflatten(pair[1], tensors)
        return out
    raise StateFormatError(f"unknown node {sorted(node)!r} in the state tree")


def save_state(tree: Any, tensor_file: Path, json_file: Path) -> None:
    """Write ``tree`` as ``tensor_file`` (safetensors) and ``json_file``."""
    tensors: dict[str, torch.Tensor] = {}
    structure = flatten(tree, tensors)
    save_file(tensors, str(tensor_file))
    json_file.write_text(json.dumps({"format": 1, "tree": structure}))


def load_tensors(tensor_file: Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors on the CPU; ``StateFormatError`` when it is not one."""
    try:
        return load_file(str(tensor_file), device="cpu")
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error type for a malformed file
        raise StateFormatError(f"{tensor_file.name} is unreadable: {e}") from e


def load_state(tensor_file: Path, json_file: Path) -> Any:
    """Read a tree written by ``save_state`` (tensors on the CPU); ``StateFormatError`` if the files are unusable."""
    try:
        doc = json.loads(json_file.read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise StateFormatError(f"{json_file.name} is unreadable: {e}") from e
    if not isinstance(doc, dict) or doc.get("format") != 1 or "tree" not in doc:
        raise StateFormatError(f"{json_file.name} is not a training state file of format 1")
    tensors = load_tensors(tensor_file)
    try:
        return unflatten(doc["tree"], tensors)
    except RecursionError as e:
        raise StateFormatError("the state tree is nested too deeply") from e
