"""``SpaceHardware``: the Space's own hardware, read and changed through huggingface_hub.

Cost guards built in:
- ``request`` sends nothing when the flavor is already requested (no request loops across restarts) and passes a
  ``sleep_time`` backstop longer than the task deadline with every GPU request;
- transient failures (5xx, 429, network) are retried with backoff; after an ambiguous failure the runtime is re-read,
  so a request that did land is not sent again;
- 401/402/403, capacity and invalid-flavor answers become ``HardwareRefused`` with the fix spelled out;
- ``release`` requests the idle flavor, retried, and pauses the Space when that keeps failing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from huggingface_hub import HfApi, SpaceRuntime

from contract.flavors import FLAVORS, is_gpu
from scheduler.hardware.base import HardwareController, HardwareRefused, HardwareState, HardwareUnavailable
from scheduler.hardware.probe import cuda_visible
from scheduler.retry import RetryPolicy, call_with_retries, http_status, is_transient

log = logging.getLogger(__name__)

BILLING_URL = "https://huggingface.co/settings/billing"
TOKENS_URL = "https://huggingface.co/settings/tokens"
CAPACITY_WORDS = ("capacity", "scheduling failure", "unable to schedule")


def _name(value: Any) -> str | None:
    """A flavor or stage as a plain string (the client may give enums or strings)."""
    if value is None:
        return None
    return str(getattr(value, "value", value))


def _server_text(exc: BaseException) -> str:
    return str(getattr(exc, "server_message", "") or exc)


def refusal(exc: BaseException, flavor: str, space_id: str) -> HardwareRefused | None:
    """The ``HardwareRefused`` that a failed hardware call means, or None when it is not a refusal."""
    status = http_status(exc)
    text = _server_text(exc).lower()
    pretty = FLAVORS[flavor].label if flavor in FLAVORS else flavor
    if any(word in text for word in CAPACITY_WORDS):
        return HardwareRefused(
            f"The Hub has no {pretty} capacity available right now.",
            "Choose another GPU flavor for the task (or set TRAIN_HARDWARE), or retry the task later.",
            status,
        )
    if status == 401:
        return HardwareRefused(
            f"The Hub refused the token for hardware changes on {space_id} (HTTP 401).",
            f"Save a fine-grained or classic write token of the Space owner as the HF_TOKEN secret ({TOKENS_URL}); "
            "OAuth tokens (from 'hf auth login' or 'Sign in with Hugging Face') cannot change a Space's hardware.",
            status,
        )
    if status == 402 or "payment" in text or "billing" in text or "subscription" in text:
        return HardwareRefused(
            f"The Hub requires a payment method before it grants {pretty} (HTTP {status}).",
            f"Add a payment method (or a PRO subscription) at {BILLING_URL}, then press Retry on the task.",
            status,
        )
    if status == 403:
        return HardwareRefused(
            f"The token may not change the hardware of {space_id} (HTTP 403).",
            f"Use a write token of the Space owner, or a fine-grained token with write access to this Space ({TOKENS_URL}).",
            status,
        )
    if status == 404:
        return HardwareRefused(
            f"The Space {space_id} was not found with this token (HTTP 404).",
            "Check that SPACE_ID names this Space and that HF_TOKEN belongs to its owner.",
            status,
        )
    if status in (400, 422):
        return HardwareRefused(
            f"The Hub does not accept the flavor {flavor!r} for {space_id} (HTTP {status}).",
            "Choose another hardware flavor for the task.",
            status,
        )
    return None


class SpaceHardware(HardwareController):
    """Hardware of Space ``space_id`` as seen by this container (``accelerator`` is its ACCELERATOR value)."""

    def __init__(
        self,
        api: HfApi,
        space_id: str,
        accelerator: str = "none",
        *,
        idle_hardware: str = "cpu-basic",
        sleep_time_s: int | None = 3 * 3600 + 1800,
        retry: RetryPolicy | None = None,
        release_attempts: int = 3,
        gpu_probe: Callable[[], bool] = cuda_visible,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.api = api
        self.space_id = space_id
        self.accelerator = accelerator or "none"
        self.idle_hardware = idle_hardware
        self.sleep_time_s = sleep_time_s
        self.retry = retry or RetryPolicy()
        self.release_attempts = release_attempts
        self._gpu_probe = gpu_probe
        self._gpu_visible: bool | None = None
        self._sleep = sleep

    def __repr__(self) -> str:
        return f"SpaceHardware({self.space_id!r})"

    def gpu_visible(self) -> bool:
        """Whether CUDA answers in this container (probed once; never on a CPU container)."""
        if self._gpu_visible is None:
            self._gpu_visible = self.accelerator not in ("", "none") and bool(self._gpu_probe())
        return self._gpu_visible

    def runtime(self) -> SpaceRuntime:
        """The Space runtime, with retries on transient errors."""
        try:
            return call_with_retries(lambda: self.api.get_space_runtime(self.space_id), self.retry, sleep=self._sleep)
        except Exception as exc:
            raise HardwareUnavailable(
                f"Cannot read the runtime of {self.space_id}: {type(exc).__name__} (HTTP {http_status(exc)})."
            ) from exc

    def _state_of(self, runtime: SpaceRuntime) -> HardwareState:
        return HardwareState(
            current=_name(runtime.hardware),
            requested=_name(runtime.requested_hardware),
            stage=_name(runtime.stage) or "UNKNOWN",
            accelerator=self.accelerator,
            gpu_visible=self.gpu_visible(),
        )

    def state(self) -> HardwareState:
        return self._state_of(self.runtime())

    def _already_requested(self, flavor: str) -> HardwareState | None:
        """The state read now when ``flavor`` is already requested (nothing to send), else None."""
        state = self.state()
        requested, current = state.requested, state.current
        return state if requested == flavor or (requested is None and current == flavor) else None

    def request(self, flavor: str, sleep_time_s: int | None = None) -> HardwareState | None:
        if (state := self._already_requested(flavor)) is not None:
            log.info("%s already requested for %s; nothing sent", flavor, self.space_id)
            return state
        sleep_time = (sleep_time_s if sleep_time_s is not None else self.sleep_time_s) if is_gpu(flavor) else None
        for n in range(self.retry.attempts):
            try:
                answer = self.api.request_space_hardware(self.space_id, flavor, sleep_time=sleep_time)
                log.info("requested %s for %s (sleep_time=%s)", flavor, self.space_id, sleep_time)
                # The Hub answers with the runtime after the request: the header shows its stage at once.
                return self._state_of(answer) if isinstance(answer, SpaceRuntime) else None
            except Exception as exc:
                refused = refusal(exc, flavor, self.space_id)
                if refused is not None:
                    raise refused from None
                if not is_transient(exc) or n == self.retry.attempts - 1:
                    raise HardwareUnavailable(
                        f"Requesting {flavor} for {self.space_id} failed: {type(exc).__name__} (HTTP {http_status(exc)})."
                    ) from exc
                self._sleep(self.retry.delay(n))
                try:
                    if (state := self._already_requested(flavor)) is not None:  # the failed answer hid a landed request
                        return state
                except HardwareUnavailable:
                    pass
        return None

    def release(self) -> str:
        idle = self.idle_hardware
        if idle == "pause":
            return self._pause("IDLE_HARDWARE is 'pause'")
        try:
            runtime = self.runtime()
            current, requested = _name(runtime.hardware), _name(runtime.requested_hardware)
            if requested == idle or (requested is None and current == idle):
                return f"{idle} is already requested; nothing sent"
        except HardwareUnavailable as exc:
            log.warning("release: %s", exc)
        last_error = ""
        for n in range(self.release_attempts):
            try:
                self.api.request_space_hardware(self.space_id, idle)
                return f"requested {idle}"
            except Exception as exc:
                last_error = f"{type(exc).__name__} (HTTP {http_status(exc)})"
                log.warning("release attempt %d of %d failed: %s", n + 1, self.release_attempts, last_error)
                if not is_transient(exc):
                    break  # e.g. an OAuth token refused on /hardware: pausing may still work
                if n < self.release_attempts - 1:
                    self._sleep(self.retry.delay(n))
        return self._pause(f"requesting {idle} failed ({last_error})")

    def _pause(self, why: str) -> str:
        try:
            call_with_retries(lambda: self.api.pause_space(self.space_id), self.retry, sleep=self._sleep)
        except Exception as exc:
            raise HardwareUnavailable(
                f"Could not release {self.space_id}: {why}, and pausing failed too ({type(exc).__name__}, HTTP "
                f"{http_status(exc)}). Pause the Space by hand in its settings to stop the billing."
            ) from exc
        log.warning("paused %s: %s", self.space_id, why)
        return f"paused the Space: {why}"
