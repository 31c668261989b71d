"""`python -m lvmlib.train RUN_DIR --params YAML [--resume]`: the trainer on one rank (what torchrun starts)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lvmlib.core.config import load_config
from lvmlib.train.loop import train


def main(argv: list[str] | None = None) -> int:
    """`python -m lvmlib.train RUN_DIR --params YAML [--resume]` (what torchrun runs on every rank)."""
    ap = argparse.ArgumentParser(prog="python -m lvmlib.train")
    ap.add_argument("run_dir")
    ap.add_argument("--params", default=None, help="params YAML (default RUN_DIR/params.yaml)")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    cfg = load_config(a.params or Path(a.run_dir) / "params.yaml", a.overrides)
    train(cfg, a.run_dir, resume=a.resume, progress=not a.no_progress)
    return 0


if __name__ == "__main__":
    sys.exit(main())
