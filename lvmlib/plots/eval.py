"""Figures and tables for 04_eval, all read from the eval.json dict and the per-query table.

Figures return a matplotlib Figure drawn with seaborn on tidy DataFrames (bars with the eval.json
intervals, R@k facets, rank histograms and ECDFs, cosine distributions); tables return a pandas
DataFrame (or Markdown text for the summary). Metric names are the eval.json keys (`recall_at_5`,
`pred_target_cosine`, ...). Intervals are the ones in eval.json (bootstrap over articles), drawn as
error bars, never recomputed by seaborn.
"""

from __future__ import annotations

from typing import Any

# No matplotlib.use(...) here: forcing Agg would switch a Jupyter kernel off its inline backend and the
# report would show "<Figure size ...>" instead of the figure. Headless scripts get Agg by default.
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from lvmlib.plots import training as plots  # noqa: F401  (applies the reports' theme)

PRIMARY, EXTRA, BASE = "#1d4ed8", "#7c3aed", "#9ca3af"


def _colors(ev: dict[str, Any]) -> dict[str, str]:
    cmap = plt.get_cmap("tab10")
    out = {}
    for i, (name, res) in enumerate(ev["models"].items()):
        out[name] = PRIMARY if res["role"] == "primary" else cmap(i % 10)
    return out


def _primary(ev: dict[str, Any], name: str) -> dict[str, Any]:
    return ev["models"][name]["banks"][ev["primary_bank"]][ev["primary_context"]]


# --------------------------------------------------------------------------- summary
def summary_markdown(ev: dict[str, Any]) -> str:
    """Key numbers and verdicts, in words, for the top of the report."""
    g, p = ev["gates"], ev["primary_model"]
    ci = ev.get("recall_at_5_ci")
    ci_txt = f" (95% CI by article {ci[0]:.1%}–{ci[1]:.1%})" if ci else ""
    lines = [
        f"**Phase-1 decision: `{ev['decision']}`** — {g['reason']}.",
        f"- Primary model **{p}** on the **{ev['primary_description']}**: R@1 {ev['recall_at_1']:.1%}, "
        f"R@5 **{ev['recall_at_5']:.1%}**{ci_txt}, R@10 {ev['recall_at_10']:.1%}, MRR {ev['mrr']:.3f}, "
        f"mean pred→target cosine **{ev['pred_target_cosine']:.3f}** (bar {g['cosine_min']}, "
        f"V1 reached {g['v1_cosine']}).",
        f"- {ev['n_queries']} queries ({ev['split']} windows of {ev['n_articles']} articles), bank of "
        f"{ev['bank_size']} chunks; search {ev['search_backend']} on {ev['device']}.",
    ]
    cl = ev.get("baseline_copy_last")
    if cl:
        lines.append(
            f"- Copy-last baseline on the same queries: R@5 {cl['recall_at_5']:.1%}, cosine "
            f"{cl['pred_target_cosine']:.3f}."
        )
    bb = g.get("best_baseline")
    if bb:
        dci = bb.get("diff_recall_at_5_ci")
        dtxt = f" (95% CI {dci[0]:+.1%} … {dci[1]:+.1%})" if dci else ""
        lines.append(
            f"- Best baseline **{bb['name']}**: R@5 {bb['recall_at_5']:.1%}; model − baseline R@5 "
            f"{bb['diff_recall_at_5']:+.1%}{dtxt} → the model "
            f"**{'beats' if g.get('beats_best_baseline') else 'does not beat'}** the best baseline."
        )
    s = ev["sanity"]
    lines.append(
        f"- Sanity checks passed: truth/context keys in the bank, vectors equal at their keys, oracle R@1 "
        f"{min(s['oracle']['recall_at_1'].values()):.1%} (min over banks; "
        f"{s['oracle']['queries_whose_target_has_duplicates']} targets have duplicate vectors), "
        f"search cross-check agreement {s['search_agreement'].get('agreement', float('nan')):.1%}."
    )
    return "\n".join(lines)


def _bars_with_intervals(ax, df: pd.DataFrame, y: str, palette: dict[str, str]) -> None:
    """One bar per model (seaborn) and, where given, its precomputed 95% interval as an error bar."""
    sns.barplot(data=df, x="model", y=y, hue="model", palette=palette, legend=False, ax=ax)
    if f"{y}_lo" in df:
        has = df[f"{y}_lo"].notna()
        x = np.arange(len(df))[has.to_numpy()]
        d = df[has]
        ax.errorbar(
            x,
            d[y],
            yerr=[(d[y] - d[f"{y}_lo"]).clip(lower=0), (d[f"{y}_hi"] - d[y]).clip(lower=0)],
            fmt="none",
            ecolor="#111827",
            elinewidth=1.2,
            capsize=3,
        )
    ax.set_xlabel("")
    ax.tick_params(axis="x", rotation=30)


def decision_summary(ev: dict[str, Any]):
    """R@5 (with its 95% interval over articles) and cosine of every model on the primary bank,
    against the Phase-1 bars."""
    g = ev["gates"]
    rows = []
    for n, res in ev["models"].items():
        ci = _primary(ev, n).get("recall_at_5_ci")
        rows.append(
            {
                "model": n,
                "role": res["role"],
                "recall_at_5": _primary(ev, n)["recall_at_5"],
                "recall_at_5_lo": ci[0] if ci else np.nan,
                "recall_at_5_hi": ci[1] if ci else np.nan,
                "pred_target_cosine": res["pred_target_cosine"],
            }
        )
    df = pd.DataFrame(rows)
    palette = {
        r.model: PRIMARY if r.role == "primary" else EXTRA if r.role == "extra" else BASE for r in df.itertuples()
    }
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.8))
    _bars_with_intervals(a1, df, "recall_at_5", palette)
    a1.axhline(g["r5_meaningful"], color="#b45309", ls="--", lw=1, label=f"proceed > {g['r5_meaningful']:.0%}")
    a1.axhline(g["r5_strong"], color="#15803d", ls=":", lw=1, label=f"strong ≥ {g['r5_strong']:.0%}")
    a1.set_ylabel("R@5 (95% CI)")
    a1.set_title(f"R@5, {ev['primary_bank']} bank, {ev['primary_context'].replace('_', ' ')}")
    a1.legend()
    _bars_with_intervals(a2, df[["model", "pred_target_cosine"]], "pred_target_cosine", palette)
    a2.axhline(g["cosine_min"], color="#b45309", ls="--", lw=1, label=f"bar {g['cosine_min']}")
    a2.axhline(g["v1_cosine"], color="#6b7280", ls=":", lw=1, label=f"V1 {g['v1_cosine']}")
    a2.set_ylabel("mean pred→target cosine")
    a2.set_title("cosine to the true next chunk")
    a2.legend()
    fig.suptitle(f"Phase-1 decision: {ev['decision']}", fontweight="bold")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- figures
def recall_frame(ev: dict[str, Any]) -> pd.DataFrame:
    """Tidy R@k: one row per model, bank, context variant and k."""
    rows = []
    for name, res in ev["models"].items():
        for b in ev["banks"]:
            for variant in ("context_excluded", "context_included"):
                m = res["banks"][b][variant]
                for key in m:
                    if key.startswith("recall_at_") and key.rsplit("_", 1)[1].isdigit():
                        rows.append(
                            {
                                "model": name,
                                "role": res["role"],
                                "bank": b,
                                "context": variant.replace("context_", ""),
                                "k": int(key.rsplit("_", 1)[1]),
                                "recall": m[key],
                            }
                        )
    return pd.DataFrame(rows)


def recall_curves(ev: dict[str, Any]):
    """R@k against k for every model, one panel per bank; solid = context excluded, dashed = included."""
    df = recall_frame(ev)
    g = sns.relplot(
        data=df,
        kind="line",
        x="k",
        y="recall",
        hue="model",
        hue_order=list(ev["models"]),
        palette=_colors(ev),
        style="context",
        style_order=["excluded", "included"],
        marker="o",
        markersize=4,
        col="bank",
        col_order=list(ev["banks"]),
        height=3.6,
        aspect=1.15,
        facet_kws={"sharey": True},
    )
    g.set(xscale="log")
    g.set_axis_labels("k", "R@k")
    g.set_titles("{col_name} bank")
    sns.move_legend(g, "center right", frameon=False)
    return g.figure


def rank_histograms(queries: pd.DataFrame, bank: str = "global", context: str = "excluded"):
    """The target's rank per model: its distribution (log bins) and its ECDF — the share of queries
    ranked at r or better, which is R@r."""
    col = f"rank_{bank}" + ("" if context == "excluded" else "_incl_context")
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.8))
    models = list(dict.fromkeys(queries["model"]))
    sns.histplot(
        data=queries,
        x=col,
        hue="model",
        hue_order=models,
        log_scale=True,
        bins=20,
        element="step",
        fill=False,
        lw=1.5,
        ax=a1,
    )
    sns.ecdfplot(data=queries, x=col, hue="model", hue_order=models, log_scale=True, lw=1.5, ax=a2, legend=False)
    for ax in (a1, a2):
        for k in (1, 5, 50):
            ax.axvline(k + 0.5 if ax is a1 else k, color="#6b7280", ls=":", lw=0.8)
        ax.set_xlabel(f"rank of the true next chunk ({bank} bank, context {context})")
    a1.set_ylabel("queries")
    a2.set_ylabel("share of queries ranked ≤ r (= R@r)")
    a2.set_title("ECDF of the rank; dotted: r = 1, 5, 50", fontsize=10)
    sns.move_legend(a1, "upper right", title=None)
    fig.tight_layout()
    return fig


def cosine_distributions(queries: pd.DataFrame, model: str, reference: str = "copy_last"):
    """pred→target cosine of `model` vs `reference` (copy-last): distributions and per-query pairs."""
    a = queries[queries.model == model].sort_values("query")
    b = queries[queries.model == reference].sort_values("query")
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.8))
    labels = {reference: f"{reference} (mean {b.cosine.mean():.3f})", model: f"{model} (mean {a.cosine.mean():.3f})"}
    both = pd.concat([b, a])[["model", "cosine"]].assign(predictor=lambda d: d["model"].map(labels))
    sns.histplot(
        data=both,
        x="cosine",
        hue="predictor",
        hue_order=list(labels.values()),
        bins=np.linspace(min(a.cosine.min(), b.cosine.min()), 1.0, 40),
        element="step",
        alpha=0.45,
        palette=dict(zip(labels.values(), (BASE, PRIMARY))),
        ax=a1,
    )
    sns.move_legend(a1, "upper left", title=None)
    a1.set_xlabel("cosine(prediction, true next chunk)")
    a1.set_ylabel("queries")
    pair = pd.DataFrame({reference: b.cosine.to_numpy(), model: a.cosine.to_numpy()})
    sns.scatterplot(data=pair, x=reference, y=model, s=8, alpha=0.5, color=PRIMARY, edgecolor=None, ax=a2)
    lo = float(min(a.cosine.min(), b.cosine.min()))
    a2.plot([lo, 1], [lo, 1], color="#6b7280", lw=0.8, ls="--")
    above = float((pair[model] > pair[reference]).mean())
    a2.set_xlabel(f"{reference} cosine")
    a2.set_ylabel(f"{model} cosine")
    a2.set_title(f"{model} closer than {reference} on {above:.0%} of queries", fontsize=10)
    fig.tight_layout()
    return fig


def latency(ev: dict[str, Any]):
    """Per query at batch 1: model forward, search, both together — P50 bars, whiskers up to P95."""
    lat = ev.get("latency") or {}
    parts = {"forward_ms": "model forward", "search_ms": "search", "total_ms": "both"}
    df = pd.DataFrame(
        [
            {"model": name, "part": label, "p50": rec[p]["p50"], "p95": rec[p]["p95"]}
            for name, rec in lat.items()
            for p, label in parts.items()
        ]
    )
    fig, ax = plt.subplots(figsize=(8, 3.6))
    if not df.empty:
        sns.barplot(data=df, x="part", y="p50", hue="model", order=list(parts.values()), ax=ax)
        for bars, (_, grp) in zip(ax.containers, df.groupby("model", sort=False)):
            grp = grp.set_index("part").loc[list(parts.values())]
            xs = [r.get_x() + r.get_width() / 2 for r in bars]
            ax.vlines(xs, grp["p50"], grp["p95"], color="#374151", lw=1.2)
            ax.scatter(xs, grp["p95"], marker="_", s=60, color="#374151", zorder=3)
        sns.move_legend(ax, "upper left", bbox_to_anchor=(1.01, 1.0), title="P50 bar,\nwhisker to P95")
    ax.set_yscale("log")
    ax.set_xlabel("")
    ax.set_ylabel("ms per query (batch 1)")
    first = next(iter(lat.values()), {})
    ax.set_title(
        f"bank {first.get('bank_size')} rows, {first.get('backend')} on {first.get('device')}, "
        f"{first.get('threads', first.get('torch_threads'))} thread(s)",
        fontsize=10,
    )
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- tables
def models_by_banks(ev: dict[str, Any], metric: str = "recall_at_5") -> pd.DataFrame:
    """The one-glance table: a metric for every model (rows) in every bank x context variant (columns),
    with the bank-independent mean cosine; the primary setting is the first column."""
    order = [(ev["primary_bank"], ev["primary_context"])]
    order += [(b, v) for b in ev["banks"] for v in ("context_excluded", "context_included") if (b, v) not in order]
    rows = {}
    for name, res in ev["models"].items():
        row = {(b, v.replace("context_", "context ")): res["banks"][b][v][metric] for b, v in order}
        row[("all", "pred_target_cosine")] = res["pred_target_cosine"]
        rows[f"{name} ({res['role']})"] = row
    df = pd.DataFrame.from_dict(rows, orient="index")
    df.columns = pd.MultiIndex.from_tuples(df.columns, names=["bank", metric])
    return df


def latency_table(ev: dict[str, Any]) -> pd.DataFrame:
    rows = []
    for name, rec in (ev.get("latency") or {}).items():
        rows.append(
            {
                "model": name,
                **{
                    f"{p.replace('_ms', '')}_{q}_ms": rec[p][q]
                    for p in ("forward_ms", "search_ms", "total_ms")
                    for q in ("p50", "p95")
                },
            }
        )
    return pd.DataFrame(rows)


def sanity_table(ev: dict[str, Any]) -> pd.DataFrame:
    """Every check that could have stopped the evaluation, with its number."""
    s = ev["sanity"]
    rows = [("bank finite and L2-normalised", f"norms {s['bank']['norm_min']:.4f}–{s['bank']['norm_max']:.4f}")]
    for where, rep in s["alignment"].items():
        rows.append((f"{where}: truth and context keys in the bank", f"{rep['n_windows']} windows"))
        tgt = rep.get("max_abs_diff_target")
        rows.append(
            (
                f"{where}: vectors equal the bank at their keys",
                f"max |Δ| context {rep['max_abs_diff_context']:.2g}" + ("" if tgt is None else f", target {tgt:.2g}"),
            )
        )
    o = s["oracle"]
    for k, v in o["recall_at_1"].items():
        rows.append((f"oracle R@1, {k}", f"{v:.2%} (min {o['min_recall_at_1']:.0%})"))
    rows.append(
        (
            "duplicate vectors in the bank",
            f"{o['bank_rows_with_a_duplicate']} rows; {o['queries_whose_target_has_duplicates']} targets",
        )
    )
    sa = s["search_agreement"]
    if sa.get("checked"):
        rows.append((f"{sa['backend']} top-k lists vs counted ranks", f"{sa['agreement']:.2%} agree"))
    return pd.DataFrame(rows, columns=["check (passed)", "value"])


def examples_table(ev: dict[str, Any], max_chars: int = 160) -> pd.DataFrame:
    """Example queries: the context chunks, the true next chunk, and the primary model's top 3."""

    def cut(t: str) -> str:
        return t if len(t) <= max_chars else t[: max_chars - 1] + "…"

    rows = []
    for x in ev.get("examples", []):
        row = {
            "article": x.get("title") or x["article_id"],
            "position": x["target_position"],
            "context (last 2 of K)": " ⏎ ".join(cut(t) for t in x["context_texts"][-2:]),
            "true next chunk": cut(x["target_text"]),
            **{f"rank ({m})": r for m, r in x["ranks"].items() if m in (ev["primary_model"], "copy_last")},
        }
        for j, r in enumerate(x["retrieved"], 1):
            row[f"top {j}"] = ("✔ " if r["is_target"] else "") + cut(r["text"]) + f" ({r['score']:.2f})"
        rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- the bank-size curve
def _size_label(s: int) -> str:
    return f"{s / 1000:.0f}K" if s >= 10000 else f"{s / 1000:.1f}K" if s >= 1000 else str(s)


def log_size_axis(ax, df: pd.DataFrame) -> None:
    """Bank sizes on a log x axis: adds df["x"] (size 0, which a log axis cannot hold, drawn a quarter of the
    smallest positive size to its left) and labels the ticks with the sizes (0 as 0)."""
    sizes = sorted(df["size"].unique())
    pos = [s for s in sizes if s > 0]
    zero_x = (pos[0] / 4) if pos else 1.0
    df["x"] = df["size"].where(df["size"] > 0, zero_x)
    ax.set_xscale("log")
    ax.set_xticks([zero_x, *pos], [_size_label(s) for s in sizes])
    ax.minorticks_off()


def bank_curve_frame(ev: dict[str, Any]) -> pd.DataFrame:
    """Tidy paired differences of eval.json's `bank_curve`: one row per model, baseline and bank size,
    `diff_recall_at_5` / `diff_mrr` with their interval ends (`_lo`, `_hi`). Empty without a curve."""
    rows = []
    for r in (ev.get("bank_curve") or {}).get("paired", []):
        rec = {k: r[k] for k in ("size", "n_bank", "model", "vs", "diff_recall_at_5", "diff_mrr")}
        for m in ("diff_recall_at_5", "diff_mrr"):
            ci = r.get(f"{m}_ci") or [np.nan, np.nan]
            rec[f"{m}_lo"], rec[f"{m}_hi"] = ci
        rows.append(rec)
    return pd.DataFrame(rows)


def bank_curve(ev: dict[str, Any]):
    """The primary model's paired Δ R@5 and Δ MRR against each baseline as distractor chunks join the
    held-out bank (log x; no distractors at the left edge, labelled 0), 95% article-bootstrap bands from
    eval.json, a zero line. None when the run has no curve (no data.distractor_path)."""
    df = bank_curve_frame(ev)
    if df.empty:
        return None
    c = ev["bank_curve"]
    df = df[df["model"] == ev["primary_model"]].copy()
    palette = dict(zip(df["vs"].unique(), sns.color_palette("deep")))
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.9))
    for ax, m, label in ((axes[0], "diff_recall_at_5", "Δ R@5"), (axes[1], "diff_mrr", "Δ MRR")):
        log_size_axis(ax, df)
        sns.lineplot(data=df, x="x", y=m, hue="vs", palette=palette, marker="o", errorbar=None, ax=ax)
        for vs, g in df.groupby("vs", sort=False):
            ax.fill_between(g["x"], g[f"{m}_lo"], g[f"{m}_hi"], color=palette[vs], alpha=0.18, lw=0)
        ax.axhline(0, color="#111827", lw=1)
        ax.set_xlabel(f"distractor chunks added to the {c['held_out_chunks']:,} held-out chunks")
        ax.set_ylabel(f"{label}, {ev['primary_model']} − baseline (95% CI)")
        ax.legend(title="baseline", frameon=False)
    fig.suptitle(
        f"Bank-size curve: {c['split']} queries, nested distractor subsets (seed {c['seed']}, "
        f"{c['distractor_chunks']:,} distractors in all)",
        fontweight="bold",
    )
    fig.tight_layout()
    return fig


def bank_curve_table(ev: dict[str, Any]) -> pd.DataFrame:
    """Per bank size: rows in the bank, every predictor's R@5, and the primary model's paired Δ R@5
    against each baseline with its 95% interval (percentage points). Empty without a curve."""
    c = ev.get("bank_curve")
    if not c:
        return pd.DataFrame()
    out = {}
    for r in c["rows"]:
        rec = out.setdefault(r["size"], {"distractors": r["size"], "n_bank": r["n_bank"]})
        rec[f"recall_at_5 {r['predictor']}"] = round(100 * r["recall_at_5"], 1)
    for r in c["paired"]:
        if r["model"] != ev["primary_model"]:
            continue
        lo, hi = r["diff_recall_at_5_ci"] or (np.nan, np.nan)
        out[r["size"]][f"diff_recall_at_5 vs {r['vs']}"] = (
            f"{100 * r['diff_recall_at_5']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"
        )
    return pd.DataFrame(list(out.values())).set_index("distractors")
