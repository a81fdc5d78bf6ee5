"""Instance and class images: fetching (local folder or Hub dataset), validation and preprocessing; per-image captions.

Everything here runs before any model is loaded, so a bad upload fails in seconds with a clear message.

Captions: a ``.txt`` beside an instance image with the same stem (``dog1.jpg`` + ``dog1.txt``) is that image's
caption (UTF-8, one caption per file, whitespace collapsed to single spaces, at most ``MAX_CAPTION_CHARS``
characters; an empty file means no caption). ``caption_prompt`` makes the prompt an image trains with: its caption
as written when it names the subject's trigger word (``trigger_word``: "sks" in "a photo of sks dog"), else
"<instance prompt>, <caption>"; an image without a caption trains with the instance prompt. A ``.txt`` without an
image is ignored here with a warning (the app's upload refuses it). Class images never take captions (prior
preservation trains them with the class prompt). Torch-free: the control plane's validation uses these rules too.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from contract.hub_dataset import DatasetSource
from training.exitcodes import BadInputError
from training.spec import HubFolder

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
MIN_IMAGES = 1
CAPTION_SUFFIX = ".txt"
MAX_CAPTION_CHARS = 1000  # the same bound as a prompt's (scheduler.validation.Limits.max_prompt_chars)
MAX_CAPTION_BYTES = 4 * MAX_CAPTION_CHARS + 3  # every character 4 bytes of UTF-8, and a byte-order mark
#: words of a prompt that are not the subject's trigger word (the rule of ``scheduler.output_names.subject_words``)
COMMON_WORDS = frozenset(
    "a an the of in on at with and or by for to from photo photograph picture image portrait shot close up closeup "
    "style my our your this that sitting standing wearing high quality detailed".split()
)


@dataclass
class PreparedImage:
    """A training image, EXIF-transposed, resized (shorter side = resolution) and center-cropped to a square."""

    image: Image.Image
    source: Path
    original_size: tuple[int, int]  # (height, width) after EXIF transpose, before resizing (SDXL micro-conditioning)
    crop_top_left: tuple[int, int]  # (top, left) of the crop in the resized image
    caption: str | None = None  # from the image's ``.txt`` (instance images only); None: the instance prompt
    #: an edit model's source image for this target (``load_pairs``); None for a photo of the subject
    control: PreparedImage | None = None


def fetch_images(source: str | HubFolder | DatasetSource, cache_dir: Path) -> Path:
    """Return a local folder holding the images: the folder itself, a snapshot of the Hub dataset folder, or the
    rows of a dataset written as photos and ``.txt`` captions (``training.dataset_images``)."""
    if isinstance(source, DatasetSource):
        from training.dataset_images import export_dataset

        return export_dataset(source, cache_dir / "images", cache_dir / "datasets-cache")
    if isinstance(source, str):
        folder = Path(source)
        if not folder.is_dir():
            raise BadInputError(f"image folder does not exist: {folder}")
        return folder
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    sub = source.path.strip("/")
    try:
        local = snapshot_download(
            repo_id=source.repo_id,
            repo_type=source.repo_type,
            revision=source.revision,
            allow_patterns=[f"{sub}/*"] if sub else None,
            local_dir=cache_dir,
        )
    except (RepositoryNotFoundError, RevisionNotFoundError) as e:
        raise BadInputError(f"image repo {source.repo_id} (revision {source.revision}) not found") from e
    except HfHubHTTPError as e:
        raise RuntimeError(f"downloading images from {source.repo_id} failed: {e}") from e
    folder = Path(local) / sub
    if not folder.is_dir():
        raise BadInputError(f"no folder {sub!r} in {source.repo_id} at revision {source.revision}")
    return folder


def list_image_files(folder: Path) -> list[Path]:
    """Image-like files (by extension) directly in ``folder``, sorted by name; hidden files are ignored."""
    return sorted(
        p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def min_side_for(resolution: int) -> int:
    """The smallest acceptable shorter side of a training image (upscaling beyond 8x is refused)."""
    return max(16, resolution // 8)


def load_images(folder: Path, resolution: int, *, min_images: int = MIN_IMAGES, what: str = "instance",
                captions: bool | None = None) -> list[PreparedImage]:  # fmt: skip
    """Open, validate and preprocess every image in ``folder``; raise ``BadInputError`` naming every bad file.
    ``captions`` (default: for instance images only) reads each image's ``.txt`` caption (``read_captions``)."""
    files = list_image_files(folder)
    found = read_captions(folder, files) if (what == "instance" if captions is None else captions) else {}
    if len(files) < min_images:
        raise BadInputError(
            f"found {len(files)} {what} image(s) in the upload, need at least {min_images} "
            f"(accepted types: {', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    problems: list[str] = []
    prepared: list[PreparedImage] = []
    for path in files:
        image = prepare_image(path, resolution, problems)
        if image is not None:
            image.caption = found.get(path.stem)
            prepared.append(image)
    if problems:
        raise BadInputError(f"{len(problems)} bad {what} image(s): " + "; ".join(problems))
    return prepared


def prepare_image(path: Path, resolution: int, problems: list[str]) -> PreparedImage | None:
    """One image opened, EXIF-transposed, checked for size and cropped (``PreparedImage``); None, with the reason
    appended to ``problems``, when it is unreadable or too small."""
    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            im = im.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        problems.append(f"{path.name}: not a readable image ({type(e).__name__})")
        return None
    w, h = im.size
    need = min_side_for(resolution)
    if min(w, h) < need:
        problems.append(f"{path.name}: too small ({w}x{h} px; need at least {need} px on the shorter side)")
        return None
    return _resize_crop(im, resolution, path)


def load_training_images(folder: Path, resolution: int, *, edits: bool, label: str
                         ) -> tuple[list[PreparedImage], list[PreparedImage]]:  # fmt: skip
    """The images a run trains on and the sources its samples edit: an edit model's pairs (``load_pairs``), else
    the photos (``load_images``) and none; photos named as pairs are refused for a model that does not edit."""
    if edits:
        return load_pairs(folder, resolution, label)
    from training.pairs import pair_problems

    problems = pair_problems(list_image_files(folder), edits=False, family_label=label)
    if problems:
        raise BadInputError(" ".join(problems))
    return load_images(folder, resolution), []


def load_pairs(folder: Path, resolution: int, label: str) -> tuple[list[PreparedImage], list[PreparedImage]]:
    """An edit model's before/after pairs in ``folder`` (``training.pairs``): each pair's target (``_after``) with
    its source as ``control`` and its instruction as ``caption`` (None: the instance prompt), and the held-out
    sources, with theirs. ``BadInputError`` naming every problem (``label``: the model family, for the message)."""
    from training.pairs import pair_problems, sort_pairs

    files = list_image_files(folder)
    problems = pair_problems(files, edits=True, family_label=label)
    if problems:
        raise BadInputError(" ".join(problems))
    found = sort_pairs(files)
    captions = read_captions(folder, [], stems=set(found.pairs) | set(found.held_out))
    targets: list[PreparedImage] = []
    held_out: list[PreparedImage] = []
    for name, (before, after) in found.pairs.items():
        source, target = prepare_image(before, resolution, problems), prepare_image(after, resolution, problems)
        if source is not None and target is not None:
            target.control, target.caption = source, captions.get(name)
            targets.append(target)
    for name, before in found.held_out.items():
        source = prepare_image(before, resolution, problems)
        if source is not None:
            source.caption = captions.get(name)
            held_out.append(source)
    if problems:
        raise BadInputError(f"{len(problems)} bad pair image(s): " + "; ".join(problems))
    return targets, held_out


def _resize_crop(im: Image.Image, resolution: int, path: Path) -> PreparedImage:
    w, h = im.size
    scale = resolution / min(w, h)
    nw, nh = max(resolution, round(w * scale)), max(resolution, round(h * scale))
    resized = im.resize((nw, nh), Image.Resampling.LANCZOS) if (nw, nh) != (w, h) else im
    top, left = (nh - resolution) // 2, (nw - resolution) // 2
    cropped = resized.crop((left, top, left + resolution, top + resolution))
    return PreparedImage(cropped, path, (h, w), (top, left))


# ============================================================================================== captions
def caption_files(paths: Iterable[Path]) -> list[Path]:
    """The caption files (``.txt``, any case) among ``paths``."""
    return [p for p in paths if p.suffix.lower() == CAPTION_SUFFIX]


def decode_caption(raw: bytes, name: str) -> str | None:
    """The caption in a ``.txt`` file's bytes: UTF-8 (a byte-order mark is dropped), whitespace collapsed to single
    spaces; None when it is empty. ``ValueError`` naming the file when it is not UTF-8 or too long."""
    if len(raw) > MAX_CAPTION_BYTES:
        raise ValueError(f"caption {name}: {len(raw):,} bytes; a caption has at most {MAX_CAPTION_CHARS} characters")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ValueError(f"caption {name}: not UTF-8 text") from None
    caption = " ".join(text.split())
    if len(caption) > MAX_CAPTION_CHARS:
        raise ValueError(f"caption {name}: {len(caption)} characters; at most {MAX_CAPTION_CHARS} are allowed")
    return caption or None


def read_captions(folder: Path, images: list[Path], *, stems: set[str] | None = None) -> dict[str, str]:
    """Image stem -> caption, from the ``.txt`` files directly in ``folder`` (``BadInputError`` naming every bad
    one); a caption file without an image of its stem (or one of ``stems``) is ignored with a warning."""
    stems = {p.stem for p in images} | (stems or set())
    found: dict[str, str] = {}
    problems: list[str] = []
    seen: set[str] = set()
    for path in sorted(caption_files(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))):
        if path.stem not in stems:
            log.warning("ignoring caption %s: no image named %s.* beside it", path.name, path.stem)
            continue
        if path.stem in seen:
            problems.append(f"caption {path.name}: a second caption for the images named {path.stem}.*")
            continue
        seen.add(path.stem)
        try:
            with path.open("rb") as f:
                caption = decode_caption(f.read(MAX_CAPTION_BYTES + 1), path.name)
        except ValueError as e:
            problems.append(str(e))
            continue
        if caption is not None:
            found[path.stem] = caption
    if problems:
        raise BadInputError(f"{len(problems)} bad caption(s): " + "; ".join(problems))
    return found


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def trigger_word(instance_prompt: str, class_prompt: str | None = None) -> str | None:
    """The subject's trigger word in the instance prompt: its first word that is neither a common word ("a",
    "photo", "of", ...) nor a word of the class prompt ("sks" in "a photo of sks dog"); None when there is none."""
    skip = COMMON_WORDS | set(_words(class_prompt or ""))
    return next((w for w in _words(instance_prompt) if w not in skip), None)


def caption_prompt(caption: str | None, instance_prompt: str, class_prompt: str | None = None) -> str:
    """The prompt an image trains with: the instance prompt without a caption; the caption as written when it has
    the trigger word (or, with no trigger word, the whole instance prompt) as a word; else
    "<instance prompt>, <caption>"."""
    if caption is None:
        return instance_prompt
    trigger = trigger_word(instance_prompt, class_prompt)
    if trigger is not None and trigger in _words(caption):
        return caption
    if trigger is None and instance_prompt.lower() in caption.lower():
        return caption
    return f"{instance_prompt}, {caption}"
