"""Bounded retries with jittered exponential backoff, shared by the queue and hardware code.

huggingface_hub retries only some calls itself (not create_commit, not the Space endpoints), so the control plane
retries on its own: transient answers (408, 429, 5xx) and network errors are retried, every other error is raised
at once. The backoff base is configurable so tests stay fast.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import httpx2
from huggingface_hub.errors import HfHubHTTPError

T = TypeVar("T")

TRANSIENT_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    """``attempts`` tries in all; the n-th retry sleeps about ``base_s * 2**n`` (capped at ``max_s``), +/- jitter."""

    attempts: int = 5
    base_s: float = 0.5
    max_s: float = 8.0
    jitter: float = 0.5  # fraction of the delay drawn at random, so racing writers spread out

    def delay(self, retry_number: int) -> float:
        """Seconds to sleep before retry ``retry_number`` (0-based)."""
        raw = min(self.max_s, self.base_s * (2**retry_number))
        spread = raw * self.jitter
        return max(0.0, raw - spread + random.random() * 2 * spread)

    def delays(self) -> Iterator[float]:
        """The sleeps between the ``attempts`` tries (``attempts - 1`` values)."""
        for n in range(self.attempts - 1):
            yield self.delay(n)

    def scaled(self, attempts: int | None = None) -> RetryPolicy:
        """The same backoff with another number of attempts."""
        return RetryPolicy(attempts or self.attempts, self.base_s, self.max_s, self.jitter)


def http_status(exc: BaseException) -> int | None:
    """The HTTP status of a huggingface_hub error, or None for anything else."""
    if isinstance(exc, HfHubHTTPError) and exc.response is not None:
        return exc.response.status_code
    return None


def is_network_error(exc: BaseException) -> bool:
    """A request that got no HTTP answer (connection refused, reset, timeout)."""
    if isinstance(exc, HfHubHTTPError):
        return False
    return isinstance(exc, httpx2.TransportError | ConnectionError | TimeoutError)


def is_transient(exc: BaseException) -> bool:
    """True for errors worth retrying: 408/425/429/5xx answers and network errors."""
    status = http_status(exc)
    if status is not None:
        return status in TRANSIENT_STATUSES
    return is_network_error(exc)


def retry_after_s(exc: BaseException, cap_s: float) -> float | None:
    """The server's ``Retry-After`` in seconds (capped), when it sent one."""
    if not isinstance(exc, HfHubHTTPError) or exc.response is None:
        return None
    value = exc.response.headers.get("retry-after")
    try:
        return min(cap_s, max(0.0, float(value))) if value is not None else None
    except ValueError:
        return None


def call_with_retries(
    fn: Callable[[], T],
    policy: RetryPolicy,
    retry_if: Callable[[BaseException], bool] = is_transient,
    on_retry: Callable[[BaseException, int], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``fn`` until it succeeds, retrying errors that ``retry_if`` accepts, at most ``policy.attempts`` times.

    ``on_retry(error, retry_number)`` runs before each sleep (e.g. to log or to re-read state). The last error is
    raised unchanged when the attempts are used up.
    """
    for n in range(policy.attempts):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - filtered by retry_if just below
            if n == policy.attempts - 1 or not retry_if(exc):
                raise
            if on_retry is not None:
                on_retry(exc, n)
            server_delay = retry_after_s(exc, policy.max_s)
            sleep(server_delay if server_delay is not None else policy.delay(n))
    raise AssertionError("unreachable")  # pragma: no cover
