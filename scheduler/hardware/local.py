"""``LocalHardware``: this machine. There is nothing to request or release."""

from __future__ import annotations

from collections.abc import Callable

from scheduler.hardware.base import HardwareController, HardwareState
from scheduler.hardware.probe import cuda_visible

LOCAL = "local"


class LocalHardware(HardwareController):
    """The hardware of a workstation run (local mode); requests and releases are no-ops."""

    def __init__(self, accelerator: str = "none", gpu_probe: Callable[[], bool] = cuda_visible) -> None:
        self.accelerator = accelerator or "none"
        self._gpu_probe = gpu_probe
        self._gpu_visible: bool | None = None

    def __repr__(self) -> str:
        return "LocalHardware()"

    def state(self) -> HardwareState:
        if self._gpu_visible is None:
            self._gpu_visible = bool(self._gpu_probe())
        return HardwareState(current=LOCAL, requested=None, stage="RUNNING", accelerator=self.accelerator, gpu_visible=self._gpu_visible)

    def request(self, flavor: str, sleep_time_s: int | None = None) -> None:
        """Nothing to do: local mode trains on this machine."""

    def release(self) -> str:
        return "local mode: nothing to release"
