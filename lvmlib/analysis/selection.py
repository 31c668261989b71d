"""Pick one recipe among trained runs on VAL articles only: `python -m lvmlib select RUN [RUN ...]`.

Each run's checkpoint (best.pt: its best val-MRR epoch) is evaluated by `evaluate.evaluate_run` on
**every** val window (`eval.split: val`, written to RUN/metrics_val/ and reused when present): the same
code, primary bank and paired article bootstrap as the test evaluation. Per run it reads
`gates.best_baseline`: the R@5 difference to the best R@5 baseline and the cosine difference to the best
cosine baseline, each with its paired 95% interval, and turns each into z = difference / SE (SE =
interval width / 3.92). The pick maximises min(z_R@5, z_cosine): the recipe whose weaker half is
strongest; a run whose weaker z is not above 0 clears no val bar and is never picked. Runs with extra
training articles (`data.extra_train_path`) rank among a bigger bank: their R@5 levels are not comparable
with other runs', their paired differences to the baselines of their own bank are. Nothing here reads
test articles. (This is the rule of issue 11's rounds 4-5, `docs/training.md`.)
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from lvmlib.core.config import load_run_config
from lvmlib.core.errors import RequestError
from lvmlib.core.runs import read_json
from lvmlib.eval.evaluate import evaluate_run
from lvmlib.train.status import training_summary

VAL_DIR = "metrics_val"


def z_score(diff: float, ci: list[float]) -> float:
    """diff / SE with SE from a 95% interval (width / 3.92); ±inf for a zero-width interval, 0 for 0."""
    se = (ci[1] - ci[0]) / 3.92
    if se > 0:
        return diff / se
    return math.copysign(math.inf, diff) if diff else 0.0


def val_card(run: str | Path, force: bool = False, progress: bool = False) -> dict[str, Any]:
    """One run's val numbers against the best val baselines (evaluates it first unless RUN/metrics_val/
    already holds a val evaluation and `force` is off)."""
    run = Path(run)
    if not (run / "best.pt").is_file():
        raise RequestError(
            f"{run}: no best.pt (train it first: python -m lvmlib run PARAMS --only 01_data --only 02_train)"
        )
    out = run / VAL_DIR
    if force or not (out / "eval.json").is_file():
        cfg = load_run_config(run / "params.yaml")
        cfg.eval.split = "val"
        evaluate_run(cfg, run, out_dir=out, progress=progress)
    ev = read_json(out / "eval.json")
    if ev.get("split") != "val":
        raise RequestError(f"{out / 'eval.json'}: split {ev.get('split')!r}, expected 'val' (re-run with --force)")
    bb = ev["gates"]["best_baseline"]
    card = {
        "run": run.name,
        "n": ev["n_queries"],
        "epoch": training_summary(run)["best_epoch"],
        "mrr": ev["mrr"],
        "r5": ev["recall_at_5"],
        "b_r5_name": bb["name_recall_at_5"],
        "d_r5": bb["diff_recall_at_5"],
        "ci_r5": bb["diff_recall_at_5_ci"],
        "cos": ev["pred_target_cosine"],
        "b_cos_name": bb["name_cosine"],
        "d_cos": bb["diff_cosine"],
        "ci_cos": bb["diff_cosine_ci"],
    }
    return with_z(card)


def with_z(card: dict[str, Any]) -> dict[str, Any]:
    """Add z_r5, z_cos and their minimum (the rule's score) to a card holding d_r5/ci_r5, d_cos/ci_cos."""
    card["z_r5"], card["z_cos"] = z_score(card["d_r5"], card["ci_r5"]), z_score(card["d_cos"], card["ci_cos"])
    card["min_z"] = min(card["z_r5"], card["z_cos"])
    return card


def pick(cards: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The card with the largest min z, or None when no run's weaker half is above 0 (first wins a tie)."""
    best = max(cards, key=lambda c: c["min_z"], default=None)
    return best if best is not None and best["min_z"] > 0 else None


def table(cards: list[dict[str, Any]]) -> str:
    """The markdown table `select` prints (docs/training.md quotes it)."""
    lines = [
        f"{cards[0]['n']} val queries per run (every val window), primary bank; best = the best val baseline",
        "| run | best epoch | val MRR | val R@5 | R@5 − best (paired 95%) | z | val cosine | cosine − best (paired 95%) | z | min z |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cards:
        lines.append(
            f"| {c['run']} | {c['epoch']} | {c['mrr']:.4f} | {c['r5']:.2%} | {c['d_r5'] * 100:+.2f} "
            f"[{c['ci_r5'][0] * 100:+.2f}, {c['ci_r5'][1] * 100:+.2f}] vs {c['b_r5_name']} | {c['z_r5']:+.2f} | "
            f"{c['cos']:.4f} | {c['d_cos']:+.4f} [{c['ci_cos'][0]:+.4f}, {c['ci_cos'][1]:+.4f}] vs "
            f"{c['b_cos_name']} | {c['z_cos']:+.2f} | {c['min_z']:+.2f} |"
        )
    return "\n".join(lines)


def select(runs: list[str | Path], force: bool = False, progress: bool = False) -> str:
    """The table and the pick line for these runs, as `python -m lvmlib select` prints them."""
    if not runs:
        raise RequestError("select: give one or more trained run directories")
    cards = [val_card(r, force, progress) for r in runs]
    best = pick(cards)
    verdict = (
        f"pick: {best['run']} (min z {best['min_z']:+.2f})" if best else "pick: none (no run clears both val baselines)"
    )
    return table(cards) + "\n" + verdict
