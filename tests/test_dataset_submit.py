"""A Hub dataset as a task's training images, on the emulator: checked before anything is queued
(``scheduler.dataset_check``), submitted with ``python -m scheduler submit --dataset``, and trained on by the worker
with the trainer reading it through the real ``datasets`` library. Nothing is mocked: the datasets are committed to
the emulator (an imagefolder with ``metadata.jsonl``, and parquet written by ``datasets`` itself).
"""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path

import pytest
from huggingface_hub import HfApi
from PIL import Image

from contract.hub_dataset import DatasetSource
from contract.settings import load_settings
from scheduler.cli import EXIT_OK, EXIT_USAGE, main
from scheduler.dataset_check import DatasetRefused, check_dataset
from scheduler.hardware import make_hardware
from scheduler.queue import LocalQueue, make_queue
from scheduler.stored import stored_task_problem
from scheduler.task import Task, TaskStatus
from scheduler.worker import Worker
from tests.conftest import ALICE_TOKEN, BOB_TOKEN
from tests.tiny_models import make_images
from training.demo import DEMO_MODEL

PROMPT = "a photo of sks dog"


def imagefolder_repo(hub, tmp_path: Path, captions: dict[int, str], n: int = 3, private: bool = True,
                     size: int = 96) -> str:  # fmt: skip
    """A private imagefolder dataset of alice's: ``n`` photos and a ``metadata.jsonl`` with a ``text`` column."""
    repo = f"alice/photos-{uuid.uuid4().hex[:6]}"
    photos = make_images(tmp_path / repo.split("/")[1], n, size=size)
    rows = "".join(json.dumps({"file_name": p.name, "text": captions.get(i)}) + "\n" for i, p in enumerate(photos))
    files: dict[str, Path | bytes] = {f"train/{p.name}": p.read_bytes() for p in photos}
    hub.commit_files(repo, {**files, "train/metadata.jsonl": rows.encode()}, author="alice", repo_type="dataset",
                     private=private)  # fmt: skip
    return repo


def parquet_repo(hub, columns: dict[str, list], card: bytes | None = None) -> str:
    """A private parquet dataset of alice's, written by ``datasets`` (its Image features in the file's metadata),
    with ``card`` as its README.md."""
    import datasets

    repo = f"alice/table-{uuid.uuid4().hex[:6]}"
    table = datasets.Dataset.from_dict(columns)
    if "photo" in columns:
        table = table.cast_column("photo", datasets.Image())
    buf = io.BytesIO()
    table.to_parquet(buf)
    files = {"data/train-00000-of-00001.parquet": buf.getvalue(), **({"README.md": card} if card else {})}
    hub.commit_files(repo, files, author="alice", repo_type="dataset", private=True)
    return repo


#: the card ``Dataset.push_to_hub`` writes (its ``dataset_info``: features and row counts), for 3 rows
CARD = b"""---
dataset_info:
  features:
  - name: caption
    dtype: string
  - name: photo
    dtype: image
  splits:
  - name: train
    num_examples: 3
configs:
- config_name: default
  data_files:
  - split: train
    path: data/train-*
---
"""


def pixels(n: int) -> list[Image.Image]:
    return [Image.new("RGB", (64, 64), (i % 256, 80, 160)) for i in range(n)]


def downloads(hub, repo: str) -> list[str]:
    """The files of ``repo`` whose bytes were asked for (GET), with the answer's status."""
    return [f"{r.path.rsplit('/', 1)[-1]} {r.status}" for r in hub.requests("GET", rf"^/datasets/{repo}/resolve/")]


def test_an_imagefolder_on_the_hub_is_checked_from_its_listing_metadata_and_image_headers(hub, tmp_path):
    repo = imagefolder_repo(hub, tmp_path, {0: "a dog on a sofa"})
    hub.clear_requests()
    found = check_dataset(DatasetSource(repo, caption_column="text"), ALICE_TOKEN, local_folders=False)
    assert (found.images, found.image_column, found.captions) == (3, "image", True)
    assert found.source.revision == HfApi(token=ALICE_TOKEN).dataset_info(repo).sha  # the trainer reads this commit
    got = sorted(downloads(hub, repo))
    assert [line.split()[0] for line in got] == ["img00.png", "img01.jpg", "img02.png", "metadata.jsonl"], got
    assert all(line.endswith(" 206") for line in got)  # ranged reads: each image's header (its size)

    small = imagefolder_repo(hub, tmp_path, {}, size=64)  # the EXIF-rotated JPEG is stored 64x48
    with pytest.raises(DatasetRefused, match=r"has 1 unusable image\(s\): train/img01\.jpg is 64x48; each side needs "
                                             r"at least 64 px"):  # fmt: skip
        check_dataset(DatasetSource(small), ALICE_TOKEN, local_folders=False)


def test_a_parquet_dataset_is_checked_from_its_footer(hub):
    repo = parquet_repo(hub, {"caption": ["a", "b", "c"], "photo": pixels(3)})
    hub.clear_requests()
    found = check_dataset(DatasetSource(repo), ALICE_TOKEN, local_folders=False)
    assert (found.images, found.image_column, found.captions) == (3, "photo", False)  # the first Image column
    got = downloads(hub, repo)
    assert got and all(line.endswith(" 206") for line in got), got  # ranged reads of the footer only


def test_a_datasets_card_tells_its_columns_and_rows_without_reading_its_data(hub):
    repo = parquet_repo(hub, {"caption": ["a", "b", "c"], "photo": pixels(3)}, card=CARD)
    hub.clear_requests()
    found = check_dataset(DatasetSource(repo, caption_column="caption"), ALICE_TOKEN, local_folders=False)
    assert (found.images, found.image_column, found.captions) == (3, "photo", True)
    assert not [line for line in downloads(hub, repo) if ".parquet" in line]  # the card alone


@pytest.fixture
def cli_local(tmp_path, monkeypatch):
    """``python -m scheduler --local DATA/queue submit`` arguments (the demo model, 2 steps) and the queue."""
    qdir = tmp_path / "data" / "queue"

    def submit(*extra: str, token: str = ALICE_TOKEN) -> int:
        monkeypatch.setenv("HF_TOKEN", token)
        return main(["--local", str(qdir), "submit", "--prompt", PROMPT, "--base-model", DEMO_MODEL, "--steps", "2",
                     "--no-score", *extra])  # fmt: skip

    return submit, qdir


def test_each_refusal_says_why_and_queues_nothing(hub, tmp_path, cli_local, capsys):
    submit, qdir = cli_local
    private = imagefolder_repo(hub, tmp_path, {})
    texts = parquet_repo(hub, {"caption": ["a", "b"], "n": [1, 2]})
    many = parquet_repo(hub, {"caption": ["x"] * 201, "photo": pixels(201)})
    cases = [
        (["--dataset", "alice/no-such-dataset"], ALICE_TOKEN, "alice/no-such-dataset was not found on the Hub, or it "
         "is private and this token cannot read it"),
        (["--dataset", private], BOB_TOKEN, f"{private} was not found on the Hub, or it is private and this token"),
        (["--dataset", texts], ALICE_TOKEN, "has no image column (columns: caption, n)"),
        (["--dataset", many], ALICE_TOKEN, "has 201 images; at most 200 train a task"),
        (["--dataset", private, "--caption-column", "caption"], ALICE_TOKEN, "has no column 'caption' (columns: "
         "image, text)"),
        (["--dataset", private, "--dataset-split", "test"], ALICE_TOKEN, "has no split 'test' (splits: train)"),
        (["--dataset", private, "--image-column", "text"], ALICE_TOKEN, "column 'text' holds"),
    ]  # fmt: skip
    for args, token, message in cases:
        assert submit(*args, token=token) == EXIT_USAGE, args
        err = capsys.readouterr().err
        assert "The task was not enqueued" in err and message in err, (args, err)
    assert not qdir.exists() or LocalQueue(qdir).list() == []
    with pytest.raises(SystemExit) as usage:  # one source or the other (argparse's usage error)
        submit("--dataset", private, "--images", str(tmp_path))
    assert usage.value.code == EXIT_USAGE
    assert "not allowed with argument" in capsys.readouterr().err


def test_a_private_hub_dataset_submitted_with_the_cli_trains_in_the_worker(hub, tmp_path, cli_local, capsys):
    submit, qdir = cli_local
    repo = imagefolder_repo(hub, tmp_path, {0: "a dog on a red sofa", 2: "sks dog in the snow"})
    assert submit("--dataset", repo, "--caption-column", "text", "--id", "ds01") == EXIT_OK, capsys.readouterr().err
    assert f"(3 images from dataset {repo} (split train)" in capsys.readouterr().out
    [task] = LocalQueue(qdir).list()
    sha = HfApi(token=ALICE_TOKEN).dataset_info(repo).sha
    assert task.dataset == DatasetSource(repo, caption_column="text", revision=sha)
    assert list((qdir / "images" / "ds01").iterdir()) == []  # nothing of the dataset is in the queue

    settings = load_settings({"DATA_DIR": str(tmp_path / "data"), "POLL_INTERVAL_S": "0.2"})
    worker = Worker(settings, make_queue(settings), make_hardware(settings))
    try:
        action, _ = worker.step()
    finally:
        worker.stop()
    assert action.kind.value == "claim_and_train"
    done = LocalQueue(qdir).get("ds01")
    assert done.status is TaskStatus.DONE, done.last_error
    spec = json.loads((tmp_path / "data" / "runs" / "ds01" / "task.json").read_text())
    assert spec["images"] == task.dataset.to_dict()  # the trainer got the dataset's name, not a copy
    card = (Path(done.result_url) / "README.md").read_text()
    assert "per-image captions | yes (2 of 3 images; the others: the instance prompt)" in card  # its captions
    log = next((tmp_path / "data" / "runs" / "ds01").glob("train-*.log")).read_text()
    assert f"dataset {repo} (split train): 3 images written to" in log
    assert not (tmp_path / "data" / "runs" / "ds01" / "work" / "inputs").exists()  # removed as the photo copy is


def test_a_hub_queue_holds_only_the_datasets_name_and_refuses_a_local_folder(hub, tmp_path, monkeypatch, capsys):
    repo = imagefolder_repo(hub, tmp_path, {})
    queue_repo = f"alice/queue-{uuid.uuid4().hex[:6]}"
    monkeypatch.setenv("HF_TOKEN", ALICE_TOKEN)
    base = ["--queue", queue_repo, "submit", "--prompt", PROMPT, "--base-model", "alice/some-model", "--id", "hq01"]
    assert main([*base, "--dataset", str(tmp_path)]) == EXIT_USAGE  # the Space cannot read this machine's folders
    assert "is not a Hub dataset id" in capsys.readouterr().err
    assert main([*base, "--dataset", repo]) == EXIT_OK, capsys.readouterr().err
    files = HfApi(token=ALICE_TOKEN).list_repo_files(queue_repo, repo_type="dataset")
    assert not [f for f in files if f.startswith("images/")], files  # no photo, no copy of the private dataset
    settings = load_settings({"SPACE_ID": "alice/space", "HF_TOKEN": ALICE_TOKEN, "QUEUE_REPO": queue_repo,
                              "HF_ENDPOINT": hub.url})
    [task] = make_queue(settings).list()
    assert task.dataset is not None and task.dataset.dataset == repo
    forged = Task(instance_prompt=PROMPT, submitted_by="alice", base_model="alice/m", images=task.images,
                  dataset=DatasetSource("/etc"), id="hq01")  # fmt: skip
    assert stored_task_problem(task, settings, queue_repo=queue_repo, queue_dir=None) is None
    assert "dataset: '/etc' is not a Hub dataset id" in stored_task_problem(forged, settings, queue_repo=queue_repo,
                                                                            queue_dir=None)  # fmt: skip


def test_a_local_folder_dataset_is_checked_in_local_mode(tmp_path):
    folder = tmp_path / "ds"
    make_images(folder, 2, size=96)
    found = check_dataset(DatasetSource(str(folder)), None, local_folders=True)
    assert (found.images, found.image_column, found.source.dataset) == (2, "image", str(folder.resolve()))
    with pytest.raises(DatasetRefused, match="is not a folder"):
        check_dataset(DatasetSource(str(tmp_path / "missing")), None, local_folders=True)


# ---------------------------------------------------------------- the form's "Or a Hub dataset" field
def test_the_form_queues_a_hub_dataset_and_refuses_a_bad_one_before_queueing(hub, tmp_path):
    from tests.test_form import local_ctx, photos, values
    from ui.submission import submit

    ctx = local_ctx(tmp_path, HF_TOKEN=ALICE_TOKEN, HF_ENDPOINT=hub.url)
    repo = imagefolder_repo(hub, tmp_path, {0: "a dog on a sofa"})
    for files, name, message in (
        (photos(tmp_path), repo, "Give photos or a Hub dataset, not both"),
        ([], "alice/no-such-dataset", "alice/no-such-dataset was not found on the Hub"),
        ([], "not a dataset id!", "is not a Hub dataset id"),
        ([], "", "Images: at least 1 needed, got 0"),  # neither: the upload's own refusal
    ):  # fmt: skip
        answer = submit(ctx, "local", files, values(dataset=name))
        assert not answer.queued and message in answer.message, (name, answer.message)
    assert ctx.queue.list() == []

    answer = submit(ctx, "local", [], values(dataset=f" {repo} "))
    assert answer.queued, answer.message
    assert f"with the 3 images of dataset `{repo} (split train)`" in answer.message
    sha = HfApi(token=ALICE_TOKEN).dataset_info(repo).sha
    assert answer.task.dataset == DatasetSource(repo, revision=sha)
    assert answer.task.images is not None and answer.task.images.count == 0  # nothing of it is in the queue
    again = submit(ctx, "local", [], values(dataset=repo))
    assert again.confirm and not again.queued  # the same dataset and settings: asked before queueing it twice


def test_someone_other_than_the_owner_may_name_only_a_public_dataset(hub, tmp_path):
    from tests.test_form import local_ctx
    from ui.submission import dataset_answer

    ctx = local_ctx(tmp_path, HF_TOKEN=ALICE_TOKEN, HF_ENDPOINT=hub.url)
    private = imagefolder_repo(hub, tmp_path, {})
    public = imagefolder_repo(hub, tmp_path, {}, private=False)
    assert dataset_answer(ctx, private, owner=True).images == 3  # the owner: with the Space's token
    refused = dataset_answer(ctx, private, owner=False)
    assert isinstance(refused, str) and "Only the Space's owner may train on a private dataset" in refused
    assert dataset_answer(ctx, public, owner=False).images == 3
    assert "is not a Hub dataset id" in dataset_answer(ctx, str(tmp_path), owner=False)  # no folder of this machine
