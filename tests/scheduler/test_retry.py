"""The shared retry helper: bounded attempts, backoff within limits, only transient errors retried."""

from __future__ import annotations

import httpx2
import pytest
from huggingface_hub.errors import HfHubHTTPError

from scheduler.retry import RetryPolicy, call_with_retries, is_transient


def http_error(status: int, headers: dict | None = None) -> HfHubHTTPError:
    response = httpx2.Response(status, headers=headers or {}, request=httpx2.Request("POST", "http://hub/x"))
    return HfHubHTTPError(f"HTTP {status}", response=response)


def test_delays_grow_and_stay_capped():
    policy = RetryPolicy(attempts=8, base_s=0.1, max_s=1.0, jitter=0.5)
    delays = list(policy.delays())
    assert len(delays) == 7
    assert 0.05 <= delays[0] <= 0.15 and all(0.5 <= d <= 1.5 for d in delays[4:])


@pytest.mark.parametrize(("status", "transient"), [(500, True), (503, True), (429, True), (408, True), (412, False), (402, False), (404, False)])
def test_transient_statuses(status, transient):
    assert is_transient(http_error(status)) is transient


def test_network_errors_are_transient():
    assert is_transient(httpx2.ConnectTimeout("slow")) and not is_transient(ValueError("x"))


def test_retries_then_succeeds_and_honours_retry_after():
    slept, calls = [], []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise http_error(429, {"retry-after": "0.25"})
        return "ok"

    assert call_with_retries(flaky, RetryPolicy(attempts=5, base_s=9), sleep=slept.append) == "ok"
    assert slept == [0.25, 0.25]


def test_gives_up_after_attempts_and_never_retries_refusals():
    calls = []

    def failing():
        calls.append(1)
        raise http_error(502)

    with pytest.raises(HfHubHTTPError):
        call_with_retries(failing, RetryPolicy(attempts=3, base_s=0), sleep=lambda s: None)
    assert len(calls) == 3
    calls.clear()

    def refused():
        calls.append(1)
        raise http_error(403)

    with pytest.raises(HfHubHTTPError):
        call_with_retries(refused, RetryPolicy(attempts=3, base_s=0), sleep=lambda s: None)
    assert len(calls) == 1
