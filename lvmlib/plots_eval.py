"""Figures and tables for 04_eval, all read from the eval.json dict and the per-query table.

Figures return a matplotlib Figure; tables return a pandas DataFrame (or Markdown text for the
summary). Metric names are the eval.json keys (`recall_at_5`, `pred_target_cosine`, ...).
"""
from __future__ import annotations

from typing import Any

# No matplotlib.use(...) here: forcing Agg would switch a Jupyter kernel off its inline backend and the
# report would show "<Figure size ...>" instead of the figure. Headless scripts get Agg by default.
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

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
        lines.append(f"- Copy-last baseline on the same queries: R@5 {cl['recall_at_5']:.1%}, cosine "
                     f"{cl['pred_target_cosine']:.3f}.")
    bb = g.get("best_baseline")
    if bb:
        dci = bb.get("diff_recall_at_5_ci")
        dtxt = f" (95% CI {dci[0]:+.1%} … {dci[1]:+.1%})" if dci else ""
        lines.append(f"- Best baseline **{bb['name']}**: R@5 {bb['recall_at_5']:.1%}; model − baseline R@5 "
                     f"{bb['diff_recall_at_5']:+.1%}{dtxt} → the model "
                     f"**{'beats' if g.get('beats_best_baseline') else 'does not beat'}** the best baseline.")
    s = ev["sanity"]
    lines.append(f"- Sanity checks passed: truth/context keys in the bank, vectors equal at their keys, oracle R@1 "
                 f"{min(s['oracle']['recall_at_1'].values()):.1%} (min over banks; "
                 f"{s['oracle']['queries_whose_target_has_duplicates']} targets have duplicate vectors), "
                 f"search cross-check agreement {s['search_agreement'].get('agreement', float('nan')):.1%}.")
    return "\n".join(lines)


def decision_summary(ev: dict[str, Any]):
    """R@5 and cosine of every model on the primary bank, against the Phase-1 bars."""
    g = ev["gates"]
    names = list(ev["models"])
    col = [PRIMARY if ev["models"][n]["role"] == "primary" else EXTRA if ev["models"][n]["role"] == "extra"
           else BASE for n in names]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.8))
    r5 = [_primary(ev, n)["recall_at_5"] for n in names]
    ci = [_primary(ev, n).get("recall_at_5_ci") or [v, v] for n, v in zip(names, r5)]
    err = np.array([[max(0.0, v - c[0]), max(0.0, c[1] - v)] for v, c in zip(r5, ci)]).T
    a1.bar(names, r5, color=col, yerr=err, capsize=3)
    a1.axhline(g["r5_meaningful"], color="#b45309", ls="--", lw=1, label=f"proceed > {g['r5_meaningful']:.0%}")
    a1.axhline(g["r5_strong"], color="#15803d", ls=":", lw=1, label=f"strong ≥ {g['r5_strong']:.0%}")
    a1.set_ylabel("R@5")
    a1.set_title(f"R@5, {ev['primary_bank']} bank, {ev['primary_context'].replace('_', ' ')}")
    a1.legend(fontsize=8)
    cos = [ev["models"][n]["pred_target_cosine"] for n in names]
    a2.bar(names, cos, color=col)
    a2.axhline(g["cosine_min"], color="#b45309", ls="--", lw=1, label=f"bar {g['cosine_min']}")
    a2.axhline(g["v1_cosine"], color="#6b7280", ls=":", lw=1, label=f"V1 {g['v1_cosine']}")
    a2.set_ylabel("mean pred→target cosine")
    a2.set_title("cosine to the true next chunk")
    a2.legend(fontsize=8)
    for a in (a1, a2):
        a.tick_params(axis="x", rotation=30)
    fig.suptitle(f"Phase-1 decision: {ev['decision']}", fontweight="bold")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- figures
def recall_curves(ev: dict[str, Any]):
    """R@k against k for every model, one panel per bank; solid = context excluded, dashed = included."""
    banks = list(ev["banks"])
    colors = _colors(ev)
    fig, axes = plt.subplots(1, len(banks), figsize=(4.6 * len(banks), 3.8), sharey=True, squeeze=False)
    for ax, b in zip(axes[0], banks):
        for name, res in ev["models"].items():
            for variant, ls in (("context_excluded", "-"), ("context_included", "--")):
                m = res["banks"][b][variant]
                ks = sorted(int(k.split("_")[-1]) for k in m if k.startswith("recall_at_") and k[-1].isdigit())
                ax.plot(ks, [m[f"recall_at_{k}"] for k in ks], ls, marker="o", ms=3, color=colors[name],
                        label=name if variant == "context_excluded" else None, lw=2 if res["role"] == "primary" else 1)
        ax.set_xscale("log")
        ax.set_xlabel("k")
        ax.set_title(f"{b} bank")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("R@k")
    axes[0][-1].legend(fontsize=8, title="solid: context excluded\ndashed: included", title_fontsize=7)
    fig.tight_layout()
    return fig


def rank_histograms(queries: pd.DataFrame, bank: str = "global", context: str = "excluded"):
    """Distribution of the target's rank (log scale) per model."""
    col = f"rank_{bank}" + ("" if context == "excluded" else "_incl_context")
    fig, ax = plt.subplots(figsize=(8, 3.8))
    hi = max(2, int(queries[col].max()))
    bins = np.unique(np.logspace(0, np.log10(hi + 1), 40).astype(int))
    for name, grp in queries.groupby("model", sort=False):
        ax.hist(grp[col], bins=bins, histtype="step", lw=1.5, label=name)
    for k in (1, 5, 50):
        ax.axvline(k + 0.5, color="#6b7280", ls=":", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel(f"rank of the true next chunk ({bank} bank, context {context})")
    ax.set_ylabel("queries")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def cosine_distributions(queries: pd.DataFrame, model: str, reference: str = "copy_last"):
    """pred→target cosine of `model` vs `reference` (copy-last): distributions and per-query pairs."""
    a = queries[queries.model == model].sort_values("query")
    b = queries[queries.model == reference].sort_values("query")
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.8))
    bins = np.linspace(min(a.cosine.min(), b.cosine.min()), 1.0, 40)
    a1.hist(b.cosine, bins=bins, alpha=0.5, color=BASE, label=f"{reference} (mean {b.cosine.mean():.3f})")
    a1.hist(a.cosine, bins=bins, alpha=0.6, color=PRIMARY, label=f"{model} (mean {a.cosine.mean():.3f})")
    a1.set_xlabel("cosine(prediction, true next chunk)")
    a1.set_ylabel("queries")
    a1.legend(fontsize=8)
    a2.scatter(b.cosine.to_numpy(), a.cosine.to_numpy(), s=6, alpha=0.5, color=PRIMARY)
    lo = float(min(a.cosine.min(), b.cosine.min()))
    a2.plot([lo, 1], [lo, 1], color="#6b7280", lw=0.8, ls="--")
    above = float((a.cosine.to_numpy() > b.cosine.to_numpy()).mean())
    a2.set_xlabel(f"{reference} cosine")
    a2.set_ylabel(f"{model} cosine")
    a2.set_title(f"{model} closer than {reference} on {above:.0%} of queries", fontsize=10)
    fig.tight_layout()
    return fig


def latency(ev: dict[str, Any]):
    """P50 and P95 per query at batch 1: model forward, search, both together."""
    lat = ev.get("latency") or {}
    fig, ax = plt.subplots(figsize=(8, 3.6))
    parts = ("forward_ms", "search_ms", "total_ms")
    x = np.arange(len(parts))
    w = 0.8 / max(1, len(lat))
    for i, (name, rec) in enumerate(lat.items()):
        p50 = [rec[p]["p50"] for p in parts]
        p95 = [rec[p]["p95"] for p in parts]
        ax.bar(x + i * w, p95, w, color="#e5e7eb", edgecolor="#9ca3af")
        ax.bar(x + i * w, p50, w * 0.6, label=f"{name} (P50; P95 grey)")
    ax.set_xticks(x + w * (len(lat) - 1) / 2, ["model forward", "search", "both"])
    ax.set_yscale("log")
    ax.set_ylabel("ms per query (batch 1)")
    first = next(iter(lat.values()), {})
    ax.set_title(f"bank {first.get('bank_size')} rows, {first.get('backend')} on {first.get('device')}, "
                 f"{first.get('threads', first.get('torch_threads'))} thread(s)", fontsize=10)
    ax.legend(fontsize=8)
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
        rows.append({"model": name, **{f"{p.replace('_ms', '')}_{q}_ms": rec[p][q]
                                       for p in ("forward_ms", "search_ms", "total_ms") for q in ("p50", "p95")}})
    return pd.DataFrame(rows)


def sanity_table(ev: dict[str, Any]) -> pd.DataFrame:
    """Every check that could have stopped the evaluation, with its number."""
    s = ev["sanity"]
    rows = [("bank finite and L2-normalised", f"norms {s['bank']['norm_min']:.4f}–{s['bank']['norm_max']:.4f}")]
    for where, rep in s["alignment"].items():
        rows.append((f"{where}: truth and context keys in the bank", f"{rep['n_windows']} windows"))
        tgt = rep.get("max_abs_diff_target")
        rows.append((f"{where}: vectors equal the bank at their keys",
                     f"max |Δ| context {rep['max_abs_diff_context']:.2g}"
                     + ("" if tgt is None else f", target {tgt:.2g}")))
    o = s["oracle"]
    for k, v in o["recall_at_1"].items():
        rows.append((f"oracle R@1, {k}", f"{v:.2%} (min {o['min_recall_at_1']:.0%})"))
    rows.append(("duplicate vectors in the bank", f"{o['bank_rows_with_a_duplicate']} rows; "
                                                  f"{o['queries_whose_target_has_duplicates']} targets"))
    sa = s["search_agreement"]
    if sa.get("checked"):
        rows.append((f"{sa['backend']} top-k lists vs counted ranks", f"{sa['agreement']:.2%} agree"))
    return pd.DataFrame(rows, columns=["check (passed)", "value"])


def examples_table(ev: dict[str, Any], max_chars: int = 160) -> pd.DataFrame:
    """Example queries: the context chunks, the true next chunk, and the primary model's top 3."""
    def cut(t: str) -> str:
        return t if len(t) <= max_chars else t[:max_chars - 1] + "…"
    rows = []
    for x in ev.get("examples", []):
        row = {"article": x.get("title") or x["article_id"], "position": x["target_position"],
               "context (last 2 of K)": " ⏎ ".join(cut(t) for t in x["context_texts"][-2:]),
               "true next chunk": cut(x["target_text"]),
               **{f"rank ({m})": r for m, r in x["ranks"].items() if m in (ev["primary_model"], "copy_last")}}
        for j, r in enumerate(x["retrieved"], 1):
            row[f"top {j}"] = ("✔ " if r["is_target"] else "") + cut(r["text"]) + f" ({r['score']:.2f})"
        rows.append(row)
    return pd.DataFrame(rows)
