"""A task's training images read from a dataset with ``datasets.load_dataset`` and written as an upload would be.

Each row's image goes into the run's instance folder as ``000.png`` (its own bytes, its own format's extension)
with its caption, when the caption column has text, as ``000.txt``: from there ``training.data.load_images`` applies
the very checks and caption rules of uploaded photos. The token and the Hub endpoint are the environment's
(``HF_TOKEN``, ``HF_ENDPOINT``); the dataset's cache lives in the run folder, which goes with the run.
"""

from __future__ import annotations

import io
import logging
import shutil
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from contract.hub_dataset import MAX_DATASET_IMAGES, DatasetSource
from training.exitcodes import BadInputError

log = logging.getLogger(__name__)
_EXTENSIONS = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "BMP": ".bmp", "GIF": ".gif", "TIFF": ".tif"}


def image_column(features: Any, source: DatasetSource) -> str:
    """The column the images are in: the named one (it must be of Image type) or the first Image column;
    ``BadInputError`` naming the columns there are."""
    from datasets import Image as ImageFeature

    columns = ", ".join(features) or "none"
    if source.image_column is not None:
        if source.image_column not in features:
            raise BadInputError(f"dataset {source.describe()} has no column {source.image_column!r} (columns: {columns})")
        if not isinstance(features[source.image_column], ImageFeature):
            raise BadInputError(f"dataset column {source.image_column!r} holds {features[source.image_column]}, "
                                "not images")  # fmt: skip
        return source.image_column
    found = next((name for name, feature in features.items() if isinstance(feature, ImageFeature)), None)
    if found is None:
        raise BadInputError(f"dataset {source.describe()} has no image column (columns: {columns})")
    return found


def caption_problem(features: Any, source: DatasetSource) -> str | None:
    """Why the caption column cannot give captions (missing, not text), or None (also when none is named)."""
    from datasets import Value

    name = source.caption_column
    if name is None:
        return None
    if name not in features:
        return f"dataset {source.describe()} has no column {name!r} (columns: {', '.join(features) or 'none'})"
    feature = features[name]
    if not (isinstance(feature, Value) and feature.dtype in ("string", "large_string")):
        return f"dataset column {name!r} holds {feature}, not text captions"
    return None


def export_dataset(source: DatasetSource, folder: Path, cache_dir: Path) -> Path:
    """Load ``source`` and write its images (and captions) into ``folder``; return ``folder``. ``BadInputError``
    for a dataset that cannot be read, lacks the columns or holds more than ``MAX_DATASET_IMAGES`` images."""
    import datasets
    from datasets import Image as ImageFeature

    try:
        ds = datasets.load_dataset(source.dataset, source.config, split=source.split, revision=source.revision,
                                   cache_dir=str(cache_dir))  # fmt: skip
    except (FileNotFoundError, datasets.exceptions.DatasetNotFoundError) as e:
        raise BadInputError(f"dataset {source.describe()} was not found or is not readable with this token: {e}") from e
    except ValueError as e:  # an unknown split or config
        raise BadInputError(f"dataset {source.describe()}: {e}") from e
    column = image_column(ds.features, source)
    if problem := caption_problem(ds.features, source):
        raise BadInputError(problem)
    if len(ds) > MAX_DATASET_IMAGES:
        raise BadInputError(f"dataset {source.describe()} has {len(ds)} images; at most {MAX_DATASET_IMAGES} train a task")
    ds = ds.cast_column(column, ImageFeature(decode=False))  # the stored bytes, as an upload would give them
    shutil.rmtree(folder, ignore_errors=True)  # an earlier attempt's rows never mix with these
    folder.mkdir(parents=True)
    for i, row in enumerate(ds):
        data, name = _image_bytes(row[column])
        (folder / f"{i:03d}{_extension(data, name)}").write_bytes(data)
        caption = row.get(source.caption_column) if source.caption_column else None
        if caption:
            (folder / f"{i:03d}.txt").write_text(caption, encoding="utf-8")
    log.info("dataset %s: %d images written to %s", source.describe(), len(ds), folder)
    return folder


def _image_bytes(value: dict[str, Any] | None) -> tuple[bytes, str]:
    """The bytes of an undecoded Image cell (inline, or the file it names) and its file name ("" when none)."""
    if not value:
        return b"", ""
    path = value.get("path") or ""
    data = value.get("bytes")
    if data is None and path:
        data = Path(path).read_bytes()
    return data or b"", Path(path).name


def _extension(data: bytes, name: str) -> str:
    """The image's extension: its format's (read from the bytes), else its file name's; ".png" for bytes that are
    no image (``load_images`` then names it as unreadable)."""
    suffix = Path(name).suffix.lower()
    fallback = suffix if suffix in {*_EXTENSIONS.values(), ".jpeg", ".tiff"} else ".png"
    try:
        with Image.open(io.BytesIO(data)) as im:
            return _EXTENSIONS.get(im.format or "", fallback)
    except (UnidentifiedImageError, OSError, ValueError):
        return fallback
