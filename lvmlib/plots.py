"""Training-curve figures for 02_train (history.json records in, matplotlib Figure out).

Metric names on axes and legends are the history keys (`val_cosine`, `val_recall_at_5`, ...), so a
number in a plot can be found in the JSON by the same name.
"""
from __future__ import annotations

from typing import Any

# No matplotlib.use(...) here: in Jupyter the inline backend must stay active for figures to show;
# headless terminals fall back to Agg by themselves.
import matplotlib.pyplot as plt

GATE, LOWER, BLUE, GREY = "#15803d", "#b45309", "#1d4ed8", "#6b7280"


def _epochs(history: list[dict[str, Any]]) -> list[int]:
    return [r["epoch"] for r in history]


def _series(history: list[dict[str, Any]], key: str) -> list[float | None]:
    return [r.get(key) for r in history]


def val_cosine_curve(history: list[dict[str, Any]], threshold: float = 0.50, lower: float | None = 0.40,
                     gate_epoch: int = 2, ax=None):
    """val_cosine per epoch with the gate line (0.50), the lower bar, the gate epoch, best and stop marks."""
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(7, 3.6))
    ep = _epochs(history)
    ax.plot(ep, _series(history, "val_cosine"), "o-", color=BLUE, label="val_cosine")
    ax.axhline(threshold, color=GATE, ls="--", label=f"gate {threshold:.2f}")
    if lower is not None:
        ax.axhline(lower, color=LOWER, ls=":", label=f"lower {lower:.2f}")
    ax.axvline(gate_epoch, color=GREY, lw=0.8)
    best = [r for r in history if r.get("is_best")]
    if best:
        b = best[-1]
        ax.plot([b["epoch"]], [b["val_cosine"]], "*", ms=14, color="#f59e0b", label=f"best.pt (epoch {b['epoch']})")
    stop = [r for r in history if r.get("stop_reason") and r.get("stop_reason") != "completed"]
    if stop:
        ax.annotate(f"stop: {stop[-1]['stop_reason']}", (stop[-1]["epoch"], stop[-1]["val_cosine"]),
                    textcoords="offset points", xytext=(-10, -18), ha="right", fontsize=8, color=GREY)
    ax.set_xlabel("epoch")
    ax.set_ylabel("val_cosine")
    ax.set_title("Validation cosine (prediction vs. true next chunk)")
    ax.set_xticks(ep)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def loss_curves(history: list[dict[str, Any]], ax=None):
    """train_loss and its terms (train_infonce, train_ar_cosine) with val_infonce, per epoch."""
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(7, 3.6))
    ep = _epochs(history)
    for key, style, color in (("train_loss", "o-", "#111827"), ("train_infonce", "s--", BLUE),
                              ("val_infonce", "s-", "#7c3aed"), ("train_ar_cosine", "^--", LOWER)):
        if any(v is not None for v in _series(history, key)):
            ax.plot(ep, _series(history, key), style, color=color, label=key, ms=4)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title("Losses (InfoNCE over the effective batch; AR = 1 - cos)")
    ax.set_xticks(ep)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def recall_curve(history: list[dict[str, Any]], ax=None):
    """val_recall_at_5 per epoch against evaluation's primary bank (every chunk, context removed)."""
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(7, 3.2))
    ep = _epochs(history)
    ax.plot(ep, [100 * (v or 0.0) for v in _series(history, "val_recall_at_5")], "o-", color=GATE,
            label="val_recall_at_5")
    bank = history[-1].get("val_bank_size") if history else None
    ax.set_xlabel("epoch")
    ax.set_ylabel("val_recall_at_5 (%)")
    ax.set_title(f"Validation R@5 against all {bank:,} chunks (context removed)" if bank else "Validation R@5")
    ax.set_xticks(ep)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def lr_curve(history: list[dict[str, Any]], warmup_steps: int, epochs: int, base_lr: float,
             min_lr_ratio: float = 0.0, ax=None):
    """The planned per-step schedule (warmup then cosine) with the lr each epoch actually ended on."""
    from .train import lr_factor
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(7, 3.2))
    trained = [r for r in history if r.get("steps")]
    if trained:
        per_epoch = trained[0]["steps"] // trained[0]["epoch"]
        total = per_epoch * epochs
        steps = list(range(total))
        ax.plot(steps, [base_lr * lr_factor(s, warmup_steps, total, min_lr_ratio) for s in steps], color=GREY,
                lw=1, label="schedule (per optimizer step)")
        ax.plot([r["steps"] - 1 for r in trained], [r["lr"] for r in trained], "o", color=BLUE,
                label="lr at the end of each epoch")
        ax.axvline(min(warmup_steps, total), color=LOWER, ls=":", lw=0.8, label=f"warmup {warmup_steps} steps")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("lr")
    ax.set_title("Learning rate")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
