"""The scaling study: whether the model's gap to the trivial predictors closes as the training set grows.

The scaling study: one run per training-set size, the same held-out val and test articles at every
size, and a page that says whether the model's gap to the trivial predictors closes with data.

`scaling_study` runs the whole study (`runner.run_study`, notebooks 01..04) once per size with
`data.train_articles = N` — the split is made on the whole corpus first, so every size shares the val
and test articles and the bank, and the sizes are nested (N=100 is inside N=300). Then it executes
`notebooks/06_scaling.ipynb`, which reads only the runs' files (`metrics/eval.json`, `metrics/queries.csv`)
through `load_study` / `study_table` / `trend` / `verdict` below, and renders `reports/scaling_<id>.html`,
listed on `reports/index.html`.

Trend: R@5 and cosine of the model (and of ridge, the one baseline that learns) are fitted as
a + b * log10(N) over the sizes; copy_last and context_mean do not depend on N. The verdict says where
the model's fitted line crosses the best constant baseline — inside the measured range, or extrapolated.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from lvmlib.core.config import ConfigError
from lvmlib.core.errors import ScalingFailed
from lvmlib.core.runs import atomic_write_json, read_json

BASELINES = ("copy_last", "context_mean", "ridge")
CONSTANT = ("copy_last", "context_mean")  # predictors that do not learn from the train articles


def parse_sizes(text: str) -> list[int]:
    """'100,300,1000' -> [100, 300, 1000] (sorted, unique, each >= 1); ConfigError (a ValueError) naming the bad item."""
    sizes = []
    for item in str(text).split(","):
        item = item.strip()
        if not item.isdigit() or int(item) < 1:
            raise ConfigError(f"--articles {text!r}: {item!r} is not a positive whole number of training articles")
        sizes.append(int(item))
    return sorted(set(sizes))


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:60] or "scaling"


# --------------------------------------------------------------------------- reading the runs
def load_study(run_dirs: list[str | Path], metrics_dir: str = "metrics") -> list[dict[str, Any]]:
    """One record per run: its size (train articles actually used), eval.json and per-query table.
    `metrics_dir`: the folder of each run holding the evaluation (`metrics_val` for the val evaluation that
    `python -m lvmlib select` writes: a curve judged on val only)."""
    import pandas as pd

    out = []
    for d in run_dirs:
        d = Path(d)
        if not (d / metrics_dir / "eval.json").is_file():
            raise ScalingFailed(f"{d / metrics_dir}: no eval.json — not an evaluated run")
        ev = read_json(d / metrics_dir / "eval.json")
        summary = read_json(d / "data" / "summary.json")
        out.append(
            {
                "run_dir": str(d),
                "run_id": d.name,
                "n_articles": int(summary["counts"]["train_articles_used"]),
                "n_train_windows": int(summary["counts"]["per_split"]["train"]["windows"]),
                "eval": ev,
                "bank_chunks": int(summary["counts"]["chunks"]),
                "queries": pd.read_csv(d / metrics_dir / "queries.csv"),
            }
        )
    out.sort(key=lambda r: r["n_articles"])
    keys = {tuple(r["queries"].loc[r["queries"]["model"] == r["queries"]["model"].iloc[0], "target_row"]) for r in out}
    if len(keys) > 1:
        raise ScalingFailed(
            "the runs did not score the same test queries (different corpus, split or K?); "
            "a scaling curve needs fixed held-out articles"
        )
    return out


def reading_note(study: list[dict[str, Any]]) -> str:
    """How to read the page's numbers: which bank R@5 is ranked in and which articles the queries come from
    (each run's eval.json: the primary bank's own description, the split)."""
    ev = study[-1]["eval"]
    split = ev.get("split", "test")
    bank = ev.get("primary_description") or f"the {ev.get('primary_bank', 'global')} bank"
    return (
        f"R@5 is on the primary bank ({bank}); the queries are the {split} articles' windows. Cosine is between the "
        f"prediction and the true next vector. *Beats* means the paired 95% interval (bootstrap over {split} "
        "articles, same queries) of the model minus the baseline lies above zero. `copy_last` and `context_mean` "
        "learn nothing, so they are flat; `ridge` is fitted on each size's training windows."
    )


def _paired(q, model: str, other: str, n_boot: int, seed: int, col: str) -> dict[str, Any]:
    """Model minus `other` on the same queries; `col`: the ranks of the primary bank and context variant."""
    from lvmlib.metrics import article_bootstrap

    a = q[q["model"] == model].sort_values("query")
    b = q[q["model"] == other].sort_values("query")
    d_r5 = (a[col].to_numpy() <= 5).astype(float) - (b[col].to_numpy() <= 5)
    d_cos = a["cosine"].to_numpy() - b["cosine"].to_numpy()
    ci = article_bootstrap({"recall_at_5": d_r5, "cosine": d_cos}, a["article_id"].to_numpy(), n_boot, seed)
    return {
        "diff_recall_at_5": float(d_r5.mean()),
        "diff_recall_at_5_ci": ci["recall_at_5"],
        "diff_cosine": float(d_cos.mean()),
        "diff_cosine_ci": ci["cosine"],
    }


def study_table(study: list[dict[str, Any]], n_boot: int = 1000, seed: int = 0, bank: str | None = None):
    """Tidy DataFrame: one row per (size, predictor) with R@5 (+95% CI), cosine, and the paired
    differences of the model against that baseline on the same test queries (article bootstrap).
    `bank`: the eval bank whose ranks count (default each run's primary; `test` = held-out chunks only)."""
    import pandas as pd

    rows = []
    for r in study:
        ev, q = r["eval"], r["queries"]
        primary = ev["primary_model"]
        name_of_bank = bank or ev["primary_bank"]
        for name, res in ev["models"].items():
            if name != primary and name not in BASELINES:
                continue
            if name_of_bank not in res["banks"]:
                raise ScalingFailed(f"{r['run_dir']}: eval.json has no {name_of_bank!r} bank (eval.banks)")
            m = res["banks"][name_of_bank][ev["primary_context"]]
            row = {
                "n_articles": r["n_articles"],
                "n_train_windows": r["n_train_windows"],
                "run_id": r["run_id"],
                "bank": name_of_bank,
                "bank_chunks": r.get("bank_chunks"),
                "predictor": "model" if name == primary else name,
                "recall_at_5": m["recall_at_5"],
                "recall_at_5_lo": (m.get("recall_at_5_ci") or [math.nan, math.nan])[0],
                "recall_at_5_hi": (m.get("recall_at_5_ci") or [math.nan, math.nan])[1],
                "mrr": m["mrr"],
                "cosine": res["pred_target_cosine"],
            }
            if name != primary:
                from lvmlib.analysis.compare import primary_rank_column

                row.update(_paired(q, primary, name, n_boot, seed, primary_rank_column(ev, bank)))
            rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- trend and verdict
def trend(n: np.ndarray, y: np.ndarray) -> tuple[float, float] | None:
    """Least-squares a + b * log10(n) -> (a, b); None with fewer than two distinct sizes."""
    n, y = np.asarray(n, float), np.asarray(y, float)
    if len(np.unique(n)) < 2:
        return None
    b, a = np.polyfit(np.log10(n), y, 1)
    return float(a), float(b)


def crossing(fit: tuple[float, float] | None, level: float) -> float | None:
    """Training articles at which a + b log10(n) reaches `level` (None: never, the slope is not positive)."""
    if fit is None or fit[1] <= 0:
        return None
    return float(10 ** ((level - fit[0]) / fit[1]))


def gaps_to_best(table, metric: str) -> dict[str, Any]:
    """The model minus the best constant baseline (highest mean `metric` over the sizes), paired, per
    size: what the verdict fits and the gap panel draws. -> {best, sizes, gaps, lo, hi, fit} (lo/hi NaN
    where a size has no interval)."""
    base = table[table["predictor"].isin(CONSTANT)]
    best_name = base.groupby("predictor")[metric].mean().idxmax()
    best = base[base["predictor"] == best_name].sort_values("n_articles")
    gaps = np.asarray([float(x) for x in best[f"diff_{metric}"]])
    cis = [
        c if isinstance(c, (list, tuple, np.ndarray)) and len(c) == 2 else (math.nan, math.nan)
        for c in best[f"diff_{metric}_ci"]
    ]
    sizes = best["n_articles"].to_numpy()
    return {
        "best": best_name,
        "rows": best,
        "sizes": sizes,
        "gaps": gaps,
        "lo": np.asarray([float(c[0]) for c in cis]),
        "hi": np.asarray([float(c[1]) for c in cis]),
        "fit": trend(sizes, gaps),
    }


def verdict(table) -> dict[str, Any]:
    """The page's answer in words, per metric: does the model beat the best constant baseline at the
    largest size (paired 95% interval above zero), is the gap closing, and where the fitted trend of
    the gap reaches zero. Gaps are the paired differences at each size, so they stay right when the
    bank (and with it every predictor's R@5) grows with the training set (`data.extra_train_path`)."""
    sizes = sorted(table["n_articles"].unique())
    model = table[table["predictor"] == "model"].sort_values("n_articles")
    out: dict[str, Any] = {"sizes": [int(s) for s in sizes], "metrics": {}}
    lines = []
    banks = sorted({int(b) for b in table["bank_chunks"].dropna()}) if "bank_chunks" in table else []
    for metric, label, fmt in (("recall_at_5", "R@5", "{:.1%}"), ("cosine", "cosine", "{:.3f}")):
        g = gaps_to_best(table, metric)
        best_name, best, fit = g["best"], g["rows"], g["fit"]
        level = float(best[metric].iloc[-1])  # the baseline at the largest size
        ci = best.iloc[-1][f"diff_{metric}_ci"]
        gaps = [float(x) for x in g["gaps"]]  # model minus it, paired, per size
        cross = crossing(fit, 0.0)
        beats = ci is not None and not (isinstance(ci, float) and math.isnan(ci)) and ci[0] > 0
        m_last = float(model[metric].iloc[-1])
        if beats:
            text = (
                f"{label}: the model beats {best_name} at {sizes[-1]:,} training articles "
                f"({fmt.format(m_last)} vs {fmt.format(level)}, paired 95% interval of the difference "
                f"{fmt.format(ci[0])} to {fmt.format(ci[1])})."
            )
        else:
            text = (
                f"{label}: at {sizes[-1]:,} training articles the model does not beat {best_name} "
                f"({fmt.format(m_last)} vs {fmt.format(level)}"
                + (
                    f", paired 95% interval of the difference {fmt.format(ci[0])} to {fmt.format(ci[1])})."
                    if ci is not None and not isinstance(ci, float)
                    else ")."
                )
            )
        if len(gaps) >= 2:
            closing = gaps[-1] > gaps[0]
            text += (
                f" The gap {'closes' if closing else 'does not close'} with data ({fmt.format(gaps[0])} at "
                f"{sizes[0]:,} -> {fmt.format(gaps[-1])} at {sizes[-1]:,})."
            )
            if closing and len(gaps) >= 3 and gaps[-1] < gaps[-2] and not beats:
                text += (
                    f" Not in the last step, though: {fmt.format(gaps[-2])} at {sizes[-2]:,} -> "
                    f"{fmt.format(gaps[-1])} at {sizes[-1]:,} — the measured curve stopped closing."
                )
        if cross is not None and not beats:
            where = "inside the measured range" if cross <= sizes[-1] else "by extrapolation"
            text += (
                f" The fitted trend of the gap (a + b log10 N) reaches zero at about {cross:,.0f} articles ({where})."
            )
            if cross <= sizes[-1]:  # the line says "already there", the measured point says "not beaten"
                at_last = fit[0] + fit[1] * math.log10(sizes[-1])
                text += (
                    f" The measured gap at {sizes[-1]:,} ({fmt.format(gaps[-1])}) lies below that line "
                    f"({fmt.format(at_last)}): the curve bends under its log-linear trend, so the trend "
                    "does not say at what size the model would beat it."
                )
        elif fit is not None and fit[1] <= 0 and not beats:
            text += " The fitted trend is flat or falling: more articles of this kind would not close the gap."
        if metric == "recall_at_5" and len(banks) > 1:
            text += (
                f" The bank grows with the training set here ({banks[0]:,} to {banks[-1]:,} chunks: extra "
                "training articles are ranked against too), so R@5 levels differ between sizes for every "
                "predictor; the gaps are paired differences at each size."
            )
        out["metrics"][metric] = {
            "best_constant_baseline": best_name,
            "baseline_level": level,
            "model_last": m_last,
            "beats_at_largest": bool(beats),
            "diff_ci_at_largest": ci,
            "gaps": gaps,
            "fit": fit,
            "crossing_articles": cross,
        }
        lines.append(text)
    out["text"] = lines
    out["headline"] = " ".join(lines)
    return out


def multiple_of_baseline(
    study: list[dict[str, Any]],
    factor: float = 2.0,
    bank: str = "test",
    baseline: str = "copy_last",
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """How many training articles the model's R@5 on `bank` would need to reach `factor` x `baseline`'s, at the
    rate the sizes show: a + b log10 N fitted to the model's R@5 per size, solved for factor x the baseline's
    R@5 (at the largest size; on the held-out `test` bank it is the same at every size).

    The interval resamples test articles, one resample shared by every size and the baseline (the queries are
    the same), and refits: 95% percentiles of the slope and of N (a resample whose slope is not positive never
    gets there: N = inf, so an upper bound may be inf). -> {bank, baseline, factor, sizes, model, level,
    target, fit, slope_ci, articles, articles_ci, reached, text}; N values are None for "never"."""
    from lvmlib.analysis.compare import primary_rank_column

    if len({r["n_articles"] for r in study}) < 2:
        raise ScalingFailed("a trend needs runs at two or more training-set sizes")
    hits, base = [], None
    for r in study:
        ev, q = r["eval"], r["queries"]
        col = primary_rank_column(ev, bank)
        if col not in q.columns:
            raise ScalingFailed(f"{r['run_dir']}: queries.csv has no {col!r} column (eval.banks lacks {bank!r})")
        m = q[q["model"] == ev["primary_model"]].sort_values("query")
        hits.append((m[col].to_numpy() <= 5).astype(float))
        b = q[q["model"] == baseline].sort_values("query")
        if b.empty:
            raise ScalingFailed(f"{r['run_dir']}: queries.csv has no {baseline!r} rows")
        base, articles = (b[col].to_numpy() <= 5).astype(float), m["article_id"].to_numpy()
    sizes = np.asarray([r["n_articles"] for r in study], float)
    _, code = np.unique(articles, return_inverse=True)
    n_art = int(code.max()) + 1
    per_art = np.stack([np.bincount(code, weights=h, minlength=n_art) for h in (*hits, base)])  # (S+1, A)
    n_q = np.bincount(code, minlength=n_art).astype(float)  # (A)
    rng = np.random.default_rng(seed)
    counts = np.stack(
        [np.ones(n_art)] + [np.bincount(rng.integers(0, n_art, n_art), minlength=n_art) for _ in range(n_boot)]
    )
    r5 = (counts @ per_art.T) / (counts @ n_q)[:, None]  # (1 + n_boot, S+1): row 0 = the data itself
    x = np.log10(sizes)
    y, level = r5[:, :-1], r5[:, -1]
    slope = ((x - x.mean()) * (y - y.mean(1, keepdims=True))).sum(1) / ((x - x.mean()) ** 2).sum()
    icept = y.mean(1) - slope * x.mean()
    target = factor * level
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        n_needed = np.where(slope > 0, 10.0 ** ((target - icept) / np.where(slope > 0, slope, 1.0)), np.inf)
    lo, hi = np.percentile(n_needed[1:], [2.5, 97.5], method="nearest")  # no interpolation: inf is a value here
    s_lo, s_hi = np.percentile(slope[1:], [2.5, 97.5], method="nearest")

    def finite(v: float) -> float | None:
        return float(v) if np.isfinite(v) else None

    point = finite(n_needed[0])
    reached = bool(y[0, -1] >= target[0])
    pts = f"{slope[0] * 100:+.2f} points [{s_lo * 100:+.2f}, {s_hi * 100:+.2f}]"
    split = study[-1]["eval"].get("split", "test")
    where = f" (every chunk of the {split} articles, {len(articles):,} {split} queries)" if bank == "test" else ""
    head = (
        f"On the {bank!r} bank{where}, {baseline}'s R@5 is {level[0]:.1%}; {factor:g}x that is {target[0]:.1%}, and the "
        f"model's R@5 at {int(sizes[-1]):,} training articles is {y[0, -1]:.1%}. Per tenfold more training articles "
        f"it moves by {pts} (a + b log10 N over {len(sizes)} sizes, 95% article-bootstrap interval)."
    )
    if reached:
        tail = f" It is already there at {int(sizes[-1]):,} articles."
    elif point is None:
        tail = " At this rate it never gets there: the fitted trend does not rise."
    else:

        def n(v: float) -> str:  # 12,500 or 1.5e+27
            return f"{v:,.0f}" if v < 1e7 else f"{v:.1e}"

        upper = n(hi) if np.isfinite(hi) else "never (a resample's trend does not rise)"
        tail = f" At this rate it would need about {n(point)} training articles (95% interval {n(lo)} to {upper})."
    return {
        "bank": bank,
        "baseline": baseline,
        "factor": factor,
        "sizes": [int(v) for v in sizes],
        "model": [float(v) for v in y[0]],
        "level": float(level[0]),
        "target": float(target[0]),
        "fit": (float(icept[0]), float(slope[0])),
        "slope_ci": (float(s_lo), float(s_hi)),
        "articles": point,
        "articles_ci": (finite(lo), finite(hi)),
        "reached": reached,
        "text": head + tail,
    }


def heldout(study: list[dict[str, Any]], n_boot: int = 1000, bank: str = "test") -> tuple[Any, dict[str, Any] | str]:
    """The page's held-out section: (table on `bank`, `multiple_of_baseline` at 2x copy_last), or (None, why not)."""
    if len({r["n_articles"] for r in study}) < 2:
        return None, "one training-set size: no trend to fit"
    for r in study:
        ev = r["eval"]
        if bank not in ev["models"][ev["primary_model"]]["banks"]:
            return None, f"{r['run_dir']} was not evaluated on the {bank!r} bank (eval.banks)"
    return study_table(study, n_boot=n_boot, bank=bank), multiple_of_baseline(study, 2.0, bank, n_boot=n_boot)


def record(
    out_dir: str | Path, scaling_id: str, table, result: dict[str, Any], heldout: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The notebook's closing record: out_dir/scaling.json (`heldout`: the held-out bank's answer, if computed)."""
    rec = {"scaling_id": scaling_id, "verdict": result, "rows": table.to_dict(orient="records")}
    if heldout is not None:
        rec["heldout"] = heldout
    if out_dir:
        atomic_write_json(Path(out_dir) / "scaling.json", rec)
    return rec


# --------------------------------------------------------------------------- running it
