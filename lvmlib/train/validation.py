"""Validation during training: the numbers every epoch records, computed with the evaluation's own code.

val_cosine, val_infonce, val_recall_at_k and val_mrr every epoch; val_curve_recall_at_5 too when the run's
data/ holds distractors: R@5 in the largest bank of evaluation's bank-size curve on val (every val chunk
plus every distractor chunk), built by the same `data.distractors.curve_bank` and ranked by the same
`metrics.target_ranks`, so it equals eval.json's curve at that size with `eval.split: val`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from lvmlib.core.config import SPLITS, Config
from lvmlib.core.errors import DataError
from lvmlib.data.distractors import curve_bank, distractor_order, held_rows, load_distractors
from lvmlib.train.losses import LVMLoss

VAL_KS = (1, 5, 10)


def val_queries(prep, cfg: Config) -> dict[str, np.ndarray]:
    """The val windows validation ranks: all of them, or a seeded sample of `train.val_max_queries`."""
    ctx_idx, tgt_idx = prep.windows("val")
    cap = cfg.train.val_max_queries
    if cap and len(tgt_idx) > cap:
        keep = np.sort(np.random.default_rng(cfg.train.seed).choice(len(tgt_idx), cap, replace=False))
        ctx_idx, tgt_idx = ctx_idx[keep], tgt_idx[keep]
    return {"ctx_idx": ctx_idx, "tgt_idx": tgt_idx}


def val_curve(prep, cfg: Config, queries: dict) -> dict | None:
    """The largest curve bank on val for `queries`, built once per run, or None when data/ holds no distractors.

    -> {bank (H + S, D) float32: every val chunk, then every distractor in `eval.curve_seed` join order;
    groups (H + S,) `metrics.duplicate_groups` of it; tgt (n,), ctx (n, K) the queries' rows in it}.
    DataError when `data.distractor_path` is set but the data stage wrote no distractors (as evaluation)."""
    from lvmlib import metrics as mt

    dist = load_distractors(prep.dir)
    if dist is None:
        if cfg.data.distractor_path:
            raise DataError(
                f"{prep.dir}: no distractor_vectors.npy although data.distractor_path is set "
                "— run the data stage (01_data) again"
            )
        return None
    if dist.shape[1] != prep.d_vec:
        raise DataError(f"{prep.dir}: distractor vectors have width {dist.shape[1]}, the bank {prep.d_vec}")
    held = np.flatnonzero(np.asarray(prep.bank_split) == SPLITS.index("val"))  # (H,) every val chunk
    bank = curve_bank(prep.bank_vectors, held, dist, distractor_order(len(dist), cfg.eval.curve_seed))
    return {
        "bank": bank,
        "groups": mt.duplicate_groups(bank, cfg.eval.search_chunk),
        "tgt": held_rows(held, np.asarray(queries["tgt_idx"]), "target"),
        "ctx": held_rows(held, np.asarray(queries["ctx_idx"]), "context"),
    }


@torch.no_grad()
def validate(
    model: nn.Module,
    loss_fn: LVMLoss,
    prep,
    queries: dict,
    cfg: Config,
    device,
    n_neg: int,
    key_tower: bool,
    recall: bool = True,
    groups: np.ndarray | None = None,
    curve: dict | None = None,
) -> dict[str, float]:
    """Validation with evaluation's own code, so the two cannot disagree.

    val_cosine: mean cosine(prediction, true next vector). val_infonce: in-batch InfoNCE over shuffled
    batches of n_neg windows (the training batch), the same permutation every epoch. val_recall_at_k /
    val_mrr: `evaluate.predict` + `metrics.target_ranks` on evaluation's primary bank — every chunk of
    the corpus, each query's context chunks and their duplicates removed, ties counted against the model.
    `groups`: `metrics.duplicate_groups` of the bank (computed here when not given). `curve` (`val_curve`):
    also val_curve_recall_at_5, R@5 among every val chunk and every distractor, context excluded."""
    from lvmlib import metrics as mt
    from lvmlib.model.predict import model_bank, predict

    model.eval()
    vecs = prep.bank_vectors
    ctx_idx, tgt_idx = queries["ctx_idx"], queries["tgt_idx"]
    P = torch.from_numpy(predict(model, prep.contexts(ctx_idx), device)).to(device)  # (n, D')
    T = torch.from_numpy(np.asarray(vecs[np.asarray(tgt_idx)], dtype=np.float32)).to(device)  # (n, D)
    K = model.encode_bank(T).float() if key_tower else T  # (n, D')
    cos = torch.nn.functional.cosine_similarity(P, K, dim=-1)  # (n)
    meta = torch.from_numpy(np.asarray(prep.bank_keys)[tgt_idx]).to(device)  # (n, 2)
    perm = torch.from_numpy(np.random.default_rng(cfg.train.seed).permutation(len(P))).to(device)  # fixed shuffle
    nce, seen = 0.0, 0
    for s in range(0, len(P), n_neg):
        sel = perm[s : s + n_neg]
        if len(sel) < 2:
            break
        nce += float(loss_fn.contrastive(P[sel], K[sel], loss_fn.mask(meta[sel]))) * len(sel)
        seen += len(sel)
    out = {"val_cosine": float(cos.mean()), "val_infonce": nce / max(seen, 1)}
    if recall:
        groups = mt.duplicate_groups(vecs) if groups is None else groups
        bank = model_bank(model, vecs, device)  # (M, D')
        ranks = mt.target_ranks(
            mt.l2_normalize(P.cpu().numpy()), bank, tgt_idx, exclude_rows=ctx_idx, groups=groups, device=device
        )["global"].excluded  # (n)
        out.update({f"val_recall_at_{k}": mt.recall_at_k(ranks, k) for k in VAL_KS})
        out.update(val_mrr=float(np.mean(1.0 / ranks)), n_val_queries=len(ranks), val_bank_size=len(bank))
    if recall and curve is not None:
        chunk = cfg.eval.search_chunk
        bank_c = model_bank(model, curve["bank"], device, chunk)  # (H + S, D')
        ranks_c = mt.target_ranks(
            mt.l2_normalize(P.cpu().numpy()),
            bank_c,
            curve["tgt"],
            exclude_rows=curve["ctx"],
            groups=curve["groups"],
            chunk=chunk,
            device=device,
        )["global"].excluded  # (n)
        out.update(val_curve_recall_at_5=mt.recall_at_k(ranks_c, 5), val_curve_bank_size=len(bank_c))
    model.train()
    return out
