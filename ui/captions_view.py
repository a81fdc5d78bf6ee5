"""The photos' captions of a run that wrote them (``params.auto_captions``), as the Run and Results tabs show them.

The Run tab shows them from the trainer's ``captions`` event (``scheduler.status.StatusData.captions``), the Results
tab from the run's outputs: the ``captions/<stem>.txt`` files of the local output folder or of the model repo
(``training.utils.auto_captions``). Every caption is shown as inert text (``contract.text.md_text``): a caption is
a model's words about someone's photo, never markup.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from contract.text import md_code, md_text
from training.utils.auto_captions import CAPTIONS_DIR, read_caption, saved_captions  # torch-free

#: the most captions listed (a run trains on at most ``scheduler.validation.LIMITS.max_images`` photos)
MAX_LISTED = 200


def captions_from_folder(output_dir: Path) -> list[tuple[str, str]]:
    """(stem, caption) of the output folder's ``captions/*.txt``, by name."""
    return list(saved_captions(output_dir).items())[:MAX_LISTED]


def caption_names(repo_files: list[str]) -> list[str]:
    """The caption files among a model repo's files (``captions/<stem>.txt``), by name."""
    prefix = f"{CAPTIONS_DIR}/"
    return sorted(n for n in repo_files if n.startswith(prefix) and n.endswith(".txt") and "/" not in n[len(prefix):])


def captions_from_repo(repo_files: list[str], download: Callable[[str], Path | None]) -> list[tuple[str, str]]:
    """(stem, caption) of a model repo's ``captions/*.txt``, each downloaded with ``download`` (None: not read)."""
    rows = []
    for name in caption_names(repo_files)[:MAX_LISTED]:
        path = download(name)
        if path is not None and (text := read_caption(path)):
            rows.append((Path(name).stem, text))
    return rows


def captions_markdown(rows: list[tuple[str, str]], written: set[str] | None = None, where: str = "") -> str:
    """The captions as a Markdown list: ``**Captions**`` then one line per photo (its number in the upload and its
    caption); with ``written``, the captions the captioning model wrote are marked. ``where``: a sentence saying
    where the ``.txt`` files are."""
    if not rows:
        return ""
    count = f" ({len(written)} written by the captioning model, marked ✎)" if written else ""
    lines = [f"- {md_code(stem)} {'✎ ' if written and stem in written else ''}{md_text(text)}" for stem, text in rows]
    return f"**Captions**{count}. {where}".rstrip() + "\n\n" + "\n".join(lines)
