"""The control plane's check of a dataset a task trains on (``contract.hub_dataset``), before anything is queued.

Torch-free and cheap: the Hub's repo info (exists, readable with the token; the commit it pins), ``datasets``'
builder (configs, splits and the data files, resolved from the file listing without downloading them), then the
columns and the number of images from what tells them without image bytes: the card's ``dataset_info``, an
imagefolder's file names and its ``metadata.jsonl``/``.csv``, or the parquet files' footers (ranged reads). An
imagefolder's image sizes are read from each file's header (a ranged read of its first bytes) and held to the
uploads' bounds (``scheduler.validation.Limits``); every image is checked again by the trainer, with the checks of
uploaded photos (parquet images only there).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contract.hub_dataset import MAX_DATASET_IMAGES, DatasetSource
from scheduler.validation import LIMITS, Limits
from training.dataset_images import caption_problem, image_column
from training.exitcodes import BadInputError

_METADATA = ("metadata.jsonl", "metadata.csv")
_METADATA_BYTES = 4 * 1024 * 1024  # an imagefolder's metadata of 200 captions is a few kB
_HEADER_BYTES = 64 * 1024  # enough for an image's size (a JPEG's EXIF comes before its frame header)
_READERS = 8  # header reads at once


class DatasetRefused(ValueError):
    """The dataset cannot train a task; the message says why, for the person who named it."""


@dataclass
class DatasetCheck:
    """What the check found: the source pinned to the commit checked, the image column, the number of images and
    whether the captions come from a column."""

    source: DatasetSource
    image_column: str
    images: int
    captions: bool


def check_dataset(source: DatasetSource, token: str | None, *, local_folders: bool) -> DatasetCheck:
    """Check ``source`` as the trainer will read it (with ``token``); ``DatasetRefused`` saying why not.
    ``local_folders``: a folder on this machine may be named (local mode)."""
    if problem := source.problem(local_folders=local_folders):
        raise DatasetRefused(f"Dataset: {problem}.")
    if source.is_local:
        folder = Path(source.dataset).expanduser()
        if not folder.is_dir():
            raise DatasetRefused(f"Dataset: {source.dataset} is not a folder.")
        source = dataclasses.replace(source, dataset=str(folder.resolve()), revision=None)
    else:
        source = dataclasses.replace(source, revision=_hub_commit(source, token))
    builder = _builder(source, token)
    split = _split_files(builder, source)
    features, count = _features_and_count(builder, source, split, token)
    try:
        column = image_column(features, source)
    except BadInputError as e:
        raise DatasetRefused(f"Dataset: {e}.") from None
    if problem := caption_problem(features, source):
        raise DatasetRefused(f"Dataset: {problem}.")
    if count < 1:
        raise DatasetRefused(f"Dataset: {source.describe()} has no images.")
    if count > MAX_DATASET_IMAGES:
        raise DatasetRefused(f"Dataset: {source.describe()} has {count} images; at most {MAX_DATASET_IMAGES} train a "
                             "task (pick a smaller split or config).")  # fmt: skip
    return DatasetCheck(source, column, count, source.caption_column is not None)


def _hub_commit(source: DatasetSource, token: str | None) -> str:
    """The commit of the Hub dataset (``DatasetRefused`` when it is missing, private without access or gated)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        info = HfApi(token=token or False).dataset_info(source.dataset, revision=source.revision)
    except GatedRepoError:
        raise DatasetRefused(f"Dataset: {source.dataset} is gated and this token has not been granted access; "
                             "accept its conditions on the Hub with the token's account.") from None  # fmt: skip
    except RevisionNotFoundError:
        raise DatasetRefused(f"Dataset: {source.dataset} has no revision {source.revision!r}.") from None
    except RepositoryNotFoundError:
        who = "this token" if token else "an anonymous request (no HF_TOKEN)"
        raise DatasetRefused(f"Dataset: {source.dataset} was not found on the Hub, or it is private and {who} "
                             "cannot read it.") from None  # fmt: skip
    return info.sha or ""


def _builder(source: DatasetSource, token: str | None) -> Any:
    """``datasets``' builder of ``source`` (no data downloaded); ``DatasetRefused`` for an unknown config."""
    import datasets

    try:
        return datasets.load_dataset_builder(source.dataset, source.config, revision=source.revision,
                                             token=token or None)  # fmt: skip
    except datasets.exceptions.DatasetNotFoundError as e:
        raise DatasetRefused(f"Dataset: {source.dataset} cannot be read: {e}") from None
    except (ValueError, FileNotFoundError) as e:  # a missing or unknown config, no data files
        raise DatasetRefused(f"Dataset: {source.describe()}: {e}") from None


def _split_files(builder: Any, source: DatasetSource) -> list[str]:
    """The split's data files (empty when the card's ``dataset_info`` alone describes it)."""
    files = builder.config.data_files or {}
    names = [str(s) for s in (builder.info.splits or files)]
    if source.split not in names:
        raise DatasetRefused(f"Dataset: {source.describe()} has no split {source.split!r} (splits: "
                             f"{', '.join(names) or 'none'}).")  # fmt: skip
    return [str(f) for f in files.get(source.split, [])]


def _features_and_count(builder: Any, source: DatasetSource, files: list[str], token: str | None
                        ) -> tuple[dict[str, Any], int]:  # fmt: skip
    """The split's columns (name -> ``datasets`` feature) and number of rows, without any image bytes."""
    from datasets import Features, Image, Value
    from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder
    from datasets.packaged_modules.parquet.parquet import Parquet

    info = builder.info
    if info.features is not None and info.splits and source.split in info.splits:
        return dict(info.features), info.splits[source.split].num_examples
    if isinstance(builder, ImageFolder):
        images = [f for f in files if Path(f).suffix.lower() in ImageFolder.EXTENSIONS]
        if len(images) <= MAX_DATASET_IMAGES and (problems := _size_problems(images, token)):
            shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
            raise DatasetRefused(f"Dataset: {source.describe()} has {len(problems)} unusable image(s): {shown}.")
        features: dict[str, Any] = {"image": Image()}
        for name in _metadata_columns([f for f in files if Path(f).name in _METADATA], token):
            features.setdefault(name, Value("string"))
        return features, len(images)
    if isinstance(builder, Parquet):
        import pyarrow.parquet as pq

        count, schema = 0, None
        for url in files:
            with _open(url, token) as f:
                footer = pq.ParquetFile(f)
                count += footer.metadata.num_rows
                schema = schema or footer.schema_arrow
        return (dict(Features.from_arrow_schema(schema)) if schema is not None else {}), count
    raise DatasetRefused(f"Dataset: {source.describe()} is a {builder.name} dataset, whose columns cannot be read "
                         "without downloading it; use an imagefolder (images and a metadata.jsonl) or parquet "
                         "files, or a dataset whose card lists its features.")  # fmt: skip


def _size_problems(files: list[str], token: str | None, limits: Limits = LIMITS) -> list[str]:
    """What is wrong with each image's size (too small, too many pixels) or header (unreadable), read from its first
    bytes only; the uploads' bounds."""
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image, UnidentifiedImageError

    def problem(url: str) -> str | None:
        name = url.split("@", 1)[-1].split("/", 1)[-1] if url.startswith("hf://") else Path(url).name
        try:
            with _open(url, token, block_size=_HEADER_BYTES) as f, Image.open(f) as im:
                width, height = im.size
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError):
            return f"{name} is not a readable image"
        if width * height > limits.max_image_pixels:
            return f"{name} is {width}x{height}, more than {limits.max_image_pixels:,} pixels"
        if min(width, height) < limits.min_image_side:
            return f"{name} is {width}x{height}; each side needs at least {limits.min_image_side} px"
        return None

    with ThreadPoolExecutor(_READERS) as pool:
        return [p for p in pool.map(problem, files) if p]


def _metadata_columns(files: list[str], token: str | None) -> list[str]:
    """The columns of an imagefolder's metadata files (its ``file_name`` column aside)."""
    columns: list[str] = []
    for url in files:
        with _open(url, token) as f:
            text = f.read(_METADATA_BYTES + 1).decode("utf-8-sig", errors="replace")
        if len(text) > _METADATA_BYTES:
            raise DatasetRefused(f"Dataset: its {Path(url).name} is larger than {_METADATA_BYTES // 2**20} MiB.")
        if url.endswith(".jsonl"):
            try:
                rows = [json.loads(line) for line in text.splitlines() if line.strip()]
            except ValueError as e:
                raise DatasetRefused(f"Dataset: its {Path(url).name} is not JSON lines ({e}).") from None
            names = [k for row in rows if isinstance(row, dict) for k in row]
        else:
            names = list(csv.DictReader(io.StringIO(text)).fieldnames or [])
        columns += [n for n in dict.fromkeys(names) if n not in ("file_name", *columns)]
    return columns


def _open(url: str, token: str | None, block_size: int | None = None) -> Any:
    """A binary file object of a local path or an ``hf://`` URL (ranged reads of ``block_size``, with the token)."""
    if url.startswith("hf://"):
        from huggingface_hub import HfFileSystem

        return HfFileSystem(token=token or False).open(url.removeprefix("hf://"), "rb", block_size=block_size)
    return open(url, "rb")  # noqa: SIM115 - the caller closes it
