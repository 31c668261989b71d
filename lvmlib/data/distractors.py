"""Distractor chunks for the bank-size curve: a bank-only corpus, chunked and embedded like the run's own.

Shapes: S distractor chunks, D vector width (the run's bank's: same encoder, same cache, same space).

`data.distractor_path` names a JSONL corpus whose chunks only ever join evaluation banks
(`lvmlib.eval.curve`): no run trains, selects or tunes on them. They are chunked with the run's chunker
settings, every chunk whose exact text is in the run's bank (any split) is dropped, so a distractor never
duplicates a target or a context, and the rest are embedded through `data.encoder.embed_bank` with the
run's encoder and embedding cache. The files land in the data stage's staging directory and are
published with the other `data/` files in one rename (`data.prepare.publish_dir`):

- `distractor_vectors.npy` (S, D) float32 (float16 with `data.store_float16`), L2-normalised;
- `distractor_keys.npy` (S, 2) int64: (article index in the distractor corpus, chunk position there);
- `distractor_texts.jsonl`: one JSON string per line, row-aligned.

`curve_bank` builds the bank the curve ranks in (held-out rows of a split, then distractors in join order);
evaluation's curve (`lvmlib.eval.curve`) and training's `val_curve_recall_at_5`
(`lvmlib.train.validation`) both take it from here, so the two cannot disagree.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from lvmlib.core.config import DataConfig
from lvmlib.core.errors import DataError, SanityError
from lvmlib.core.runs import atomic_path, atomic_save_npy, progress_bar
from lvmlib.data.corpus import ChunkStats, iter_chunked_cached
from lvmlib.data.encoder import cache_root, embed_bank, text_digests

DISTRACTOR_FILES = ("distractor_vectors.npy", "distractor_keys.npy", "distractor_texts.jsonl")


def distractor_source(d: DataConfig) -> DataConfig:
    """The run's data settings (chunker, encoder, cache) pointed at the distractor corpus."""
    return d.model_copy(update={"source": "jsonl", "path": d.distractor_path, "max_articles": d.distractor_articles})


def stage_distractors(
    d: DataConfig, stage: Path, bank_digests: np.ndarray, d_vec: int, dtype, progress: bool = True
) -> dict[str, Any]:
    """Chunk, filter and embed `d.distractor_path` into `stage` (the DISTRACTOR_FILES); -> counts for summary.json.

    bank_digests (M, 2) uint64: `text_digests` of every chunk of the run's bank; a distractor chunk with
    one of them is dropped. Raises DataError when no chunk is left or the vectors' width differs from d_vec."""
    in_bank = set(map(tuple, np.asarray(bank_digests).tolist()))
    keys: list[tuple[int, int]] = []
    digests: list[np.ndarray] = []
    read = empty = chunks_read = dropped = 0
    stats = ChunkStats()
    texts_path = stage / "distractor_texts.jsonl"
    bar = progress_bar(desc="chunking distractors", unit="article", enabled=progress)
    with atomic_path(texts_path) as tmp, open(tmp, "w", encoding="utf-8") as out:
        for a, (_title, chunks) in enumerate(iter_chunked_cached(distractor_source(d), cache_root(d), stats)):
            bar.update(1)
            read += 1
            if not chunks:
                empty += 1
                continue
            dg = text_digests(chunks)  # (c, 2)
            chunks_read += len(chunks)
            for p, (text, g) in enumerate(zip(chunks, dg)):
                if tuple(g.tolist()) in in_bank:  # the same text is a target, a context or a rival already
                    dropped += 1
                    continue
                keys.append((a, p))
                digests.append(g)
                out.write(json.dumps(text, ensure_ascii=False) + "\n")
    bar.close()
    if not keys:
        raise DataError(
            f"{d.distractor_path} (data.distractor_path): no distractor chunk ({read} articles read, {empty} "
            f"without a chunk, {dropped} chunks dropped because their text is in the run's bank)"
        )
    embed = embed_bank(d, np.stack(digests), texts_path, stage / "distractor_vectors.npy", dtype, progress)
    if embed["d_vec"] != d_vec:  # pragma: no cover - one encoder and one cache give one width
        raise DataError(f"{d.distractor_path}: distractor vectors have width {embed['d_vec']}, the bank {d_vec}")
    atomic_save_npy(stage / "distractor_keys.npy", np.asarray(keys, np.int64))
    return {
        "path": d.distractor_path,
        "max_articles": d.distractor_articles,
        "articles_read": read,
        "articles_empty": empty,
        "chunks_read": chunks_read,
        "dropped_in_bank": dropped,
        "chunks": len(keys),
        "encoder": d.encoder,
        "encoder_backend": embed["encoder_backend"],
        "encoded": embed["encoded"],
        "cache_hits": embed["cache_hits"],
        "encode_seconds": embed["encode_seconds"],
    }


def load_distractors(data_dir: str | Path) -> np.ndarray | None:
    """(S, D) memmap of `data_dir/distractor_vectors.npy`, or None when the data stage wrote none."""
    path = Path(data_dir) / "distractor_vectors.npy"
    return np.load(path, mmap_mode="r") if path.is_file() else None


def distractor_order(n_rows: int, seed: int) -> np.ndarray:
    """(S,) the order distractors join the bank: size s takes the first s rows of it (nested subsets)."""
    return np.random.default_rng(seed).permutation(n_rows)


def curve_bank(bank_vectors: np.ndarray, held: np.ndarray, dist: np.ndarray, order: np.ndarray) -> np.ndarray:
    """(H + S', D) float32: the held-out rows `held` (H,) of the run's bank, then the distractors `order` (S',)
    in the order they join, so a bank of s distractors is a prefix of it."""
    srt = np.sort(order)  # memmap rows read in file order, then put in join order
    return np.concatenate(
        [
            np.asarray(bank_vectors[held], np.float32),
            np.asarray(dist[srt], np.float32)[np.searchsorted(srt, order)],
        ]
    )  # (H + S', D)


def held_rows(held: np.ndarray, rows: np.ndarray, what: str) -> np.ndarray:
    """Run-bank rows (any shape) -> their positions in `held` (sorted); SanityError when one is not held out."""
    idx = np.searchsorted(held, rows)
    if (idx >= len(held)).any() or (held[np.minimum(idx, len(held) - 1)] != rows).any():
        raise SanityError(f"bank curve: a query's {what} row is not a chunk of the eval split")
    return idx
