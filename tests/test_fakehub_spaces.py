"""The emulated Space runtime (stages, hardware, secrets, variables) and the Space runner, with the real client."""

from __future__ import annotations

import json
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

from tests.conftest import ALICE_TOKEN, BOB_TOKEN
from tests.fakehub.fixtures import FakeHub
from tests.polling import alive, wait_for

# A tiny "Space": reports its environment in its log, then idles until killed.
SPACE_SCRIPT = """
import os, time
keys = ["SPACE_ID", "SPACE_AUTHOR_NAME", "SPACE_REPO_NAME", "SPACE_HOST", "ACCELERATOR", "HF_ENDPOINT",
        "HF_TOKEN", "MY_VAR", "EXTRA", "SYSTEM"]
print("ENV " + " ".join(f"{k}={os.environ.get(k, '-')}" for k in keys), flush=True)
while True:
    time.sleep(0.1)
"""


def space_id() -> str:
    return f"alice/space-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def alice(hub: FakeHub) -> HfApi:
    return HfApi(endpoint=hub.url, token=ALICE_TOKEN)


def stages_until(api: HfApi, repo_id: str, stage: str, timeout_s: float = 15.0) -> list[tuple[str, str | None]]:
    """Poll the runtime through the client; returns the distinct (stage, current hardware) seen, in order."""
    seen: list[tuple[str, str | None]] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        runtime = api.get_space_runtime(repo_id)
        if not seen or seen[-1] != (runtime.stage, runtime.hardware):
            seen.append((runtime.stage, runtime.hardware))
        if runtime.stage == stage:
            return seen
        time.sleep(0.03)
    raise AssertionError(f"{repo_id} never reached {stage}: {seen}")


def env_line(log: Path, timeout_s: float = 15.0) -> dict[str, str]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines() if log.exists() else []:
            if line.startswith("ENV "):
                return dict(item.split("=", 1) for item in line[4:].split(" "))
        time.sleep(0.05)
    raise AssertionError(f"no ENV line in {log}: {log.read_text() if log.exists() else 'missing'}")


def wait_for_logs(hub: FakeHub, repo_id: str, count: int, timeout_s: float = 15.0) -> list[Path]:
    deadline = time.monotonic() + timeout_s
    while len(logs := hub.space_logs(repo_id)) < count:
        assert time.monotonic() < deadline, f"only {len(logs)} container logs"
        time.sleep(0.05)
    return logs


def test_runtime_transitions_after_request_space_hardware(hub: FakeHub, alice: HfApi) -> None:
    repo_id = space_id()
    hub.create_space(repo_id, owner_token=ALICE_TOKEN, switch_delay_s=1.0, app_start_s=0.3)
    assert alice.get_space_runtime(repo_id).stage == "BUILDING"
    assert alice.wait_for_space(repo_id, timeout=15, poll_interval=0.05).stage == "RUNNING"
    runtime = alice.request_space_hardware(repo_id, "t4-small", sleep_time=3600)
    assert (runtime.stage, runtime.hardware, runtime.requested_hardware) == (
        "RUNNING_BUILDING",
        "cpu-basic",
        "t4-small",
    )
    assert runtime.sleep_time == 3600
    # polled through the client: the old hardware serves while the new one builds, then the switch happens
    seen = stages_until(alice, repo_id, "RUNNING")
    assert seen[0] == ("RUNNING_BUILDING", "cpu-basic") and seen[-1] == ("RUNNING", "t4-small")
    assert alice.space_info(repo_id).runtime.hardware == "t4-small"
    assert len(hub.requests("POST", rf"^/api/spaces/{repo_id}/hardware$")) == 1
    # the ledger records each period: cpu-basic while building the switch, then t4-small
    ledger = hub.ledger(repo_id)
    periods = [(p["hardware"], p["stage"]) for p in ledger]
    assert periods[:3] == [(None, "BUILDING"), ("cpu-basic", "APP_STARTING"), ("cpu-basic", "RUNNING")]
    assert periods[3:] == [("cpu-basic", "RUNNING_BUILDING"), ("t4-small", "APP_STARTING"), ("t4-small", "RUNNING")]
    assert all(p["ended_at"] is not None for p in ledger[:-1]) and ledger[-1]["ended_at"] is None
    assert all(a["ended_at"] == b["started_at"] for a, b in zip(ledger, ledger[1:], strict=False))
    over_http = json.loads(urllib.request.urlopen(f"{hub.url}/_emu/spaces/{repo_id}/ledger").read())
    assert [(p["hardware"], p["stage"]) for p in over_http] == periods


def test_sleeptime_pause_restart_and_errors(hub: FakeHub, alice: HfApi) -> None:
    repo_id = space_id()
    alice.create_repo(repo_id, repo_type="space", space_sdk="gradio")  # through the API, default switch delay
    hub.wait_for_stage(repo_id, "RUNNING", timeout_s=10)
    with pytest.warns(UserWarning, match="cpu-basic"):
        assert alice.set_space_sleep_time(repo_id, 600).sleep_time == 600
    paused = alice.pause_space(repo_id)
    assert (paused.stage, paused.hardware) == ("PAUSED", None)
    restarted = alice.restart_space(repo_id)
    assert restarted.stage == "BUILDING"
    hub.wait_for_stage(repo_id, "RUNNING", timeout_s=10)
    with pytest.raises(HfHubHTTPError) as err:
        alice.request_space_hardware(repo_id, "no-such-flavor")
    assert err.value.response.status_code == 400
    bob = HfApi(endpoint=hub.url, token=BOB_TOKEN)
    with pytest.raises(HfHubHTTPError) as err:
        bob.request_space_hardware(repo_id, "t4-small")
    assert err.value.response.status_code == 403
    assert bob.get_space_runtime(repo_id).stage == "RUNNING"  # public Space: anyone reads its runtime


def test_oauth_tokens_are_refused_on_hardware_restart_and_sleeptime(hub: FakeHub) -> None:
    repo_id = space_id()
    hub.create_space(repo_id, owner_token=ALICE_TOKEN, switch_delay_s=0.1)
    token = f"hf_oauth_fake_{uuid.uuid4().hex[:6]}"
    hub.add_user("alice", token, orgs=["alice-org"], oauth=True)
    oauth = HfApi(endpoint=hub.url, token=token)
    for call in (
        lambda: oauth.request_space_hardware(repo_id, "t4-small"),
        lambda: oauth.restart_space(repo_id),
        lambda: oauth.set_space_sleep_time(repo_id, 60),
    ):
        with pytest.raises(RepositoryNotFoundError) as err:
            call()
        assert err.value.response.status_code == 401
    assert oauth.pause_space(repo_id).stage == "PAUSED"
    hub.add_user("alice", ALICE_TOKEN, orgs=["alice-org"])


def test_secrets_and_variables(hub: FakeHub, alice: HfApi) -> None:
    repo_id = space_id()
    hub.create_space(
        repo_id, owner_token=ALICE_TOKEN, switch_delay_s=0.1, secrets={"S0": "zero"}, variables={"V0": "0"}
    )
    alice.add_space_secret(repo_id, "HF_TOKEN", "hf_fake_value", description="write token")
    secrets = alice.get_space_secrets(repo_id)
    assert set(secrets) == {"S0", "HF_TOKEN"} and secrets["HF_TOKEN"].description == "write token"
    assert "hf_fake_value" not in json.dumps({k: vars(v) for k, v in secrets.items()}, default=str)
    alice.delete_space_secret(repo_id, "S0")
    assert set(alice.get_space_secrets(repo_id)) == {"HF_TOKEN"}
    variables = alice.add_space_variable(repo_id, "QUEUE_REPO", "alice/q", description="queue")
    assert variables["QUEUE_REPO"].value == "alice/q" and variables["V0"].value == "0"
    assert set(alice.delete_space_variable(repo_id, "V0")) == {"QUEUE_REPO"}
    assert alice.get_space_variables(repo_id)["QUEUE_REPO"].description == "queue"
    with pytest.raises(HfHubHTTPError):
        HfApi(endpoint=hub.url, token=BOB_TOKEN).get_space_secrets(repo_id)


def test_runner_restarts_the_space_on_a_hardware_switch(hub: FakeHub, alice: HfApi, tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(SPACE_SCRIPT)
    repo_id = space_id()
    hub.create_space(
        repo_id,
        owner_token=ALICE_TOKEN,
        command=[sys.executable, "app.py"],
        cwd=tmp_path,
        env={"EXTRA": "given-by-test"},
        hardware_env={"t4-medium": {"EXTRA": "on-t4"}},
        switch_delay_s=0.3,
        secrets={"HF_TOKEN": "hf_fake_space_secret"},
        variables={"MY_VAR": "v1"},
    )
    try:
        first = env_line(wait_for_logs(hub, repo_id, 1)[0])
        name = repo_id.split("/")[1]
        assert first == {
            "SPACE_ID": repo_id,
            "SPACE_AUTHOR_NAME": "alice",
            "SPACE_REPO_NAME": name,
            "SPACE_HOST": f"alice-{name}.hf.space",
            "ACCELERATOR": "none",
            "HF_ENDPOINT": hub.url,
            "HF_TOKEN": "hf_fake_space_secret",
            "MY_VAR": "v1",
            "EXTRA": "given-by-test",
            "SYSTEM": "-",
        }
        hub.wait_for_stage(repo_id, "RUNNING")
        runner = hub.emulator.spaces.runner(repo_id)
        first_pid = runner.process.pid
        alice.request_space_hardware(repo_id, "t4-medium")
        second = env_line(wait_for_logs(hub, repo_id, 2)[1])
        assert (second["ACCELERATOR"], second["EXTRA"]) == ("t4-medium", "on-t4")
        hub.wait_for_stage(repo_id, "RUNNING")
        assert runner.process.pid != first_pid
        ledger = hub.ledger(repo_id)
        running = [(p["hardware"], p["container"]) for p in ledger if p["stage"] == "RUNNING"]
        assert running == [("cpu-basic", 1), ("t4-medium", 2)]
        assert ledger[-1]["ended_at"] is None and ledger[-2]["ended_at"] is not None

        # a variable change restarts the container with the new value
        alice.add_space_variable(repo_id, "MY_VAR", "v2")
        assert env_line(wait_for_logs(hub, repo_id, 3)[2])["MY_VAR"] == "v2"
        # a crash: the runner starts a new container on the same hardware
        hub.wait_for_stage(repo_id, "RUNNING")
        hub.kill_space_container(repo_id)
        assert env_line(wait_for_logs(hub, repo_id, 4)[3])["ACCELERATOR"] == "t4-medium"
        # pause stops the process
        alice.pause_space(repo_id)
        deadline = time.monotonic() + 10
        while runner.process is not None:
            assert time.monotonic() < deadline, "process not stopped on pause"
            time.sleep(0.05)
        assert hub.ledger(repo_id)[-1]["stage"] == "PAUSED"
    finally:
        hub.stop_space(repo_id)


def test_crash_loop_ends_in_runtime_error(hub: FakeHub, tmp_path: Path) -> None:
    repo_id = space_id()
    hub.create_space(
        repo_id,
        owner_token=ALICE_TOKEN,
        command=["/nonexistent/command"],
        cwd=tmp_path,
        switch_delay_s=0.05,
        app_start_s=0.05,
    )
    try:
        runtime = hub.wait_for_stage(repo_id, "RUNTIME_ERROR", timeout_s=15)
        assert "127" in runtime["errorMessage"]
        logs = hub.space_logs(repo_id)
        assert len(logs) == 5 and "cannot start" in logs[0].read_text()
        assert "RUNTIME_ERROR" not in hub.billed_seconds(repo_id)
    finally:
        hub.stop_space(repo_id)


def test_sleep_time_puts_an_idle_upgraded_space_to_sleep(hub: FakeHub, alice: HfApi) -> None:
    repo_id = space_id()
    hub.create_space(repo_id, owner_token=ALICE_TOKEN, switch_delay_s=0.1)
    hub.wait_for_stage(repo_id, "RUNNING")
    alice.request_space_hardware(repo_id, "t4-small", sleep_time=1)
    asleep = hub.wait_for_stage(repo_id, "SLEEPING", timeout_s=5)
    assert asleep["hardware"] == {"current": None, "requested": "t4-small"}
    billed = hub.billed_seconds(repo_id)
    time.sleep(0.2)
    assert hub.billed_seconds(repo_id) == billed  # asleep: the bill stops growing
    assert 0.9 < billed["t4-small"] < 1.1  # from the container start on t4 until asleep 1 s later
    assert [p["stage"] for p in hub.ledger(repo_id)][-3:] == ["APP_STARTING", "RUNNING", "SLEEPING"]


def test_space_logs_endpoint_streams_the_container_output(hub: FakeHub, alice: HfApi, tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(SPACE_SCRIPT)
    repo_id = space_id()
    hub.create_space(
        repo_id, owner_token=ALICE_TOKEN, command=[sys.executable, "app.py"], cwd=tmp_path, switch_delay_s=0.05
    )
    try:
        env_line(wait_for_logs(hub, repo_id, 1)[0])
        started = time.monotonic()
        lines = list(alice.fetch_space_logs(repo_id))
        assert time.monotonic() - started < 4
        assert any(f"SPACE_ID={repo_id}" in line for line in lines)
    finally:
        hub.stop_space(repo_id)


def test_timeline_events_are_recorded_at_their_own_time_even_when_read_late() -> None:
    from tests.fakehub.spaces import SpaceState

    state = SpaceState("alice/s", requested="cpu-basic", switch_delay_s=2.0, app_start_s=1.0)
    state._build(0.0)
    state.note(0.0)
    state.advance(10.0)  # first look after 10 s (as SpaceBook.update does before each change)
    state.request_hardware("t4-small", 30, now=10.0)
    state.advance(100.0)  # next look after 90 s
    periods = [(p.hardware, p.stage, p.started_at, p.ended_at) for p in state.ledger]
    assert periods == [
        (None, "BUILDING", 0.0, 2.0),
        ("cpu-basic", "APP_STARTING", 2.0, 3.0),
        ("cpu-basic", "RUNNING", 3.0, 10.0),
        ("cpu-basic", "RUNNING_BUILDING", 10.0, 12.0),
        ("t4-small", "APP_STARTING", 12.0, 13.0),
        ("t4-small", "RUNNING", 13.0, 42.0),  # asleep 30 s after the container started
        (None, "SLEEPING", 42.0, None),
    ]


# A "Space" that starts a worker in a session of its own (as the app starts its trainer) and logs its pid.
SPAWNING_SCRIPT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
print(f"CHILD {child.pid}", flush=True)
while True:
    time.sleep(0.1)
"""


def _child_pid(log: Path) -> int:
    """The pid the Space's app printed as ``CHILD <pid>``, once it has."""

    def printed() -> int | None:
        lines = log.read_text().splitlines() if log.exists() else []
        return next((int(line.split()[1]) for line in lines if line.startswith("CHILD ")), None)

    return wait_for(printed, 15, f"a CHILD line in {log}", every=0.05)


def test_a_dying_container_takes_processes_of_other_sessions_with_it(hub: FakeHub, tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(SPAWNING_SCRIPT)
    repo_id = space_id()
    hub.create_space(repo_id, owner_token=ALICE_TOKEN, command=[sys.executable, "app.py"], cwd=tmp_path,
                     switch_delay_s=0.1, app_start_s=0.1)  # fmt: skip
    try:
        first = _child_pid(wait_for_logs(hub, repo_id, 1)[0])
        hub.wait_for_stage(repo_id, "RUNNING")
        hub.kill_space_container(repo_id)  # a crash (SIGKILL)
        wait_for(lambda: not alive(first), 10, "the crashed container's child to die", every=0.05)
        second = _child_pid(wait_for_logs(hub, repo_id, 2)[1])
        assert second != first
    finally:
        hub.stop_space(repo_id)  # a stop (SIGTERM, then SIGKILL)
    wait_for(lambda: not alive(second), 10, "the stopped container's child to die", every=0.05)
