"""Retrieval metrics: exact ranks of the true next chunk, recall/MRR, article-level bootstrap, search.

Shapes: n queries, M bank rows, D vector width, K context rows per query, k list length, A articles.

Rank convention (the one every number of the study uses)
    rank = 1 + #{bank rows r outside the target's group : score(q, r) >= score(q, target)}
- ties count against the model (a constant or all-zero prediction ranks last, never first);
- the target's *group* is the target row plus every row holding a bit-identical vector (the same
  text elsewhere in the corpus): retrieving a duplicate of the truth is retrieving the truth, and the
  oracle (query = target vector) then ranks 1 even when the text occurs twice;
- "context excluded" removes each query's K context rows, and every duplicate of them, from its bank
  (never the target's own group): a model that copies its last input cannot "retrieve" the context.
- a bank is defined by labels: row r belongs to query i's bank iff row_label[r] == query_label[i]
  (global: every row; test: rows of the test articles; same_article: rows of the query's article).

`target_ranks` counts exactly with chunked matmuls (torch; on the GPU when one is given), so memory
stays bounded for a bank of 1M vectors; `target_ranks_ref` is the per-query loop it must equal.
`exact_search` returns top-k lists (faiss-cpu IndexFlatIP where importable, else torch matmul+topk);
`rank_in_list` turns such a list back into ranks, which cross-checks the two code paths.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lvmlib.core.backends import resolve_backend
from lvmlib.core.config import DEVICES, SEARCH_BACKENDS
from lvmlib.core.errors import MetricsError

CONTAIN_K = 50  # Contain@50: the target is among the first 50 candidates
EFF_K = 5  # Eff@5 = R@5 / Contain@50: how much of what the candidates contain reaches the top 5
BLOCK_ELEMS = 1 << 25  # scores held at once: query block x bank chunk <= 32M floats (128 MB)


# --------------------------------------------------------------------------- devices and backends
def _no_cuda() -> str | None:
    return None if torch.cuda.is_available() else "torch sees no CUDA device"


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """train.device (also the evaluation's device) -> a torch device, through the kit's one resolver
    (BackendError): 'auto'/None -> cuda when available, else cpu; 'cuda' without a GPU is refused.
    A torch.device or an indexed 'cuda:1' is taken as given."""
    if isinstance(device, torch.device) or (isinstance(device, str) and ":" in device):
        return torch.device(device)
    name = resolve_backend(
        "train.device",
        "auto" if device is None else str(device),
        DEVICES,
        auto=lambda: "cuda" if torch.cuda.is_available() else "cpu",
        unavailable={"cuda": _no_cuda},
    )
    return torch.device(name)


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def search_backend(requested: str = "auto", device: str | torch.device | None = None) -> str:
    """eval.search_backend -> the backend that runs, through the kit's one resolver (BackendError):
    'auto' -> torch on a CUDA device (search on the GPU), else faiss when importable, else torch."""
    return resolve_backend(
        "eval.search_backend",
        requested,
        SEARCH_BACKENDS,
        auto=lambda: "torch" if resolve_device(device).type == "cuda" or not faiss_available() else "faiss",
        unavailable={"faiss": lambda: None if faiss_available() else "faiss is not importable (pip install faiss-cpu)"},
    )


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """(n, D) -> (n, D) float32 rows of unit norm (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def to_tensor(a: np.ndarray, device: torch.device) -> torch.Tensor:
    """float32 tensor on `device`; read-only arrays (memmapped banks) are copied, as torch requires."""
    a = np.asarray(a, dtype=np.float32)
    return torch.from_numpy(a if a.flags.writeable else a.copy()).to(device)


def _query_block(n_cols: int) -> int:
    return max(1, BLOCK_ELEMS // max(1, n_cols))


# --------------------------------------------------------------------------- exact top-k search
def exact_search(
    queries: np.ndarray,
    bank: np.ndarray,
    k: int,
    *,
    backend: str = "auto",
    chunk: int = 65536,
    device: str | torch.device | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k: (n, D) queries x (M, D) bank -> scores (n, k) float32, rows (n, k) int64,
    best first (equal scores by row). The bank is scanned `chunk` rows at a time and the partial lists
    merged. Rows tied at the k-th place may differ between backends and chunk sizes."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    k = min(k, len(bank))
    if search_backend(backend, device) == "faiss":
        s, i = _search_faiss(queries, bank, k, chunk)
    else:
        s, i = _search_torch(queries, bank, k, chunk, resolve_device(device))
    order = np.lexsort((i, -s), axis=-1)  # equal scores (duplicate rows) in row order: deterministic lists
    return np.take_along_axis(s, order, 1), np.take_along_axis(i, order, 1)


def _search_faiss(queries, bank, k, chunk):
    import faiss

    n, D = queries.shape
    best_s = np.full((n, 0), -np.inf, np.float32)
    best_i = np.zeros((n, 0), np.int64)
    for r0 in range(0, len(bank), chunk):
        part = np.ascontiguousarray(bank[r0 : r0 + chunk], dtype=np.float32)  # (c, D)
        index = faiss.IndexFlatIP(D)
        index.add(part)
        s, i = index.search(queries, min(k, len(part)))  # (n, k') each
        best_s = np.concatenate([best_s, s], axis=1)
        best_i = np.concatenate([best_i, i.astype(np.int64) + r0], axis=1)
        if best_s.shape[1] > k:
            order = np.argsort(-best_s, axis=1, kind="stable")[:, :k]  # (n, k)
            best_s = np.take_along_axis(best_s, order, 1)
            best_i = np.take_along_axis(best_i, order, 1)
    return best_s, best_i


def _search_torch(queries, bank, k, chunk, device):
    n = len(queries)
    out_s = np.empty((n, k), np.float32)
    out_i = np.empty((n, k), np.int64)
    qb = _query_block(min(chunk, len(bank)))
    for a in range(0, n, qb):
        q = to_tensor(queries[a : a + qb], device)  # (nb, D)
        best_s = torch.empty(len(q), 0, device=device)
        best_i = torch.empty(len(q), 0, dtype=torch.long, device=device)
        for r0 in range(0, len(bank), chunk):
            b = to_tensor(bank[r0 : r0 + chunk], device)  # (c, D)
            top = torch.topk(q @ b.T, min(k, len(b)), dim=1)  # (nb, k')
            best_s = torch.cat([best_s, top.values], 1)
            best_i = torch.cat([best_i, top.indices + r0], 1)
            if best_s.shape[1] > k:
                top = torch.topk(best_s, k, dim=1)  # (nb, k)
                best_s, best_i = top.values, best_i.gather(1, top.indices)
        out_s[a : a + qb], out_i[a : a + qb] = best_s.cpu().numpy(), best_i.cpu().numpy()
    return out_s, out_i


# --------------------------------------------------------------------------- duplicates
def duplicate_groups(bank: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """(M, D) -> (M,) int64 group id = the smallest row holding a bit-identical vector.

    Rows are hashed exactly (integer arithmetic on their bytes), candidates with equal hashes are then
    compared byte for byte, so a hash collision can never merge two different vectors (and NaN rows,
    which never compare equal as floats, still terminate: they are grouped by their bits)."""
    M = len(bank)
    rng = np.random.default_rng(12345)
    mult = None
    h = np.empty(M, np.uint64)
    for r0 in range(0, M, chunk):
        words = np.ascontiguousarray(bank[r0 : r0 + chunk], dtype=np.float32).view(np.uint32).astype(np.uint64)
        if mult is None:
            mult = rng.integers(1, 2**63, size=words.shape[1], dtype=np.uint64) | np.uint64(1)
        h[r0 : r0 + chunk] = (words * mult).sum(axis=1) if words.size else 0  # wraps mod 2**64, exact
    groups = np.arange(M, dtype=np.int64)
    order = np.argsort(h, kind="stable")  # equal hashes adjacent, lowest row first
    hs = h[order]
    starts = np.flatnonzero(np.r_[True, hs[1:] != hs[:-1]])
    sizes = np.diff(np.r_[starts, M])
    for s, size in zip(starts[sizes > 1], sizes[sizes > 1]):
        rows = np.sort(order[s : s + size])
        vecs = np.ascontiguousarray(bank[rows], dtype=np.float32).view(np.uint32)  # bits: NaN == NaN
        while len(rows):  # split a hash bucket into its truly identical subsets
            same = (vecs == vecs[0]).all(axis=1)
            groups[rows[same]] = rows[0]
            rows, vecs = rows[~same], vecs[~same]
    return groups


def _members(labels: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each i, every row r with labels[r] == keys[i] -> pairs (i, r), sorted by i."""
    order = np.argsort(labels, kind="stable")
    sl = labels[order]
    lo = np.searchsorted(sl, keys, "left")
    hi = np.searchsorted(sl, keys, "right")
    counts = hi - lo
    qi = np.repeat(np.arange(len(keys)), counts)
    offs = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    return qi, order[np.repeat(lo, counts) + offs]


# --------------------------------------------------------------------------- exact ranks
@dataclass
class Ranks:
    """Ranks of the target in one bank, with and without each query's context rows (n,) int64."""

    excluded: np.ndarray  # context rows (and their duplicates) removed from the bank
    included: np.ndarray  # the bank as is
    size_excluded: np.ndarray  # rows in the query's bank after the removal
    size_included: np.ndarray


def _prepare_banks(banks, target_rows, M):
    out = {}
    for name, spec in banks.items():
        if spec is None:
            out[name] = ("all", None)
            continue
        row_label, query_label = (np.asarray(x) for x in spec)
        if len(row_label) != M or len(query_label) != len(target_rows):
            raise MetricsError(f"bank {name!r}: row_label needs {M} entries and query_label {len(target_rows)}")
        bad = np.flatnonzero(row_label[target_rows] != query_label)
        if len(bad):
            raise MetricsError(
                f"bank {name!r}: the target of query {bad[0]} (row {target_rows[bad[0]]}) "
                f"is not in its bank ({len(bad)} queries)"
            )
        if len(query_label) and (query_label == query_label[0]).all():
            mask = row_label == query_label[0]  # one row set shared by every query
            k = int(mask.sum())
            out[name] = ("prefix", k) if mask[:k].all() else ("columns", mask)  # prefix: rows [0, k)
        else:
            out[name] = ("pairs", (row_label, query_label, *_members(row_label, query_label)))
    return out


def _in_bank(kind, data, qi, rows):
    if kind == "all":
        return np.ones(len(rows), bool)
    if kind == "columns":
        return data[rows]
    if kind == "prefix":
        return rows < data
    row_label, query_label = data[0], data[1]
    return row_label[rows] == query_label[qi]


def _block(sorted_q: np.ndarray, a: int, z: int) -> slice:
    return slice(int(np.searchsorted(sorted_q, a)), int(np.searchsorted(sorted_q, z)))


def _exclusion_pairs(exclude_rows, groups, gt):
    """Pairs (query, row) removed from the query's bank: context rows and their duplicates,
    never the target's own group; unique, sorted by query."""
    ex = np.asarray(exclude_rows, dtype=np.int64)
    n, K = ex.shape
    qi = np.repeat(np.arange(n), K)
    eg = groups[ex.ravel()]
    gq, rows = _members(groups, eg)  # every row of every excluded group
    qi, rows = qi[gq], rows
    keep = groups[rows] != gt[qi]
    qi, rows = qi[keep], rows[keep]
    code = np.unique(qi * (len(groups) + 1) + rows)
    return code // (len(groups) + 1), code % (len(groups) + 1)


def target_ranks(
    queries: np.ndarray,
    bank: np.ndarray,
    target_rows: np.ndarray,
    *,
    banks: Mapping[str, Any] | None = None,
    exclude_rows: np.ndarray | None = None,
    groups: np.ndarray | None = None,
    chunk: int = 65536,
    device: str | torch.device | None = None,
) -> dict[str, Ranks]:
    """Exact rank of each query's target in every bank, with and without its context rows.

    queries (n, D), bank (M, D) (any float dtype, may be a memmap), target_rows (n,) bank rows,
    banks {name: (row_label (M,), query_label (n,)) or None for every row}, exclude_rows (n, K) bank rows,
    groups (M,) from `duplicate_groups` (None: every row its own group). One pass over the bank in
    `chunk`-row blocks scores every bank at once; memory is O(query block x chunk)."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    target_rows = np.asarray(target_rows, dtype=np.int64)
    n, M = len(queries), len(bank)
    if not np.isfinite(queries).all():
        bad = np.flatnonzero(~np.isfinite(queries).all(axis=1))
        raise MetricsError(f"{len(bad)} queries are not finite (first: query {bad[0]}); NaN would rank first")
    if len(target_rows) != n or (n and (target_rows.min() < 0 or target_rows.max() >= M)):
        raise MetricsError(f"target_rows must hold {n} bank rows in [0, {M})")
    dev = resolve_device(device)
    groups = np.arange(M, dtype=np.int64) if groups is None else np.asarray(groups, dtype=np.int64)
    gt = groups[target_rows]
    specs = _prepare_banks(dict(banks or {"global": None}), target_rows, M)
    tq, trow = _members(groups, gt)  # the target's group: masked, never counted against the model
    if exclude_rows is None:
        eq, erow = np.zeros(0, np.int64), np.zeros(0, np.int64)
    else:
        eq, erow = _exclusion_pairs(exclude_rows, groups, gt)
    e_in = {b: _in_bank(kind, data, eq, erow) for b, (kind, data) in specs.items()}
    # target scores computed once, in float32 like the matmul; only near-ties (~1e-7) can differ
    st_all = np.einsum("nd,nd->n", queries, np.asarray(bank[target_rows], dtype=np.float32))  # (n,)
    cnt = {b: np.zeros(n, np.int64) for b in specs}
    cnt_ex = {b: np.zeros(n, np.int64) for b in specs}
    # prefix banks (rows [0, k), e.g. nested bank sizes): counted from segment sums between their ends
    prefix = {b: k for b, (kind, k) in specs.items() if kind == "prefix"}
    ends = sorted(set(prefix.values()))
    qb = _query_block(min(chunk, M))
    for a in range(0, n, qb):
        z = min(n, a + qb)
        q = to_tensor(queries[a:z], dev)  # (nb, D)
        st = torch.as_tensor(st_all[a:z]).to(dev)  # (nb,)
        t_sl, e_sl = _block(tq, a, z), _block(eq, a, z)  # pairs of this query block (sorted by query)
        p_sl = {b: _block(d[2], a, z) for b, (kind, d) in specs.items() if kind == "pairs"}
        c_blk = {b: torch.zeros(z - a, dtype=torch.long, device=dev) for b in specs}
        x_blk = {b: torch.zeros(z - a, dtype=torch.long, device=dev) for b in specs}
        for r0 in range(0, M, chunk):
            r1 = min(M, r0 + chunk)
            b = to_tensor(bank[r0:r1], dev)  # (c, D)
            s = q @ b.T  # (nb, c)
            m = (trow[t_sl] >= r0) & (trow[t_sl] < r1)
            if m.any():  # the target and its duplicates never count against the model
                ti = torch.as_tensor(tq[t_sl][m] - a, device=dev)
                s[ti, torch.as_tensor(trow[t_sl][m] - r0, device=dev)] = -torch.inf
            ge = s >= st[:, None]  # (nb, c)
            if prefix:
                run, prev, upto = torch.zeros(z - a, dtype=torch.long, device=dev), 0, {}
                for k in ends:
                    cut = min(max(k - r0, 0), r1 - r0)  # the bank's end, as a column of this chunk
                    if cut > prev:
                        run = run + ge[:, prev:cut].sum(1)
                        prev = cut
                    upto[k] = run
                for name, k in prefix.items():
                    c_blk[name] += upto[k]
            for name, (kind, data) in specs.items():
                if kind == "all":
                    c_blk[name] += ge.sum(1)
                elif kind == "columns":
                    c_blk[name] += (ge & torch.as_tensor(data[r0:r1], device=dev)[None, :]).sum(1)
                elif kind == "pairs":
                    pq, pr = data[2][p_sl[name]], data[3][p_sl[name]]
                    pm = (pr >= r0) & (pr < r1)
                    qi_t = torch.as_tensor(pq[pm] - a, device=dev)
                    hit = s[qi_t, torch.as_tensor(pr[pm] - r0, device=dev)] >= st[qi_t]
                    c_blk[name].index_add_(0, qi_t, hit.long())
            em = (erow[e_sl] >= r0) & (erow[e_sl] < r1)
            if em.any():
                qi_t = torch.as_tensor(eq[e_sl][em] - a, device=dev)
                hit = s[qi_t, torch.as_tensor(erow[e_sl][em] - r0, device=dev)] >= st[qi_t]
                for name in specs:
                    inb = torch.as_tensor(e_in[name][e_sl][em], device=dev)
                    x_blk[name].index_add_(0, qi_t, (hit & inb).long())
        for name in specs:
            cnt[name][a:z] = c_blk[name].cpu().numpy()
            cnt_ex[name][a:z] = x_blk[name].cpu().numpy()
    out = {}
    for name, (kind, data) in specs.items():
        if kind == "all":
            size = np.full(n, M, np.int64)
        elif kind == "columns":
            size = np.full(n, int(data.sum()), np.int64)
        elif kind == "prefix":
            size = np.full(n, data, np.int64)
        else:
            size = np.bincount(data[2], minlength=n).astype(np.int64)
        removed = np.bincount(eq[e_in[name]], minlength=n).astype(np.int64)
        out[name] = Ranks(
            excluded=1 + cnt[name] - cnt_ex[name],
            included=1 + cnt[name],
            size_excluded=size - removed,
            size_included=size,
        )
    return out


def target_ranks_ref(queries, bank, target_rows, *, banks=None, exclude_rows=None, groups=None) -> dict[str, Ranks]:
    """The specification of `target_ranks`: one query at a time, float64, no chunking."""
    queries, bank = np.asarray(queries, np.float64), np.asarray(bank, np.float64)
    M = len(bank)
    groups = np.arange(M) if groups is None else np.asarray(groups)
    out = {}
    for name, spec in (banks or {"global": None}).items():
        ranks = {"excluded": [], "included": [], "size_excluded": [], "size_included": []}
        for i, (q, t) in enumerate(zip(queries, target_rows)):
            in_bank = np.ones(M, bool) if spec is None else np.asarray(spec[0]) == np.asarray(spec[1])[i]
            if not in_bank[t]:
                raise MetricsError(f"bank {name!r}: the target of query {i} (row {t}) is not in its bank")
            scores = bank @ q
            rivals = in_bank & (groups != groups[t])
            removed = np.zeros(M, bool)
            if exclude_rows is not None:
                removed = np.isin(groups, groups[np.asarray(exclude_rows[i])]) & (groups != groups[t])
            beats = scores >= scores[t]
            ranks["included"].append(1 + int((beats & rivals).sum()))
            ranks["excluded"].append(1 + int((beats & rivals & ~removed).sum()))
            ranks["size_included"].append(int(in_bank.sum()))
            ranks["size_excluded"].append(int((in_bank & ~removed).sum()))
        out[name] = Ranks(**{k: np.asarray(v, np.int64) for k, v in ranks.items()})
    return out


def rank_in_list(
    rows: np.ndarray, target_rows: np.ndarray, groups: np.ndarray | None = None, exclude_rows: np.ndarray | None = None
) -> np.ndarray:
    """Top-k lists (n, k) -> rank of the target's group in each list, skipping excluded groups
    (context rows and their duplicates); 0 where the target is not in the list. (n,) int64"""
    rows = np.asarray(rows)
    target_rows = np.asarray(target_rows)
    if groups is None:
        groups = np.arange(1 + max(int(rows.max(initial=0)), int(target_rows.max(initial=0))))
    groups = np.asarray(groups)
    g = groups[rows]  # (n, k)
    gt = groups[target_rows][:, None]  # (n, 1)
    is_t = g == gt
    skip = np.zeros_like(is_t)
    if exclude_rows is not None:
        eg = groups[np.asarray(exclude_rows)]  # (n, K)
        skip = (g[:, :, None] == eg[:, None, :]).any(-1) & ~is_t
    before = np.cumsum(~skip & ~is_t, axis=1)  # rivals up to each position
    first = is_t.argmax(axis=1)
    found = is_t.any(axis=1)
    return np.where(found, before[np.arange(len(rows)), first] + 1, 0).astype(np.int64)


# --------------------------------------------------------------------------- summary metrics
def recall_at_k(ranks: np.ndarray, k: int) -> float:
    """Fraction of queries whose target ranks within the first k (R@k)."""
    ranks = np.asarray(ranks)
    return float((ranks <= k).mean()) if ranks.size else float("nan")


def rank_metrics(ranks: np.ndarray, ks=(1, 5, 10, 20, 50)) -> dict[str, float]:
    """R@k for every k, MRR, Contain@50, Eff@5 (= R@5 / Contain@50), mean and median rank."""
    ranks = np.asarray(ranks, dtype=np.float64)
    out = {f"recall_at_{k}": recall_at_k(ranks, k) for k in sorted(set(ks) | {EFF_K})}
    contain = recall_at_k(ranks, CONTAIN_K)
    out["mrr"] = float((1.0 / ranks).mean()) if ranks.size else float("nan")
    out["contain_at_50"] = contain
    out["eff_at_5"] = out[f"recall_at_{EFF_K}"] / contain if contain > 0 else float("nan")
    out["mean_rank"] = float(ranks.mean()) if ranks.size else float("nan")
    out["median_rank"] = float(np.median(ranks)) if ranks.size else float("nan")
    return out


def cosines(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Row-wise cosine (n, D), (n, D) -> (n,)."""
    return np.einsum("nd,nd->n", l2_normalize(pred), l2_normalize(target))


def cosine_summary(cos: np.ndarray) -> dict[str, float]:
    cos = np.asarray(cos, dtype=np.float64)
    q25, q50, q75 = np.percentile(cos, [25, 50, 75]) if cos.size else (np.nan,) * 3
    return {
        "pred_target_cosine": float(cos.mean()) if cos.size else float("nan"),
        "cosine_q25": float(q25),
        "cosine_median": float(q50),
        "cosine_q75": float(q75),
        # Large Concept Model metric (Barrault et al. 2024): l2 distance to the target, here of the L2-normalised
        # prediction (raw output norms mean nothing for a model trained on cosines): sqrt(2 - 2 cos) per query
        "l2_to_target": float(np.sqrt(np.clip(2.0 - 2.0 * cos, 0.0, None)).mean()) if cos.size else float("nan"),
    }


def fraction_farther(ranks: np.ndarray, sizes: np.ndarray) -> float:
    """LCM's contrastive accuracy, per query averaged: the share of the other bank rows that are farther from
    the prediction than the target, (size - rank) / (size - 1); 1.0 = the target is the nearest row. (The
    strict version, the target nearer than *every* other row, is R@1 of the same bank.)"""
    ranks, sizes = np.asarray(ranks, np.float64), np.asarray(sizes, np.float64)
    if not ranks.size:
        return float("nan")
    return float(((sizes - ranks) / np.maximum(sizes - 1.0, 1.0)).mean())


# --------------------------------------------------------------------------- bootstrap by article
def article_bootstrap(
    values: Mapping[str, np.ndarray],
    clusters: np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    block: int = 256,
) -> dict[str, list[float] | None]:
    """Percentile CIs of per-query means, resampling clusters (articles) with replacement.

    values {name: (n,) per-query numbers, e.g. hit@5 or 1/rank}; every name uses the same draws, so a
    paired difference (model - baseline per query) gets a valid CI too. Each draw takes A articles and
    averages over all their queries (a ratio estimator: long articles weigh more, as in the point
    estimate). -> {name: [lo, hi]} (None when n_boot == 0 or there is no query)."""
    clusters = np.asarray(clusters)
    if n_boot <= 0 or clusters.size == 0:
        return dict.fromkeys(values)
    _, inv = np.unique(clusters, return_inverse=True)
    A = int(inv.max()) + 1
    cnt = np.bincount(inv, minlength=A).astype(np.float64)  # (A,)
    sums = {k: np.bincount(inv, weights=np.asarray(v, np.float64), minlength=A) for k, v in values.items()}
    rng = np.random.default_rng(seed)
    stats = {k: [] for k in values}
    for b0 in range(0, n_boot, block):
        nb = min(block, n_boot - b0)
        draws = rng.integers(0, A, size=(nb, A))  # (nb, A) article indices
        w = np.bincount((draws + A * np.arange(nb)[:, None]).ravel(), minlength=nb * A).reshape(nb, A)
        den = w @ cnt  # (nb,)
        for k, s in sums.items():
            stats[k].append((w @ s) / den)
    q = [100 * alpha / 2, 100 * (1 - alpha / 2)]
    return {k: [float(x) for x in np.percentile(np.concatenate(v), q)] for k, v in stats.items()}
