"""Checkpoint files `best.pt` / `last.pt`: atomic save, a `weights_only` read, shape checks.

Checkpoint files: `best.pt` / `last.pt` carry their own config and vector width, are written atomically
and read with `torch.load(weights_only=True)` (no code from a file ever runs); every problem is one
`CheckpointError` line naming the file. The models themselves (`lvmlib.model.models`) know no files.
`save_checkpoint(..., keep_previous=True)` keeps the file it replaces as `<name>.prev.pt` (a hard link, no
copy), and `resume_checkpoint` picks what a resume continues from: last.pt, else last.prev.pt, else best.pt.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from lvmlib.core.config import Config, ConfigError, ModelConfig, config_from_dict
from lvmlib.core.errors import CheckpointError, IntegrityError
from lvmlib.core.runs import atomic_path, check_files

RESUME_KEYS = ("epoch", "optimizer", "scheduler", "rng", "history", "train_state")  # what a resume needs


def previous_path(path) -> Path:
    """last.pt -> last.prev.pt: where `save_checkpoint(keep_previous=True)` keeps the file it replaces."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def save_checkpoint(path, model: nn.Module, cfg: Config, d_vec: int, *, keep_previous: bool = False, **extra) -> None:
    """Atomic `{"config", "d_vec", "model": state_dict, **extra}`; extra holds tensors/primitives only
    (the file is read back with `torch.load(weights_only=True)`). `keep_previous`: the file being replaced
    becomes `previous_path(path)` (a hard link renamed into place once the new file is complete, so at every
    instant both names hold a whole checkpoint; a copy only where the filesystem has no hard links)."""
    path = Path(path)
    obj = {"config": cfg.to_dict(), "d_vec": int(d_vec), "model": model.state_dict(), **extra}
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
        if keep_previous and path.is_file():
            _keep_previous(path)


def _keep_previous(path: Path) -> None:
    prev = previous_path(path)
    with atomic_path(prev) as tmp:
        tmp.unlink()
        try:
            os.link(path, tmp)  # the same bytes under a second name: no copy
        except OSError:  # no hard links here (some network or FUSE filesystems)
            shutil.copyfile(path, tmp)


def read_checkpoint(path, map_location="cpu") -> Any:
    """torch.load(weights_only=True) with the project's errors: a file that holds pickled objects
    (found by inspecting its globals after the unpickler refused it, not by torch's wording) is
    refused naming them; anything else unreadable is a truncated or corrupted checkpoint."""
    import pickle

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    check_files([path])  # in a run dir: the bytes training wrote (IntegrityError names a changed file)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, bad pickle, foreign object...
        unsafe: list[str] = []
        if isinstance(exc, pickle.UnpicklingError):
            try:
                unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
            except Exception:  # not a zip checkpoint at all: corrupted
                unsafe = []
        if unsafe:  # torch's own text suggests weights_only=False: the one thing not to do with such a file
            raise CheckpointError(
                f"{path}: refused: it holds a pickled object ({', '.join(unsafe[:3])}), not just "
                "tensors and plain values; checkpoints are read with torch.load(weights_only=True) "
                "so that no code from a file is ever run"
            ) from None
        msg = str(exc)
        detail = re.search(r"WeightsUnpickler error:\s*(.+)", msg)
        first = detail.group(1).strip() if detail else (msg.strip().splitlines() or [""])[0]
        raise CheckpointError(
            f"{path}: not a readable checkpoint (truncated or corrupted?): {type(exc).__name__}: {first[:200]}"
        ) from None


def load_checkpoint(
    path, map_location="cpu", *, model_cfg: ModelConfig | None = None, d_vec: int | None = None, scan: str | None = None
):
    """-> (model, cfg, ckpt). The model is built from the checkpoint's config and d_vec unless
    `model_cfg`/`d_vec` are given (then a checkpoint of another shape is refused). `scan` overrides
    the stored backend; a stored 'cuda' falls back to 'auto' where mamba_ssm cannot run."""
    from lvmlib.model.models import build_model  # the model module knows no files; this one builds from them

    path = Path(path)
    ckpt = read_checkpoint(path, map_location)
    if not isinstance(ckpt, dict) or not {"config", "d_vec", "model"} <= set(ckpt):
        raise CheckpointError(f"{path}: not an lvm-study checkpoint (needs keys config, d_vec, model)")
    try:
        cfg = config_from_dict(ckpt["config"], where=str(path))
    except ConfigError as exc:
        raise CheckpointError(f"{path}: stored config is invalid: {exc}") from None
    mcfg = model_cfg if model_cfg is not None else cfg.model
    width = d_vec if d_vec is not None else int(ckpt["d_vec"])
    if d_vec is not None and d_vec != int(ckpt["d_vec"]):
        raise CheckpointError(
            f"{path}: checkpoint was trained on vectors of width {ckpt['d_vec']}, asked for width {d_vec}"
        )
    mcfg = mcfg.model_copy(update={"scan": scan or mcfg.scan})
    if mcfg.scan == "cuda" and scan is None:
        from lvmlib.model.scan import cuda_available

        mcfg.scan = "cuda" if cuda_available() else "auto"
    model = build_model(mcfg, width)
    mine = model.state_dict()
    bad = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(mine[k].shape)}"
        for k, v in ckpt["model"].items()
        if k in mine and mine[k].shape != v.shape and k not in getattr(model, "sized_by_fit", ())
    ]
    missing = sorted(set(mine) - set(ckpt["model"]))
    unexpected = sorted(set(ckpt["model"]) - set(mine))
    if bad or missing or unexpected:
        raise CheckpointError(
            f"{path}: checkpoint does not fit a {mcfg.kind} model (d_model={mcfg.d_model}, "
            f"n_layers={mcfg.n_layers}, d_state={mcfg.d_state}, d_vec={width}): "
            + "; ".join(
                bad[:5]
                + [f"missing {missing[:5]}"] * bool(missing)
                + [f"unexpected {unexpected[:5]}"] * bool(unexpected)
            )
        )
    model.load_state_dict(ckpt["model"])
    return model.to(map_location) if isinstance(map_location, (str, torch.device)) else model, cfg, ckpt


def resume_checkpoint(run_dir) -> tuple[Path | None, list[str]]:
    """Which checkpoint `train(resume=True)` continues from: last.pt when it reads, else last.prev.pt, else
    best.pt if it carries the resume state (`RESUME_KEYS`). -> (path or None when the run has no last.pt
    and no last.prev.pt yet, i.e. a fresh start; the unreadable files passed over, one "name: why" each).
    Raises CheckpointError naming the files and the fix when there are checkpoints but none to resume from."""
    run_dir = Path(run_dir)
    last = run_dir / "last.pt"
    candidates = [last, previous_path(last), run_dir / "best.pt"]
    if not any(p.is_file() for p in candidates[:2]):
        return None, []
    skipped: list[str] = []
    for p in candidates:
        if not p.is_file():
            skipped.append(f"{p.name}: not found")
            continue
        try:
            ck = read_checkpoint(p)
        except IntegrityError:  # its bytes are not those training wrote (a truncated copy, a flipped bit)
            skipped.append(f"{p.name}: changed since training wrote it (python -m lvmlib verify names how)")
            continue
        except CheckpointError as exc:  # torch's long words stay out of the one line; reading the file shows them
            why = str(exc).removeprefix(f"{p}: ")
            skipped.append(
                f"{p.name}: {'not a readable checkpoint (truncated or corrupted?)' if 'not a readable' in why else why}"
            )
            continue
        lacks = [k for k in RESUME_KEYS if not isinstance(ck, dict) or k not in ck]
        if lacks:
            skipped.append(f"{p.name}: lacks the resume state ({', '.join(lacks)})")
            continue
        return p, skipped
    raise CheckpointError(
        f"{run_dir}: no checkpoint to resume from ({'; '.join(skipped)}); remove "
        f"{last} and {previous_path(last)} to train again from epoch 1, or start a new run"
    )
