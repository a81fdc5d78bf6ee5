"""SpaceHardware, LocalHardware and the set-up diagnostics, with the real huggingface_hub client against the
emulator's Space runtime."""

from __future__ import annotations

import json
import uuid

import pytest
from huggingface_hub import HfApi

from contract.settings import load_settings
from scheduler.diagnostics import check_space_ownership, diagnose_token
from scheduler.hardware import HardwareRefused, LocalHardware, SpaceHardware, make_hardware
from scheduler.retry import RetryPolicy
from tests.conftest import ALICE_TOKEN, BOB_TOKEN

pytestmark = pytest.mark.timeout(120)

FAST = RetryPolicy(attempts=4, base_s=0.01, max_s=0.05)
HW_PATH = r"^/api/spaces/[^/]+/[^/]+/hardware$"


def new_space(hub, owner="alice", token=ALICE_TOKEN, hardware="cpu-basic") -> str:
    space_id = f"{owner}/space-{uuid.uuid4().hex[:8]}"
    hub.create_space(space_id, owner_token=token, hardware=hardware, switch_delay_s=0.2)
    return space_id


def controller(hub, space_id, token=ALICE_TOKEN, **kwargs) -> SpaceHardware:
    kwargs.setdefault("retry", FAST)
    kwargs.setdefault("gpu_probe", lambda: False)
    return SpaceHardware(HfApi(endpoint=hub.url, token=token), space_id, **kwargs)


def posts(hub, space_id, action="hardware"):
    return [r for r in hub.requests("POST", rf"^/api/spaces/{space_id}/{action}$")]


def test_state_reads_runtime(hub):
    space_id = new_space(hub)
    hub.wait_for_stage(space_id, "RUNNING", 10)
    state = controller(hub, space_id).state()
    assert (state.current, state.requested, state.stage) == ("cpu-basic", "cpu-basic", "RUNNING")
    assert state.accelerator == "none" and state.gpu_visible is False


def test_state_tolerates_unknown_stage_and_missing_hardware(hub):
    space_id = new_space(hub)
    body = json.dumps({"stage": "SLEEPING", "hardware": {"current": None, "requested": None}})
    hub.inject_fault("GET", rf"^/api/spaces/{space_id}/runtime$", status=200, body=body, headers={"Content-Type": "application/json"})
    state = controller(hub, space_id).state()
    assert (state.current, state.requested, state.stage) == (None, None, "SLEEPING")


def test_request_is_idempotent_and_sets_sleep_time(hub):
    space_id = new_space(hub)
    hw = controller(hub, space_id, sleep_time_s=12_600)
    hub.clear_requests()
    hw.request("t4-small")
    hw.request("t4-small")
    hw.request("t4-small")
    assert len(posts(hub, space_id)) == 1
    runtime = hub.space_runtime(space_id)
    assert runtime["hardware"]["requested"] == "t4-small"
    assert runtime["gcTimeout"] == 12_600


def test_request_returns_the_state_the_hub_answered_with(hub):
    space_id = new_space(hub)
    hub.wait_for_stage(space_id, "RUNNING", 10)
    hw = controller(hub, space_id)
    sent = hw.request("t4-small")  # the POST's own answer: the switch under way, at no extra runtime read
    assert sent is not None and (sent.current, sent.requested, sent.stage) == ("cpu-basic", "t4-small", "RUNNING_BUILDING")
    again = hw.request("t4-small")  # nothing sent: the state read to know it
    assert again is not None and again.requested == "t4-small" and len(posts(hub, space_id)) == 1


def test_request_retries_transient_errors(hub):
    space_id = new_space(hub)
    hub.inject_fault("POST", HW_PATH, status=503, count=2)
    hub.clear_requests()
    controller(hub, space_id).request("t4-small")
    assert [r.status for r in posts(hub, space_id)] == [503, 503, 200]
    assert hub.space_runtime(space_id)["hardware"]["requested"] == "t4-small"


def test_request_landed_but_500_is_not_sent_again(hub):
    space_id = new_space(hub)
    hub.inject_fault("POST", HW_PATH, status=500, land_then_fail=True)
    hub.clear_requests()
    controller(hub, space_id).request("t4-small")
    assert [r.status for r in posts(hub, space_id)] == [500]
    assert hub.space_runtime(space_id)["hardware"]["requested"] == "t4-small"


@pytest.mark.parametrize(
    ("status", "body", "fix_words"),
    [
        (402, "Payment Required", "payment method"),
        (403, "You must add a payment method to your account to upgrade your space's hardware.", "billing"),
        (403, "Forbidden", "write token"),
        (503, "Scheduling failure: not enough hardware capacity", "another GPU flavor"),
        (400, "Invalid hardware flavor", "another hardware flavor"),
    ],
)
def test_refused_request_raises_with_fix_and_is_not_retried(hub, status, body, fix_words):
    space_id = new_space(hub)
    hub.inject_fault("POST", HW_PATH, status=status, body=json.dumps({"error": body}), count=5, headers={"Content-Type": "application/json"})
    hub.clear_requests()
    with pytest.raises(HardwareRefused) as info:
        controller(hub, space_id).request("t4-small")
    assert fix_words in info.value.fix
    assert info.value.status == status
    assert len(posts(hub, space_id)) == 1
    assert ALICE_TOKEN not in str(info.value)
    assert hub.space_runtime(space_id)["hardware"]["requested"] == "cpu-basic"


def test_oauth_token_is_refused_with_fix_and_release_falls_back_to_pause(hub):
    token = f"oauth-token-{uuid.uuid4().hex[:6]}"
    name = f"olga{uuid.uuid4().hex[:6]}"
    hub.add_user(name, token, oauth=True)
    space_id = new_space(hub, owner=name, token=token)
    hw = controller(hub, space_id, token=token)
    with pytest.raises(HardwareRefused) as info:
        hw.request("t4-small")
    assert "OAuth" in info.value.fix and info.value.status == 401
    assert token not in str(info.value)
    hub.inject_fault("GET", rf"^/api/spaces/{space_id}/runtime$", status=200, body=json.dumps({"stage": "RUNNING", "hardware": {"current": "t4-small", "requested": "t4-small"}}), headers={"Content-Type": "application/json"})
    assert hw.release().startswith("paused")
    assert hub.space_runtime(space_id)["stage"] == "PAUSED"


def test_release_requests_idle_flavor(hub):
    space_id = new_space(hub, hardware="t4-small")
    hub.clear_requests()
    hw = controller(hub, space_id)
    assert hw.release() == "requested cpu-basic"
    assert hub.space_runtime(space_id)["hardware"]["requested"] == "cpu-basic"
    assert "already requested" in hw.release()
    assert len(posts(hub, space_id)) == 1


def test_release_failing_three_times_pauses(hub):
    space_id = new_space(hub, hardware="t4-small")
    hub.inject_fault("POST", HW_PATH, status=500, count=3)
    hub.clear_requests()
    outcome = controller(hub, space_id).release()
    assert outcome.startswith("paused")
    assert [r.status for r in posts(hub, space_id)] == [500, 500, 500]
    assert len(posts(hub, space_id, "pause")) == 1
    assert hub.space_runtime(space_id)["stage"] == "PAUSED"


def test_release_to_pause_when_configured(hub):
    space_id = new_space(hub, hardware="t4-small")
    hub.clear_requests()
    assert controller(hub, space_id, idle_hardware="pause").release().startswith("paused")
    assert posts(hub, space_id) == []


def test_gpu_probe_runs_once_and_never_on_cpu(hub):
    space_id = new_space(hub)
    calls = []

    def probe():
        calls.append(1)
        return True

    assert controller(hub, space_id, gpu_probe=probe).state().gpu_visible is False
    assert calls == []
    hw = controller(hub, space_id, accelerator="t4-small", gpu_probe=probe)
    assert hw.state().gpu_visible and hw.state().gpu_visible
    assert calls == [1]


def test_local_hardware_is_inert():
    hw = LocalHardware(gpu_probe=lambda: False)
    state = hw.state()
    assert state.current == "local" and state.gpu_visible is False
    assert hw.request("t4-small") is None
    assert "nothing to release" in hw.release()


def test_make_hardware_picks_the_implementation(hub):
    assert isinstance(make_hardware(load_settings({})), LocalHardware)
    space = make_hardware(load_settings({"SPACE_ID": "alice/x", "HF_TOKEN": ALICE_TOKEN, "HF_ENDPOINT": hub.url, "IDLE_HARDWARE": "pause"}))
    assert isinstance(space, SpaceHardware) and space.space_id == "alice/x" and space.idle_hardware == "pause"


# --- diagnostics ---------------------------------------------------------------------------------------------


def test_diagnose_token_kinds(hub, monkeypatch):
    assert diagnose_token(HfApi(endpoint=hub.url, token=ALICE_TOKEN)) is None
    reader = f"reader-{uuid.uuid4().hex[:6]}"
    hub.add_user(f"rita{uuid.uuid4().hex[:4]}", reader, role="read")
    assert diagnose_token(HfApi(endpoint=hub.url, token=reader)).kind == "read_only"
    oauth = f"oauth-{uuid.uuid4().hex[:6]}"
    hub.add_user(f"otto{uuid.uuid4().hex[:4]}", oauth, oauth=True)
    assert diagnose_token(HfApi(endpoint=hub.url, token=oauth)).kind == "oauth"
    hub.clear_requests()
    assert diagnose_token(HfApi(endpoint=hub.url, token="hf_oauth_abc")).kind == "oauth"
    assert hub.requests() == []  # recognised by its prefix, without asking the Hub
    invalid = diagnose_token(HfApi(endpoint=hub.url, token="hf_not_a_known_token"))
    assert invalid.kind == "invalid" and "hf_not_a_known_token" not in str(invalid)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    assert diagnose_token(HfApi(endpoint=hub.url, token=None)).kind == "missing"


def test_space_ownership(hub):
    alice = HfApi(endpoint=hub.url, token=ALICE_TOKEN)
    assert check_space_ownership(alice, "alice/trainer") is None
    assert check_space_ownership(alice, "alice-org/trainer") is None
    assert check_space_ownership(alice, load_settings({"SPACE_ID": "alice/trainer"})) is None
    problem = check_space_ownership(HfApi(endpoint=hub.url, token=BOB_TOKEN), "alice/trainer")
    assert "does not own this Space" in problem
    assert "alice" not in problem and "bob" not in problem  # shown to anonymous visitors
    assert BOB_TOKEN not in problem
