"""The one figure theme of every report, and the training-curve figures of 02_train.

`theme()` runs when any lvmlib plotting module is imported (they all import this one), so every
report, and a notebook opened in Jupyter, draws with the same seaborn theme. Curves go through
seaborn on tidy DataFrames (`history_frame`: one row per epoch and metric); matplotlib adds only
what seaborn does not draw (reference lines, markers, annotations).

Metric names on axes and legends are the history keys (`val_cosine`, `val_recall_at_5`, ...), so a
number in a plot can be found in the JSON by the same name.
"""

from __future__ import annotations

from typing import Any

# No matplotlib.use(...) here: in Jupyter the inline backend must stay active for figures to show;
# headless terminals fall back to Agg by themselves.
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

GATE, LOWER, BLUE, GREY = "#15803d", "#b45309", "#1d4ed8", "#6b7280"
THEME = {
    "style": "whitegrid",
    "context": "notebook",
    "font_scale": 0.85,
    "rc": {
        "axes.titlesize": 11,
        "legend.fontsize": 8,
        "legend.title_fontsize": 8,
        "grid.color": "#e5e7eb",
        "axes.edgecolor": "#d1d5db",
        "savefig.bbox": "tight",
        "figure.dpi": 100,
    },
}


def theme() -> None:
    """Apply the reports' seaborn theme (called once, on import)."""
    sns.set_theme(**THEME)


theme()


def history_frame(history: list[dict[str, Any]], keys: tuple[str, ...]) -> pd.DataFrame:
    """Tidy per-epoch metrics: columns epoch, metric, value (missing values dropped)."""
    rows = [
        {"epoch": r["epoch"], "metric": k, "value": r[k]}
        for r in history
        for k in keys
        if isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool)
    ]
    return pd.DataFrame(rows, columns=["epoch", "metric", "value"])


def _epochs(history: list[dict[str, Any]]) -> list[int]:
    return [r["epoch"] for r in history]


def val_cosine_curve(
    history: list[dict[str, Any]], threshold: float = 0.50, lower: float | None = 0.40, gate_epoch: int = 2, ax=None
):
    """val_cosine per epoch with the gate line (0.50), the lower bar, the gate epoch, best and stop marks."""
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(7, 3.6))
    ep = _epochs(history)
    sns.lineplot(
        data=history_frame(history, ("val_cosine",)),
        x="epoch",
        y="value",
        marker="o",
        color=BLUE,
        label="val_cosine",
        ax=ax,
    )
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
        ax.annotate(
            f"stop: {stop[-1]['stop_reason']}",
            (stop[-1]["epoch"], stop[-1]["val_cosine"]),
            textcoords="offset points",
            xytext=(-10, -18),
            ha="right",
            fontsize=8,
            color=GREY,
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel("val_cosine")
    ax.set_title("Validation cosine (prediction vs. true next chunk)")
    ax.set_xticks(ep)
    ax.legend(loc="best")
    fig.tight_layout()
    return fig


def loss_curves(history: list[dict[str, Any]], ax=None):
    """train_loss and its terms (train_infonce, train_ar_cosine) with val_infonce, per epoch."""
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(7, 3.6))
    keys = ("train_loss", "train_infonce", "val_infonce", "train_ar_cosine")
    df = history_frame(history, keys)
    present = [k for k in keys if k in set(df["metric"])]
    colors = dict(zip(keys, ("#111827", BLUE, "#7c3aed", LOWER)))
    sns.lineplot(
        data=df,
        x="epoch",
        y="value",
        hue="metric",
        style="metric",
        hue_order=present,
        style_order=present,
        palette=colors,
        markers=True,
        ms=5,
        ax=ax,
    )
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title("Losses (InfoNCE over the effective batch; AR = 1 - cos)")
    ax.set_xticks(_epochs(history))
    ax.legend(title=None)
    fig.tight_layout()
    return fig


def recall_curve(history: list[dict[str, Any]], ax=None):
    """val_recall_at_5 per epoch against evaluation's primary bank (every chunk, context removed)."""
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(7, 3.2))
    df = history_frame(history, ("val_recall_at_5",))
    df["value"] = 100 * df["value"]
    sns.lineplot(data=df, x="epoch", y="value", marker="o", color=GATE, ax=ax)
    bank = history[-1].get("val_bank_size") if history else None
    ax.set_xlabel("epoch")
    ax.set_ylabel("val_recall_at_5 (%)")
    ax.set_title(f"Validation R@5 against all {bank:,} chunks (context removed)" if bank else "Validation R@5")
    ax.set_xticks(_epochs(history))
    fig.tight_layout()
    return fig


def lr_curve(
    history: list[dict[str, Any]], warmup_steps: int, epochs: int, base_lr: float, min_lr_ratio: float = 0.0, ax=None
):
    """The planned per-step schedule (warmup then cosine) with the lr each epoch actually ended on."""
    from lvmlib.train.recipe import lr_factor

    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(7, 3.2))
    trained = [r for r in history if r.get("steps")]
    if trained:
        per_epoch = trained[0]["steps"] // trained[0]["epoch"]
        total = per_epoch * epochs
        sched = pd.DataFrame({"step": range(total)})
        sched["lr"] = [base_lr * lr_factor(s, warmup_steps, total, min_lr_ratio) for s in sched["step"]]
        sns.lineplot(data=sched, x="step", y="lr", color=GREY, lw=1, label="schedule (per optimizer step)", ax=ax)
        ends = pd.DataFrame({"step": [r["steps"] - 1 for r in trained], "lr": [r["lr"] for r in trained]})
        sns.scatterplot(data=ends, x="step", y="lr", color=BLUE, s=40, label="lr at the end of each epoch", ax=ax)
        ax.axvline(min(warmup_steps, total), color=LOWER, ls=":", lw=0.8, label=f"warmup {warmup_steps} steps")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("lr")
    ax.set_title("Learning rate")
    ax.legend()
    fig.tight_layout()
    return fig
