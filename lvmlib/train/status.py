"""A training run's progress read from its files alone (safe while it trains), and the training summary.

How a run's training is doing, from its files alone (safe while it trains): `python -m lvmlib status
RUN` (`status`; RUN is a run id under --runs-root or a path) and the headline of a finished training step (`training_summary`, 02_train's
record cell). Reads history.json, train_progress.json, the run lock and params.yaml; writes nothing.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from lvmlib.core.config import Config, load_config
from lvmlib.core.errors import RunError
from lvmlib.core.runs import RUN_ID, describe_holder, lock_state, pid_alive, read_json


def read_json_or_none(path: Path) -> Any:
    """A JSON file written atomically by a process that may still run, or None (missing, unreadable)."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _alive(prog: dict) -> bool | None:
    """Is the training process running? None when it ran on another host."""
    if not prog or not prog.get("pid"):
        return None
    if prog.get("host") != platform.node():
        return None
    return pid_alive(int(prog["pid"])) and prog.get("state") == "running"


def _hms(sec: float) -> str:
    sec = int(max(0, sec))
    return f"{sec // 3600:d}:{sec // 60 % 60:02d}:{sec % 60:02d}"


def find_run(run: str | Path, runs_root: str | Path = "runs") -> Path:
    """The run folder `run` names: a path that exists, else a run id under `runs_root` (as `run --run-id`
    names it). RunError when it is neither."""
    path = Path(run)
    if path.exists():
        return path
    if RUN_ID.fullmatch(str(run)) and (Path(runs_root) / str(run)).exists():
        return Path(runs_root) / str(run)
    raise RunError(f"{run}: no such run directory (neither a path nor a run id under {runs_root})")


def status(run_dir: str | Path, runs_root: str | Path = "runs") -> str:
    """A text report of a run's training, safe to call while it trains (files are written atomically):
    current epoch, epoch-2 verdict, history table, sequences/s, ETA, whether the training pid is alive.
    `run_dir`: a path or a run id under `runs_root`."""
    from lvmlib.train.gates import epoch_gate

    run_dir = find_run(run_dir, runs_root)
    if not run_dir.is_dir():
        raise RunError(f"{run_dir}: no such run directory")
    run_files = ("manifest.json", "params.yaml", "history.json", "train_progress.json")
    if not any((run_dir / f).exists() for f in run_files):
        raise RunError(f"{run_dir}: not a run directory (none of {', '.join(run_files)})")
    history = read_json_or_none(run_dir / "history.json")
    if history is None and (run_dir / "history.json").exists():
        raise RunError(
            f"{run_dir / 'history.json'}: corrupt (not valid JSON — truncated?); last.pt holds the "
            "history of its epoch: `python -m lvmlib run --resume` rewrites it"
        )
    history = history or []
    prog = read_json_or_none(run_dir / "train_progress.json") or {}
    try:
        cfg = load_config(run_dir / "params.yaml")
    except Exception:  # a run dir without params (or with a broken one) still gets a report
        cfg = Config()
    epochs = prog.get("epochs") or cfg.train.epochs
    live, holder = lock_state(run_dir)  # the run's lock says whether any process still runs it
    alive = False if live is False else _alive(prog)
    state = prog.get("state", "not started" if not history else "unknown")
    if state == "running" and alive is False:  # its process is gone without a word: SIGKILL, a dead kernel
        state = "stopped (its process is gone: killed or crashed)"
    proc = {
        True: f"alive (pid {prog.get('pid')})",
        False: f"not running (pid {prog.get('pid')})",
        None: f"unknown (pid {prog.get('pid')} on {prog.get('host')})" if prog.get("pid") else "no training process",
    }
    lines = [f"run {run_dir}", f"training: {state}; process {proc[alive]}"]
    manifest = read_json_or_none(run_dir / "manifest.json") or {}
    if live:
        lines.insert(1, f"run status: {manifest.get('status', '?')}; live: {describe_holder(holder)}")
    elif manifest.get("status") in ("failed", "interrupted"):  # the runner's own words, resume command included
        lines.insert(
            1, f"run status: {manifest['status']}" + (f" — {manifest['failure']}" * bool(manifest.get("failure")))
        )
    elif manifest.get("status") == "running" or state == "running":
        lines.insert(
            1,
            f"run status: {manifest.get('status', '?')} in manifest.json, but no process holds the run "
            f"(last {describe_holder(holder) if holder else 'holder unknown'}): it was killed or crashed; "
            f"continue with: python -m lvmlib run --resume {run_dir}",
        )
    elif manifest.get("status"):
        lines.insert(
            1, f"run status: {manifest['status']}" + (f" — {manifest['failure']}" if manifest.get("failure") else "")
        )
    if prog.get("error") and prog.get("state") == "interrupted":  # a signal, not an error: no exception name
        lines.append(f"training was interrupted; continue with: python -m lvmlib run --resume {run_dir}")
    elif prog.get("error"):
        lines.append(f"error: {prog['error']}")
    done = len(history)
    if alive:
        cur, step, spe = prog.get("epoch", done + 1), prog.get("step", 0), prog.get("steps_per_epoch", 0)
        lines.append(
            f"epoch {cur}/{epochs} in progress (step {step}/{spe} at last update, "
            f"{_hms(time.time() - prog.get('updated_at', time.time()))} ago)"
        )
        # runs resumed before 2026-12-07 restored records without "seconds" (last.pt was written before it was set)
        spent = [r.get("seconds") or r.get("train_seconds", 0) + r.get("val_seconds", 0) for r in history]
        per_epoch = np.mean(spent) if history else None
        if per_epoch is None and step and prog.get("epoch_started_at"):
            per_epoch = (prog["updated_at"] - prog["epoch_started_at"]) * spe / step
        if per_epoch:
            left = (epochs - done) * per_epoch - (time.time() - prog.get("epoch_started_at", time.time()))
            lines.append(
                f"ETA <= {_hms(left)} for the remaining {epochs - done} epoch(s) (early stopping or the "
                "decision tree may end it sooner)"
            )
    else:
        lines.append(
            f"epochs done: {done}/{epochs}"
            + (f", stop reason {history[-1].get('stop_reason')}" if history and history[-1].get("stop_reason") else "")
        )
    from lvmlib.train.gates import baseline_val_cosines

    base = baseline_val_cosines(run_dir)
    try:
        gate = epoch_gate(history, cfg.gates, max(base.values()) if base else None)
    except ValueError as exc:
        gate = {"decision": None, "reason": str(exc)}
    lines.append(f"epoch-{cfg.gates.epoch} gate: {gate['decision'] or 'pending'} — {gate['reason']}")
    if history:
        rates = [r["seq_per_s"] for r in history if r.get("seq_per_s")]
        if rates:
            lines.append(f"sequences/s: last {rates[-1]:.0f}, mean {np.mean(rates):.0f}")
        cols = (
            "epoch",
            "train_loss",
            "train_infonce",
            "train_ar_cosine",
            "val_cosine",
            "val_infonce",
            "val_recall_at_5",
            "lr",
            "seq_per_s",
            "seconds",
        )
        lines.append(" ".join(f"{c:>15}" for c in cols) + "  decision")
        for r in history:
            cells = []
            for c in cols:
                v = r.get(c)
                cells.append(
                    f"{'':>15}"
                    if v is None
                    else f"{v:>15d}"
                    if isinstance(v, int)
                    else f"{v:>15.2e}"
                    if c == "lr"
                    else f"{v:>15.1f}"
                    if c in ("seq_per_s", "seconds")
                    else f"{v:>15.4f}"
                )
            lines.append(
                " ".join(cells)
                + f"  {r.get('decision') or ''}{' *' if r.get('is_best') else ''}"
                + (" STOP" if r.get("decision_stop") else "")
            )
    return "\n".join(lines)


def training_summary(run_dir: str | Path) -> dict[str, Any]:
    """Headline numbers of a finished training step (for 02_train's summary and record cells)."""
    run_dir = Path(run_dir)
    history = read_json(run_dir / "history.json")
    prog = read_json_or_none(run_dir / "train_progress.json") or {}
    cfg = load_config(run_dir / "params.yaml") if (run_dir / "params.yaml").is_file() else None
    metric = cfg.train.best_metric if cfg else "val_cosine"
    best = next((r for r in reversed(history) if r.get("is_best")), history[-1] if history else {})
    n_params = prog.get("n_params")
    if n_params is None and (run_dir / "best.pt").is_file():
        from lvmlib.model.checkpoint import read_checkpoint

        n_params = read_checkpoint(run_dir / "best.pt").get("n_params")
    return {
        "n_params": n_params,
        "epochs_trained": len(history),
        "epochs_planned": prog.get("epochs") or (cfg.train.epochs if cfg else None),
        "best_metric": metric,
        "best_epoch": best.get("epoch"),
        "best_value": best.get(metric),
        "best_val_cosine": max((r["val_cosine"] for r in history), default=None),
        "final_val_cosine": history[-1]["val_cosine"] if history else None,
        "final_val_recall_at_5": history[-1].get("val_recall_at_5") if history else None,
        "stop_reason": history[-1].get("stop_reason") if history else None,
        "decision": next((r.get("decision") for r in reversed(history) if r.get("decision")), None),
        "mean_seq_per_s": float(np.mean([r["seq_per_s"] for r in history if r.get("seq_per_s")]))
        if any(r.get("seq_per_s") for r in history)
        else None,
        "train_seconds": float(sum(r.get("seconds", 0.0) for r in history)),
    }
