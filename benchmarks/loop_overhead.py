"""GPU time the self-upgrading loop spends not training, measured on the Hub emulator with the tiny model.

    python benchmarks/loop_overhead.py [--tasks 1] [--steps 10] [--switch-delay 2] [--out benchmarks/results/...]

Runs ``app.py`` as an emulated Space on cpu-basic, enqueues tasks through the Hub queue (as the form does) and
follows the loop: upgrade to t4-small (the emulator restarts the app; CUDA is absent, so ALLOW_CPU_TRAINING=1),
train, upload, release. Figures (seconds, from the emulator's ledger and request log, the trainer's progress events
and the app's log):

- ``cold_start_s``: container start to the app serving its form (first container, on cpu-basic);
- ``gpu_cold_start_s``: the same on the GPU container;
- ``gpu_startup_to_first_step_s``: GPU period start (container start on t4-small) to the first training step;
- ``last_step_to_release_request_s``: last training step to the release request (sampling, saving, upload, the
  DONE commit and the release call); ``trainer_done_to_release_request_s`` is the worker's own part of it;
- ``gpu_overhead_s_per_task``: GPU seconds not spent between first and last step, per task;
- ``gpu_period_s`` and ``training_s``: the whole paid period and the training inside it.

The emulator's hardware switch delay is a parameter, not a measurement, and is excluded from the GPU overhead (the
Hub does not bill the build). The CPU "GPU" makes model loading slower than on a real T4, so the figures are an
upper bound of the loop's own overhead.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.polling import free_port, serving, wait_for  # noqa: E402  (after the path insert)

ALICE = ("alice", "hf_fake_alice_write")


def _container_starts(log: Path) -> list[tuple[float, str]]:
    """(start time, accelerator) of each container in a Space log file."""
    out = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("===== container") and " started at " in line:
            parts = line.split()
            out.append((float(parts[parts.index("at") + 1]), parts[parts.index("on") + 1]))
    return out


def _serving_time(log: Path) -> float | None:
    """Unix time of the app's "serving on" log line (logging's asctime is local time with milliseconds)."""
    for line in log.read_text(errors="replace").splitlines():
        if " app: serving on " in line:
            stamp, ms = line[:23].split(",")
            return time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S")) + int(ms) / 1000
    return None


def measure(tasks: int, steps: int, switch_delay_s: float, poll_s: float) -> dict:
    """Run the loop once with ``tasks`` tasks; return the loop_overhead record."""
    work = Path(tempfile.mkdtemp(prefix="loop-overhead-"))
    port = free_port()
    os.environ.update(HF_ENDPOINT=f"http://127.0.0.1:{port}", HF_TOKEN=ALICE[1], HF_HOME=str(work / "hf-home"),
                      HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_XET="1", GRADIO_ANALYTICS_ENABLED="False")  # fmt: skip
    from huggingface_hub import HfApi

    from contract.settings import load_settings
    from scheduler.queue import make_queue
    from scheduler.task import Task, TaskStatus
    from tests.fakehub.fixtures import run_fakehub
    from tests.tiny_models import build_tiny_sd, make_images

    model = build_tiny_sd(work / "model")
    images = make_images(work / "photos", 3, size=128)
    repo = "alice/overhead"
    app_port = free_port()
    with run_fakehub(work / "hub", port, [ALICE], switch_delay_s=switch_delay_s) as hub:
        (work / "space").mkdir()
        hub.create_space(
            repo,
            owner_token=ALICE[1],
            command=[sys.executable, str(ROOT / "app.py")],
            cwd=work / "space",
            env={"GRADIO_SERVER_PORT": str(app_port), "GRADIO_ANALYTICS_ENABLED": "False"},
            switch_delay_s=switch_delay_s,
            secrets={"HF_TOKEN": ALICE[1]},
            variables={"ALLOW_CPU_TRAINING": "1", "BASE_MODELS": str(model), "POLL_INTERVAL_S": str(poll_s)},
        )
        url = f"http://127.0.0.1:{app_port}/"
        wait_for(lambda: serving(url), 120, "the app on cpu-basic")
        settings = load_settings({"SPACE_ID": repo, "HF_TOKEN": ALICE[1], "HF_ENDPOINT": hub.url})
        queue = make_queue(settings)
        ids = []
        for i in range(tasks):
            task = Task(instance_prompt=f"a photo of sks dog {i}", submitted_by="alice", base_model=str(model),
                        output_repo=f"alice/overhead-{i}",
                        params={"steps": steps, "resolution": 64, "learning_rate": 1e-4, "rank": 4,
                                "validation_prompts": [f"a photo of sks dog {i}"], "score": False})  # fmt: skip
            ids.append(queue.enqueue(task, images).id)
        wait_for(lambda: all(queue.get(t).status.terminal for t in ids), 900, "the tasks to finish", every=1.0)
        wait_for(lambda: hub.space_runtime(repo)["hardware"]["current"] == "cpu-basic"
              and hub.space_runtime(repo)["stage"] == "RUNNING", 120, "the release")  # fmt: skip
        wait_for(lambda: serving(url), 120, "the app back on cpu-basic")
        done = [queue.get(t) for t in ids]
        ledger = hub.ledger(repo)
        releases = [r.time for r in hub.requests("POST", rf"^/api/spaces/{repo}/hardware$")]
        logs = hub.space_logs(repo)
        hub.stop_space(repo)
        files = [HfApi(endpoint=hub.url, token=ALICE[1]).list_repo_files(t.output_repo) for t in done]

    assert all(t.status is TaskStatus.DONE for t in done), [(t.id, t.status, t.last_error) for t in done]
    assert all(any(f.endswith(".safetensors") for f in fs) for fs in files)
    gpu = [p for p in ledger if p["hardware"] == "t4-small"]
    gpu_start, gpu_end = gpu[0]["started_at"], gpu[-1]["ended_at"]
    step_times, done_times, spans = [], [], []
    for t in done:
        events = [
            json.loads(line) for line in (work / "space" / "data" / "runs" / t.id / f"events-{t.attempts}.jsonl").open()
        ]
        step_times += [e["time"] for e in events if e["event"] == "step"]
        done_times += [e["time"] for e in events if e["event"] == "done"]
        steps_of_task = [e["time"] for e in events if e["event"] == "step"]
        spans.append(max(steps_of_task) - min(steps_of_task))
    first_step, last_step = min(step_times), max(step_times)
    release_request = releases[-1]
    starts = {}
    for log in logs:
        for started, accel in _container_starts(log):
            starts.setdefault(accel, (started, _serving_time(log)))
    cold = starts["none"][1] - starts["none"][0]
    gpu_cold = starts["t4-small"][1] - starts["t4-small"][0]
    training_s = sum(spans)  # first to last step of each task
    gpu_period_s = gpu_end - gpu_start
    import diffusers
    import torch

    return {
        "benchmark": "loop_overhead",
        "device": f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores) as emulated t4-small",
        "date": dt.date.today().isoformat(),
        "tasks": tasks,
        "steps_per_task": steps,
        "resolution": 64,
        "model_shape": "tiny-sd",
        "emulator_switch_delay_s": switch_delay_s,
        "poll_interval_s": poll_s,
        "cold_start_s": round(cold, 2),
        "gpu_cold_start_s": round(gpu_cold, 2),
        "gpu_startup_to_first_step_s": round(first_step - gpu_start, 2),
        "last_step_to_release_request_s": round(release_request - last_step, 2),
        "trainer_done_to_release_request_s": round(release_request - max(done_times), 2),
        "gpu_overhead_s_per_task": round((gpu_period_s - training_s) / tasks, 2),
        "gpu_period_s": round(gpu_period_s, 2),
        "training_s": round(training_s, 2),
        "hardware_requests": len(releases),
        "versions": {
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "python": platform.python_version(),
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=1)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--switch-delay", type=float, default=2.0, help="emulated hardware switch (build) seconds")
    ap.add_argument("--poll", type=float, default=2.0, help="the app's POLL_INTERVAL_S")
    ap.add_argument("--out", type=Path, default=None, help="JSON-lines file to append to")
    args = ap.parse_args()
    record = measure(args.tasks, args.steps, args.switch_delay, args.poll)
    out = args.out or ROOT / "benchmarks" / "results" / f"loop_overhead-{record['date']}-cpu.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a") as f:
        f.write(json.dumps(record) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
