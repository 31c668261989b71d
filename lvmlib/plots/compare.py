"""Figures and tables for 05_compare: training curves, R@5 intervals per bank, R@k bars, summary tables.

Figures and tables for 05_compare: overlaid training curves with the gate, R@5 with its
intervals per bank, R@k bars, and the summary / Phase-1 tables formatted for reading.

Figure functions return a matplotlib Figure (curves and bars through seaborn on tidy DataFrames; the
R@5 interval dot-plot stays matplotlib, since its intervals come precomputed from eval.json); a run
keeps its colour in every figure (`colours`), baselines are grey. Table functions return DataFrames
of strings ('—' where a number is missing).
"""

from __future__ import annotations

import math
from typing import Any

import matplotlib
import matplotlib.pyplot as plt  # no matplotlib.use(): it would switch a notebook's inline backend off
import matplotlib.ticker
import pandas as pd
import seaborn as sns

from lvmlib.plots import training as plots  # noqa: F401  (applies the reports' theme)
from lvmlib.plots.eval import log_size_axis

PALETTE = ("#1d4ed8", "#c2410c", "#15803d", "#7e22ce", "#be123c", "#0e7490")
BASELINE = "#9ca3af"
GREYS = ("#6b7280", "#9ca3af", "#d1d5db", "#4b5563", "#e5e7eb")
GATE = "#15803d"


def colours(labels: list[str]) -> dict[str, str]:
    return {lab: PALETTE[i % len(PALETTE)] for i, lab in enumerate(labels)}


def _series(history: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["epoch"], r[key]) for r in history if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    return [p[0] for p in pts], [p[1] for p in pts]


def curves_frame(runs, keys: tuple[str, ...]) -> pd.DataFrame:
    """Tidy per-epoch metrics of several runs: run, epoch, metric, value (finite values only)."""
    rows = [
        {"run": r.label, "epoch": e, "metric": k, "value": v}
        for r in runs
        for k in keys
        for e, v in zip(*_series(r.history, k))
    ]
    return pd.DataFrame(rows, columns=["run", "epoch", "metric", "value"])


def val_cosine_overlay(runs, threshold: float = 0.50, lower: float | None = 0.40, gate_epoch: int = 2):
    """Validation cosine per epoch of every run, the 0.50 gate line and the gate epoch marked."""
    col = colours([r.label for r in runs])
    fig, ax = plt.subplots(figsize=(9, 3.8))
    df = curves_frame(runs, ("val_cosine",))
    if not df.empty:
        sns.lineplot(
            data=df,
            x="epoch",
            y="value",
            hue="run",
            hue_order=[r.label for r in runs],
            palette=col,
            marker="o",
            lw=2,
            ax=ax,
        )
    for r in runs:
        g = r.gates or {}
        if g.get("gate_val_cosine") is not None:
            ax.plot(
                [g.get("gate_epoch", gate_epoch)],
                [g["gate_val_cosine"]],
                "s",
                ms=11,
                mfc="none",
                mec=col[r.label],
                mew=2,
            )
    ax.axhline(threshold, color=GATE, ls="--", lw=1.5, label=f"gate {threshold:.2f}")
    if lower is not None:
        ax.axhline(lower, color="#b45309", ls=":", lw=1.2, label=f"lower bar {lower:.2f}")
    ax.axvline(gate_epoch, color="#6b7280", lw=0.8)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel("validation cosine")
    ax.set_title(f"Validation cosine — squares mark the epoch-{gate_epoch} gate reading", fontsize=11)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    return fig


def training_curves(
    runs, keys: tuple[str, ...] = ("train_loss", "train_infonce", "train_ar_cosine", "val_recall_at_5")
):
    """Small multiples of the other per-epoch metrics (those present in at least one history)."""
    df = curves_frame(runs, keys)
    keys = tuple(k for k in keys if k in set(df["metric"]))
    if not keys:
        fig, ax = plt.subplots(figsize=(3.4, 3.0))
        ax.text(0.5, 0.5, "no training history", ha="center", va="center")
        ax.axis("off")
        return fig
    g = sns.relplot(
        data=df,
        kind="line",
        x="epoch",
        y="value",
        hue="run",
        hue_order=[r.label for r in runs],
        palette=colours([r.label for r in runs]),
        marker="o",
        markersize=4,
        col="metric",
        col_order=list(keys),
        height=3.0,
        aspect=1.1,
        facet_kws={"sharey": False},
    )
    g.set_titles("{col_name}")
    g.set_axis_labels("epoch", "")
    for ax in g.axes.flat:
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    g.legend.set_title(None)
    return g.figure


def r5_intervals(table, labels: list[str]):
    """R@5 with its 95% interval for every run and baseline, one panel per bank (primary first).

    When the intervals of two runs do not overlap, the difference is beyond bootstrap noise.
    """
    col = colours(labels)
    banks = sorted(dict.fromkeys(table["bank"]), key=lambda b: not table[table.bank == b]["primary"].any())
    fig, axes = plt.subplots(
        1, len(banks), figsize=(4.2 * len(banks), 0.45 * table["name"].nunique() + 1.6), squeeze=False, sharey=True
    )
    names = list(dict.fromkeys(list(table[~table.is_baseline]["name"]) + list(table[table.is_baseline]["name"])))
    for ax, bank in zip(axes[0], banks):
        sub = table[table.bank == bank].set_index("name")
        for y, name in enumerate(names):
            if name not in sub.index:
                continue
            row = sub.loc[name]
            c = BASELINE if row["is_baseline"] else col.get(row["run"], "#111")
            lo, hi = row.get("recall_at_5_lo", math.nan), row.get("recall_at_5_hi", math.nan)
            if math.isfinite(lo) and math.isfinite(hi):
                ax.plot([lo, hi], [y, y], color=c, lw=3, alpha=0.6, solid_capstyle="butt")
            ax.plot([row["recall_at_5"]], [y], "o", color=c, ms=8)
            ax.annotate(
                f"{row['recall_at_5']:.1%}",
                (row["recall_at_5"], y),
                xytext=(0, 7),
                textcoords="offset points",
                ha="center",
                fontsize=8,
            )
        ax.set_yticks(range(len(names)), names)
        ax.set_ylim(len(names) - 0.5, -0.7)
        ax.xaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0, decimals=0))
        primary = bool(sub["primary"].any())
        ax.set_title(f"bank: {bank}{' (primary)' if primary else ''}", fontsize=10)
        ax.set_xlabel("R@5 (95% CI)")
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def recall_at_k_bars(table, labels: list[str], bank: str | None = None):
    """Grouped bars of R@k (k = 1, 5, 10, ...) on one bank: every run and every baseline."""
    col = colours(labels)
    bank = bank or table[table.primary]["bank"].iloc[0]
    sub = table[table.bank == bank]
    ks = sorted(
        {
            int(c.rsplit("_", 1)[1])
            for c in sub.columns
            if c.startswith("recall_at_") and c.rsplit("_", 1)[1].isdigit() and sub[c].notna().any()
        }
    )
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(ks) + 3), 3.6))
    rows = sub.sort_values("is_baseline", kind="stable")
    palette, n_base = {}, 0
    for row in rows.itertuples():
        palette[row.name] = GREYS[n_base % len(GREYS)] if row.is_baseline else col.get(row.run, "#111")
        n_base += bool(row.is_baseline)
    df = pd.DataFrame(
        [
            {"name": row.name, "k": f"R@{k}", "recall": getattr(row, f"recall_at_{k}")}
            for row in rows.itertuples()
            for k in ks
        ]
    )
    sns.barplot(
        data=df, x="k", y="recall", hue="name", hue_order=list(palette), palette=palette, edgecolor="white", ax=ax
    )
    for bars, row in zip(ax.containers, rows.itertuples()):
        if not row.is_baseline:
            ax.bar_label(bars, labels=[f"{v:.0%}" for v in bars.datavalues], fontsize=7, padding=1)
    ax.set_xlabel("")
    ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0, decimals=0))
    ax.set_ylabel("queries with the true next chunk in the top k")
    ax.set_title(f"Recall at k — bank: {bank}", fontsize=11)
    sns.move_legend(ax, "upper left", ncol=2, title=None)
    fig.tight_layout()
    return fig


def versus_reference(rows: list[dict[str, Any]]):
    """Forest plot: each run minus the reference, R@5 (left) and cosine (right), paired 95% intervals.
    A bar that clears the zero line is a difference beyond resampling noise."""
    rows = [r for r in rows if r.get("diff_recall_at_5") is not None]
    if not rows:
        return "no run scored the reference's test queries"
    fig, axes = plt.subplots(1, 2, figsize=(10, 0.45 * len(rows) + 1.6), sharey=True, squeeze=False)
    panels = (
        ("diff_recall_at_5", "R@5 minus the reference", True),
        ("diff_cosine", "cosine minus the reference", False),
    )
    for ax, (key, title, pct) in zip(axes[0], panels):
        for y, r in enumerate(rows):
            v, ci = r.get(key), r.get(f"{key}_ci")
            if v is None:
                continue
            sig = ci is not None and (ci[0] > 0 or ci[1] < 0)
            c = ("#2a7" if v > 0 else "#c44") if sig else "#888"
            if ci is not None:
                ax.plot([ci[0], ci[1]], [y, y], color=c, lw=3, alpha=0.6, solid_capstyle="butt")
            ax.plot([v], [y], "o", color=c, ms=7)
            ax.annotate(
                f"{v:+.1%}" if pct else _signed(v),
                (v, y),
                xytext=(0, 7),
                textcoords="offset points",
                ha="center",
                fontsize=8,
            )
        ax.axvline(0, color="#333", lw=1)
        ax.set_yticks(range(len(rows)), [r["run"] for r in rows])
        ax.set_ylim(len(rows) - 0.5, -0.7)
        if pct:
            lo, hi = ax.get_xlim()  # whole percents only when the span is wide enough to tell ticks apart
            ax.xaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0, decimals=0 if hi - lo >= 0.05 else 1))
        ax.set_title(title, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(f"against the reference: {rows[0]['reference']}", fontsize=11)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- tables (strings, for reading)
def _signed(v: float, scale: Any = None) -> str:
    """A signed cosine difference with enough decimals that a small interval does not print as
    -0.000 [-0.001, +0.000]: 4 decimals when the value (or the interval `scale`) is under 0.01."""
    span = max([abs(v)] + [abs(x) for x in (scale or ()) if isinstance(x, (int, float))])
    return f"{v:+.4f}" if span < 0.01 else f"{v:+.3f}"


def _fmt(v: Any, kind: str = "num") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if kind == "pct":
        return f"{v:.1%}"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def _ci_short(ci: tuple[float, float], bare: bool = False) -> str:
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in ci):
        return "—" if bare else ""
    txt = f"{ci[0]:.1%}–{ci[1]:.1%}"
    return txt if bare else f" [{txt}]"


def format_summary(rows: list[dict[str, Any]]):
    """The summary rows as a readable DataFrame of strings (percentages, intervals, '—' for missing)."""
    import pandas as pd

    out = []
    for r in rows:
        ci = r.get("recall_at_5_ci") or (math.nan, math.nan)
        out.append(
            {
                "run": r["run"],
                "loss": r["recipe"],
                "status": r["status"],
                "epochs": r["epochs"],
                "gate val cos": _fmt(r["gate_val_cosine"]),
                "gate": _fmt(r["gate_decision"]),
                "R@5 (95% CI)": _fmt(r["recall_at_5"], "pct") + _ci_short(tuple(ci)),
                "cosine": _fmt(r["pred_target_cosine"]),
                "Phase 1": _fmt(r["phase1_decision"]),
                "best baseline R@5": (
                    f"{r['best_baseline']} {_fmt(r['best_baseline_r5'], 'pct')}" if r["best_baseline"] else "—"
                ),
                "beats it": _fmt(r["beats_best_baseline"]),
                "minutes": "—" if r["minutes"] is None else f"{r['minutes']:.1f}",
            }
        )
    return pd.DataFrame(out).set_index("run") if out else pd.DataFrame()


def format_vs_reference(rows: list[dict[str, Any]]):
    """The `compare.versus_reference` rows as strings: each run's R@5 and cosine, and its paired
    differences from the reference with 95% intervals."""
    out = []
    for r in rows:
        dr, dc = r.get("diff_recall_at_5"), r.get("diff_cosine")
        cr, cc = r.get("diff_recall_at_5_ci"), r.get("diff_cosine_ci")
        out.append(
            {
                "run": r["run"],
                "R@5": _fmt(r.get("recall_at_5"), "pct"),
                "cosine": _fmt(r.get("pred_target_cosine")),
                "ΔR@5 vs reference": "—"
                if dr is None
                else f"{dr:+.1%}" + _ci_short(tuple(cr) if cr else (math.nan,) * 2),
                "Δcosine vs reference": "—"
                if dc is None
                else (_signed(dc, cc) + (f" [{_signed(cc[0], cc)}, {_signed(cc[1], cc)}]" if cc else "")),
                "queries": _fmt(r.get("n_queries")),
            }
        )
    return pd.DataFrame(out).set_index("run") if out else pd.DataFrame()


def format_phase1(table, bank: str):
    """One bank of `phase1_table` as strings: R@k, R@5 and MRR with intervals, cosine, mean rank."""
    import pandas as pd

    sub = table[table.bank == bank]
    ks = sorted(
        int(c.rsplit("_", 1)[1])
        for c in sub.columns
        if c.startswith("recall_at_") and c.rsplit("_", 1)[1].isdigit() and sub[c].notna().any()
    )
    out = []
    for r in sub.to_dict("records"):
        row = {"model": r["name"]}
        for k in ks:
            row[f"R@{k}"] = _fmt(r.get(f"recall_at_{k}"), "pct")
        row["R@5 95% CI"] = _ci_short((r.get("recall_at_5_lo", math.nan), r.get("recall_at_5_hi", math.nan)), bare=True)
        for k, label in (("mrr", "MRR"), ("pred_target_cosine", "cosine"), ("mean_rank", "mean rank")):
            if k in r:
                row[label] = _fmt(r.get(k)) if k != "mean_rank" else f"{r[k]:.1f}" if math.isfinite(r[k]) else "—"
        if "mrr" in r:
            lo, hi = r.get("mrr_lo", math.nan), r.get("mrr_hi", math.nan)
            row["MRR 95% CI"] = f"{lo:.3f}–{hi:.3f}" if math.isfinite(lo) and math.isfinite(hi) else "—"
        out.append(row)
    return pd.DataFrame(out).set_index("model") if out else pd.DataFrame()


def format_params_diff(runs):
    """`params_diff` as a DataFrame indexed by key, or a sentence when there is nothing to show."""
    import pandas as pd
    from IPython.display import Markdown

    from lvmlib.analysis.compare import params_diff

    rows = params_diff(runs)
    if len(runs) < 2:
        return Markdown("A single run: nothing to compare its parameters with.")
    if not rows:
        return Markdown("The runs have **identical** resolved parameters (a repeat, e.g. another seed or machine).")
    return pd.DataFrame(rows).set_index("key")


def format_gates(rows: list[dict[str, Any]]):
    """`compare.gates_rows` as HTML: numbers rounded, the whole reason shown (pandas would cut it)."""
    import pandas as pd
    from IPython.display import HTML

    out = [
        {
            "run": r["run"],
            "gate val cos": _fmt(r["gate_val_cosine"]),
            "bar": _fmt(r["threshold"]),
            "passed": _fmt(r["passed"]),
            "decision": _fmt(r["decision"]),
            "tree in loop": {True: "on", False: "off (judged, not enforced)"}.get(r["tree_in_loop"], "—"),
            "epochs": r["epochs_trained"],
            "final val cos": _fmt(r["final_val_cosine"]),
            "stopped by tree": _fmt(r["stopped_by_tree"]),
            "reason": r["reason"],
        }
        for r in rows
    ]
    return HTML(pd.DataFrame(out).to_html(index=False, escape=True, border=0))


def curve_of_runs(evs: dict[str, dict[str, Any]], vs: str = "copy_last"):
    """Every run's paired Δ R@5 (its primary model minus `vs`) against the bank size of its bank-size curve,
    one line and 95% band per run (log x; no distractors drawn at the left edge, labelled 0). `evs`: {run
    label: eval.json with a bank_curve}; runs without one are left out. None when no run has a curve."""
    rows = []
    for label, ev in evs.items():
        for r in (ev.get("bank_curve") or {}).get("paired", []):
            if r["model"] == ev.get("primary_model") and r["vs"] == vs and r["diff_recall_at_5_ci"]:
                lo, hi = r["diff_recall_at_5_ci"]
                rows.append(
                    {"run": label, "size": r["size"], "d": 100 * r["diff_recall_at_5"], "lo": 100 * lo, "hi": 100 * hi}
                )
    if not rows:
        return None
    df = pd.DataFrame(rows)
    labels = list(dict.fromkeys(df["run"]))
    pal = colours(labels) if len(labels) <= len(PALETTE) else dict(zip(labels, sns.color_palette("tab20", len(labels))))
    fig, ax = plt.subplots(figsize=(9.5, 4.8))
    log_size_axis(ax, df)
    sns.lineplot(data=df, x="x", y="d", hue="run", palette=pal, marker="o", errorbar=None, ax=ax)
    for label, g in df.groupby("run", sort=False):
        ax.fill_between(g["x"], g["lo"], g["hi"], color=pal[label], alpha=0.10, lw=0)
    ax.axhline(0, color="#111827", lw=1)
    ax.set_xlabel("distractor chunks added to the held-out chunks")
    ax.set_ylabel(f"Δ R@5 vs {vs}, points (paired 95% CI)")
    ax.legend(title="run", frameon=False, fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    ax.set_title(f"Every run's R@5 edge over {vs} as the bank grows", fontweight="bold")
    fig.tight_layout()
    return fig
