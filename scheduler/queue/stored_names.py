"""The names a task's uploaded files get in the queue: numbered (the names people gave them are not kept), with
each ``.txt`` caption beside its image, and an edit model's before/after roles kept (``training.pairs``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from scheduler.validation import split_captions
from training.pairs import PairNames, pair_role, sort_pairs

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})


def image_name(index: int, source: Path) -> str:
    """Stored file name of the ``index``-th image: ordered, collision-free, original suffix kept."""
    suffix = source.suffix.lower() if source.suffix.lower() in IMAGE_SUFFIXES else ".img"
    return f"{index:03d}{suffix}"


def stored_files(uploads: Sequence[Path]) -> tuple[list[tuple[str, Path]], int]:
    """(stored name, source) of every uploaded file, and the number of images: the images as ``image_name`` names
    them, each ``.txt`` caption beside every image of its stem (``000.jpg`` + ``000.txt``). ValueError for a
    caption without an image (``scheduler.validation.check_captions`` refuses it first)."""
    images, captions = split_captions(uploads)
    found = sort_pairs(images)
    if found.pairs:
        return stored_pairs(found, captions), len(images)
    numbered = [(image_name(i, p), p) for i, p in enumerate(images)]
    files = list(numbered)
    for caption in captions:
        names = [Path(name).stem + ".txt" for name, image in numbered if image.stem == caption.stem]
        if not names:
            raise ValueError(f"Caption {caption.name} has no image named {caption.stem}.* in the upload.")
        files += [(name, caption) for name in names]
    return files, len(images)


def stored_pairs(found: PairNames, captions: Sequence[Path]) -> list[tuple[str, Path]]:
    """An edit model's upload as stored: each pair (then each held-out source, then any other image) numbered, its
    role kept (``000_before.png``, ``000_after.jpg``, ``000.txt``: the names ``training.pairs`` reads)."""
    files: list[tuple[str, Path]] = []
    stems: dict[str, str] = {}
    groups = [*found.pairs.items(), *((name, (path,)) for name, path in found.held_out.items()),
              *((path.stem, (path,)) for path in found.others)]  # fmt: skip
    for i, (name, paths) in enumerate(groups):
        stems[name] = f"{i:03d}"
        for path in paths:
            role = pair_role(path)
            stored = Path(image_name(i, path))
            files.append((f"{stored.stem}{role[1] if role else ''}{stored.suffix}", path))
    for caption in captions:
        if caption.stem not in stems:
            raise ValueError(f"Caption {caption.name} has no pair or image named {caption.stem} in the upload.")
        files.append((f"{stems[caption.stem]}.txt", caption))
    return files
