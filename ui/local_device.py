"""What "this machine" is in local mode: a CPU, or a GPU (with its name when ``nvidia-smi`` tells it).

The form uses it to pick the default base model (the built-in demo on a CPU) and to word the estimate and the
submit answer ("Training runs on this machine (CPU)"). Read from the worker's hardware state; never imports torch.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LocalDevice:
    """The device local training runs on: ``gpu`` and a name for people ("CPU", "NVIDIA H200", "a GPU")."""

    gpu: bool
    name: str


CPU = LocalDevice(gpu=False, name="CPU")


@functools.cache
def gpu_name(timeout_s: float = 10.0) -> str | None:
    """The first GPU's name from ``nvidia-smi`` (cached), or None when it cannot tell."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        done = subprocess.run([exe, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True,
                              timeout=timeout_s, check=False)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    names = [line.strip() for line in done.stdout.splitlines() if line.strip()] if done.returncode == 0 else []
    return names[0] if names else None


def local_device(worker: Any) -> LocalDevice:
    """This machine's device, from ``worker``'s last hardware state (read once from its controller when the worker
    has not looped yet). Anything unreadable counts as the CPU."""
    state = worker.status.snapshot().hardware
    if state is None:
        try:
            state = worker.hardware.state()
        except Exception:  # noqa: BLE001 - a label must never stop the page from building
            return CPU
    if not state.gpu_visible:
        return CPU
    return LocalDevice(gpu=True, name=gpu_name() or "a GPU")
