"""The bar before training: what trivial predictors score on a prepared run's windows (01_data).

Mean cosine to the target of copy-last, context-mean and the train targets' global mean per split, the
copy-last retrieval recall (with the evaluation's exact ranking), and adjacent vs random pair cosines.
The closed-form predictors themselves live with the models (`lvmlib.model.models.baseline`); the full
evaluation of baselines beside the model is `lvmlib.eval.evaluate`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from lvmlib.core.config import SPLITS

if TYPE_CHECKING:
    from lvmlib.data.prepare import Prepared


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of (n, D), (n, D) -> (n,)."""
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12)


def _baseline(kind: str, d_vec: int):
    from lvmlib.model.models import baseline  # closed-form baselines live with the models

    return baseline(kind, d_vec)


def _sample(n: int, cap: int, seed: int) -> np.ndarray:
    return np.arange(n) if n <= cap else np.sort(np.random.default_rng(seed).choice(n, cap, replace=False))


def trivial_predictors(prep: Prepared, max_windows: int = 20000, seed: int = 0) -> dict[str, dict[str, float]]:
    """Mean cosine to the target per split of copy-last-context, context-mean and the global mean of
    the train targets (fitted on train only) — the bar a model must clear."""
    import torch

    ctx_tr, tgt_tr = prep.windows("train")
    sel = _sample(len(tgt_tr), max_windows, seed)
    fit_ctx = torch.from_numpy(prep.contexts(ctx_tr[sel]))
    fit_tgt = torch.from_numpy(prep.targets(tgt_tr[sel]))
    models = {}
    for kind in ("copy_last", "context_mean", "global_mean"):
        m = _baseline(kind, prep.d_vec)
        if hasattr(m, "fit"):
            m.fit(fit_ctx, fit_tgt)
        models[kind] = m.eval()
    out: dict[str, dict[str, float]] = {}
    for split in SPLITS:
        ctx, tgt = prep.windows(split)
        sel = _sample(len(tgt), max_windows, seed)
        c = torch.from_numpy(prep.contexts(ctx[sel]))  # (n, K, D)
        t = prep.targets(tgt[sel])  # (n, D)
        rec = {"n_windows": int(len(tgt))}
        with torch.no_grad():
            for kind, m in models.items():
                rec[kind] = float(_cos(m(c).numpy(), t).mean())
        out[split] = rec
    return out


def copy_last_retrieval(
    prep: Prepared, split: str, max_queries: int = 2000, seed: int = 0, ks: tuple[int, ...] = (1, 5, 10)
) -> dict[str, float]:
    """Exact search of the last context vector over the whole bank: recall@k, with the K context
    chunks in the bank and removed from it (the copy's own vector always ranks first otherwise)."""
    ctx, tgt = prep.windows(split)
    sel = _sample(len(tgt), max_queries, seed)
    ctx, tgt = ctx[sel], tgt[sel]
    from lvmlib.metrics import recall_at_k, target_ranks  # the evaluation's own exact ranking, not a second copy

    q = prep.targets(ctx[:, -1])  # (n, D) the copy-last prediction
    r = target_ranks(q, prep.bank_vectors, tgt, exclude_rows=ctx)["global"]
    out: dict[str, float] = {"n_queries": int(len(q)), "bank_size": int(len(prep))}
    for k in ks:
        out[f"recall_at_{k}"] = recall_at_k(r.included, k)
        out[f"recall_at_{k}_excl_context"] = recall_at_k(r.excluded, k)
    return out


def pair_cosines(prep: Prepared, n: int = 5000, seed: int = 0) -> dict[str, np.ndarray]:
    """Cosines of adjacent chunk pairs (same article, positions p, p+1) vs random pairs of chunks
    from different articles: {"adjacent": (n,), "random": (n,)}."""
    rng = np.random.default_rng(seed)
    k = prep.bank_keys
    adj = np.nonzero((k[1:, 0] == k[:-1, 0]) & (k[1:, 1] == k[:-1, 1] + 1))[0]
    adj = adj[_sample(len(adj), n, seed)]
    a, b = rng.integers(0, len(k), size=(2, 2 * n))
    diff = k[a, 0] != k[b, 0]
    a, b = a[diff][:n], b[diff][:n]
    return {
        "adjacent": _cos(prep.targets(adj), prep.targets(adj + 1)),
        "random": _cos(prep.targets(a), prep.targets(b)),
    }
