"""Articles -> splits -> windows, and the leakage audit that proves the splits hold.

Shapes: M bank rows, A articles, K context length, N windows. A window is K consecutive chunks of one
article and the next one (its target); every window lies in one split because whole articles are split.
`audit_leakage` re-reads a data dir's files and checks exactly that, plus that no chunk text crosses
splits and that a payload in the data dir, if any, matches the bank.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np

from lvmlib.core.config import SPLITS, DataConfig
from lvmlib.core.errors import DataError, LeakageError
from lvmlib.data.encoder import text_digests
from lvmlib.data.payload import npz_member, npz_row_blocks


# --------------------------------------------------------------------------- splits and windows
def split_articles(n_chunks: np.ndarray, cfg: DataConfig) -> np.ndarray:
    """(A,) chunks per article -> (A,) int8 split. Seeded; articles long enough for a window
    (>= K+1 chunks) and short ones are split separately so every split gets usable articles."""
    rng = np.random.default_rng(cfg.split_seed)
    split = np.zeros(len(n_chunks), dtype=np.int8)
    for group in (np.nonzero(n_chunks >= cfg.context_len + 1)[0], np.nonzero(n_chunks < cfg.context_len + 1)[0]):
        perm = group[rng.permutation(len(group))]
        n_val = int(round(cfg.val_frac * len(perm)))
        n_test = int(round(cfg.test_frac * len(perm)))
        if len(perm) >= 3:
            n_val, n_test = max(n_val, 1), max(n_test, 1)
        split[perm[len(perm) - n_val - n_test : len(perm) - n_test]] = 1
        split[perm[len(perm) - n_test :]] = 2
    return split


def dedup_across_splits(digests: np.ndarray, split: np.ndarray) -> np.ndarray:
    """(M,2), (M,) -> (M,) bool keep-mask: a text found in several splits stays only in the earliest."""
    order = np.lexsort((split, digests[:, 1], digests[:, 0]))
    d, s = digests[order], split[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = (d[1:] != d[:-1]).any(axis=1)
    group_split = np.maximum.accumulate(np.where(first, np.arange(len(order)), 0))  # index of group start
    keep_sorted = s == s[group_split]  # same split as the group's earliest split
    keep = np.empty(len(order), dtype=bool)
    keep[order] = keep_sorted
    return keep


def build_windows(keys: np.ndarray, split: np.ndarray, K: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bank keys (M,2) sorted by (article, position) -> context_idx (N,K), target_idx (N,), split (N,).
    A target at row r has a window iff rows r-K..r are one article with consecutive positions."""
    M = len(keys)
    if M <= K:
        return np.empty((0, K), np.int64), np.empty(0, np.int64), np.empty(0, np.int8)
    r = np.arange(K, M)
    ok = (keys[r, 0] == keys[r - K, 0]) & (keys[r, 1] - keys[r - K, 1] == K)
    target = r[ok]
    context = target[:, None] - K + np.arange(K)[None, :]  # (N, K)
    return context.astype(np.int64), target.astype(np.int64), split[target].astype(np.int8)


def limit_train_articles(
    ctx: np.ndarray, tgt: np.ndarray, wsplit: np.ndarray, keys: np.ndarray, d: DataConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`data.train_articles` = N > 0: keep the train windows of the first N train articles of a seeded
    order (nested: N=100 is inside N=300), every val/test window, and the whole bank. DataError when the
    corpus has fewer train articles with a window than N."""
    if not d.train_articles:
        return ctx, tgt, wsplit
    arts = np.unique(keys[tgt[wsplit == 0], 0])  # train articles that have a window
    if d.train_articles > len(arts):
        raise DataError(
            f"{d.path or d.source}: data.train_articles = {d.train_articles}, but the corpus has only "
            f"{len(arts)} train articles with a window of K+1 = {d.context_len + 1} chunks"
        )
    chosen = arts[np.random.default_rng([d.split_seed, 1]).permutation(len(arts))[: d.train_articles]]
    keep = (wsplit != 0) | np.isin(keys[tgt, 0], chosen)
    return ctx[keep], tgt[keep], wsplit[keep]


# --------------------------------------------------------------------------- leakage audit
def _row_keys(data_dir: Path, bank: np.ndarray) -> tuple[np.ndarray, int]:
    """(M, 2) uint64 content key per row and the number of text lines: the text's digest
    (`encoder.text_digests`), or for a bank without texts its exact-duplicate group
    (`metrics.duplicate_groups`: bit-identical vectors share one)."""
    from lvmlib.metrics import duplicate_groups

    digs, any_text = [], False
    with open(data_dir / "bank_texts.jsonl", encoding="utf-8") as fh:
        while block := [json.loads(line) for line in itertools.islice(fh, 65536)]:  # streamed: a 1M-row bank
            any_text = any_text or any(block)
            digs.append(text_digests(block))  # (b, 2)
    n = sum(len(d) for d in digs)
    if not any_text:
        groups = duplicate_groups(bank).astype(np.uint64)  # (M)
        return np.column_stack([groups, np.zeros_like(groups)]), n
    return (np.concatenate(digs) if digs else np.empty((0, 2), np.uint64)), n


def audit_leakage(data_dir: str | Path, require_no_shared_text: bool = True) -> dict[str, Any]:
    """Check the files of a data dir; raise LeakageError naming every failed check.

    - every article's rows carry its split, and no article appears in two splits;
    - every window lies in one article and one split, K consecutive positions then the target;
    - no chunk text (or, without texts, no vector) appears in two splits (when dedup is on);
    - a `payload.npz` in the data dir (older runs, or exported there) holds the bank's vectors and keys."""
    data_dir = Path(data_dir)
    keys = np.load(data_dir / "bank_keys.npy")
    split = np.load(data_dir / "bank_split.npy")
    bank = np.load(data_dir / "bank_vectors.npy", mmap_mode="r")
    articles = json.loads((data_dir / "articles.json").read_text())
    with np.load(data_dir / "windows.npz") as w:
        ctx, tgt, wsplit = w["context_idx"], w["target_idx"], w["split"]
    K = ctx.shape[1]
    res: dict[str, Any] = {}
    art_split = np.array([SPLITS.index(a["split"]) for a in articles], dtype=np.int8)
    ids = np.array([a["article_id"] for a in articles])
    res["duplicate_article_ids"] = int(len(ids) - len(np.unique(ids)))
    splits_per_article = np.zeros((len(articles), 3), dtype=bool)
    splits_per_article[keys[:, 0], split] = True
    res["articles_in_several_splits"] = int((splits_per_article.sum(axis=1) > 1).sum())
    res["rows_not_in_article_split"] = int((split != art_split[keys[:, 0]]).sum())
    same_art = (keys[ctx, 0] == keys[tgt, 0][:, None]).all(axis=1)
    consecutive = (keys[ctx, 1] == keys[tgt, 1][:, None] - K + np.arange(K)).all(axis=1)
    same_split = (split[ctx] == wsplit[:, None]).all(axis=1) & (split[tgt] == wsplit)
    res["windows_bad"] = int((~(same_art & consecutive & same_split)).sum())
    dig, n_text = _row_keys(data_dir, bank)
    if n_text != len(keys):
        res["texts_rows_mismatch"] = n_text - len(keys)
    # independent of dedup_across_splits: distinct texts seen in more than one split
    pairs = np.unique(np.column_stack([dig, split.astype(np.uint64)]), axis=0)  # unique (text, split)
    _, n_splits = np.unique(pairs[:, :2], axis=0, return_counts=True)
    res["shared_across_splits"] = int((n_splits > 1).sum())
    payload = data_dir / "payload.npz"
    if payload.is_file():  # data dirs written before the payload became an export (or one exported into data/)
        res["payload_mismatches"] = _payload_mismatches(payload, bank, keys, ctx, tgt, wsplit)
    failed = [k for k, v in res.items() if v and (k != "shared_across_splits" or require_no_shared_text)]
    res["passed"] = not failed
    if failed:
        raise LeakageError(f"{data_dir}: leakage audit FAILED: " + ", ".join(f"{k}={res[k]}" for k in failed))
    return res


def _payload_mismatches(
    payload: Path, bank: np.ndarray, keys: np.ndarray, ctx: np.ndarray, tgt: np.ndarray, wsplit: np.ndarray
) -> int:
    """Windows whose payload context/target vectors, truth key or split differ from the bank's."""
    K, mism = ctx.shape[1], 0
    tk, ps = npz_member(payload, "truth_keys"), npz_member(payload, "split")
    shapes = {k: npz_member(payload, k).shape for k in ("context_sequences", "target_vectors")}
    if (
        shapes != {"context_sequences": (len(tgt), K, bank.shape[1]), "target_vectors": (len(tgt), bank.shape[1])}
        or tk.shape != (len(tgt), 2)
        or ps.shape != (len(tgt),)
    ):
        mism += len(tgt)
    else:
        blk = 4096
        for i, (cs, tv) in enumerate(
            zip(npz_row_blocks(payload, "context_sequences", blk), npz_row_blocks(payload, "target_vectors", blk))
        ):
            s, e = i * blk, i * blk + len(cs)
            mism += int((~(cs == bank[ctx[s:e]]).all(axis=(1, 2))).sum())
            mism += int((~(tv == bank[tgt[s:e]]).all(axis=1)).sum())
        mism += int((tk != keys[tgt]).any(axis=1).sum()) + int((ps != wsplit).sum())
    return mism
