"""Local mode: write the photos' captions at once on this machine, and edit them before anything is queued.

**Write captions now** runs the captioning model (``CAPTION_MODEL``, ``training.captioner``) on the uploaded photos
that have no ``.txt`` of their own, on this machine's GPU or CPU, and adds each caption to the upload as
``<photo name>.txt``: from there on it is an ordinary per-image caption (``ui.submission``), shown in a table where
the user edits it. An edit rewrites that photo's ``.txt`` in the upload (an emptied caption removes it). The photos
are only read; the ``.txt`` files are written into a temporary folder that Gradio copies into its cache.

Only in local mode (one user, this machine's device): on a Space the CPU is shared by every visitor, and the run
writes the captions on its GPU instead (the "Write captions" box).
"""

from __future__ import annotations

import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image, ImageOps

from contract.text import md_text
from scheduler.validation import split_captions, uncaptioned_images
from training.data import MAX_CAPTION_CHARS
from training.utils.auto_captions import read_caption
from ui.context import AppContext
from ui.submission import uploaded_paths

HEADERS = ["photo", "caption"]
NOTE = ("Each caption is sent with its photo as a .txt file of the same name; edit a cell to change it (an empty "
        "cell: the photo trains with the instance prompt).")  # fmt: skip


def _txt_folder() -> Path:
    """A new temporary folder for ``.txt`` files (Gradio copies what a handler returns into its cache)."""
    folder = Path(tempfile.gettempdir()) / "dreambooth-captions" / uuid.uuid4().hex
    folder.mkdir(parents=True)
    return folder


def caption_table(paths: list[Path]) -> list[list[str]]:
    """[photo name, its caption] for every photo of an upload: its ``.txt``'s caption, else empty."""
    images, texts = split_captions(paths)
    own = {t.stem: read_caption(t) or "" for t in texts}
    return [[image.name, own.get(image.stem, "")] for image in images]


def with_caption_files(paths: list[Path], captions: dict[str, str]) -> list[str]:
    """The upload ``paths`` with the ``.txt`` of each photo named in ``captions`` (photo name -> caption) replaced by
    a new one holding that caption (none for an empty caption); the other files as they are."""
    images, _ = split_captions(paths)
    stems = {image.name: image.stem for image in images}
    changed = {stems[name]: " ".join(text.split())[:MAX_CAPTION_CHARS]
               for name, text in captions.items() if name in stems}  # fmt: skip
    kept = [str(p) for p in paths if not (p.suffix.lower() == ".txt" and p.stem in changed)]
    folder = _txt_folder() if any(changed.values()) else None
    for stem, text in changed.items():
        if text and folder is not None:
            target = folder / f"{stem}.txt"
            target.write_text(text + "\n", encoding="utf-8")
            kept.append(str(target))
    return kept


def write_captions_now(ctx: AppContext, files: Any, device: str, instance_prompt: str = "",
                       class_prompt: str = "") -> tuple[list[str] | None, list[list[str]], str]:  # fmt: skip
    """Caption the uploaded photos without a ``.txt`` on ``device`` (the trigger word of ``instance_prompt`` kept:
    ``training.captioner.keep_trigger``) and add the captions to the upload: (the new upload, the caption table, a
    note saying what was done)."""
    from training.captioner import Captioner, CaptionerUnavailable, keep_trigger

    paths = uploaded_paths(files)
    todo = uncaptioned_images(paths)
    if not split_captions(paths)[0]:
        return None, [], "Upload photos first."
    if not todo:
        return [str(p) for p in paths], caption_table(paths), f"Every photo has its caption already. {NOTE}"
    started = time.monotonic()
    try:
        pictures = []
        for path in todo:
            with Image.open(path) as im:
                pictures.append(ImageOps.exif_transpose(im).convert("RGB"))
        captioner = Captioner.load(ctx.settings.caption_model, device, None)
        try:
            written = captioner.caption(pictures)
        finally:
            captioner.close()
    except (CaptionerUnavailable, OSError) as exc:  # a bad CAPTION_MODEL, or a photo that cannot be read
        why = md_text(exc) if isinstance(exc, CaptionerUnavailable) else f"a photo could not be read ({type(exc).__name__})"
        return [str(p) for p in paths], caption_table(paths), f"**No captions were written:** {why}."
    if instance_prompt.strip():
        written = [keep_trigger(text, instance_prompt.strip(), class_prompt.strip() or None) if text.strip() else text
                   for text in written]  # fmt: skip
    upload = with_caption_files(paths, {path.name: text for path, text in zip(todo, written, strict=True)})
    took = time.monotonic() - started
    note = f"Wrote captions for {len(todo)} photo(s) in {took:.0f} s on this machine ({device}). {NOTE}"
    return upload, caption_table([Path(p) for p in upload]), note


def apply_table(files: Any, table: Any) -> list[str] | None:
    """The upload with each photo's ``.txt`` rewritten from the edited table (rows of [photo name, caption])."""
    rows = table.values.tolist() if hasattr(table, "values") else (table or [])
    paths = uploaded_paths(files)
    if not paths:
        return None
    current = {row[0]: row[1] for row in caption_table(paths)}
    edits = {str(r[0]): str(r[1] or "") for r in rows if len(r) >= 2 and current.get(str(r[0])) != str(r[1] or "")}
    return with_caption_files(paths, edits) if edits else [str(p) for p in paths]


@dataclass
class CaptionEditor:
    """The button, note and table under the upload (shown in local mode only)."""

    button: gr.Button
    note: gr.Markdown
    table: gr.Dataframe


def build_caption_editor(local: bool) -> CaptionEditor:
    """Render the editor's components (hidden unless ``local``)."""
    with gr.Row(visible=local):
        button = gr.Button("Write captions now", size="sm", elem_id="write-captions-now", min_width=160, scale=0)
        note = gr.Markdown(elem_id="captions-note")
    table = gr.Dataframe(headers=HEADERS, datatype=["str", "str"], col_count=(2, "fixed"), interactive=True,
                         column_widths=["30%", "70%"], visible=False, wrap=True, elem_id="caption-table",
                         label="Captions")  # fmt: skip
    return CaptionEditor(button, note, table)


def wire_caption_editor(ctx: AppContext, editor: CaptionEditor, files: gr.File, instance_prompt: gr.Textbox,
                        class_prompt: gr.Textbox, device: str) -> None:  # fmt: skip
    """Its events (local mode only): the button captions the upload on ``device``, a table edit rewrites a caption."""
    if not ctx.local:
        return

    def on_write(files_value: Any, instance: str, klass: str) -> tuple[Any, Any, str]:
        upload, rows, text = write_captions_now(ctx, files_value, device, instance or "", klass or "")
        return upload, gr.Dataframe(value=rows or None, visible=bool(rows)), text

    event = {"api_visibility": "private", "concurrency_limit": 1, "concurrency_id": "captions-now"}
    editor.button.click(on_write, [files, instance_prompt, class_prompt], [files, editor.table, editor.note], **event)
    editor.table.input(apply_table, [files, editor.table], files, show_progress="hidden", **event)
