"""Is a CUDA GPU really usable in this container? Asked without importing torch in the control process."""

from __future__ import annotations

import functools
import shutil
import subprocess
import sys

TORCH_PROBE = "import torch, sys; sys.stdout.write(str(torch.cuda.is_available()))"


def nvidia_smi_lists_gpu(timeout_s: float = 15.0) -> bool:
    """True when ``nvidia-smi -L`` runs and lists at least one GPU."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return False
    try:
        done = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0 and "GPU" in done.stdout


def torch_sees_cuda(timeout_s: float = 120.0) -> bool:
    """True when a separate Python process finds ``torch.cuda.is_available()`` (the driver really answers)."""
    try:
        done = subprocess.run([sys.executable, "-c", TORCH_PROBE], capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0 and done.stdout.strip() == "True"


@functools.cache
def cuda_visible() -> bool:
    """Cached for the life of the process: ``nvidia-smi`` must list a GPU and torch (in a subprocess) must see it."""
    return nvidia_smi_lists_gpu() and torch_sees_cuda()
