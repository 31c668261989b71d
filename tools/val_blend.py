"""Diagnostic on VAL articles: would the trained model do better with more of the context mean in it?

    python tools/val_blend.py RUN_DIR [--queries 3000] [--betas 0.25,0.5,0.75,1,1.5] [--taus 0.04,0.07]

Loads RUN_DIR/best.pt and scores, on a seeded sample of val windows, copy_last, context_mean, the model's
prediction P and the blends P/|P| + beta * mean/|mean|: mean cosine to the true next chunk, R@5 and MRR
on evaluation's primary bank (every chunk of the corpus, the query's context and duplicates removed, ties
against the query: `lvmlib.metrics.target_ranks`), and the bank InfoNCE of each prediction against every
train chunk at the temperatures given (the loss `loss.negatives: bank` trains on). If a blend raises both
cosine and InfoNCE on val, the trained correction overfits away from the article's topic. Nothing here
reads test articles.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from lvmlib import metrics as mt
from lvmlib.data.prepare import load_prepared
from lvmlib.model.checkpoint import load_checkpoint
from lvmlib.model.predict import predict
from lvmlib.train.losses import bank_info_nce


def bank_infonce(Q: np.ndarray, T: torch.Tensor, bank: torch.Tensor, tau: float, block: int = 500) -> float:
    """Mean bank InfoNCE (`lvmlib.train.losses.bank_info_nce`, the training loss) in blocks of queries."""
    Q = torch.from_numpy(Q)
    total = sum(
        float(bank_info_nce(Q[s : s + block], T[s : s + block], bank, 1.0 / tau)) * len(Q[s : s + block])
        for s in range(0, len(Q), block)
    )
    return total / len(Q)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--queries", type=int, default=3000)
    ap.add_argument("--betas", default="0.25,0.5,0.75,1,1.5")
    ap.add_argument("--taus", default="0.04,0.07")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    prep = load_prepared(a.run_dir)
    model, _, _ = load_checkpoint(a.run_dir / "best.pt", d_vec=prep.d_vec)
    model.eval()
    ctx, tgt = prep.windows("val")
    sel = np.sort(np.random.default_rng(a.seed).choice(len(tgt), min(a.queries, len(tgt)), replace=False))
    ctx, tgt = ctx[sel], tgt[sel]
    C = prep.contexts(ctx)  # (n, K, D)
    T = mt.l2_normalize(prep.targets(tgt))  # (n, D)
    Tt = torch.from_numpy(T)
    bank = torch.from_numpy(mt.l2_normalize(prep.targets(np.flatnonzero(np.asarray(prep.bank_split) == 0))))
    groups = mt.duplicate_groups(prep.bank_vectors)
    taus = [float(x) for x in a.taus.split(",")]
    P = mt.l2_normalize(predict(model, C, torch.device("cpu")))
    M = mt.l2_normalize(C.mean(1))
    rows = [("copy_last", C[:, -1]), ("context_mean", C.mean(1)), ("model", P)]
    rows += [(f"model + {b:g} * mean", P + b * M) for b in map(float, a.betas.split(","))]
    print(f"{a.run_dir}: {len(tgt)} val queries, bank {len(prep)} chunks (primary), {len(bank)} train chunks (InfoNCE)")
    print("| prediction | val cosine | val R@5 | val MRR | " + " | ".join(f"InfoNCE tau {t:g}" for t in taus) + " |")
    print("|---|---|---|---|" + "---|" * len(taus))
    for name, Q in rows:
        Q = mt.l2_normalize(Q)
        r = mt.target_ranks(Q, prep.bank_vectors, tgt, exclude_rows=ctx, groups=groups)["global"].excluded
        nce = " | ".join(f"{bank_infonce(Q, Tt, bank, t):.3f}" for t in taus)
        print(
            f"| {name} | {float((Q * T).sum(1).mean()):.4f} | {mt.recall_at_k(r, 5):.2%} | {np.mean(1 / r):.4f} | {nce} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
