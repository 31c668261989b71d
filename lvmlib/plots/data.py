"""Figures for 01_data: counts, chunk lengths, chunks per article, pair cosines, the trivial bar.

Each function takes numbers the data stage produced (`summary.json`, `Prepared`) and returns a Figure;
distributions and bars go through seaborn on tidy DataFrames, in the reports' theme (`plots.theme`).
"""

from __future__ import annotations

from typing import Any

# No matplotlib.use(...): a Jupyter kernel must keep its inline backend for the figures to show.
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from lvmlib.core.config import SPLITS
from lvmlib.plots import training as plots  # noqa: F401  (applies the reports' theme)

SPLIT_COLORS = {"train": "#2563eb", "val": "#f59e0b", "test": "#dc2626"}
PREDICTORS = ("copy_last", "context_mean", "global_mean")


def counts_table(summary: dict[str, Any]):
    """Articles / chunks / windows per split, and what was skipped or removed."""
    c = summary["counts"]
    rows = [
        [name, c["per_split"][name]["articles"], c["per_split"][name]["chunks"], c["per_split"][name]["windows"]]
        for name in SPLITS
    ]
    rows.append(["all", c["articles"], c["chunks"], c["windows"]])
    fig, ax = plt.subplots(figsize=(7, 2.6))
    ax.axis("off")
    table = ax.table(
        cellText=[[str(x) if not isinstance(x, int) else f"{x:,}" for x in r] for r in rows],
        colLabels=["split", "articles", "chunks (bank rows)", f"windows (K={summary['context_len']})"],
        loc="center",
        cellLoc="right",
    )
    table.scale(1, 1.5)
    for j in range(4):
        table[(len(rows), j)].set_text_props(weight="bold")
    ax.set_title(
        f"{summary['source']} · {summary['encoder']} ({summary['d_vec']}-D) — "
        f"{c['articles_short']} articles < K+1 chunks (no windows), {c['articles_empty']} empty, "
        f"{c['duplicates_removed']} cross-split duplicate chunks removed",
        fontsize=8.5,
    )
    fig.tight_layout()
    return fig


def chunk_length_hist(words: np.ndarray, min_words: int, max_words: int):
    """Histogram of words per chunk, with the chunker's min_words bound."""
    fig, ax = plt.subplots(figsize=(7, 3.2))
    hi = max(int(np.percentile(words, 99.5)), min_words + 1) if len(words) else 1
    lo = int(words.min()) if len(words) else 0
    step = max(1, (hi - lo) // 80)  # integer-aligned bins: no empty slivers between word counts
    sns.histplot(
        x=np.clip(words, 0, hi),
        bins=np.arange(lo, hi + step + 1, step) - 0.5,
        color="#4b5563",
        edgecolor="white",
        linewidth=0.3,
        ax=ax,
    )
    ax.axvline(min_words, color="#dc2626", ls="--", lw=1, label=f"min_words = {min_words}")
    ax.set_xlabel(
        f"words per chunk (clipped at {hi}; max {int(words.max()) if len(words) else 0}, max_words = {max_words})"
    )
    ax.set_ylabel("chunks")
    ax.set_title(f"Chunk length: median {np.median(words):.0f} words, mean {words.mean():.1f}")
    ax.legend()
    fig.tight_layout()
    return fig


def chunks_per_article(articles: list[dict[str, Any]], context_len: int):
    """Chunks per article, sorted, coloured by split; the K+1 line marks the shortest usable article."""
    arts = sorted(articles, key=lambda a: -a["n_chunks"])
    df = pd.DataFrame(
        {"article": np.arange(len(arts)), "chunks": [a["n_chunks"] for a in arts], "split": [a["split"] for a in arts]}
    )
    fig, ax = plt.subplots(figsize=(8, 3.2))
    sns.barplot(
        data=df,
        x="article",
        y="chunks",
        hue="split",
        hue_order=SPLITS,
        palette=SPLIT_COLORS,
        dodge=False,
        width=1.0,
        native_scale=True,
        linewidth=0,
        ax=ax,
    )
    ax.axhline(context_len + 1, color="k", ls="--", lw=1, label=f"K+1 = {context_len + 1}")
    ax.set_yscale("log")
    ax.set_xlabel("articles, longest first")
    ax.set_ylabel("chunks (log)")
    ax.set_title(f"Chunks per article ({len(arts)} articles)")
    ax.legend(ncol=4)
    fig.tight_layout()
    return fig


def pair_cosine_hist(pairs: dict[str, np.ndarray]):
    """Cosine of adjacent chunks vs random pairs from different articles."""
    fig, ax = plt.subplots(figsize=(7, 3.2))
    labels = {k: f"{k}: mean {pairs[k].mean():.3f} (n={len(pairs[k]):,})" for k in ("random", "adjacent")}
    df = pd.DataFrame(
        {
            "pair": np.repeat([labels[k] for k in labels], [len(pairs[k]) for k in labels]),
            "cosine": np.concatenate([np.asarray(pairs[k], dtype=float) for k in labels]),
        }
    )
    sns.histplot(
        data=df,
        x="cosine",
        hue="pair",
        hue_order=list(labels.values()),
        bins=np.linspace(-0.3, 1.0, 66),
        stat="density",
        common_norm=False,
        element="step",
        alpha=0.45,
        palette=dict(zip(labels.values(), ("#9ca3af", "#2563eb"))),
        ax=ax,
    )
    sns.move_legend(ax, "upper left", title=None)
    ax.set_xlabel("cosine")
    ax.set_ylabel("density")
    ax.set_title("Adjacent chunks vs random pairs")
    fig.tight_layout()
    return fig


def trivial_bars(trivial: dict[str, dict[str, float]]):
    """Mean cosine to the target of the trivial predictors, per split: the bar before training."""
    fig, ax = plt.subplots(figsize=(7, 3.4))
    df = pd.DataFrame(
        [{"predictor": p, "split": split, "cosine": trivial[split][p]} for split in SPLITS for p in PREDICTORS]
    )
    sns.barplot(
        data=df, x="predictor", y="cosine", hue="split", order=PREDICTORS, hue_order=SPLITS, palette=SPLIT_COLORS, ax=ax
    )
    for bars in ax.containers:
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
    ax.set_xlabel("")
    ax.set_ylabel("mean cosine(prediction, target)")
    ax.set_ylim(0, 1)
    ax.set_title("Trivial predictors (global_mean = mean of the train targets)")
    ax.legend(title=None)
    fig.tight_layout()
    return fig


def summary_markdown(summary: dict) -> str:
    """The data report's opening paragraph: sizes, the audit verdict and the bar a model must clear."""
    from lvmlib.data.corpus import MAX_PARAGRAPH_CHARS

    c, a, t = summary["counts"], summary["audit"], summary["trivial"]
    ps = c["per_split"]
    test = t.get("test", {})
    clr = summary.get("copy_last_retrieval", {}).get("test", {})
    lines = [
        f"**{c['articles']:,} articles → {c['chunks']:,} chunks → {c['windows']:,} windows** "
        f"(K = {summary['context_len']}, encoder `{summary['encoder']}`, {summary['d_vec']}-D"
        + (f", backend `{summary['encoder_backend']}`" if summary.get("encoder_backend") else "")
        + "). "
        f"Split by article: train {ps['train']['articles']} / val {ps['val']['articles']} / "
        f"test {ps['test']['articles']} articles ({ps['train']['windows']:,} / {ps['val']['windows']:,} / "
        f"{ps['test']['windows']:,} windows); {c['articles_short']} article(s) too short for a window; "
        f"{c['duplicates_removed']} duplicate chunk(s) removed across splits"
        + (
            f"; {c['paragraphs_cut']} over-long paragraph(s) ({c.get('paragraphs_cut_chars', 0):,} characters) cut "
            f"into pieces of at most {MAX_PARAGRAPH_CHARS:,} characters before sentence splitting."
            if c.get("paragraphs_cut")
            else "."
        ),
        f"- **Leakage audit {'passed' if a['passed'] else 'FAILED'}**: {a['articles_in_several_splits']} articles in "
        f"several splits, {a['shared_across_splits']} chunk texts shared across splits"
        + (
            f", {a['payload_mismatches']} payload vectors differing from the bank."
            if "payload_mismatches" in a
            else "."
        ),
    ]
    if test:
        lines.append(
            f"- **The bar on test windows** — cosine to the true next chunk: copy last context "
            f"{test['copy_last']:.3f}, context mean {test['context_mean']:.3f}, global mean {test['global_mean']:.3f}."
        )
    if clr:
        lines.append(
            f"- Copy-last as a retrieval query over all {clr['bank_size']:,} chunks: R@5 {clr['recall_at_5']:.1%} "
            f"({clr['recall_at_5_excl_context']:.1%} with the context chunks removed from the bank)."
        )
    return "\n".join(lines)
