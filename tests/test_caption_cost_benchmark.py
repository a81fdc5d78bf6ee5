"""The caption cost benchmark (``benchmarks/caption_cost.py``): its main run for real on the tiny Florence-2, and its
committed full-size CPU record checked as data against the figures the estimate uses (``contract.caption_models``)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from contract.caption_models import (
    CAPTION_CPU_LOAD_S,
    CAPTION_CPU_S_PER_PHOTO,
    DEFAULT_CAPTION_MODEL,
    KNOWN_PARAMS,
    MAX_NEW_TOKENS,
    caption_seconds,
)

ROOT = Path(__file__).resolve().parents[1]
FIELDS = {"benchmark", "model", "device", "machine", "date", "dtype", "photos", "size", "params", "max_new_tokens",
          "tokens_generated", "load_s", "caption_s", "caption_cpu_s", "s_per_photo", "cpu_s_per_photo", "close_s",
          "versions"}  # fmt: skip


def test_the_benchmark_runs_on_the_tiny_model_and_records_forced_length_captions(tmp_path):
    spec = importlib.util.spec_from_file_location("caption_cost", ROOT / "benchmarks" / "caption_cost.py")
    caption_cost = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(caption_cost)
    out = tmp_path / "record.jsonl"
    assert caption_cost.main(["--tiny", "--photos", "3", "--size", "96", "--out", str(out)]) == 0
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert FIELDS <= set(record) and record["benchmark"] == "caption_cost" and record["model"] == "tiny"
    assert (record["photos"], record["size"], record["device"], record["dtype"]) == (3, 96, "cpu", "float32")
    assert record["tokens_generated"] == 3 * MAX_NEW_TOKENS == 3 * record["max_new_tokens"]  # forced: no early stop
    assert 0 < record["params"] < 100_000 and record["load_s"] > 0 and record["caption_s"] > 0
    assert record["s_per_photo"] == round(record["caption_s"] / 3, 3)
    assert len(record["caption_chars"]) == 3 and all(n > 0 for n in record["caption_chars"])


def test_the_committed_cpu_record_is_full_size_and_within_the_figures_used():
    files = sorted((ROOT / "benchmarks" / "results").glob("caption_cost-*-cpu.jsonl"))
    records = [json.loads(line) for f in files for line in f.read_text().splitlines() if line.strip()]
    full = [r for r in records if r["model"] == DEFAULT_CAPTION_MODEL]
    assert full, "no committed full-size CPU record of benchmarks/caption_cost.py"
    for r in full:
        assert FIELDS <= set(r) and r["size"] == 512 and r["photos"] >= 4 and r["dtype"] == "float32"
        assert r["params"] == KNOWN_PARAMS[DEFAULT_CAPTION_MODEL]
        assert r["tokens_generated"] == r["photos"] * r["max_new_tokens"] == r["photos"] * MAX_NEW_TOKENS
        assert r["cpu_s_per_photo"] <= CAPTION_CPU_S_PER_PHOTO  # the estimate's figure per photo on a CPU
        assert r["load_cpu_s"] <= CAPTION_CPU_LOAD_S


def test_caption_seconds_counts_the_load_and_each_photo():
    assert caption_seconds(0, "cpu") == 0.0 == caption_seconds(0, "cuda")
    assert caption_seconds(10, "cpu") == CAPTION_CPU_LOAD_S + 10 * CAPTION_CPU_S_PER_PHOTO
    assert caption_seconds(20, "cuda") - caption_seconds(10, "cuda") < caption_seconds(20, "cpu") - caption_seconds(10, "cpu")
    assert caption_seconds(1, "cuda") > 0
