"""Figures of the scaling page (06_scaling): metric against training articles, tidy DataFrame in
(`scaling.study_table`), seaborn Figure out. Keys on axes are the JSON keys (`recall_at_5`, `cosine`)."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

from .scaling import CONSTANT, trend

PALETTE = {"model": "#1d4ed8", "copy_last": "#6b7280", "context_mean": "#b45309", "ridge": "#15803d"}


def scaling_curves(table, metrics=(("recall_at_5", "R@5 (primary bank)"), ("cosine", "cosine to the true next chunk"))):
    """One panel per metric: every predictor against the number of training articles (log axis), 95%
    intervals as bars (R@5: article bootstrap), the model's fitted a + b log10(N) trend dashed."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(6.2 * len(metrics), 4.0), squeeze=False)
    for ax, (metric, label) in zip(axes[0], metrics):
        sns.lineplot(data=table, x="n_articles", y=metric, hue="predictor", style="predictor", markers=True,
                     dashes=False, palette=PALETTE, ax=ax, errorbar=None)
        if metric == "recall_at_5":
            for name, g in table.groupby("predictor"):
                ax.errorbar(g["n_articles"], g[metric], yerr=[g[metric] - g[f"{metric}_lo"], g[f"{metric}_hi"] - g[metric]],
                            fmt="none", ecolor=PALETTE.get(name, "k"), alpha=0.6, capsize=3)
        m = table[table["predictor"] == "model"].sort_values("n_articles")
        fit = trend(m["n_articles"].to_numpy(), m[metric].to_numpy())
        if fit is not None:
            n = np.geomspace(m["n_articles"].min(), m["n_articles"].max() * 3, 50)
            ax.plot(n, fit[0] + fit[1] * np.log10(n), ls="--", color=PALETTE["model"], alpha=0.5, lw=1,
                    label="model trend (a + b log10 N)")
        ax.set_xscale("log")
        ax.set_xlabel("training articles (N)")
        ax.set_ylabel(metric)
        ax.set_title(label)
        if metric == "recall_at_5":
            ax.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:.0%}"))
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
        row = {"training articles": int(n), "train windows": int(r["n_train_windows"]),
               **({"bank chunks": int(r["bank_chunks"])} if pd.notna(r.get("bank_chunks")) else {}),
               "predictor": pred,
               "R@5": f"{r['recall_at_5']:.1%} [{r['recall_at_5_lo']:.1%}–{r['recall_at_5_hi']:.1%}]",
               "cosine": f"{r['cosine']:.3f}"}
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
