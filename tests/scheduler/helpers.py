"""Small helpers shared by the scheduler tests."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from scheduler.task import Task


def make_images(folder: Path, count: int = 3, size: tuple[int, int] = (96, 80), prefix: str = "img") -> list[Path]:
    """``count`` small distinct PNG files in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"{prefix}{i}.png"
        Image.new("RGB", size, color=(i * 40 % 256, 100, 200)).save(path)
        paths.append(path)
    return paths


def make_task(**changes) -> Task:
    """A valid task with test defaults."""
    fields = {"instance_prompt": "a photo of sks dog", "submitted_by": "alice", "output_repo": "alice/sks-dog"}
    fields.update(changes)
    return Task(**fields)
