"""Training images from a dataset (``datasets.load_dataset``) instead of uploaded photos: the record a task holds.

A task names the dataset, never its contents: the Hub id (or, in local mode, a folder such as an imagefolder with a
``metadata.jsonl``), the optional config, the split (default "train"), the image column (default: the first
column of Image feature type) and the optional caption column, whose text becomes each image's caption exactly as a
``.txt`` beside an uploaded photo does (``training.data.read_captions``). The trainer loads it with the token of its
environment, so a private dataset stays private: nothing of it is copied into the queue repo. Torch-free.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from typing import Any

MAX_DATASET_IMAGES = 200  # the most images a dataset may give a task (uploads: ``scheduler.validation.Limits``)
DEFAULT_SPLIT = "train"
#: a Hub repo id: an optional namespace and a name of letters, digits, "-", "_" and "."
_REPO_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]{0,95}/)?[A-Za-z0-9][\w.-]{0,95}$")
_NAME = re.compile(r"^[^\x00-\x1f/\\]{1,200}$")  # a config, split or column name: one line, no path separators


@dataclass
class DatasetSource:
    """Where a task's training images come from when it has no uploaded photos."""

    dataset: str
    config: str | None = None
    split: str = DEFAULT_SPLIT
    image_column: str | None = None  # None: the first Image column
    caption_column: str | None = None  # None: no captions (the instance prompt)
    revision: str | None = None  # the commit the control plane checked (Hub datasets), None: the newest

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, where: str = "dataset") -> DatasetSource:
        """Parse a stored record; ``ValueError`` naming the bad key (unknown keys are refused)."""
        if not isinstance(data, dict):
            raise ValueError(f"{where} must be an object with a 'dataset' key")
        known = {f.name for f in fields(cls)}
        if unknown := sorted(set(data) - known):
            raise ValueError(f"unknown {where} key(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        for key, value in data.items():
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{where}.{key} must be a string")
        source = cls(**{k: v for k, v in data.items() if v is not None or k != "split"})
        if problem := source.problem():
            raise ValueError(f"{where}: {problem}")
        return source

    def problem(self, *, local_folders: bool = True) -> str | None:
        """Why this record cannot name a dataset, or None. ``local_folders``: a path may name a folder on this
        machine (local mode); else only a Hub id ("user/name") is accepted."""
        name = (self.dataset or "").strip()
        if not name:
            return "give a dataset id, e.g. user/my-photos"
        if not _REPO_ID.match(name) and not (local_folders and name.startswith(("/", "./", "../", "~"))):
            return f"{name!r} is not a Hub dataset id (user/name)"
        for key in ("config", "split", "image_column", "caption_column"):
            value = getattr(self, key)
            if value is not None and not _NAME.match(value):
                return f"{key} {value!r} is not a name (one line, no slashes, at most 200 characters)"
        if self.image_column is not None and self.image_column == self.caption_column:
            return f"the image and caption columns are both {self.image_column!r}"
        return None

    @property
    def is_local(self) -> bool:
        """Whether ``dataset`` names a folder on this machine rather than a Hub repo."""
        return not _REPO_ID.match(self.dataset.strip())

    def describe(self) -> str:
        """"user/name (config, split train)" for messages."""
        extra = ", ".join(x for x in (self.config, f"split {self.split}") if x)
        return f"{self.dataset} ({extra})"
