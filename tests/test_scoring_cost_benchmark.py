"""The scoring cost benchmark (``benchmarks/scoring_cost.py``): run for real on tiny models in a subprocess, and its
committed full-size CPU record checked as data against the figures the memory plan and the estimate use
(``contract.scoring_models``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from contract.scoring_models import DEFAULT_CLIP_MODEL, DEFAULT_DINO_MODEL, SCORERS_CPU_S

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "scoring_cost.py"
FIELDS = {"benchmark", "models", "device", "machine", "date", "dtype", "images", "size", "photos", "load_s", "score_s",
          "close_s", "point_s", "point_cpu_s", "photo_s", "peak_gib", "estimated_gib", "scores", "versions"}  # fmt: skip


def test_the_benchmark_runs_on_tiny_models_and_records_a_scoring_point(tmp_path):
    out = tmp_path / "record.jsonl"
    args = ["--tiny", "--images", "3", "--size", "96", "--photos", "2", "--out", str(out)]
    done = subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert FIELDS <= set(record) and record["benchmark"] == "scoring_cost" and record["device"] == "cpu"
    assert (record["images"], record["size"], record["photos"]) == (3, 96, 2)
    assert record["point_s"] >= record["score_s"] > 0 and record["load_s"] > 0
    assert record["peak_gib"] >= 0 and record["estimated_gib"] > 0
    assert set(record["scores"]) == {"dino", "clip_i", "clip_t"}
    assert all(-1 <= v <= 1 for v in record["scores"].values())


def test_the_committed_cpu_record_is_at_full_size_and_within_the_figures_used():
    files = sorted((ROOT / "benchmarks" / "results").glob("scoring_cost-*-cpu.jsonl"))
    assert files, "no committed CPU record of benchmarks/scoring_cost.py"
    records = [json.loads(line) for f in files for line in f.read_text().splitlines() if line.strip()]
    full = [r for r in records if r["models"] == {"dino": DEFAULT_DINO_MODEL, "clip": DEFAULT_CLIP_MODEL}]
    assert full and all(FIELDS <= set(r) for r in full)
    for r in full:
        assert r["images"] >= 4 and r["size"] == 512 and r["photos"] == 5
        assert r["peak_gib"] <= r["estimated_gib"]  # scoring_memory_gib (fp32 on a CPU) bounds the measured peak
        assert r["point_cpu_s"] <= SCORERS_CPU_S  # the estimate's figure for the scoring models on a CPU
