"""Training images read from a dataset with the real ``datasets`` library (``training.dataset_images``).

A local imagefolder (photos + ``metadata.jsonl`` with a caption column) trains a tiny SD on the CPU; its rows become
the photos and ``.txt`` captions of an upload, so the upload's checks and caption rules apply unchanged. Nothing is
mocked; the Hub-served dataset is in tests/test_dataset_submit.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from contract.hub_dataset import DatasetSource
from tests.test_captions import FAST, PROMPT, recorded  # noqa: F401 - the fixture that records each step's prompts
from tests.test_training import run_task
from tests.tiny_models import make_images
from training.data import load_images
from training.dataset_images import export_dataset
from training.exitcodes import BadInputError
from training.spec import TrainSpec


def imagefolder(folder: Path, captions: dict[int, str], n: int = 3, *, column: str = "text") -> list[Path]:
    """An imagefolder dataset: ``n`` photos and a ``metadata.jsonl`` giving some of them a caption in ``column``."""
    photos = make_images(folder, n, size=48)
    rows = [{"file_name": p.name, column: captions.get(i)} for i, p in enumerate(photos)]
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return photos


def test_a_task_names_a_dataset_by_id_config_split_and_columns():
    spec = TrainSpec.from_dict({"task_id": "t", "base_model": "m", "instance_prompt": PROMPT,
                                "images": {"dataset": "alice/dogs", "caption_column": "text"}})  # fmt: skip
    assert spec.images == DatasetSource("alice/dogs", caption_column="text")
    assert spec.images.split == "train" and spec.images.image_column is None
    for bad, message in (({"dataset": "alice/dogs", "colour": "x"}, "unknown images key"),
                         ({"dataset": "alice/dogs", "split": 3}, "images.split must be a string"),
                         ({"dataset": "not an id"}, "not a Hub dataset id")):  # fmt: skip
        with pytest.raises(BadInputError, match=message):
            TrainSpec.from_dict({"task_id": "t", "base_model": "m", "instance_prompt": PROMPT, "images": bad})


def test_an_imagefolder_becomes_photos_and_captions_checked_like_an_upload(tmp_path):
    photos = imagefolder(tmp_path / "ds", {0: "a dog on a red sofa", 2: "sks dog in the snow"})
    out = export_dataset(DatasetSource(str(tmp_path / "ds"), caption_column="text"), tmp_path / "out", tmp_path / "c")
    assert sorted(p.name for p in out.iterdir()) == ["000.png", "000.txt", "001.jpg", "002.png", "002.txt"]
    assert (out / "001.jpg").read_bytes() == photos[1].read_bytes()  # the stored bytes, EXIF and all
    prepared = load_images(out, 32)
    assert [p.caption for p in prepared] == ["a dog on a red sofa", None, "sks dog in the snow"]
    assert prepared[1].original_size == (48, 36)  # EXIF-transposed like an uploaded photo

    no_caption = export_dataset(DatasetSource(str(tmp_path / "ds")), tmp_path / "plain", tmp_path / "c")
    assert not list(no_caption.glob("*.txt"))  # no caption column named: the instance prompt for every image
    imagefolder(tmp_path / "one", {}, n=1)
    again = export_dataset(DatasetSource(str(tmp_path / "one")), out, tmp_path / "c")  # a later attempt, same folder
    assert sorted(p.name for p in again.iterdir()) == ["000.png"]  # nothing of the earlier rows is left


def test_a_dataset_without_the_columns_or_with_bad_images_is_refused(tmp_path):
    imagefolder(tmp_path / "ds", {0: "a dog"})
    with pytest.raises(BadInputError, match="has no column 'caption'.*columns: image, text"):
        export_dataset(DatasetSource(str(tmp_path / "ds"), caption_column="caption"), tmp_path / "o1", tmp_path / "c")
    with pytest.raises(BadInputError, match="column 'text' holds .*not images"):
        export_dataset(DatasetSource(str(tmp_path / "ds"), image_column="text"), tmp_path / "o2", tmp_path / "c")
    small = tmp_path / "small"
    small.mkdir()
    Image.new("RGB", (8, 8), "red").save(small / "tiny.png")
    out = export_dataset(DatasetSource(str(small)), tmp_path / "o3", tmp_path / "c")
    with pytest.raises(BadInputError, match=r"000\.png: too small \(8x8 px"):  # the upload's size check
        load_images(out, 256)


def test_the_trainer_trains_on_a_local_imagefolder_with_its_captions(tiny_sd, tmp_path, recorded):  # noqa: F811
    imagefolder(tmp_path / "ds", {0: "a dog on a red sofa", 2: "sks dog in the snow"})
    source = {"dataset": str(tmp_path / "ds"), "caption_column": "text"}
    rc, events = run_task(tmp_path / "w", base_model=str(tiny_sd), images=source, params={**FAST, "steps": 2})
    assert rc == 0, events[-1]
    [run] = recorded
    assert run["sources"] == ["000.png", "001.jpg", "002.png"]
    assert run["conds"][1] is run["inst"] and run["conds"][0] is not run["inst"]  # captioned rows, own prompts
    card = (tmp_path / "w" / "output" / "README.md").read_text()
    assert "per-image captions | yes (2 of 3 images; the others: the instance prompt)" in card


def test_the_trainer_refuses_a_dataset_without_an_image_column_before_loading_a_model(tiny_sd, tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "train.jsonl").write_text('{"text": "a dog"}\n')
    rc, events = run_task(tmp_path / "w", base_model=str(tiny_sd), images={"dataset": str(folder)})
    assert rc == 2, events[-1]  # BAD_INPUT
    assert "has no image column (columns: text)" in json.dumps(events)
    assert "loading" not in [e.get("phase") for e in events]
