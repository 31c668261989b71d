"""Pick one recipe among trained runs on VAL articles only (issue 11, round 4's rule).

    python tools/val_select.py runs/A runs/B ... [--force]

Each run's checkpoint (best.pt: its best val-MRR epoch) is evaluated by `lvmlib.evaluate.evaluate_run`
on **every** val window (eval.split=val; written to RUN/metrics_val/, reused when present), the same
code, bank and paired article bootstrap as the test evaluation. Per run it reads `gates.best_baseline`:
the R@5 difference to the best R@5 baseline and the cosine difference to the best cosine baseline, each
with its paired 95% interval, and turns each into z = difference / SE (SE = interval width / 3.92).
The pick maximises min(z_R@5, z_cosine): the recipe whose weaker half is strongest. A run whose
weaker z is not above 0 clears no val bar and is never picked. Nothing here reads test articles.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from lvmlib.config import load_run_config
from lvmlib.evaluate import evaluate_run
from lvmlib.run_status import training_summary
from lvmlib.runs import read_json


def z(diff: float, ci: list[float]) -> float:
    se = (ci[1] - ci[0]) / 3.92
    return diff / se if se > 0 else float("inf") * (1 if diff > 0 else -1)


def val_card(run: Path, force: bool) -> dict:
    out = run / "metrics_val"
    if force or not (out / "eval.json").is_file():
        cfg = load_run_config(run / "params.yaml")
        cfg.eval.split = "val"
        evaluate_run(cfg, run, out_dir=out, progress=False)
    ev = read_json(out / "eval.json")
    if ev.get("split") != "val":
        raise SystemExit(f"{out / 'eval.json'}: split {ev.get('split')!r}, expected 'val'")
    bb = ev["gates"]["best_baseline"]
    return {"run": run.name, "n": ev["n_queries"], "epoch": training_summary(run)["best_epoch"], "mrr": ev["mrr"],
            "r5": ev["recall_at_5"], "b_r5": bb["recall_at_5"], "b_r5_name": bb["name_recall_at_5"],
            "d_r5": bb["diff_recall_at_5"], "ci_r5": bb["diff_recall_at_5_ci"],
            "cos": ev["pred_target_cosine"], "b_cos": bb["pred_target_cosine"],
            "b_cos_name": bb["name_cosine"], "d_cos": bb["diff_cosine"], "ci_cos": bb["diff_cosine_ci"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", type=Path, nargs="+")
    ap.add_argument("--force", action="store_true", help="re-evaluate even if RUN/metrics_val/eval.json exists")
    a = ap.parse_args()
    cards = []
    for run in a.runs:
        if not (run / "best.pt").is_file():
            raise SystemExit(f"{run}: no best.pt (train it first: --only 01_data --only 02_train)")
        c = val_card(run, a.force)
        c["z_r5"], c["z_cos"] = z(c["d_r5"], c["ci_r5"]), z(c["d_cos"], c["ci_cos"])
        cards.append(c)
    print(f"{cards[0]['n']} val queries per run (every val window), primary bank; best = the best val baseline")
    print("| run | best epoch | val MRR | val R@5 | R@5 − best (paired 95%) | z | val cosine | cosine − best (paired 95%) | z | min z |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for c in cards:
        print(f"| {c['run']} | {c['epoch']} | {c['mrr']:.4f} | {c['r5']:.2%} | {c['d_r5'] * 100:+.2f} [{c['ci_r5'][0] * 100:+.2f}, "
              f"{c['ci_r5'][1] * 100:+.2f}] vs {c['b_r5_name']} | {c['z_r5']:+.2f} | {c['cos']:.4f} | "
              f"{c['d_cos']:+.4f} [{c['ci_cos'][0]:+.4f}, {c['ci_cos'][1]:+.4f}] vs {c['b_cos_name']} | "
              f"{c['z_cos']:+.2f} | {min(c['z_r5'], c['z_cos']):+.2f} |")
    best = max(cards, key=lambda c: min(c["z_r5"], c["z_cos"]))
    if min(best["z_r5"], best["z_cos"]) > 0:
        print(f"pick: {best['run']} (min z {min(best['z_r5'], best['z_cos']):+.2f})")
    else:
        print("pick: none (no run clears both val baselines)")


if __name__ == "__main__":
    main()
