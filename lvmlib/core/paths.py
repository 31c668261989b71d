"""Where things are: the project root, the study's notebooks, the embedding cache, the notebook engine."""

from __future__ import annotations

import os
from pathlib import Path

from lvmlib.core.config import DataConfig

PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent
NOTEBOOK_DIR = PROJECT_ROOT / "notebooks"
NOTEBOOKS = ("01_data", "02_train", "03_gates", "04_eval")  # the study's stages, in order
ENGINE = "papermill"  # executes notebooks (its version is recorded in every manifest)
KERNEL_NAME = "lvm-study"


def cache_root(cfg: DataConfig | None = None) -> Path:
    """`data.cache_dir`, else $LVM_CACHE_DIR, else ~/.cache/lvm-study."""
    if cfg is not None and cfg.cache_dir:
        return Path(cfg.cache_dir).expanduser()
    return Path(os.environ.get("LVM_CACHE_DIR") or Path.home() / ".cache" / "lvm-study")
