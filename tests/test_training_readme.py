"""training/README.md's task example runs as written (only its images folder replaced), through the real CLI."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from contract.settings import DEMO_DIR_VAR
from tests.tiny_models import make_images
from training.demo import DEMO_MODEL

REPO_ROOT = Path(__file__).resolve().parents[1]


def readme_task() -> dict:
    text = (REPO_ROOT / "training" / "README.md").read_text()
    blocks = re.findall(r"```json\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 1, "training/README.md should hold exactly one task.json example"
    return json.loads(blocks[0])


def test_the_readme_task_example_runs_as_written(tmp_path):
    task = readme_task()
    assert task["base_model"] == DEMO_MODEL and task["images"] == "/path/to/your/photos"
    make_images(tmp_path / "photos", 3, size=64)
    task["images"] = str(tmp_path / "photos")
    (tmp_path / "task.json").write_text(json.dumps(task))
    env = {**os.environ, DEMO_DIR_VAR: str(tmp_path / "demo-sd")}
    proc = subprocess.run(
        [sys.executable, "-m", "training", "--task", "task.json", "--workdir", "work", "--progress", "work/events.jsonl",
         "--progress-bar", "off"],
        cwd=tmp_path, env={**env, "PYTHONPATH": str(REPO_ROOT)}, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = tmp_path / "work" / "output"
    assert (out / "pytorch_lora_weights.safetensors").exists() and (out / "README.md").exists()
    steps = task["params"]["steps"]
    assert (out / "samples" / f"step{steps}_0.png").exists()
    events = [json.loads(line) for line in (tmp_path / "work" / "events.jsonl").read_text().splitlines()]
    assert events[-1]["event"] == "done"
