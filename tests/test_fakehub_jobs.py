"""The emulator's Jobs API, driven by the real huggingface_hub client (run_job, inspect_job, list_jobs,
fetch_job_logs, cancel_job, list_jobs_hardware, wait_for_job) against the session emulator."""

from __future__ import annotations

import hashlib
import json
import os
import time
import urllib.request
import uuid

import pytest
from huggingface_hub import HfApi, Volume
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

from tests.conftest import ALICE_TOKEN, BOB_TOKEN
from tests.fakehub.jobs import JOB_FLAVORS, PROJECT_ROOT, TIMEOUT_MESSAGE

NS = "alice"
PY = "python"  # resolved on the Job's PATH as in an image: the emulator puts the test interpreter's bin/ first


@pytest.fixture
def api() -> HfApi:
    return HfApi(token=ALICE_TOKEN)


@pytest.fixture
def tag() -> dict[str, str]:
    """A label unique to the test, to find its Jobs among the session's."""
    return {"test": uuid.uuid4().hex[:12]}


def run(api: HfApi, code: str, labels: dict[str, str], **kwargs):
    return api.run_job(image="python:3.12", command=[PY, "-u", "-c", code], labels=labels, namespace=NS, **kwargs)


def wait(api: HfApi, job_id: str, stages=None, timeout: float = 15.0):
    return api.wait_for_job(job_id, namespace=NS, poll_interval=0.05, timeout=timeout, stages=stages)


def test_job_runs_through_stages_with_its_env_and_secret(hub, api, tag):
    secret = f"hf_job_secret_{uuid.uuid4().hex}"
    code = (
        "import hashlib, os; "
        "print('FOO=' + os.environ['FOO']); "
        "print('SECRET_SHA=' + hashlib.sha256(os.environ['HF_TOKEN'].encode()).hexdigest()); "
        "print('ENDPOINT=' + os.environ['HF_ENDPOINT']); print('CWD=' + os.getcwd()); "
        "print('SPACE_VARS=' + str(sorted(k for k in os.environ if k.startswith('SPACE_'))))"
    )
    job = api.run_job(  # no namespace: the client asks whoami for it
        image="python:3.12", command=[PY, "-c", code], env={"FOO": "bar"}, secrets={"HF_TOKEN": secret}, labels=tag
    )
    assert job.status.stage == "SCHEDULING"
    assert job.owner.name == NS and job.owner.type == "user" and job.docker_image == "python:3.12"
    assert job.labels["test"] == tag["test"] and job.environment == {"FOO": "bar"}
    running = wait(api, job.id, stages=["RUNNING"])
    assert running.status.stage in ("RUNNING", "COMPLETED") and running.started_at is not None
    done = wait(api, job.id)
    assert done.status.stage == "COMPLETED" and done.finished_at >= done.started_at
    assert done.secrets == {"HF_TOKEN": None}  # the value never comes back
    lines = list(api.fetch_job_logs(job_id=job.id, namespace=NS))
    assert "FOO=bar" in lines
    assert f"SECRET_SHA={hashlib.sha256(secret.encode()).hexdigest()}" in lines  # the secret, not alice's token
    assert f"ENDPOINT={hub.url}" in lines and f"CWD={PROJECT_ROOT}" in lines and "SPACE_VARS=[]" in lines
    assert not any(line.startswith("===== Job started") for line in lines)  # the client drops the banner
    assert secret not in hub.job_log(job.id) and secret not in json.dumps(hub.jobs(NS))


def test_exit_code_gives_error_with_message(hub, api, tag):
    job = run(api, "import sys; print('failing'); sys.exit(3)", tag)
    done = wait(api, job.id)
    assert done.status.stage == "ERROR" and "exit code: 3" in done.status.message


def test_list_jobs_filters_by_label_and_stage(hub, api, tag):
    other = {"test": tag["test"] + "-other"}
    a = run(api, "print(1)", tag)
    b = run(api, "import time; time.sleep(30)", other)
    wait(api, a.id)
    wait(api, b.id, stages=["RUNNING"])
    assert [j.id for j in api.list_jobs(labels=tag, namespace=NS)] == [a.id]
    assert [j.id for j in api.list_jobs(labels=other, namespace=NS, status="RUNNING")] == [b.id]
    assert list(api.list_jobs(labels=other, namespace=NS, status=["COMPLETED", "ERROR"])) == []
    assert f"label=test={other['test']}" in hub.requests("GET", rf"^/api/jobs/{NS}$")[-1].query  # server-side
    # A fresh client (a restarted Space) finds the running Job again by its label.
    assert [j.id for j in HfApi(token=ALICE_TOKEN).list_jobs(labels=other, namespace=NS)] == [b.id]


def test_logs_follow_while_running_and_tail(hub, api, tag):
    code = "import time\nfor i in range(5):\n    print(f'line {i}'); time.sleep(0.15)"
    job = run(api, code, tag)
    followed = list(api.fetch_job_logs(job_id=job.id, namespace=NS, follow=True))
    assert followed == [f"line {i}" for i in range(5)]
    assert api.inspect_job(job_id=job.id, namespace=NS).status.stage == "COMPLETED"
    assert list(api.fetch_job_logs(job_id=job.id, namespace=NS, tail=2)) == ["line 3", "line 4"]
    assert list(api.fetch_job_logs(job_id=job.id, namespace=NS, follow=True, tail=1)) == ["line 4"]


def test_logs_without_follow_of_a_running_job_stop_at_the_replay(hub, api, tag):
    job = run(api, "import time\nfor i in range(100):\n    print(f'tick {i}'); time.sleep(0.2)", tag)
    wait(api, job.id, stages=["RUNNING"])
    time.sleep(0.5)
    t0 = time.monotonic()
    lines = list(api.fetch_job_logs(job_id=job.id, namespace=NS))
    assert time.monotonic() - t0 < 4  # ends at the first line logged after the answer's Date (+1 s), no timeout
    assert lines[:2] == ["tick 0", "tick 1"] and len(lines) < 30
    assert api.inspect_job(job_id=job.id, namespace=NS).status.stage == "RUNNING"


def test_cancel_stops_the_process_group(hub, api, tag, tmp_path):
    pid_file = tmp_path / "child.pid"
    code = (
        "import subprocess, time; "
        f"p = subprocess.Popen(['sleep', '60']); open({str(pid_file)!r}, 'w').write(str(p.pid)); "
        "print('started', flush=True); time.sleep(60)"
    )
    job = run(api, code, tag)
    wait(api, job.id, stages=["RUNNING"])
    deadline = time.monotonic() + 10
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    child = int(pid_file.read_text())
    api.cancel_job(job_id=job.id, namespace=NS)
    assert api.inspect_job(job_id=job.id, namespace=NS).status.stage == "CANCELED"
    assert not _alive(child)
    (period,) = hub.jobs_ledger(NS)[-1:]
    assert period["job_id"] == job.id and period["ended_at"] is not None and period["stage"] == "CANCELED"


def test_timeout_kills_the_job_and_bills_at_most_the_timeout(hub, api, tag):
    job = api.run_job(image="python:3.12", command=["sleep", "30"], timeout=1, labels=tag, namespace=NS)
    t0 = time.monotonic()
    done = wait(api, job.id)
    assert done.status.stage == "ERROR" and done.status.message == TIMEOUT_MESSAGE
    assert time.monotonic() - t0 < 5
    (period,) = [p for p in hub.jobs_ledger(NS) if p["job_id"] == job.id]
    assert period["seconds"] == pytest.approx(1.0)  # killed on the dot, billed exactly the timeout


def test_refused_creation_raises_the_client_error(hub, api, tag):
    hub.inject_job_fault("refuse", namespace=NS, labels=tag)  # no credit: 402
    with pytest.raises(HfHubHTTPError) as err:
        run(api, "print(1)", tag)
    assert err.value.response.status_code == 402 and "credit" in str(err.value)
    hub.inject_job_fault("refuse", labels=tag, status=403)
    with pytest.raises(HfHubHTTPError) as err:
        run(api, "print(1)", tag)
    assert err.value.response.status_code == 403
    with pytest.raises(HfHubHTTPError) as err:
        run(api, "print(1)", tag, flavor="a100x16")
    assert err.value.response.status_code == 400
    assert all(j["labels"].get("test") != tag["test"] for j in hub.jobs(NS))  # nothing was created
    assert run(api, "print(1)", tag).status.stage == "SCHEDULING"  # the faults were used up


def test_crash_fault_hits_the_chosen_job(hub, api, tag):
    hub.inject_job_fault("crash", labels=tag, skip=1, at_s=0.3, exit_code=1)
    first = run(api, "import time; time.sleep(0.6)", tag)
    second = run(api, "import time; print('working', flush=True); time.sleep(30)", tag)
    assert wait(api, first.id).status.stage == "COMPLETED"
    crashed = wait(api, second.id)
    assert crashed.status.stage == "ERROR" and "exit code: 1" in crashed.status.message
    assert crashed.finished_at is not None


def test_killed_from_outside_and_logs_unavailable(hub, api, tag):
    hub.inject_job_fault("delete", labels=tag, at_s=0.2)
    deleted = run(api, "import time; time.sleep(30)", tag)
    assert wait(api, deleted.id).status.stage == "DELETED"
    hub.inject_job_fault("logs_unavailable", labels=tag)
    quiet = run(api, "print('hidden')", tag)
    assert wait(api, quiet.id).status.stage == "COMPLETED"
    with pytest.raises(HfHubHTTPError) as err:
        list(api.fetch_job_logs(job_id=quiet.id, namespace=NS))
    assert err.value.response.status_code == 503
    assert "hidden" in hub.job_log(quiet.id)  # the Job ran; only its logs cannot be read


def test_5xx_faults_on_jobs_paths(hub, api, tag):
    job = run(api, "print(1)", tag)
    hub.inject_fault("GET", rf"^/api/jobs/{NS}/[0-9a-f]+$", status=503)
    with pytest.raises(HfHubHTTPError) as err:
        api.inspect_job(job_id=job.id, namespace=NS)
    assert err.value.response.status_code == 503
    assert api.inspect_job(job_id=job.id, namespace=NS).id == job.id
    hub.seed_faults(7)
    hub.inject_fault("GET", rf"^/api/jobs/{NS}/{job.id}$", status=500, count=1000, probability=0.3)
    failures = 0
    for _ in range(30):
        try:
            api.inspect_job(job_id=job.id, namespace=NS)
        except HfHubHTTPError as e:
            assert e.response.status_code == 500
            failures += 1
    assert 2 <= failures <= 20


def test_ledger_per_flavor_and_control_endpoint(hub, api, tag):
    ns = f"ledger-{tag['test']}"
    hub.add_user(ns, f"tok-{ns}")
    owner = HfApi(token=f"tok-{ns}")
    jobs = [
        owner.run_job(image="python:3.12", command=["sleep", "0.4"], flavor=f, namespace=ns)
        for f in ("h200", "t4-small")
    ]
    for job in jobs:
        assert owner.wait_for_job(job.id, namespace=ns, poll_interval=0.05, timeout=15).status.stage == "COMPLETED"
    billed = hub.job_billed_seconds(ns)
    assert set(billed) == {"h200", "t4-small"} and all(0.3 < s < 3 for s in billed.values())
    assert hub.job_cost_usd(ns) == pytest.approx(billed["h200"] * 5 / 3600 + billed["t4-small"] * 0.4 / 3600)
    with urllib.request.urlopen(f"{hub.url}/_emu/jobs/{ns}/ledger") as r:
        assert sorted(p["flavor"] for p in json.load(r)) == ["h200", "t4-small"]
    # Job faults can also come over HTTP (an emulator run as a separate process).
    fault = json.dumps({"kind": "refuse", "namespace": ns, "status": 402}).encode()
    urllib.request.urlopen(urllib.request.Request(f"{hub.url}/_emu/job-faults", fault, method="POST")).close()
    with pytest.raises(HfHubHTTPError) as err:
        owner.run_job(image="python:3.12", command=["true"], namespace=ns)
    assert err.value.response.status_code == 402


def test_space_image(hub, api, tag):
    repo_id = f"{NS}/jobs-image-{tag['test']}"
    hub.create_space(repo_id, owner_token=ALICE_TOKEN)
    for image in (f"hf.co/spaces/{repo_id}", f"https://huggingface.co/spaces/{repo_id}"):
        job = api.run_job(image=image, command=[PY, "-c", "print('from the space image')"], labels=tag, namespace=NS)
        assert job.space_id == repo_id and job.docker_image is None
        done = wait(api, job.id)
        assert done.status.stage == "COMPLETED" and done.space_id == repo_id
    assert "from the space image" in list(api.fetch_job_logs(job_id=job.id, namespace=NS))
    with pytest.raises(RepositoryNotFoundError):
        api.run_job(image=f"hf.co/spaces/{NS}/no-such-space-{tag['test']}", command=["true"], namespace=NS)


def test_namespaces_and_tokens(hub, api, tag):
    with pytest.raises(HfHubHTTPError) as err:
        api.run_job(image="python:3.12", command=["true"], namespace="bob")
    assert err.value.response.status_code == 403
    with pytest.raises(HfHubHTTPError) as err:
        api.run_job(image="python:3.12", command=["true"], namespace=NS, token=False)
    assert err.value.response.status_code == 401
    reader = f"reader-{tag['test']}"
    hub.add_user(NS, reader, role="read", orgs=["alice-org"])
    with pytest.raises(HfHubHTTPError) as err:
        api.run_job(image="python:3.12", command=["true"], namespace=NS, token=reader)
    assert err.value.response.status_code == 403
    org_job = api.run_job(image="python:3.12", command=["true"], namespace="alice-org", labels=tag)
    assert org_job.owner.type == "org" and org_job.owner.name == "alice-org"
    assert [j.id for j in api.list_jobs(namespace="alice-org", labels=tag, token=reader)] == [org_job.id]
    with pytest.raises(HfHubHTTPError) as err:  # bob cannot see alice's Jobs
        HfApi(token=BOB_TOKEN).inspect_job(job_id=org_job.id, namespace="alice-org")
    assert err.value.response.status_code == 403


def test_repo_volumes_are_materialised_read_only_and_buckets_refused(hub, api, tag):
    repo_id = f"{NS}/jobs-volume-{tag['test']}"
    hub.commit_files(repo_id, {"weights/model.bin": b"tiny weights", "README.md": b"card"}, author=NS)
    volume = Volume(type="model", source=repo_id, mount_path="/model", path="weights")
    code = "import os; print(open(os.environ['FAKEHUB_MOUNT_ROOT'] + '/model/model.bin').read())"
    job = run(api, code, tag, volumes=[volume])
    assert job.volumes[0].read_only is True and job.volumes[0].source == repo_id
    assert wait(api, job.id).status.stage == "COMPLETED"
    assert "tiny weights" in list(api.fetch_job_logs(job_id=job.id, namespace=NS))
    with pytest.raises(HfHubHTTPError) as err:
        run(api, "print(1)", tag, volumes=[Volume(type="bucket", source=f"{NS}/b", mount_path="/out")])
    assert err.value.response.status_code == 400


def test_hardware_list_has_jobs_flavors_priced_like_the_scheduler(api):
    from contract.flavors import FLAVORS

    hardware = {h.name: h for h in api.list_jobs_hardware()}
    assert {"h200", "h200x8", "rtx-pro-6000", "cpu-xl", "t4-small"} <= set(hardware)
    assert hardware["h200"].accelerator.model == "H200" and hardware["cpu-basic"].accelerator is None
    assert all(h.unit_label == "minute" for h in hardware.values())
    for name, flavor in FLAVORS.items():
        if flavor.usd_per_hour > 0:  # cpu-basic is free on a Space, $0.01/h as a Job
            assert hardware[name].unit_cost_usd * 60 == pytest.approx(flavor.usd_per_hour, rel=1e-3), name
            assert JOB_FLAVORS[name].usd_per_hour == flavor.usd_per_hour


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = f"/proc/{pid}/stat"
    return not (os.path.exists(stat) and open(stat).read().rsplit(")", 1)[1].split()[0] == "Z")
