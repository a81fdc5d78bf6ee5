"""Resumable training state: trainable weights, optimizer, LR scheduler and grad-scaler state, and the step.

Layout: ``DIR/checkpoints/step-00000100/{trainable.safetensors, optimizer.pt, state.json}``. Folders are written
under a temporary name and renamed, so a crash mid-save never leaves a half checkpoint that looks complete.
Per-sample randomness is derived from (seed, sample index) by the trainer, so no RNG state needs saving for an
exact resume. Optionally mirrored to a Hub folder (``TrainSpec.checkpoint``).
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from training.spec import HubFolder

_STEP_DIR = re.compile(r"^step-(\d+)$")


@dataclass
class Checkpoint:
    path: Path
    step: int

    def load(self, map_location: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, Any], dict]:
        """(trainable weights, optimizer/scheduler/scaler states, state.json contents)."""
        weights = load_file(str(self.path / "trainable.safetensors"), device=str(map_location))
        states = torch.load(self.path / "optimizer.pt", map_location=map_location, weights_only=False)
        meta = json.loads((self.path / "state.json").read_text())
        return weights, states, meta


def save_checkpoint(
    root: Path, step: int, weights: dict[str, torch.Tensor], states: dict[str, Any], meta: dict[str, Any], keep: int = 2
) -> Path:
    """Write checkpoint ``step`` under ``root`` atomically and keep only the ``keep`` newest."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()}, str(tmp / "trainable.safetensors"))
    torch.save(states, tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps({**meta, "step": step}, indent=1))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in list_checkpoints(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old.path, ignore_errors=True)
    return final


def list_checkpoints(root: Path) -> list[Checkpoint]:
    """Complete checkpoints under ``root``, oldest first (sorted numerically)."""
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and (p / "state.json").exists():
            found.append(Checkpoint(p, int(m.group(1))))
    return sorted(found, key=lambda c: c.step)


def latest_checkpoint(root: Path) -> Checkpoint | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def upload_checkpoint(ckpt: Checkpoint, where: HubFolder) -> None:
    """Mirror a checkpoint folder to ``where`` on the Hub in one commit that also drops older mirrored ones."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

    api = HfApi()
    prefix = where.path.strip("/")
    dest = f"{prefix}/{ckpt.path.name}" if prefix else ckpt.path.name
    adds = [
        CommitOperationAdd(path_in_repo=f"{dest}/{f.name}", path_or_fileobj=str(f))
        for f in sorted(ckpt.path.iterdir())
        if f.is_file()
    ]
    try:
        files = api.list_repo_files(where.repo_id, repo_type=where.repo_type)
    except Exception:  # noqa: BLE001 - a new repo or folder: nothing to drop
        files = []
    base = f"{prefix}/" if prefix else ""
    old = {
        f[len(base) :].split("/")[0]
        for f in files
        if f.startswith(base + "step-") and not f.startswith(dest + "/") and "/" in f[len(base) :]
    }
    deletes = [CommitOperationDelete(path_in_repo=f"{base}{d}/", is_folder=True) for d in sorted(old)]
    api.create_commit(
        where.repo_id, [*adds, *deletes], repo_type=where.repo_type, commit_message=f"checkpoint step {ckpt.step}"
    )


def download_latest_checkpoint(where: HubFolder, root: Path) -> Checkpoint | None:
    """Fetch the newest checkpoint stored under ``where`` into ``root``; ``None`` if there is none."""
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError

    prefix = where.path.strip("/")
    try:
        files = HfApi().list_repo_files(where.repo_id, repo_type=where.repo_type)
    except (RepositoryNotFoundError, EntryNotFoundError):
        return None
    steps = sorted(
        {
            int(m.group(1))
            for f in files
            if f.startswith(prefix + "/") and f.endswith("/state.json")
            for m in [_STEP_DIR.match(f[len(prefix) + 1 :].split("/")[0])]
            if m
        }
    )
    if not steps:
        return None
    name = f"step-{steps[-1]:08d}"
    tmp = root / ".hub-download"
    snapshot_download(
        where.repo_id, repo_type=where.repo_type, allow_patterns=[f"{prefix}/{name}/*"], local_dir=str(tmp)
    )
    root.mkdir(parents=True, exist_ok=True)
    dest = root / name
    shutil.rmtree(dest, ignore_errors=True)
    shutil.move(str(tmp / prefix / name), str(dest))
    shutil.rmtree(tmp, ignore_errors=True)
    return Checkpoint(dest, steps[-1])
