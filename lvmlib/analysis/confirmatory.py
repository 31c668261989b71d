"""The confirmatory study's analysis: seeds pooled per query, the corrected family of paired differences, the answer.

Reads each finished run's `metrics/queries.csv` and `metrics/eval.json` (nothing is recomputed from vectors).
Per query, a learned predictor's hit@k is averaged over its seeds; the headline minus each predictor of the
family is bootstrapped over test articles with a two-sided 1 - alpha/m percentile interval (Bonferroni). The
closed-form baselines come from the headline's first run (every run scores them on the same queries; the
analysis checks that they agree across the headline's seeds). Secondary numbers carry 95% intervals.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lvmlib.core.errors import RunError
from lvmlib.core.runs import atomic_write_json, check_files, read_json
from lvmlib.core.study import Study, study_runs
from lvmlib.metrics import article_bootstrap

KEYS = ["article_id", "position"]


# --------------------------------------------------------------------------- reading the runs
def _table(run_dir: Path, ev: dict[str, Any]):
    """The run's queries.csv (every predictor's per-query ranks), checked against its recorded digest."""
    import pandas as pd

    path = run_dir / "metrics" / ev.get("queries_file", "queries.csv")
    check_files([path])
    return path, pd.read_csv(path)


def _ranks(table, model: str, bank: str):
    """One predictor's rows of a queries.csv: article_id, position, rank (the bank, context excluded), cosine
    (and rank_global), sorted by query key."""
    path, q = table
    col = f"rank_{bank}"
    if col not in q.columns:
        raise RunError(f"{path}: no column {col} (the run's eval.banks lacks {bank!r})")
    q = q[q["model"] == model]
    if q.empty:
        raise RunError(f"{path}: no rows for predictor {model!r}")
    cols = [*KEYS, col, "cosine"] + (["rank_global"] if bank != "global" and "rank_global" in q.columns else [])
    return q[cols].rename(columns={col: "rank"}).sort_values(KEYS).reset_index(drop=True)


def load(study: Study, runs_root: str | Path) -> dict[str, Any]:
    """Every run's per-query ranks on the primary bank: {"runs": [{predictor, seed, run_dir, eval, gates,
    history}], "queries": {predictor or baseline id: [DataFrame per seed]}} (a closed-form baseline: one, from
    the headline's runs, which must all rank it alike). RunError naming the first run that is missing,
    unfinished or scored other queries."""
    runs_root = Path(runs_root)
    runs, per = [], {}
    head = study.headline.id
    ref, base = None, {b.id: [] for b in study.baselines}
    for r in study_runs(study):
        d = runs_root / r["run_id"]
        if not (d / "metrics" / "eval.json").is_file():
            raise RunError(f"{d}: no metrics/eval.json — run `python -m lvmlib confirm` to finish the study")
        ev = read_json(d / "metrics" / "eval.json")
        table = _table(d, ev)
        q = _ranks(table, ev["primary_model"], study.primary_bank)
        if ref is None:
            ref = q[KEYS]
        elif len(q) != len(ref) or not (q[KEYS].to_numpy() == ref.to_numpy()).all():
            raise RunError(f"{d}: scored other queries than {study_runs(study)[0]['run_id']} — not a paired study")
        if r["predictor"] == head:
            for b in study.baselines:
                base[b.id].append(_ranks(table, b.name, study.primary_bank))
        gates = read_json(d / "gates.json") if (d / "gates.json").is_file() else {}
        hist = read_json(d / "metrics" / "train.json") if (d / "metrics" / "train.json").is_file() else {}
        runs.append({**r, "run_dir": str(d), "eval": ev, "gates": gates, "history": hist})
        per.setdefault(r["predictor"], []).append(q)
    for b in study.baselines:
        seen = base[b.id]
        if any(not np.array_equal(s["rank"].to_numpy(), seen[0]["rank"].to_numpy()) for s in seen[1:]):
            raise RunError(f"baseline {b.name}: its ranks differ between the runs of {head} (different data?)")
        per[b.id] = seen[:1]
    return {"runs": runs, "queries": per}


# --------------------------------------------------------------------------- pooling and comparing
def pooled(frames: list, k: int) -> dict[str, np.ndarray]:
    """Per-query means over seeds: hit@k, reciprocal rank, cosine (and hit@k in the global bank when read)."""
    out = {
        "hit": np.mean([(f["rank"].to_numpy() <= k) for f in frames], axis=0),
        "rr": np.mean([1.0 / f["rank"].to_numpy() for f in frames], axis=0),
        "cosine": np.mean([f["cosine"].to_numpy(float) for f in frames], axis=0),
    }
    if "rank_global" in frames[0].columns:
        out["hit_global"] = np.mean([(f["rank_global"].to_numpy() <= k) for f in frames], axis=0)
    return out


def macro(hit: np.ndarray, articles: np.ndarray) -> float:
    """Per-article macro average: the mean over articles of each article's mean hit."""
    _, inv = np.unique(articles, return_inverse=True)
    return float(np.mean(np.bincount(inv, weights=hit) / np.bincount(inv)))


def verdict(ci: list[float]) -> str:
    if ci[0] > 0:
        return "beats"
    if ci[1] < 0:
        return "loses to"
    return "not distinguishable from"


def analyse(study: Study, loaded: dict[str, Any]) -> dict[str, Any]:
    """The study's numbers: the family (corrected), the secondary comparisons (95%), per-predictor and
    per-seed rows, the seed-configuration check and the one-sentence answer."""
    k, head = study.k, study.headline.id
    q = loaded["queries"]
    articles = q[head][0]["article_id"].to_numpy()
    P = {pid: pooled(frames, k) for pid, frames in q.items()}
    labels = {p.id: p.label or p.id for p in study.predictors} | {b.id: b.label or b.name for b in study.baselines}
    alpha_each = study.alpha / study.m
    fam_stats = {f: P[head]["hit"] - P[f]["hit"] for f in study.family}
    cis = article_bootstrap(fam_stats, articles, n_boot=study.n_boot, seed=0, alpha=alpha_each)
    family = [
        {
            "vs": f,
            "label": labels[f],
            "delta": float(fam_stats[f].mean()),
            "ci": cis[f],
            "level": 1 - alpha_each,
            "verdict": verdict(cis[f]),
        }
        for f in study.family
    ]
    # secondary: cosine against every other predictor, the global bank, MRR; uncorrected 95%
    sec_stats = {}
    for other in P:
        if other == head:
            continue
        sec_stats[f"cos:{other}"] = P[head]["cosine"] - P[other]["cosine"]
        sec_stats[f"mrr:{other}"] = P[head]["rr"] - P[other]["rr"]
        if "hit_global" in P[head] and "hit_global" in P[other]:
            sec_stats[f"global:{other}"] = P[head]["hit_global"] - P[other]["hit_global"]
    sec_ci = article_bootstrap(sec_stats, articles, n_boot=study.n_boot, seed=1, alpha=0.05)
    secondary = [
        {"metric": key.split(":")[0], "vs": key.split(":")[1], "delta": float(v.mean()), "ci": sec_ci[key]}
        for key, v in sec_stats.items()
    ]
    each = article_bootstrap({pid: v["hit"] for pid, v in P.items()}, articles, n_boot=study.n_boot, seed=2)
    predictors = [
        {
            "id": pid,
            "label": labels[pid],
            "kind": "closed form" if pid in {b.id for b in study.baselines} else "learned",
            "role": next((p.role for p in study.predictors if p.id == pid), "baseline"),
            "seeds": len(q[pid]),
            "recall": float(v["hit"].mean()),
            "recall_ci": each[pid],
            "macro_recall": macro(v["hit"], articles),
            "mrr": float(v["rr"].mean()),
            "cosine": float(v["cosine"].mean()),
            "recall_global": float(v["hit_global"].mean()) if "hit_global" in v else None,
        }
        for pid, v in P.items()
    ]
    seeds = [_seed_row(study, r) for r in loaded["runs"]]
    names = {b.id: b.name for b in study.baselines}
    for row in predictors:  # ℓ2 and contrastive accuracy: the seeds' mean of what eval.json reports
        if row["id"] in names:  # a closed-form baseline: as the headline's first run scored it
            mine = [seeds[0]["baselines"][names[row["id"]]]]
        else:
            mine = [s for s in seeds if s["predictor"] == row["id"]]
        row["l2"] = _mean(s["l2"] for s in mine)
        row["contrastive"] = _mean(s["contrastive"] for s in mine)
    reads = [r["eval"].get("confirmatory_read") for r in loaded["runs"]]
    reads = [r for r in reads if r]
    main = next(f for f in family if f["vs"] == study.family[0])
    result = {
        "study": study.study,
        "protocol": study.protocol,
        "primary": f"R@{k}, context excluded, {study.primary_bank} bank",
        "m": study.m,
        "alpha": study.alpha,
        "n_boot": study.n_boot,
        "n_queries": int(len(articles)),
        "n_articles": int(len(np.unique(articles))),
        "family": family,
        "secondary": secondary,
        "predictors": predictors,
        "seeds": seeds,
        "seed_config": [s for s in seeds if s["role"] == "secondary"],
        "reads": {
            "recorded": bool(reads),
            "studies_under_protocol": max((r["studies_under_protocol"] for r in reads), default=0),
            "forced": any(r.get("forced") for r in reads),
            "commit": reads[0].get("commit") if reads else None,
        },
        "test_set": (loaded["runs"][0]["eval"].get("confirmatory_read") or {}).get("test_set"),
    }
    result["answer"] = answer(study, result, main)
    return result


def _mean(xs) -> float | None:
    xs = [x for x in xs if x is not None]
    return float(np.mean(xs)) if xs else None


def _seed_row(study: Study, r: dict[str, Any]) -> dict[str, Any]:
    ev, gates, bank = r["eval"], r["gates"], study.primary_bank
    m = ev["models"][ev["primary_model"]]
    b = m["banks"][bank]["context_excluded"]
    g = m["banks"].get("global", {}).get("context_excluded", {})
    hist = r["history"] if isinstance(r["history"], dict) else {}
    pred = next(p for p in study.predictors if p.id == r["predictor"])
    return {
        "predictor": r["predictor"],
        "role": pred.role,
        "note": pred.note,
        "seed": r["seed"],
        "run_id": r["run_id"],
        "recall": b.get(f"recall_at_{study.k}"),
        "recall_ci": b.get(f"recall_at_{study.k}_ci"),
        "mrr": b.get("mrr"),
        "recall_global": g.get(f"recall_at_{study.k}"),
        "cosine": m.get("pred_target_cosine"),
        "l2": m.get("l2_to_target"),
        "contrastive": b.get("contrastive_accuracy"),
        "epochs": hist.get("epochs_trained"),
        "best_epoch": hist.get("best_epoch"),
        "gate_epoch": gates.get("gate_epoch"),
        "gate_val_cosine": gates.get("gate_val_cosine"),
        "gate": gates.get("decision"),
        "phase1": (ev.get("gates") or {}).get("r5_verdict"),
        "cosine_passed": (ev.get("gates") or {}).get("cosine_passed"),
        "curve": [
            {"size": c["size"], "delta": c["diff_recall_at_5"], "ci": c["diff_recall_at_5_ci"]}
            for c in (ev.get("bank_curve") or {}).get("paired", [])
            if c["model"] == ev["primary_model"] and c["vs"] == "copy_last"
        ],
        "baselines": {
            name: {
                "l2": mm.get("l2_to_target"),
                "contrastive": mm["banks"].get(bank, {}).get("context_excluded", {}).get("contrastive_accuracy"),
            }
            for name, mm in ev["models"].items()
            if mm.get("role") == "baseline"
        },
    }


def answer(study: Study, result: dict[str, Any], main: dict[str, Any]) -> str:
    """The one sentence: the headline against the first member of the family (copy_last), with its interval
    and the count of reads."""
    head = study.headline
    seeds = len(head.seeds)
    lo, hi = main["ci"]
    reads = result["reads"]
    read_txt = (
        f"read by {reads['studies_under_protocol']} stud{'y' if reads['studies_under_protocol'] == 1 else 'ies'} "
        "under this protocol"
        if reads["recorded"]
        else "no read recorded: the test set is not a reserved range"
    )
    return (
        f"On {result['n_articles']} test articles ({result['n_queries']:,} queries; {read_txt}), "
        f"{head.label or head.id} ({seeds} seed{'s' if seeds != 1 else ''} pooled) {main['verdict']} "
        f"{main['label']} on R@{study.k} in the {study.primary_bank} bank: "
        f"{100 * main['delta']:+.1f} points [{100 * lo:+.1f}, {100 * hi:+.1f}] "
        f"({100 * main['level']:.2f}% interval, Bonferroni over m = {study.m})."
    )


def record(out_dir: str | Path, result: dict[str, Any]) -> dict[str, Any]:
    """confirm.json in `out_dir` (nothing when it is empty) -> the record."""
    if out_dir:
        atomic_write_json(Path(out_dir) / "confirm.json", result)
    return result
