"""The hardware contract: what this app runs on and how it asks for other hardware."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass


@dataclass(frozen=True)
class HardwareState:
    """What the Hub and this container say about the hardware.

    ``current``/``requested`` come from the Space runtime (None while unknown, e.g. during the first build);
    ``accelerator`` is this container's own ``ACCELERATOR`` ("none" on CPU); ``gpu_visible`` says whether CUDA
    really answers inside this container (probed without importing torch here).
    """

    current: str | None
    requested: str | None
    stage: str
    accelerator: str
    gpu_visible: bool


class HardwareRefused(Exception):
    """The Hub refused a hardware request. ``fix`` tells the owner what to do; ``status`` is the HTTP status."""

    def __init__(self, message: str, fix: str, status: int | None = None) -> None:
        super().__init__(f"{message} Fix: {fix}")
        self.reason = message
        self.fix = fix
        self.status = status


class HardwareController(ABC):
    """Reads and changes the hardware this app runs on."""

    @abstractmethod
    def state(self) -> HardwareState:
        """Current state (one runtime request on a Space)."""

    @abstractmethod
    def request(self, flavor: str, sleep_time_s: int | None = None) -> HardwareState | None:
        """Ask for ``flavor``. No request is sent when it is already requested. Raises HardwareRefused. Returns the
        state the Hub answered with (or read, when nothing was sent); None when unknown."""

    @abstractmethod
    def release(self) -> str:
        """Go back to idle hardware (retried; pauses the Space as a last resort). Returns what was done."""


class HardwareUnavailable(Exception):
    """The Hub could not be reached (or kept failing) for a hardware call, after bounded retries."""
