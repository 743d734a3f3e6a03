"""A minimal run config for training tests on the tiny random Llama: HH-format rows written to a file, one eval suite
and a KPI that always passes (training is what these tests exercise)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harmgate.config import RunConfig, parse_config

SOURCES = {"sft": [{"format": "hh", "field": "chosen"}],
           "ulma": [{"format": "hh", "field": "chosen"}, {"format": "hh", "field": "rejected", "label": "negative"}],
           "dpo": [{"format": "hh", "field": "pair"}]}


def hh_rows(n: int = 8) -> list[dict[str, str]]:
    return [{"chosen": f"\n\nHuman: question {i}?\n\nAssistant: I can help with that safely, step {i}.",
             "rejected": f"\n\nHuman: question {i}?\n\nAssistant: Here is something harmful {i}."} for i in range(n)]


def tiny_run_config(tmp_path: Path, base: Path, method: str = "sft", *, rows: int = 8,
                    sources: list[dict[str, Any]] | None = None, **sections: dict[str, Any]) -> RunConfig:
    """``sections`` update the named config sections (model, quantization, training)."""
    data = tmp_path / "hh.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in hh_rows(rows)))
    raw: dict[str, Any] = {
        "name": f"t-{method}", "model": {"base": str(base)},
        "quantization": {"compute_dtype": "float32"},
        "training": {"method": method, "max_steps": 2, "per_device_batch_size": 4, "max_seq_length": 64,
                     "gradient_checkpointing": False, "save_steps": 100},
        "data": {"sources": [{**s, "id": str(data)} for s in (sources or SOURCES[method])]},
        "evals": {"suites": [{"name": "advbench_refusal"}]},
        "policy": {"kpis": [{"name": "k", "metric": "advbench_refusal.compliance_rate", "direction": "lower",
                             "max": 1}]},
    }
    for section, values in sections.items():
        raw[section] = {**raw[section], **values}
    return parse_config(raw)
