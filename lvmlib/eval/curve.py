"""The bank-size curve: every predictor's R@5 and MRR as bank-only distractor chunks join the held-out bank.

Shapes: n queries, K context length, H held-out rows (every chunk of the eval split), S distractor rows,
D' a model's retrieval width.

One bank and its single number hide how a predictor degrades as distractors grow: copy_last's prediction
is one specific chunk vector (its rivals appear slowly), a model's is a point between chunks. The curve
ranks each query's target among the H held-out chunks of the eval split (the `test` bank, context
excluded, duplicates as `metrics.duplicate_groups` says) plus the first s distractors of a seeded
permutation (`eval.curve_seed`), for every s of `eval.bank_sizes`: nested subsets, so a larger bank only
adds rivals (the bank: `data.distractors.curve_bank`, shared with training's `val_curve_recall_at_5`). Every size comes out of one `metrics.target_ranks` pass over the largest bank: held-out rows
first, distractors in join order, so each size is a prefix of it (counted at the cost of one bank); the bootstrap is `metrics.article_bootstrap` with the evaluation's own draws
(`train.seed`), so the paired differences model − baseline are paired exactly as the headline's are.
The predictions are the evaluation's own (`evaluate._score`), nothing is predicted twice.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from lvmlib import metrics as mt
from lvmlib.core.config import SPLITS, Config
from lvmlib.core.errors import DataError, SanityError
from lvmlib.data.distractors import curve_bank, distractor_order, held_rows, load_distractors
from lvmlib.eval.inputs import EvalData, check_bank
from lvmlib.model.predict import model_bank

VERSUS = ("copy_last", "ridge", "context_mean")  # the baselines each trained model is paired with


def resolve_sizes(requested: list[int], available: int) -> list[dict[str, Any]]:
    """eval.bank_sizes -> [{requested, size, clipped}]: -1 is every distractor, a size above S is clipped to S."""
    return [
        {
            "requested": int(r),
            "size": available if r == -1 else min(int(r), available),
            "clipped": bool(r > available),
        }
        for r in requested
    ]


def curve_banks(order: np.ndarray, sizes: list[int], n_held: int, n_queries: int) -> dict[str, tuple]:
    """One `metrics.target_ranks` bank per size over [held-out rows; distractors in `order`]: row r is in
    bank s iff it is held out or among the first s distractors. -> {str(s): (row_label, query_label)}"""
    pos = np.r_[np.full(n_held, -1), np.arange(len(order))]  # (H + S',) join position, -1 = always in
    ones = np.ones(n_queries, np.int64)
    return {str(s): ((pos < s).astype(np.int64), ones) for s in sizes}


def bank_curve(
    cfg: Config,
    data: EvalData,
    ctx_rows: np.ndarray,
    tgt_rows: np.ndarray,
    predictors: list[tuple[str, str, Any]],
    per_query: dict[str, dict[str, Any]],
    device,
    own_data: bool = True,
    log=None,
) -> dict[str, Any] | None:
    """The curve for eval.json["bank_curve"], or None when the data dir holds no distractors.

    predictors [(name, role, model)] in the evaluation's order; per_query[name]["pred"] (n, D') the
    L2-normalised predictions the evaluation scored. own_data: the run's own data/ (a run with
    data.distractor_path but no distractor file is refused: its data stage ran without them)."""
    e = cfg.eval
    data_dir = getattr(data.prepared, "dir", None)
    dist = load_distractors(data_dir) if data_dir is not None else None
    if dist is None:
        if own_data and cfg.data.distractor_path:
            raise DataError(
                f"{data_dir or data.source}: no distractor_vectors.npy although data.distractor_path is set "
                "— run the data stage (01_data) again"
            )
        return None
    if not e.bank_sizes:
        return None
    t0 = time.time()
    if dist.shape[1] != data.d_vec:
        raise SanityError(f"{data_dir}: distractor vectors have width {dist.shape[1]}, the bank {data.d_vec}")
    sanity = check_bank(dist, e.search_chunk, f"{data_dir}/distractor_vectors.npy")
    S = len(dist)
    sizes = resolve_sizes(e.bank_sizes, S)
    uniq = sorted({x["size"] for x in sizes})
    order = distractor_order(S, e.curve_seed)[: uniq[-1]]
    held = np.flatnonzero(data.bank_split == SPLITS.index(e.split))  # (H,) every chunk of the eval split
    tgt, ctx = held_rows(held, tgt_rows, "target"), held_rows(held, ctx_rows, "context")
    bank = curve_bank(data.bank_vectors, held, dist, order)  # (H + S', D): held-out rows, then distractors
    groups = mt.duplicate_groups(bank, e.search_chunk)
    banks = curve_banks(order, uniq, len(held), len(tgt))
    q_art = data.bank_keys[tgt_rows, 0]
    ranks: dict[str, dict[str, np.ndarray]] = {}
    rows, paired = [], []
    for name, role, model in predictors:
        bank_m = model_bank(model, bank, device, e.search_chunk)  # (H + S', D')
        r = mt.target_ranks(
            per_query[name]["pred"],
            bank_m,
            tgt,
            banks=banks,
            exclude_rows=ctx,
            groups=groups,
            chunk=e.search_chunk,
            device=device,
        )
        ranks[name] = {s: r[s].excluded for s in r}
        for s in uniq:
            rk = r[str(s)].excluded
            ci = mt.article_bootstrap({"recall_at_5": rk <= 5, "mrr": 1.0 / rk}, q_art, e.bootstrap, cfg.train.seed)
            rows.append(
                {
                    "size": s,
                    "n_bank": len(held) + s,
                    "bank_size_mean": float(r[str(s)].size_excluded.mean()),
                    "predictor": name,
                    "role": role,
                    **mt.rank_metrics(rk, e.ks),
                    "recall_at_5_ci": ci["recall_at_5"],
                    "mrr_ci": ci["mrr"],
                }
            )
    for name, role, _ in predictors:
        if role == "baseline":
            continue
        for vs in (b for b in VERSUS if b in ranks):
            for s in uniq:
                a, b = ranks[name][str(s)], ranks[vs][str(s)]
                diff = {"recall_at_5": (a <= 5).astype(float) - (b <= 5), "mrr": 1.0 / a - 1.0 / b}
                ci = mt.article_bootstrap(diff, q_art, e.bootstrap, cfg.train.seed)
                paired.append(
                    {
                        "size": s,
                        "n_bank": len(held) + s,
                        "model": name,
                        "vs": vs,
                        "diff_recall_at_5": float(diff["recall_at_5"].mean()),
                        "diff_recall_at_5_ci": ci["recall_at_5"],
                        "diff_mrr": float(diff["mrr"].mean()),
                        "diff_mrr_ci": ci["mrr"],
                    }
                )
    if log:
        log(f"bank curve: {len(held)} held-out + up to {uniq[-1]} of {S} distractors: {time.time() - t0:.1f}s")
    return {
        "split": e.split,
        "seed": e.curve_seed,
        "source": str(Path(data_dir) / "distractor_vectors.npy"),
        "held_out_chunks": int(len(held)),
        "distractor_chunks": int(S),
        "sizes": sizes,
        "context": "context_excluded",
        "rows": rows,
        "paired": paired,
        "sanity": sanity,
        "seconds": round(time.time() - t0, 1),
    }


# --------------------------------------------------------------------------- reading it back
def paired_curve(ev: dict[str, Any], vs: str = "copy_last", model: str | None = None) -> list[dict[str, Any]]:
    """eval.json's paired rows of one model (default the primary) against one baseline, by bank size
    ([] when the run has no curve): `paired_curve(ev)[-1]["diff_recall_at_5"]` is the edge in the largest bank."""
    model = model or ev.get("primary_model")
    rows = (ev.get("bank_curve") or {}).get("paired", [])
    return sorted((r for r in rows if r["model"] == model and r["vs"] == vs), key=lambda r: r["size"])
