"""Resumable training state: trainable weights, optimizer, LR scheduler and grad-scaler state, and the step.

Layout: ``DIR/checkpoints/step-00000100/{trainable.safetensors, optimizer.safetensors, optimizer.json, state.json}``.
Nothing is pickled: tensors are safetensors, the rest JSON (``training.statefile``), because checkpoints come back
from the Hub queue repo, which others may be able to write. ``state.json`` (step, fingerprint) is read first, and the
tensor files only once the caller has accepted it. Folders are written under a temporary name and renamed, so a
crash mid-save never leaves a half checkpoint that looks complete. Per-sample randomness is derived from
(seed, sample index) by the trainer, so no RNG state needs saving for an exact resume. Optionally mirrored to a
Hub folder (``TrainSpec.checkpoint``); a downloaded checkpoint holding any other file is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from contract import events
from training.spec import HubFolder
from training.statefile import StateFormatError, load_state, load_tensors, save_state

log = logging.getLogger(__name__)

FORMAT = 2  # 1: optimizer.pt (pickle), never read any more
WEIGHTS_FILE, META_FILE = "trainable.safetensors", "state.json"
STATES_FILE, STATES_JSON = "optimizer.safetensors", "optimizer.json"  # optimizer, LR scheduler, grad scaler
CHECKPOINT_FILES = frozenset({WEIGHTS_FILE, STATES_FILE, STATES_JSON, META_FILE})
_STEP_DIR = re.compile(r"^step-(\d+)$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (old format, missing, corrupt or tampered files); the run starts over."""


@dataclass
class Checkpoint:
    path: Path
    step: int

    def meta(self) -> dict[str, Any]:
        """``state.json`` (format, step, fingerprint), once the folder is seen to hold exactly the expected files.

        Reads no tensor file. An old checkpoint (a pickled ``optimizer.pt``) is a ``CheckpointError``: never loaded.
        """
        names = {p.name for p in self.path.iterdir()} if self.path.is_dir() else set()
        if names != CHECKPOINT_FILES:
            odd = ", ".join(sorted(names ^ CHECKPOINT_FILES))
            raise CheckpointError(f"it does not hold exactly the files of a checkpoint (unexpected or missing: {odd})")
        try:
            meta = json.loads((self.path / META_FILE).read_text())
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
            raise CheckpointError(f"{META_FILE} is unreadable: {e}") from e
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise CheckpointError(f"{META_FILE} is not the state of a checkpoint of format {FORMAT}")
        return meta

    def load_weights(self) -> dict[str, torch.Tensor]:
        """The trainable weights (on the CPU)."""
        try:
            return load_tensors(self.path / WEIGHTS_FILE)
        except StateFormatError as e:
            raise CheckpointError(str(e)) from e

    def load_states(self) -> dict[str, Any]:
        """The optimizer / LR-scheduler / grad-scaler states as their ``state_dict()`` gave them (tensors on CPU)."""
        try:
            states = load_state(self.path / STATES_FILE, self.path / STATES_JSON)
        except StateFormatError as e:
            raise CheckpointError(str(e)) from e
        if not isinstance(states, dict) or not isinstance(states.get("optimizer"), dict):
            raise CheckpointError(f"{STATES_JSON} holds no optimizer state")
        return states


def save_checkpoint(
    root: Path, step: int, weights: dict[str, torch.Tensor], states: dict[str, Any], meta: dict[str, Any], keep: int = 2
) -> Path:
    """Write checkpoint ``step`` under ``root`` atomically and keep only the ``keep`` newest."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()}, str(tmp / WEIGHTS_FILE))
    save_state(states, tmp / STATES_FILE, tmp / STATES_JSON)
    (tmp / META_FILE).write_text(json.dumps({**meta, "format": FORMAT, "step": step}, indent=1))
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
        if m and (p / META_FILE).exists():
            found.append(Checkpoint(p, int(m.group(1))))
    return sorted(found, key=lambda c: c.step)


def latest_checkpoint(root: Path) -> Checkpoint | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def restore(ckpt: Checkpoint, named: list[tuple[str, torch.Tensor]], optimizer, lr_sched, scaler=None) -> None:
    """Load ``ckpt`` into the live parameters, optimizer, scheduler and scaler (call after accepting ``meta()``).

    Everything is read and checked first; a ``CheckpointError`` leaves the live objects as they were.
    """
    weights, states = ckpt.load_weights(), ckpt.load_states()
    want = {n: tuple(t.shape) for n, t in named}
    if {n: tuple(t.shape) for n, t in weights.items()} != want:
        raise CheckpointError(f"{WEIGHTS_FILE} does not hold the trainable parameters of this run")
    _check_like(states.get("lr_scheduler"), lr_sched.state_dict(), "lr_scheduler")
    if scaler is not None and "scaler" in states:
        _check_like(states["scaler"], scaler.state_dict(), "scaler")
    before = optimizer.state_dict(), lr_sched.state_dict()
    try:
        optimizer.load_state_dict(states["optimizer"])
        lr_sched.load_state_dict(states["lr_scheduler"])
        if scaler is not None and "scaler" in states:
            scaler.load_state_dict(states["scaler"])
    except (ValueError, TypeError, KeyError, IndexError, RuntimeError) as e:
        optimizer.load_state_dict(before[0])
        lr_sched.load_state_dict(before[1])
        raise CheckpointError(f"the optimizer state does not fit this run: {e}") from e
    with torch.no_grad():
        for name, t in named:
            t.copy_(weights[name].to(t.device, t.dtype))


def _check_like(saved: Any, live: dict[str, Any], what: str) -> None:
    """``saved`` must have the keys of the live state dict, each value of the same type (no tensors here)."""
    if not isinstance(saved, dict) or set(saved) != set(live):
        raise CheckpointError(f"the {what} state does not match this run's {what}")
    for k, v in live.items():
        if type(saved[k]) is not type(v) and not (isinstance(v, float) and type(saved[k]) is int):
            raise CheckpointError(f"the {what} state has a {type(saved[k]).__name__} for {k!r}")


def upload_checkpoint(ckpt: Checkpoint, where: HubFolder) -> None:
    """Mirror a checkpoint folder to ``where`` on the Hub in one commit that also drops older mirrored ones."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

    api = HfApi()
    prefix = where.path.strip("/")
    dest = f"{prefix}/{ckpt.path.name}" if prefix else ckpt.path.name
    adds = [
        CommitOperationAdd(path_in_repo=f"{dest}/{f.name}", path_or_fileobj=str(f))
        for f in sorted(ckpt.path.iterdir())
        if f.is_file() and f.name in CHECKPOINT_FILES
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
    """Fetch the newest checkpoint stored under ``where`` into ``root``; ``None`` if there is none or it is refused.

    Only the four files this module writes are fetched, from one pinned revision; a checkpoint folder holding
    anything else (a pickle, a sub-folder) or lacking one of them is refused with a warning.
    """
    from huggingface_hub import HfApi, RepoFile, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError

    api = HfApi()
    prefix = where.path.strip("/")
    base = f"{prefix}/" if prefix else ""
    try:
        sha = api.repo_info(where.repo_id, repo_type=where.repo_type).sha  # every read below at this one revision
        tree = api.list_repo_tree(
            where.repo_id, prefix or None, recursive=True, repo_type=where.repo_type, revision=sha
        )
        files = [e.path for e in tree if isinstance(e, RepoFile)]
    except (RepositoryNotFoundError, EntryNotFoundError):
        return None
    folders: dict[int, set[str]] = {}
    for f in files:
        head, _, rest = f[len(base) :].partition("/") if f.startswith(base) else ("", "", "")
        m = _STEP_DIR.match(head)
        if m and rest:
            folders.setdefault(int(m.group(1)), set()).add(rest)
    steps = sorted(s for s, names in folders.items() if META_FILE in names)
    if not steps:
        return None
    step, name = steps[-1], f"step-{steps[-1]:08d}"
    if folders[step] != CHECKPOINT_FILES:
        odd = sorted(folders[step] ^ CHECKPOINT_FILES)
        log.warning("refusing checkpoint %s%s from %s: unexpected or missing files %s", base, name, where.repo_id, odd)
        return None
    tmp = root / ".hub-download"
    shutil.rmtree(tmp, ignore_errors=True)
    for f in sorted(CHECKPOINT_FILES):
        hf_hub_download(where.repo_id, f"{base}{name}/{f}", repo_type=where.repo_type, revision=sha, local_dir=tmp)
    root.mkdir(parents=True, exist_ok=True)
    dest = root / name
    shutil.rmtree(dest, ignore_errors=True)
    shutil.move(str(tmp / base / name), str(dest))
    shutil.rmtree(tmp, ignore_errors=True)
    return Checkpoint(dest, step)


# ============================================================================================== a run's checkpoints
def settings_fingerprint(recipe, spec, resolution: int, caption_digest: str | None) -> str:
    """What a checkpoint must share with the run that resumes it: the recipe's checkpoint family, base model,
    instance prompt, rank, alpha, seed, batch size, text encoder, prior preservation, resolution and the images'
    captions (``steps`` may change: a run can be extended)."""
    p = spec.params
    parts = (recipe.checkpoint_family, spec.base_model, spec.instance_prompt, p.rank, p.alpha, p.seed, p.batch_size,
             p.train_text_encoder, p.prior_preservation, resolution)  # fmt: skip
    if caption_digest:  # unchanged fingerprint without captions
        parts += (caption_digest,)
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


def save_run_checkpoint(ctx, step: int, named, optimizer, lr_sched, scaler, acc, *, recipe, fingerprint: str,
                        mirror: bool = True) -> None:  # fmt: skip
    """Save the trainable weights and optimizer / LR-scheduler / grad-scaler states at ``step`` (main process; the
    others wait), keeping the task's ``checkpoints_to_keep``; mirror it to the task's Hub folder when ``mirror`` and
    the recipe allows (a failed mirror only warns)."""
    acc.wait_for_everyone()
    if acc.is_main_process:
        weights = {n: t.detach() for n, t in named}
        states = {"optimizer": optimizer.state_dict(), "lr_scheduler": lr_sched.state_dict()}
        if scaler is not None:
            states["scaler"] = scaler.state_dict()
        path = save_checkpoint(
            ctx.checkpoint_dir, step, weights, states, {"fingerprint": fingerprint},
            keep=min(ctx.spec.params.checkpoints_to_keep, recipe.max_checkpoints_kept or 10**9),
        )  # fmt: skip
        ctx.progress.emit(events.Checkpoint(step=step, path=str(path.resolve())))
        if ctx.spec.checkpoint is not None and mirror and recipe.hub_checkpoints:
            try:
                upload_checkpoint(Checkpoint(path, step), ctx.spec.checkpoint)
            except Exception as e:  # noqa: BLE001 - a failed mirror must not stop training
                log.warning("could not mirror checkpoint %s to the Hub: %s", step, e)
    acc.wait_for_everyone()


def resume_run(ctx, named, optimizer, lr_sched, scaler, acc, *, fingerprint: str, steps: int) -> int:
    """Restore the latest checkpoint of these settings (local, else the task's Hub folder) into ``named`` and the
    states; return the step to start from (0: none usable; a checkpoint of other settings or a damaged one is
    ignored with a warning)."""
    found = latest_checkpoint(ctx.checkpoint_dir)
    if found is None and ctx.spec.checkpoint is not None:
        with acc.main_process_first():
            found = latest_checkpoint(ctx.checkpoint_dir) or download_latest_checkpoint(
                ctx.spec.checkpoint, ctx.checkpoint_dir
            )
    if found is None:
        return 0
    try:  # state.json first: a checkpoint of other settings is ignored before any tensor file is read
        if found.meta().get("fingerprint") != fingerprint:
            log.warning("ignoring checkpoint %s: it belongs to different settings", found.path)
            return 0
        restore(found, named, optimizer, lr_sched, scaler)
    except CheckpointError as e:
        log.warning("ignoring checkpoint %s: %s", found.path, e)
        return 0
    ctx.progress.emit(events.Resumed(step=found.step))
    return min(found.step, steps)
