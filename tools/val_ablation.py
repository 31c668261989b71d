"""Recipe choices on VAL articles only: train variants on an already-prepared run's data, read val metrics.

    python tools/val_ablation.py RUN_DIR --baselines
    python tools/val_ablation.py RUN_DIR NAME [--params params/default.yaml] [--set section.key=value ...]

RUN_DIR is a run whose 01_data stage finished (e.g. `python -m lvmlib run params/wiki1000.yaml --only
01_data ...`). Each variant trains in runs/ablation/NAME (its data/ is a link to RUN_DIR/data) with
`train.val_max_queries=2000`, the decision tree off, and prints its history: val cosine, InfoNCE, R@k and
MRR on evaluation's primary bank. `--baselines` prints copy_last / context_mean / ridge on the same val
queries and ranking. Nothing here looks at test articles.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch

from lvmlib import metrics as mt
from lvmlib.core.config import load_config
from lvmlib.data.prepare import load_prepared
from lvmlib.model.models import baseline
from lvmlib.train.loop import train
from lvmlib.train.validation import val_queries

BASE = ["train.val_max_queries=2000", "train.decision_tree=false"]
KEYS = ["epoch", "val_cosine", "val_infonce", "val_recall_at_1", "val_recall_at_5", "val_recall_at_10", "val_mrr"]


def baselines(run_dir: Path, params: str) -> dict:
    cfg = load_config(params, BASE)
    prep = load_prepared(run_dir)
    q = val_queries(prep, cfg)
    V = np.asarray(prep.bank_vectors, np.float32)
    groups = mt.duplicate_groups(V)
    ctx = prep.contexts(q["ctx_idx"])
    tc, tt = prep.windows("train")
    ridge = baseline("ridge", V.shape[1], cfg.model.ridge_alpha)
    ridge.fit(torch.from_numpy(prep.contexts(tc)), torch.from_numpy(prep.targets(tt)))
    with torch.no_grad():
        preds = {"copy_last": ctx[:, -1], "context_mean": ctx.mean(1), "ridge": ridge(torch.from_numpy(ctx)).numpy()}
    out = {}
    for name, P in preds.items():
        P = mt.l2_normalize(P)
        r = mt.target_ranks(P, V, q["tgt_idx"], exclude_rows=q["ctx_idx"], groups=groups)["global"].excluded
        out[name] = {
            "val_cosine": float((P * mt.l2_normalize(V[q["tgt_idx"]])).sum(1).mean()),
            **{f"val_recall_at_{k}": mt.recall_at_k(r, k) for k in (1, 5, 10)},
            "val_mrr": float(np.mean(1 / r)),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("name", nargs="?")
    ap.add_argument("--params", default="params/default.yaml")
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--baselines", action="store_true")
    ap.add_argument("--root", type=Path, default=Path("runs/ablation"))
    a = ap.parse_args()
    if a.baselines:
        print(json.dumps(baselines(a.run_dir, a.params), indent=1))
        return
    if not a.name:
        ap.error("give a NAME for the variant (or --baselines)")
    cfg = load_config(a.params, BASE + a.sets)
    rd = a.root / a.name
    rd.mkdir(parents=True, exist_ok=True)
    if not (rd / "data").exists():
        os.symlink((a.run_dir / "data").resolve(), rd / "data")
    hist = train(cfg, rd, progress=False)
    for h in hist:
        print(a.name, {k: round(h[k], 4) if isinstance(h.get(k), float) else h.get(k) for k in KEYS})


if __name__ == "__main__":
    main()
