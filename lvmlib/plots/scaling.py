"""Figures of the scaling page (06_scaling): each metric against the number of training articles.

Figures of the scaling page (06_scaling): metric against training articles, tidy DataFrame in
(`scaling.study_table`), seaborn Figure out. Keys on axes are the JSON keys (`recall_at_5`, `cosine`)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

from lvmlib.analysis.scaling import CONSTANT, gaps_to_best

PALETTE = {"model": "#1d4ed8", "copy_last": "#6b7280", "context_mean": "#b45309", "ridge": "#15803d"}


def scaling_curves(table, metrics=(("recall_at_5", "R@5 (primary bank)"), ("cosine", "cosine to the true next chunk"))):
    """Top row, one panel per metric: every predictor against the number of training articles (log
    axis), 95% intervals as bars (R@5: article bootstrap). Bottom row: the model minus the best constant
    baseline, paired per size with its 95% interval, and the fitted a + b log10(N) trend of that gap
    dashed — the line the verdict's crossing is read from (`scaling.gaps_to_best`)."""
    fig, axes = plt.subplots(
        2, len(metrics), figsize=(6.2 * len(metrics), 7.2), squeeze=False, gridspec_kw={"height_ratios": [1.25, 1]}
    )
    for col, (metric, label) in enumerate(metrics):
        ax, gx = axes[0][col], axes[1][col]
        sns.lineplot(
            data=table,
            x="n_articles",
            y=metric,
            hue="predictor",
            style="predictor",
            markers=True,
            dashes=False,
            palette=PALETTE,
            ax=ax,
            errorbar=None,
        )
        if metric == "recall_at_5":
            for name, g in table.groupby("predictor"):
                ax.errorbar(
                    g["n_articles"],
                    g[metric],
                    yerr=[g[metric] - g[f"{metric}_lo"], g[f"{metric}_hi"] - g[metric]],
                    fmt="none",
                    ecolor=PALETTE.get(name, "k"),
                    alpha=0.6,
                    capsize=3,
                )
        ax.set_title(label)
        ax.set_ylabel(metric)
        ax.legend(fontsize=8)
        g = gaps_to_best(table, metric)
        ok = ~np.isnan(g["lo"])
        gx.axhline(0.0, color=PALETTE[g["best"]], lw=1, label=f"{g['best']} (zero gap)")
        gx.plot(g["sizes"], g["gaps"], marker="o", color=PALETTE["model"], label=f"model − {g['best']} (paired)")
        gx.errorbar(
            g["sizes"][ok],
            g["gaps"][ok],
            yerr=[g["gaps"][ok] - g["lo"][ok], g["hi"][ok] - g["gaps"][ok]],
            fmt="none",
            ecolor=PALETTE["model"],
            alpha=0.6,
            capsize=3,
        )
        if g["fit"] is not None:
            n = np.geomspace(g["sizes"].min(), g["sizes"].max() * 3, 50)
            gx.plot(
                n,
                g["fit"][0] + g["fit"][1] * np.log10(n),
                ls="--",
                color=PALETTE["model"],
                alpha=0.5,
                lw=1,
                label="gap trend (a + b log10 N)",
            )
        gx.set_ylabel(f"{metric}: model − {g['best']}")
        gx.legend(fontsize=8)
        for a, pct in ((ax, "{:.0%}"), (gx, "{:+.1%}")):
            a.set_xscale("log")
            a.set_xlabel("training articles (N)")
            if metric == "recall_at_5":
                a.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _, pct=pct: pct.format(v)))
        ax.set_xlim(gx.get_xlim())  # both rows on the gap panel's x range (it reaches past the last size)
    fig.tight_layout()
    return fig


def heldout_curve(table, res):
    """R@5 on held-out chunks only against training articles (log x), 95% intervals as bars; the model's fitted
    a + b log10(N) dashed out to where it reaches `factor` x copy_last (dotted level), with the bootstrap
    interval of that N shaded (`scaling.multiple_of_baseline`)."""
    fig, ax = plt.subplots(figsize=(8.0, 4.6))
    for name, g in table.groupby("predictor"):
        g = g.sort_values("n_articles")
        ax.errorbar(
            g["n_articles"],
            g["recall_at_5"],
            yerr=[g["recall_at_5"] - g["recall_at_5_lo"], g["recall_at_5_hi"] - g["recall_at_5"]],
            marker="o",
            capsize=3,
            color=PALETTE.get(name, "k"),
            label=name,
        )
    sizes = np.asarray(res["sizes"], float)
    a, b = res["fit"]
    n_max = sizes[-1] * 10
    if res["articles"] is not None and not res["reached"]:
        n_max = max(n_max, min(res["articles"] * 1.5, sizes[-1] * 1e4))
    grid = np.logspace(np.log10(sizes[0]), np.log10(n_max), 100)
    ax.plot(grid, a + b * np.log10(grid), ls="--", color=PALETTE["model"], lw=1, label="model trend (a + b log10 N)")
    ax.axhline(
        res["target"], ls=":", color=PALETTE.get(res["baseline"], "k"), label=f"{res['factor']:g}x {res['baseline']}"
    )
    lo, hi = res["articles_ci"]
    if res["articles"] is not None and not res["reached"]:  # the axis stops at 10^4 x the largest size
        if res["articles"] <= n_max:
            ax.axvline(res["articles"], color="0.4", lw=1)
        else:
            ax.annotate(f"N ~ {res['articles']:.1e}: off the axis", (0.98, 0.5), xycoords="axes fraction", ha="right")
        if lo is not None and lo < n_max:
            right = min(hi, n_max) if hi is not None else n_max
            ax.axvspan(lo, right, color="0.85", zorder=0, label="95% interval of N")
    ax.set_xscale("log")
    ax.set_xlabel("training articles (log scale)")
    ax.set_ylabel(f"R@5, {res['bank']!r} bank")
    ax.set_title(f"Held-out chunks only: how far to {res['factor']:g}x {res['baseline']}?")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def format_table(table):
    """The per-size table a reviewer reads: each predictor's R@5 (95% CI) and cosine, and the model's
    paired difference to each baseline."""
    import pandas as pd

    rows = []
    for (n, pred), g in table.groupby(["n_articles", "predictor"], sort=True):
        r = g.iloc[0]
        row = {
            "training articles": int(n),
            "train windows": int(r["n_train_windows"]),
            **({"bank chunks": int(r["bank_chunks"])} if pd.notna(r.get("bank_chunks")) else {}),
            "predictor": pred,
            "R@5": f"{r['recall_at_5']:.1%} [{r['recall_at_5_lo']:.1%}–{r['recall_at_5_hi']:.1%}]",
            "cosine": f"{r['cosine']:.3f}",
        }
        if pred != "model":
            lo, hi = r["diff_recall_at_5_ci"]
            clo, chi = r["diff_cosine_ci"]
            row["model − it, R@5 (paired 95%)"] = f"{r['diff_recall_at_5']:+.1%} [{lo:+.1%}, {hi:+.1%}]"
            row["model − it, cosine (paired 95%)"] = f"{r['diff_cosine']:+.3f} [{clo:+.3f}, {chi:+.3f}]"
        rows.append(row)
    order = {"model": 0, **{b: i + 1 for i, b in enumerate(CONSTANT)}, "ridge": 9}
    df = pd.DataFrame(rows)
    df["_o"] = df["predictor"].map(order)
    return df.sort_values(["training articles", "_o"]).drop(columns="_o").fillna("").reset_index(drop=True)
