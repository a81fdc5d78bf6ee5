"""What the model-cost benchmarks (``scoring_cost``, ``caption_cost``) share: the machine's name in a record, and
appending a record to its JSON-lines file under ``benchmarks/results``."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def machine(device: str) -> str:
    """The GPU's name, or the CPU's with its core count."""
    import torch

    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def run_fields(device: str) -> dict[str, Any]:
    """A record's fields about the run itself: device, machine, date, the dtype models run in there, versions."""
    import torch
    import transformers

    return {"device": device, "machine": machine(device), "date": dt.date.today().isoformat(),
            "dtype": "float16" if device == "cuda" else "float32",
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                         "python": platform.python_version()}}  # fmt: skip


def append_record(record: dict[str, Any], out: Path | None, *, tiny: bool) -> Path:
    """Append ``record`` (with its ``benchmark``, ``date`` and ``device``) to ``out``, by default
    ``benchmarks/results/<benchmark>-<date>-<device>[-tiny].jsonl``, print it, and return the file."""
    out = out or RESULTS / f"{record['benchmark']}-{record['date']}-{record['device']}{'-tiny' if tiny else ''}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a") as f:
        f.write(json.dumps(record) + "\n")
    print(json.dumps(record, indent=1))
    return out
