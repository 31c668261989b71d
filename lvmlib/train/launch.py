"""Training on several processes: `train.nproc > 1` re-runs the trainer under torchrun and relays its output.

`python -m lvmlib.train RUN_DIR --params YAML [--resume]` (documented in docs/training.md, `lvmlib/train/__main__.py`)
is what torchrun starts on every rank.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from lvmlib.core.config import Config, dump_config
from lvmlib.core.errors import TrainingDiverged, TrainingFailed
from lvmlib.core.runs import atomic_write_text, read_json
from lvmlib.train.status import read_json_or_none


def launch_torchrun(cfg: Config, run_dir: Path, resume: bool, progress: bool) -> list[dict]:
    """Run this module under torchrun with cfg.train.nproc processes; stream its output; history."""
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg_path = run_dir / ".train_launch.yaml"  # the exact config (overrides included) for the workers
    atomic_write_text(cfg_path, dump_config(cfg))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={cfg.train.nproc}",
        "-m",
        "lvmlib.train",
        str(run_dir),
        "--params",
        str(cfg_path),
    ]
    cmd += ["--resume"] * resume + ["--no-progress"] * (not progress)
    print("launching:", " ".join(cmd), flush=True)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    assert proc.stdout is not None
    for line in proc.stdout:  # relayed so the notebook / terminal sees the workers
        print(line, end="", flush=True)
    rc = proc.wait()
    cfg_path.unlink(missing_ok=True)
    if rc != 0:
        prog = read_json_or_none(run_dir / "train_progress.json") or {}
        if prog.get("state") == "diverged":
            raise TrainingDiverged(prog.get("error"))
        raise TrainingFailed(
            f"torchrun exited with status {rc}: {prog.get('error') or 'see the output above'}"
            f" (log: {run_dir / 'train.log'})"
        )
    return read_json(run_dir / "history.json")
