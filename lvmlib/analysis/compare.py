"""Compare runs on one page (V1 vs V2): line up their files, and say in words which variant is better.

Reads only run-directory files (`manifest.json`, `params.yaml`, `history.json`, `gates.json`,
`metrics/eval.json`, `metrics/queries.csv`), so runs can be compared long after they finished.
`verdict` turns the numbers into the paragraph the report opens with: which variant is better on the
primary bank's R@5, by how much, whether the difference exceeds the 95% intervals (a paired
bootstrap over test articles when both runs scored the same queries, else non-overlap of the
per-run intervals), and whether each variant beats the best trivial baseline on the same queries.

`lvmlib.app.studies.compare_runs` executes `notebooks/05_compare.ipynb` and renders
`reports/compare_<id>.html`; `run_pair_study` there runs a params pair end to end and compares it.
"""

from __future__ import annotations

import datetime as _dt
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lvmlib.analysis.verdict import beats_baseline, verdict
from lvmlib.core.config import load_run_config
from lvmlib.core.errors import CompareFailed, RunError
from lvmlib.core.runs import atomic_write_json, check_files, read_json
from lvmlib.train.gates import upgrade

MODEL = "model"  # the trained model's key in our tables; every other key is a baseline


# --------------------------------------------------------------------------- one run
@dataclass
class RunView:
    """Everything the comparison needs from one run directory (missing files -> None / [])."""

    run_dir: Path
    run_id: str
    label: str
    config: dict[str, Any]
    manifest: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    gates: dict[str, Any] | None = None
    eval: dict[str, Any] | None = None
    metrics_dir: str = "metrics"  # where eval.json and queries.csv live (`metrics_val` for a val evaluation)

    @property
    def status(self) -> str:
        return str(self.manifest.get("status", "?"))


def _maybe_json(path: Path) -> Any:
    try:
        return read_json(path)
    except RunError:
        return None


def load_run(run_dir: str | Path, metrics_dir: str = "metrics") -> RunView:
    """One run's files; `metrics_dir` names the evaluation to read (`metrics`, or `metrics_val` of select)."""
    run_dir = Path(run_dir).resolve()
    if not (run_dir / "manifest.json").is_file():
        raise RunError(f"{run_dir}: not a run directory (no manifest.json)")
    manifest = read_json(run_dir / "manifest.json")
    params = run_dir / "params.yaml"
    config = load_run_config(params).to_dict() if params.is_file() else {}  # ConfigError names file and key
    return RunView(
        run_dir=run_dir,
        run_id=manifest.get("run_id", run_dir.name),
        label=str(config.get("name") or manifest.get("params_name") or run_dir.name),
        config=config or {},
        manifest=manifest,
        history=[upgrade(h) for h in _maybe_json(run_dir / "history.json") or []],
        gates=upgrade(_maybe_json(run_dir / "gates.json")),
        eval=_maybe_json(run_dir / metrics_dir / "eval.json"),
        metrics_dir=metrics_dir,
    )


def load_runs(run_dirs: list[str | Path]) -> list[RunView]:
    """Load runs in the given order; labels are the params names, made unique with the run id."""
    if not run_dirs:
        raise RunError("compare: give at least one run directory")
    runs = [load_run(d) for d in run_dirs]
    if len({r.run_dir for r in runs}) < len(runs):
        raise RunError("compare: the same run directory is given twice")
    for short in (True, False):  # 'name (abcd)' from a generated id's random tail, else the whole run id
        labels = [r.label for r in runs]
        for r in runs:
            if labels.count(r.label) > 1:
                tail = re.fullmatch(r"\d{8}-\d{6}-.+-([0-9a-f]{4})", r.run_id)  # runs.new_run_id's form
                r.label = f"{r.label} ({tail.group(1)})" if short and tail else r.run_id
    return runs


def recipe(config: dict[str, Any]) -> str:
    """The loss recipe in words, e.g. 'InfoNCE (head [512, 256]) 0.70 + AR cosine 0.30'."""
    loss = config.get("loss", {})
    where = f"head {loss['proj_head']}" if loss.get("proj_head") else "raw space"
    return (
        f"InfoNCE ({where}) {loss.get('lambda_con', float('nan')):.2f} + "
        f"AR cosine {loss.get('lambda_ar', float('nan')):.2f}"
    )


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def params_diff(runs: list[RunView]) -> list[dict[str, Any]]:
    """Rows {key, <label>: value...} for every config key whose value differs between the runs."""
    flat = [_flatten(r.config) for r in runs]
    keys = sorted(set().union(*flat) - {"name", "description"})
    return [
        {"key": k, **{r.label: repr(f.get(k)) if isinstance(f.get(k), list) else f.get(k) for r, f in zip(runs, flat)}}
        for k in keys
        if len({repr(f.get(k)) for f in flat}) > 1
    ]


# --------------------------------------------------------------------------- eval.json -> rows
def _ci(m: dict[str, Any], key: str) -> tuple[float, float]:
    ci = m.get(f"{key}_ci")  # [lo, hi], or None when eval.bootstrap == 0
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and None not in ci:
        return float(ci[0]), float(ci[1])
    return math.nan, math.nan


def eval_rows(run: RunView) -> list[dict[str, Any]]:
    """One row per (bank, model) from the run's eval.json, on its primary context variant (context
    chunks excluded by default): R@k, MRR, mean rank, cosine, and the 95% CIs of R@5 and MRR.

    The run's trained model is `model` (extra checkpoints keep their names); baselines keep theirs.
    """
    ev = run.eval
    if not ev:
        return []
    primary = ev.get("primary_bank", "global")
    models = ev.get("models")
    if not isinstance(models, dict):
        return []
    variant = ev.get("primary_context", "context_excluded")
    rows = []
    for name, res in models.items():
        key = MODEL if name == ev.get("primary_model") else name
        for bank, variants in (res.get("banks") or {}).items():
            m = variants.get(variant) if isinstance(variants, dict) else None
            if m and "recall_at_5" in m:
                rows.append(_row(run, bank, key, m, res, primary, baseline=res.get("role") == "baseline"))
    return rows


def _num(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


def _row(
    run: RunView,
    bank: str,
    model: str,
    m: dict[str, Any],
    res: dict[str, Any],
    primary: str,
    baseline: bool | None = None,
) -> dict[str, Any]:
    row = {
        "run": run.label,
        "run_id": run.run_id,
        "bank": bank,
        "primary": bank == primary,
        "model": model,
        "is_baseline": (model != MODEL) if baseline is None else baseline,
    }
    for k, v in m.items():
        if (k.startswith("recall_at_") and not k.endswith("_ci")) or k in ("mrr", "mean_rank", "median_rank"):
            row[k] = _num(v)
    row["pred_target_cosine"] = _num(res.get("pred_target_cosine"))
    row["n_queries"] = _num(run.eval.get("n_queries"))
    row["recall_at_5_lo"], row["recall_at_5_hi"] = _ci(m, "recall_at_5")
    row["mrr_lo"], row["mrr_hi"] = _ci(m, "mrr")
    return row


def phase1_table(runs: list[RunView]):
    """DataFrame of every run's (bank, model) rows; baselines only from the first run that has them
    when all runs scored the same queries (the same data gives the same baselines)."""
    import pandas as pd

    rows, baselines_seen = [], False
    same = same_queries(runs)
    for r in runs:
        rs = eval_rows(r)
        for row in rs:
            if row["is_baseline"] and same and baselines_seen:
                continue
            if row["is_baseline"] and same:
                row["run"] = "baseline"
            rows.append(row)
        baselines_seen = baselines_seen or any(x["is_baseline"] for x in rs)
    df = pd.DataFrame(rows)
    if not df.empty:  # runs first, then baselines; banks in the order eval.json lists them
        df = df.sort_values("is_baseline", kind="stable").reset_index(drop=True)
        df["name"] = [
            r.run if r.model == MODEL else r.model if r.run == "baseline" else f"{r.run}: {r.model}"
            for r in df.itertuples()
        ]
    return df


def same_queries(runs: list[RunView]) -> bool:
    """Did every evaluated run score the same number of queries against the same bank size?"""
    sig = {(r.eval.get("n_queries"), r.eval.get("bank_size"), r.eval.get("n_articles")) for r in runs if r.eval}
    return len(sig) <= 1


# --------------------------------------------------------------------------- score cards + verdict
def scorecard(run: RunView, bank: str | None = None) -> dict[str, Any]:
    """The numbers `verdict` needs for one run on one bank (default: its primary bank)."""
    rows = [r for r in eval_rows(run) if (r["bank"] == bank if bank else r["primary"])]
    card: dict[str, Any] = {"label": run.label, "evaluated": bool(rows), "status": run.status}
    model = next((r for r in rows if r["model"] == MODEL), None)
    if model is None:
        return card
    card.update(
        bank=model["bank"],
        n_queries=model.get("n_queries"),
        recall_at_5=model["recall_at_5"],
        recall_at_5_ci=(model["recall_at_5_lo"], model["recall_at_5_hi"]),
        pred_target_cosine=model.get("pred_target_cosine", math.nan),
    )
    base = [r for r in rows if r["is_baseline"]]
    if base:  # the rule of gates.phase1_decision / eval.json: the best baseline per metric
        b = max(base, key=lambda r: (r["recall_at_5"], r["pred_target_cosine"]))
        c = max(base, key=lambda r: r.get("pred_target_cosine", math.nan))
        name = b["model"] if b is c else f"{b['model']} (R@5) / {c['model']} (cosine)"
        card["best_baseline"] = {
            "name": name,
            "recall_at_5": b["recall_at_5"],
            "recall_at_5_ci": (b["recall_at_5_lo"], b["recall_at_5_hi"]),
            "pred_target_cosine": c.get("pred_target_cosine", math.nan),
        }
    return card


# --------------------------------------------------------------------------- paired bootstrap
def primary_rank_column(ev: dict[str, Any], bank: str | None = None) -> str:
    """The queries.csv column holding the ranks of eval.json's primary bank and context variant."""
    col = f"rank_{bank or ev.get('primary_bank', 'global')}"
    return col + "_incl_context" if ev.get("primary_context", "context_excluded") == "context_included" else col


def primary_ranks(run: RunView, bank: str | None = None):
    """(article_id, position, rank) of the run's trained model on `bank` (primary context variant)."""
    import pandas as pd

    ev = run.eval or {}
    path = run.run_dir / run.metrics_dir / ev.get("queries_file", "queries.csv")
    if not path.is_file():
        return None
    col = primary_rank_column(ev, bank)
    check_files([path])  # the ranks the evaluation wrote, byte for byte
    q = pd.read_csv(path)
    if col not in q.columns or not {"model", "article_id", "position"} <= set(q.columns):
        return None
    q = q[q["model"] == ev.get("primary_model")]
    cols = ["article_id", "position", col] + (["cosine"] if "cosine" in q.columns else [])
    return q[cols].rename(columns={col: "rank"})


def paired_difference(
    a: RunView, b: RunView, bank: str | None = None, n_boot: int = 1000, seed: int = 0
) -> dict[str, Any] | None:
    """Paired bootstrap of R@5(a) - R@5(b) (and of the mean cosine) over test articles, when both runs
    scored the same queries.

    Reads each run's `metrics/queries.csv` (evaluate's per-query ranks). Returns {"a", "b", "delta",
    "ci": (lo, hi), "delta_cosine", "ci_cosine", "n_queries", "n_articles"}, or None when the query sets
    differ or a file is missing.
    """
    from lvmlib.metrics import article_bootstrap

    qa, qb = primary_ranks(a, bank), primary_ranks(b, bank)
    if qa is None or qb is None or qa.empty:
        return None
    m = qa.merge(qb, on=["article_id", "position"], suffixes=("_a", "_b"))
    if len(m) != len(qa) or len(m) != len(qb):
        return None  # not the same queries: no pairing
    hit = (m["rank_a"] <= 5).to_numpy(float) - (m["rank_b"] <= 5).to_numpy(float)  # (n,) paired hit@5 gap
    stats = {"delta": hit}
    if {"cosine_a", "cosine_b"} <= set(m.columns):
        stats["cosine"] = m["cosine_a"].to_numpy(float) - m["cosine_b"].to_numpy(float)  # (n,) paired cosine gap
    cis = article_bootstrap(stats, m["article_id"].to_numpy(), n_boot=n_boot, seed=seed)
    if cis["delta"] is None:
        return None
    out = {
        "a": a.label,
        "b": b.label,
        "delta": float(hit.mean()),
        "ci": (float(cis["delta"][0]), float(cis["delta"][1])),
        "delta_cosine": None,
        "ci_cosine": None,
        "n_queries": int(len(m)),
        "n_articles": int(m["article_id"].nunique()),
    }
    if cis.get("cosine") is not None:
        out["delta_cosine"] = float(stats["cosine"].mean())
        out["ci_cosine"] = (float(cis["cosine"][0]), float(cis["cosine"][1]))
    return out


def reference_index(runs: list[RunView], reference: str | Path | None) -> int | None:
    """Which of `runs` is the reference: matched by run folder, run id or label. None for no reference."""
    if reference in (None, ""):
        return None
    ref = str(reference)
    for i, r in enumerate(runs):
        if Path(ref).resolve() == r.run_dir.resolve() or ref in (r.run_id, r.label):
            return i
    raise CompareFailed(f"reference {ref!r}: not one of the compared runs ({', '.join(r.run_id for r in runs)})")


def versus_reference(runs: list[RunView], ref: int, n_boot: int = 1000) -> list[dict[str, Any]]:
    """Every other run minus the reference on the same test queries: paired R@5 and cosine differences
    with 95% article-bootstrap intervals (None where the runs did not score the same queries)."""
    rows = []
    for i, r in enumerate(runs):
        if i == ref:
            continue
        p = paired_difference(r, runs[ref], n_boot=n_boot)
        c = scorecard(r)
        rows.append(
            {
                "run": r.label,
                "reference": runs[ref].label,
                "recall_at_5": c.get("recall_at_5"),
                "pred_target_cosine": c.get("pred_target_cosine"),
                "diff_recall_at_5": None if p is None else p["delta"],
                "diff_recall_at_5_ci": None if p is None else p["ci"],
                "diff_cosine": None if p is None else p["delta_cosine"],
                "diff_cosine_ci": None if p is None else p["ci_cosine"],
                "n_queries": None if p is None else p["n_queries"],
            }
        )
    return rows


# --------------------------------------------------------------------------- tables for the notebook
def _minutes(manifest: dict[str, Any]) -> float | None:
    secs = [s.get("seconds") for s in (manifest.get("stages") or {}).values() if s.get("seconds") is not None]
    return round(sum(secs) / 60, 1) if secs else None


def summary_rows(runs: list[RunView]) -> list[dict[str, Any]]:
    """One row per run: recipe, status, gate, primary-bank Phase-1 numbers, baseline check, time."""
    rows = []
    for r in runs:
        c, g, e = scorecard(r), r.gates or {}, r.eval or {}
        b = beats_baseline(c) if c.get("evaluated") else None
        bb = c.get("best_baseline") or {}
        rows.append(
            {
                "run": r.label,
                "run_id": r.run_id,
                "recipe": recipe(r.config),
                "status": r.status,
                "epochs": len(r.history),
                "gate_val_cosine": g.get("gate_val_cosine"),
                "gate_decision": g.get("decision"),
                "recall_at_5": c.get("recall_at_5"),
                "recall_at_5_ci": c.get("recall_at_5_ci"),
                "pred_target_cosine": c.get("pred_target_cosine"),
                "phase1_decision": e.get("decision"),
                "best_baseline": bb.get("name"),
                "best_baseline_r5": bb.get("recall_at_5"),
                "beats_best_baseline": None if b is None else b["beats"],
                "minutes": _minutes(r.manifest),
            }
        )
    return rows


def gates_rows(runs: list[RunView]) -> list[dict[str, Any]]:
    rows = []
    for r in runs:
        g = r.gates or {}
        last = r.history[-1] if r.history else {}
        rows.append(
            {
                "run": r.label,
                "gate_epoch": g.get("gate_epoch"),
                "gate_val_cosine": g.get("gate_val_cosine"),
                "threshold": g.get("threshold"),
                "passed": g.get("passed"),
                "decision": g.get("decision"),
                "tree_in_loop": r.config.get("train", {}).get("decision_tree"),
                "epochs_trained": len(r.history),
                "final_val_cosine": last.get("val_cosine"),
                "stopped_by_tree": g.get("stopped_by_tree"),
                "reason": g.get("reason", "no gates.json"),
            }
        )
    return rows


def comparison(runs: list[RunView], n_boot: int = 1000, reference: str | Path | None = None) -> dict[str, Any]:
    """Score cards, the paired difference of the two best evaluated runs, the verdict, and (with a
    `reference` run) every other run against it (`versus_reference`)."""
    cards = [scorecard(r) for r in runs]
    ranked = sorted(
        [(c, r) for c, r in zip(cards, runs) if c.get("evaluated")], key=lambda cr: cr[0]["recall_at_5"], reverse=True
    )
    paired = None
    if len(ranked) >= 2 and same_queries(runs):
        paired = paired_difference(ranked[0][1], ranked[1][1], n_boot=n_boot)
    same = same_queries(runs)
    ref = reference_index(runs, reference)
    vs = versus_reference(runs, ref, n_boot) if ref is not None else []
    return {
        "cards": cards,
        "paired": paired,
        "verdict": verdict(cards, paired, same),
        "same_queries": same,
        "reference": None if ref is None else runs[ref].label,
        "vs_reference": vs,
    }


# --------------------------------------------------------------------------- execution
def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:80] or "runs"


def new_compare_id(runs: list[RunView]) -> str:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{_safe('-vs-'.join(r.label for r in runs))}"


# --------------------------------------------------------------------------- record
def record(out_dir: str | Path, compare_id: str, runs: list[RunView], result: dict[str, Any]) -> dict[str, Any]:
    """The notebook's closing record: out_dir/compare.json (the verdict and the summary rows)."""
    rec = {
        "compare_id": compare_id,
        "runs": [{"run_id": r.run_id, "label": r.label, "run_dir": str(r.run_dir)} for r in runs],
        "verdict": result["verdict"],
        "paired": result["paired"],
        "same_queries": result["same_queries"],
        "summary": summary_rows(runs),
        "reference": result.get("reference"),
        "vs_reference": result.get("vs_reference", []),
    }
    if out_dir:
        atomic_write_json(Path(out_dir) / "compare.json", rec)
    return rec
