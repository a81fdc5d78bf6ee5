"""Captions written for the user before training (``params.auto_captions``): every photo without its own ``.txt``
is described by a vision-language model (``training.captioner``, the ``CAPTION_MODEL`` setting) with the subject's
trigger word kept, on the training device, before any diffusion weight is loaded.

Every photo's caption (its own or the written one) is saved in the output folder as ``captions/<stem>.txt``, the
names the photos have in the queue: they go to the model repo with the weights, and a user who wants other words
edits them and submits them with the photos. A run that is tried again in the same work folder reads the captions it
wrote before instead of captioning again, so a resumed run trains on the same prompts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training import data

log = logging.getLogger(__name__)

#: the output folder's sub-folder of caption files (``<stem>.txt``)
CAPTIONS_DIR = "captions"


@dataclass
class WrittenCaptions:
    """The captions a run trains with, by photo stem, and the stems the captioning model wrote."""

    captions: dict[str, str] = field(default_factory=dict)
    written: list[str] = field(default_factory=list)


def run_caption_model() -> str:
    """The captioning model of this run: the trainer's ``CAPTION_MODEL`` setting (a Hub id or a local folder)."""
    from contract.settings import load_trainer_settings

    return load_trainer_settings(variables=("CAPTION_MODEL",)).caption_model


def read_caption(path: Path) -> str | None:
    """The caption in a ``.txt`` file (``training.data.decode_caption``, reading at most a caption's bytes), or None
    when it is empty, unreadable or too long."""
    try:
        with path.open("rb") as f:
            return data.decode_caption(f.read(data.MAX_CAPTION_BYTES + 1), path.name)
    except (OSError, ValueError):
        return None


def saved_captions(output_dir: Path) -> dict[str, str]:
    """The captions saved in ``output_dir/captions`` (stem -> caption, by file name; unreadable files skipped): an
    earlier try's, or a finished run's for the Results tab."""
    paths = sorted((output_dir / CAPTIONS_DIR).glob("*.txt"))
    return {path.stem: caption for path in paths if (caption := read_caption(path))}


def caption_photos(images: list[data.PreparedImage], spec: Any, output_dir: Path, *, device: Any, dtype: Any,
                   model: str | None = None) -> WrittenCaptions:  # fmt: skip
    """Give every image of ``images`` without a caption one (set on ``image.caption``): the one saved by an earlier
    try, else the description of ``model`` (default ``run_caption_model``) with the trigger word kept (``training.captioner.keep_trigger``). An empty
    description leaves the image on the instance prompt. Saves every caption in ``output_dir/captions``."""
    from training.captioner import Captioner, keep_trigger

    earlier = saved_captions(output_dir)
    missing = [im for im in images if im.caption is None]
    for im in missing:
        im.caption = earlier.get(im.source.stem)
    todo = [im for im in missing if im.caption is None]
    if todo:
        captioner = Captioner.load(model or run_caption_model(), device, dtype)
        try:
            texts = captioner.caption([im.image for im in todo])
        finally:
            captioner.close()
        for im, text in zip(todo, texts, strict=True):
            im.caption = keep_trigger(text, spec.instance_prompt, spec.class_prompt) if text.strip() else None
            log.info("caption %s: %s", im.source.stem, im.caption)
    result = WrittenCaptions({im.source.stem: im.caption for im in images if im.caption is not None},
                             [im.source.stem for im in missing if im.caption is not None])
    folder = output_dir / CAPTIONS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for stem, caption in result.captions.items():
        (folder / f"{stem}.txt").write_text(caption + "\n", encoding="utf-8")
    return result
