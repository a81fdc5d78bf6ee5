"""Before/after pairs for an edit model (Qwen-Image-Edit): the naming rule the upload check and the trainer share.

A pair is two images of one upload named ``<name>_before.<ext>`` (the source) and ``<name>_after.<ext>`` (the same
picture edited: the target), with the instruction that turns one into the other in ``<name>.txt`` (a caption file:
the rules of ``training.data``; a pair without one trains with the instance prompt as its instruction). A
``_before`` image without its ``_after`` is held out: never trained on, it is what the samples edit at every
sampling point (source -> result, with its instruction); with none held out the first pair's source is sampled.
Names are matched without regard to case. Torch-free.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

BEFORE, AFTER = "_before", "_after"
#: how the form and the errors describe the naming rule
NAMING_RULE = (
    "name each pair's files <name>_before.<ext> (the source) and <name>_after.<ext> (the edited result), and put "
    "its instruction in <name>.txt"
)


@dataclass
class PairNames:
    """An upload's images sorted into pairs: ``pairs`` {name: (before, after)} and ``held_out`` {name: before} in
    name order, ``others`` (images that are neither), ``problems`` (one message each, e.g. an ``_after`` alone)."""

    pairs: dict[str, tuple[Path, Path]] = field(default_factory=dict)
    held_out: dict[str, Path] = field(default_factory=dict)
    others: list[Path] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def pair_role(path: str | Path) -> tuple[str, str] | None:
    """(name, ``BEFORE`` or ``AFTER``) for ``<name>_before.*`` / ``<name>_after.*`` (any case), else None."""
    stem = Path(path).stem
    for role in (BEFORE, AFTER):
        if stem.lower().endswith(role) and len(stem) > len(role):
            return stem[: -len(role)], role
    return None


def sort_pairs(images: Iterable[str | Path]) -> PairNames:
    """Sort an upload's images (not its ``.txt`` files) into pairs, held-out sources and the rest."""
    found: dict[str, dict[str, Path]] = {}
    names: dict[str, str] = {}  # lower-case name -> the name as first written
    out = PairNames()
    for path in sorted(map(Path, images), key=lambda p: p.name):
        role = pair_role(path)
        if role is None:
            out.others.append(path)
            continue
        name = names.setdefault(role[0].lower(), role[0])
        slot = found.setdefault(name, {})
        if role[1] in slot:
            out.problems.append(f"{path.name}: a second {role[1][1:]} image for {name}; keep one.")
            continue
        slot[role[1]] = path
    for name in sorted(found):
        slot = found[name]
        if BEFORE in slot and AFTER in slot:
            out.pairs[name] = (slot[BEFORE], slot[AFTER])
        elif BEFORE in slot:
            out.held_out[name] = slot[BEFORE]
        else:
            out.problems.append(f"{slot[AFTER].name}: no {name}{BEFORE}.* to go with it; add the source image or "
                                "remove this one.")  # fmt: skip
    return out


def describe_pairs(images: Iterable[str | Path]) -> str | None:
    """"2 before/after pairs and 1 held-out source" for an upload of pairs; None for photos."""
    found = sort_pairs(images)
    if not found.pairs:
        return None
    n, held = len(found.pairs), len(found.held_out)
    text = f"{n} before/after pair{'' if n == 1 else 's'}"
    return text + (f" and {held} held-out source{'' if held == 1 else 's'}" if held else "")


def pair_problems(images: Iterable[str | Path], *, edits: bool, family_label: str) -> list[str]:
    """The problems of an upload for a base model that is an edit model (``edits``) or not: an edit model needs at
    least one complete pair and nothing but pairs and held-out sources; any other model refuses pairs."""
    found = sort_pairs(images)
    if not edits:
        if not found.pairs:
            return []
        pair = next(iter(found.pairs.values()))
        return [f"Photos: {pair[0].name} and {pair[1].name} are a before/after pair, which only an edit model "
                f"(Qwen-Image-Edit) trains; {family_label} learns a subject from photos. Choose an edit model, or "
                "upload photos of the subject."]  # fmt: skip
    problems = [f"Pairs: {p}" for p in found.problems]
    if not found.pairs:
        return [f"Pairs: none found; {family_label} trains on before/after pairs: {NAMING_RULE}.", *problems]
    if found.others:
        problems.append(f"Pairs: {', '.join(p.name for p in found.others[:3])}"
                        f"{' and others' if len(found.others) > 3 else ''}: {family_label} trains on before/after "
                        f"pairs; {NAMING_RULE}.")  # fmt: skip
    return problems


def caption_names(images: Iterable[str | Path]) -> set[str]:
    """The stems a ``.txt`` of this upload may have: each image's, and when it holds pairs each pair's (and each
    held-out source's) name."""
    paths = list(map(Path, images))
    found = sort_pairs(paths)
    return {p.stem for p in paths} | (set(found.pairs) | set(found.held_out) if found.pairs else set())
