"""Figures for 03_gates: the epoch-2 decision tree with the path taken, and the gate on the validation curve.

Figures for 03_gates: the epoch-2 decision tree with the path taken (matplotlib: a diagram, not data),
and the gate on the validation curve (seaborn)."""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import seaborn as sns
from matplotlib.patches import FancyBboxPatch

from lvmlib.plots.training import history_frame  # (importing plots applies the reports' theme)

TAKEN, OTHER = "#15803d", "#9ca3af"


def _box(ax, xy, text, active, width=0.28, height=0.16):
    x, y = xy
    ax.add_patch(
        FancyBboxPatch(
            (x - width / 2, y - height / 2),
            width,
            height,
            boxstyle="round,pad=0.02",
            fc="#dcfce7" if active else "#f9fafb",
            ec=TAKEN if active else OTHER,
            lw=2.5 if active else 1,
        )
    )
    ax.text(x, y, text, ha="center", va="center", fontsize=9, color="#111" if active else "#6b7280", wrap=True)


def gate_tree(gate: dict[str, Any]):
    """Draw the seed's epoch-2 tree; the branch this run took is green, the others grey."""
    fig, ax = plt.subplots(figsize=(9, 4.2))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.axis("off")
    v = gate.get("gate_val_cosine")
    g_ep, thr, lo, ext = gate.get("gate_epoch", 2), gate["threshold"], gate["lower"], gate.get("extend_epochs", 2)
    branch = gate.get("branch")
    root = f"val_cosine at epoch {g_ep}\n= " + (f"{v:.3f}" if v is not None else "not reached")
    _box(ax, (0.5, 0.82), root, True, width=0.34)
    leaves = [
        ("pass", 0.17, f"≥ {thr:.2f}\ncontinue training"),
        ("borderline", 0.5, f"{lo:.2f} – {thr:.2f}\ncontinue; stop unless it\nimproves within {ext} epochs"),
        ("fail", 0.83, f"< {lo:.2f}\nstop → Option 4\n(two-tower)"),
    ]
    for key, x, text in leaves:
        active = branch == key
        ax.annotate(
            "",
            xy=(x, 0.36),
            xytext=(0.5, 0.73),
            arrowprops=dict(arrowstyle="-|>", color=TAKEN if active else OTHER, lw=2.5 if active else 1),
        )
        _box(ax, (x, 0.25), text, active, height=0.2)
    title = "Decision tree — path taken in green" if branch else "Decision tree — gate epoch not reached"
    ax.set_title(title, fontsize=11)
    fig.tight_layout()
    return fig


def gate_curve(history: list[dict[str, Any]], gate: dict[str, Any]):
    """val_cosine per epoch with the threshold and lower bars and the gate epoch marked."""
    fig, ax = plt.subplots(figsize=(7, 3.4))
    sns.lineplot(
        data=history_frame(history, ("val_cosine",)),
        x="epoch",
        y="value",
        marker="o",
        color="#1d4ed8",
        label="val cosine",
        ax=ax,
    )
    ax.axhline(gate["threshold"], color=TAKEN, ls="--", label=f"gate {gate['threshold']:.2f}")
    ax.axhline(gate["lower"], color="#b45309", ls=":", label=f"lower {gate['lower']:.2f}")
    ax.axvline(gate.get("gate_epoch", 2), color="#6b7280", lw=0.8)
    styles = {"context_mean": "#7c3aed", "copy_last": "#0891b2", "global_mean": "#9ca3af"}
    for name, v in (gate.get("baselines_val_cosine") or {}).items():
        ax.axhline(v, color=styles.get(name, "#9ca3af"), lw=1, ls="-.", label=f"{name} {v:.2f} (baseline)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation cosine")
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig
