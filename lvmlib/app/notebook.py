"""What every stage notebook does first and last, so a notebook holds only its story.

`setup` is the first code cell's one call: the stage's config (the params file or the run's resolved
params.yaml, plus overrides; outside the runner it records a tweak, see `runner.notebook_config`) with
the reports' plot theme applied. `record` is the closing cell's one call: the stage's headline numbers,
built here from what the stage returned, printed as JSON (02_train's also land in metrics/train.json).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lvmlib.core.config import Config

EVAL_RECORD_KEYS = (
    "pred_target_cosine",
    "recall_at_1",
    "recall_at_5",
    "recall_at_10",
    "n_queries",
    "bank_size",
    "primary_model",
    "primary_bank",
    "primary_context",
    "decision",
    "beats_best_baseline",
    "best_baseline",
)
GATES_RECORD_KEYS = ("gate_val_cosine", "threshold", "passed", "decision")


def setup(params_path: str, run_dir: str, overrides: list | None, stage: str) -> Config:
    """-> the config `stage` runs with (see `runner.notebook_config`), the plot theme applied."""
    from lvmlib.app.runner import notebook_config
    from lvmlib.plots import training as plots

    plots.theme()
    return notebook_config(params_path, run_dir, overrides, stage=stage)


def _data(run_dir: Path, summary: dict[str, Any]) -> dict[str, Any]:
    return {
        "chunks": summary["counts"]["chunks"],
        "windows": summary["counts"]["windows"],
        "audit_passed": summary["audit"]["passed"],
        "d_vec": summary["d_vec"],
        "trivial": summary["trivial"],
        "seconds": summary["seconds"],
    }


def _train(run_dir: Path, summary: dict[str, Any]) -> dict[str, Any]:
    from lvmlib.core.runs import atomic_write_json

    atomic_write_json(run_dir / "metrics" / "train.json", summary)
    return summary


def _gates(run_dir: Path, gate: dict[str, Any]) -> dict[str, Any]:
    return {k: gate[k] for k in GATES_RECORD_KEYS}


def _eval(run_dir: Path, ev: dict[str, Any]) -> dict[str, Any]:
    return {
        **{k: ev[k] for k in EVAL_RECORD_KEYS},
        "baseline_copy_last": ev["baseline_copy_last"],
        "eval_json": ev["out_dir"] + "/eval.json",
    }


RECORDS: dict[str, Callable[[Path, dict[str, Any]], dict[str, Any]]] = {
    "01_data": _data,
    "02_train": _train,
    "03_gates": _gates,
    "04_eval": _eval,
}


def record(stage: str, run_dir: str | Path, result: dict[str, Any]) -> None:
    """Print the headline numbers of `stage` from its result (data summary, training summary, gate,
    eval.json) as JSON: the last lines of the stage's report."""
    print(json.dumps(RECORDS[stage](Path(run_dir), result), indent=1))
