"""Figures and tables of the confirmatory page (07_confirm): the corrected family, per-seed rows, the curve.

In: the record of `lvmlib.analysis.confirmatory.analyse`; out: seaborn figures and DataFrames of strings.
"""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from lvmlib.plots.eval import log_size_axis

VERDICT_COLOURS = {"beats": "#15803d", "loses to": "#b91c1c", "not distinguishable from": "#6b7280"}


def _pct(v: Any) -> str:
    return "—" if v is None else f"{100 * v:.1f}%"


def _pts(v: float, ci: list[float] | None) -> str:
    txt = f"{100 * v:+.1f}"
    return txt + (f" [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]" if ci else "")


def _num(v: Any, fmt: str = "{:.3f}") -> str:
    return "—" if v is None else fmt.format(v)


def family_figure(result: dict[str, Any]):
    """The headline minus each predictor of the family: per-query hit@k pooled over seeds, the corrected
    interval as a bar (1 − α/m), the point as a dot; green above 0, red below, grey when it reaches 0. The
    per-seed differences (each seed of the headline against the same baseline; for a learned baseline, seed
    against seed) are not drawn: they are in the per-seed table."""
    fam = pd.DataFrame(
        [
            {**r, "vs": r["label"], "delta": 100 * r["delta"], "lo": 100 * r["ci"][0], "hi": 100 * r["ci"][1]}
            for r in result["family"]
        ]
    )
    fig, ax = plt.subplots(figsize=(8.5, 0.55 * len(fam) + 1.8))
    sns.scatterplot(data=fam, x="delta", y="vs", hue="verdict", palette=VERDICT_COLOURS, s=70, ax=ax, zorder=3)
    for y, r in enumerate(fam.itertuples()):
        ax.plot([r.lo, r.hi], [y, y], color=VERDICT_COLOURS[r.verdict], lw=3, alpha=0.6, solid_capstyle="butt")
        ax.annotate(f"{r.delta:+.1f}", (r.delta, y), xytext=(0, 8), textcoords="offset points", ha="center", fontsize=8)
    ax.axvline(0, color="#111827", lw=1)
    level = 100 * result["family"][0]["level"]
    ax.set_xlabel(f"R@k points, the headline minus the predictor ({level:.2f}% interval, Bonferroni m = {result['m']})")
    ax.set_ylabel("")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(title="the headline", frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.set_title(f"Primary comparison: {result['primary']}", fontweight="bold", fontsize=11)
    fig.tight_layout()
    return fig


def predictors_table(result: dict[str, Any]) -> pd.DataFrame:
    """One row per predictor (seeds pooled): R@k with its 95% interval in the primary bank, macro R@k, MRR,
    the global bank, cosine, ℓ2 to the target, contrastive accuracy."""
    rows = []
    for r in result["predictors"]:
        ci = r["recall_ci"]
        rows.append(
            {
                "predictor": r["label"],
                "kind": r["kind"] + ("" if r["role"] in ("baseline", "learned") else f" ({r['role']})"),
                "seeds": r["seeds"] if r["kind"] == "learned" else "—",
                "R@k (95%)": _pct(r["recall"]) + (f" [{_pct(ci[0])}–{_pct(ci[1])}]" if ci else ""),
                "macro R@k": _pct(r["macro_recall"]),
                "MRR": _num(r["mrr"]),
                "R@k global": _pct(r["recall_global"]),
                "cosine": _num(r["cosine"]),
                "ℓ2 to target": _num(r["l2"]),
                "contrastive acc.": _pct(r["contrastive"]),
            }
        )
    return pd.DataFrame(rows).set_index("predictor")


def family_table(result: dict[str, Any]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "headline vs": r["label"],
                "Δ R@k, points": _pts(r["delta"], r["ci"]),
                "interval": f"{100 * r['level']:.2f}%",
                "the headline": r["verdict"],
            }
            for r in result["family"]
        ]
    ).set_index("headline vs")


def secondary_table(result: dict[str, Any]) -> pd.DataFrame:
    """Secondary paired differences, uncorrected 95%: cosine, MRR and the global bank's R@k."""
    names = {p["id"]: p["label"] for p in result["predictors"]}
    rows = []
    for r in result["secondary"]:
        if r["metric"] in ("cos", "mrr"):
            val = f"{r['delta']:+.4f} [{r['ci'][0]:+.4f}, {r['ci'][1]:+.4f}]"
        else:
            val = _pts(r["delta"], r["ci"]) + " points"
        metric = {"cos": "cosine", "mrr": "MRR", "global": "R@k, global bank"}[r["metric"]]
        rows.append({"headline vs": names.get(r["vs"], r["vs"]), "metric": metric, "Δ (95%)": val})
    return pd.DataFrame(rows).pivot(index="headline vs", columns="metric", values="Δ (95%)").fillna("—")


def seeds_table(result: dict[str, Any]) -> pd.DataFrame:
    """Every run: its own R@k (95%), global R@k, cosine, best epoch, the epoch-2 gate, Phase-1 verdict."""
    rows = []
    for s in result["seeds"]:
        ci = s["recall_ci"]
        rows.append(
            {
                "run": s["run_id"],
                "predictor": s["predictor"],
                "seed": s["seed"],
                "R@k (95%)": _pct(s["recall"]) + (f" [{_pct(ci[0])}–{_pct(ci[1])}]" if ci else ""),
                "R@k global": _pct(s["recall_global"]),
                "cosine": _num(s["cosine"]),
                "contrastive acc.": _pct(s["contrastive"]),
                "epochs (best)": f"{s['epochs']} ({s['best_epoch']})" if s["epochs"] is not None else "—",
                "gate val cosine": _num(s["gate_val_cosine"]),
                "gate": s["gate"] or "—",
                "Phase 1": s["phase1"] or "—",
            }
        )
    return pd.DataFrame(rows).set_index("run")


def seeds_figure(result: dict[str, Any]):
    """Each run's R@k in the primary bank (dot, 95% bar) by predictor, the closed-form baselines as lines."""
    df = pd.DataFrame(
        [
            {"predictor": s["predictor"], "seed": str(s["seed"]), "recall": 100 * s["recall"], "ci": s["recall_ci"]}
            for s in result["seeds"]
        ]
    )
    fig, ax = plt.subplots(figsize=(8.5, 3.6))
    sns.stripplot(data=df, x="predictor", y="recall", hue="seed", dodge=True, size=7, ax=ax, jitter=False)
    for p in (p for p in result["predictors"] if p["kind"] == "closed form"):
        ax.axhline(100 * p["recall"], color="#6b7280", lw=1, ls="--")
        ax.annotate(p["label"], (ax.get_xlim()[1], 100 * p["recall"]), fontsize=8, va="bottom", ha="right")
    ax.set_ylabel("R@k, primary bank (%)")
    ax.set_xlabel("")
    ax.set_title("Every run, every seed (closed-form baselines dashed)", fontsize=11)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def curve_figure(result: dict[str, Any]):
    """The headline's Δ R@5 against copy_last as distractors join the held-out bank, one line per seed with
    its 95% band (secondary). None when the runs have no curve."""
    rows = []
    for s in result["seeds"]:
        for c in s["curve"]:
            rows.append(
                {
                    "run": f"{s['predictor']} seed {s['seed']}",
                    "size": c["size"],
                    "delta": 100 * c["delta"],
                    "lo": 100 * c["ci"][0] if c["ci"] else np.nan,
                    "hi": 100 * c["ci"][1] if c["ci"] else np.nan,
                }
            )
    if not rows:
        return None
    df = pd.DataFrame(rows)
    fig, ax = plt.subplots(figsize=(8.5, 3.8))
    log_size_axis(ax, df)
    palette = dict(zip(df["run"].unique(), sns.color_palette("deep")))
    sns.lineplot(data=df, x="x", y="delta", hue="run", palette=palette, marker="o", errorbar=None, ax=ax)
    for run, g in df.groupby("run", sort=False):
        ax.fill_between(g["x"], g["lo"], g["hi"], color=palette[run], alpha=0.12, lw=0)
    ax.axhline(0, color="#111827", lw=1)
    ax.set_xlabel("distractor chunks added to the held-out bank")
    ax.set_ylabel("Δ R@5 vs copy_last, points (95%)")
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    return fig
