"""Hardware control: ``SpaceHardware`` (the Space's own hardware via the Hub) and ``LocalHardware``."""

from __future__ import annotations

from huggingface_hub import HfApi

from contract.settings import Settings
from scheduler.hardware.base import HardwareController, HardwareRefused, HardwareState, HardwareUnavailable
from scheduler.hardware.local import LocalHardware
from scheduler.hardware.space import SpaceHardware
from scheduler.retry import RetryPolicy

__all__ = [
    "HardwareController",
    "HardwareRefused",
    "HardwareState",
    "HardwareUnavailable",
    "LocalHardware",
    "SpaceHardware",
    "make_hardware",
]


def make_hardware(settings: Settings, api: HfApi | None = None) -> HardwareController:
    """``LocalHardware`` in local mode, else ``SpaceHardware`` for ``settings.space_id``."""
    if settings.local or not settings.space_id:
        return LocalHardware(settings.accelerator)
    return SpaceHardware(
        api or HfApi(endpoint=settings.hf_endpoint, token=settings.hf_token),
        settings.space_id,
        settings.accelerator,
        idle_hardware=settings.idle_hardware,
        sleep_time_s=settings.sleep_time_s,
        retry=RetryPolicy(base_s=settings.retry_base_s, max_s=max(settings.retry_base_s * 8, 0.01)),
    )
