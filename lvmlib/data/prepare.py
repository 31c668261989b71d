"""Chunks -> vectors -> article splits -> windows, with a leakage audit; the `data/` files of a run.

Shapes: M bank rows (every chunk of every split), D vector width, K context length, N windows.
Pipeline of `prepare_data` (all files land in a staging directory first and are moved into
`run_dir/data/` only after the audit passed, `summary.json` last, so a failure leaves nothing
half-written):

1. corpus -> ordered chunks (`lvmlib.data.corpus`), or the pre-embedded `vectors` npz;
2. split **articles** (seeded, stratified so every split gets articles long enough for a window);
3. drop chunk texts shared across splits (`dedup`), keeping the copy in the earliest split;
4. vectors from the content-addressed embedding cache, encoding only what is missing;
5. windows stride 1 inside each article: K consecutive positions -> the next one;
6. leakage audit (`lvmlib.data.splits`, with steps 2-5), trivial-predictor cosines (`lvmlib.data.baselines`),
   summary. The seed's payload format is an explicit export (`python -m lvmlib export`, `lvmlib.data.payload`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lvmlib.core.config import SPLITS, Config, DataConfig, reserved_range
from lvmlib.core.errors import DataError
from lvmlib.core.runs import (
    atomic_path,
    atomic_save_npy,
    atomic_save_npz,
    atomic_write_json,
    check_files,
    pid_alive,
    progress_bar,
    publish_recorded,
)
from lvmlib.data.baselines import copy_last_retrieval, pair_cosines, trivial_predictors
from lvmlib.data.corpus import ChunkStats, iter_chunked_cached, source_file
from lvmlib.data.distractors import DISTRACTOR_FILES, stage_distractors
from lvmlib.data.encoder import cache_root, embed_bank, text_digests
from lvmlib.data.splits import (
    audit_leakage,
    build_windows,
    dedup_across_splits,
    limit_train_articles,
    split_articles,
)

__all__ = [
    "prepare_data",
    "load_prepared",
    "Prepared",
    "publish_dir",
    "chunk_word_counts",
]
DATA_FILES = (
    "bank_vectors.npy",
    "bank_keys.npy",
    "bank_split.npy",
    "bank_texts.jsonl",
    "articles.json",
    "windows.npz",
    "summary.json",
)


# --------------------------------------------------------------------------- sources -> staged bank
@dataclass
class _Staged:
    """What the corpus pass collects: small per-row arrays; texts stay on disk."""

    keys: np.ndarray  # (M, 2) int64 article_id, position
    digests: np.ndarray  # (M, 2) uint64 content address (text, or vector bytes for the vectors source)
    titles: list[str]
    n_chunks: np.ndarray  # (A,)
    texts_path: Path  # jsonl, one JSON string per row
    vectors: np.ndarray | None = None  # (M, D) for the vectors source
    counts: dict[str, int] = field(default_factory=dict)
    source_ids: list[int] | None = None  # vectors source: the file's article ids (ours are 0..A-1)
    n_extra: int = 0  # the n_extra articles after the main corpus's come from data.extra_train_path: train only
    n_test: int = 0  # the last n_test articles come from data.test_path: the test split, replacing the main's


def _stage_text(cfg: DataConfig, stage: Path, progress: bool) -> _Staged:
    """The main corpus, then `data.extra_train_path`'s articles (train only: `_Staged.n_extra` of them),
    then `data.test_path`'s articles [test_first, test_first + test_articles) (the test split: `n_test`)."""
    keys, digests, titles, n_chunks = [], [], [], []
    empty = 0
    texts_path = stage / "all_texts.jsonl"
    bar = progress_bar(desc="chunking articles", unit="article", enabled=progress)

    def on_piece(done: int, total: int) -> None:  # an over-long paragraph: show progress inside it
        bar.set_postfix_str(f"long paragraph: piece {done}/{total}", refresh=False)
        bar.update(0)

    stats = ChunkStats(on_piece=on_piece)
    sources, skip = [(cfg, "")], {}
    if cfg.extra_train_path:
        extra = {"source": "jsonl", "path": cfg.extra_train_path, "max_articles": cfg.extra_train_articles}
        sources.append((cfg.model_copy(update=extra), " (data.extra_train_path)"))
    if cfg.test_path:
        last = cfg.test_first + cfg.test_articles if cfg.test_articles else 0
        sources.append(
            (cfg.model_copy(update={"source": "jsonl", "path": cfg.test_path, "max_articles": last}), "test")
        )
        skip[len(sources) - 1] = cfg.test_first
    n_main = n_extra = 0
    with open(texts_path, "w", encoding="utf-8") as out:
        for i, (src, role) in enumerate(sources):
            before = len(titles)
            for j, (title, chunks) in enumerate(iter_chunked_cached(src, cache_root(cfg), stats)):
                if j < skip.get(i, 0):  # data.test_first: articles before the test range are not read into the run
                    continue
                bar.update(1)
                if not chunks:
                    empty += 1
                    continue
                a = len(titles)
                titles.append(title)
                n_chunks.append(len(chunks))
                keys.append(np.stack([np.full(len(chunks), a), np.arange(len(chunks))], axis=1))
                digests.append(text_digests(chunks))
                for c in chunks:
                    out.write(json.dumps(c, ensure_ascii=False) + "\n")
            if len(titles) == before:
                bar.close()
                where = src.path or src.source
                key = " (data.test_path, data.test_first, data.test_articles)" if role == "test" else role
                raise DataError(
                    f"{where}{key}: empty corpus — no article produced a chunk "
                    f"({empty} articles read, data.min_words={cfg.min_words})"
                )
            if i == 0:
                n_main = len(titles)
            elif role != "test":
                n_extra = len(titles) - n_main
    bar.close()
    n_test = len(titles) - n_main - n_extra
    return _Staged(
        np.concatenate(keys).astype(np.int64),
        np.concatenate(digests),
        titles,
        np.asarray(n_chunks),
        texts_path,
        counts={
            "articles_read": len(titles) + empty,
            "articles_empty": empty,
            "extra_train_articles": n_extra,
            "test_path_articles": n_test,
            "paragraphs_cut": stats.long_paragraphs,
            "paragraphs_cut_chars": stats.long_paragraph_chars,
        },
        n_extra=n_extra,
        n_test=n_test,
    )


def _stage_vectors(cfg: DataConfig, stage: Path) -> _Staged:
    """The `vectors` source: an .npz with vectors [M,D], article_ids [M], positions [M], optional texts."""
    path = source_file(cfg)
    try:
        npz = np.load(path, allow_pickle=False)
        arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{path}: not a readable .npz ({type(exc).__name__}: {exc})") from None
    for k in ("vectors", "article_ids", "positions"):
        if k not in arrays:
            raise DataError(
                f"{path}: missing key '{k}' (has {sorted(arrays)}); needs vectors [M,D], "
                "article_ids [M], positions [M], optional texts [M]"
            )
    vec = arrays["vectors"]
    if vec.ndim != 2 or vec.shape[0] == 0 or vec.shape[1] == 0:
        raise DataError(f"{path}: key 'vectors' must have shape [M, D] with M, D > 0, got {list(vec.shape)}")
    M = vec.shape[0]
    for k in ("article_ids", "positions", "texts"):
        if k in arrays and arrays[k].shape != (M,):
            raise DataError(f"{path}: key '{k}' must have shape [{M}] (one per vector), got {list(arrays[k].shape)}")
    for k in ("article_ids", "positions"):
        if not np.issubdtype(arrays[k].dtype, np.integer):
            raise DataError(f"{path}: key '{k}' must be integers, got dtype {arrays[k].dtype}")
    vec = vec.astype(np.float32)
    bad = ~np.isfinite(vec).all(axis=1)
    if bad.any():
        raise DataError(
            f"{path}: key 'vectors' has {int(bad.sum())} rows with NaN/inf (first row {int(np.argmax(bad))})"
        )
    norms = np.linalg.norm(vec, axis=1)
    if (norms == 0).any():
        raise DataError(
            f"{path}: key 'vectors' has {int((norms == 0).sum())} all-zero rows (first row {int(np.argmax(norms == 0))})"
        )
    aid, pos = arrays["article_ids"].astype(np.int64), arrays["positions"].astype(np.int64)
    order = np.lexsort((pos, aid))
    aid, pos, vec = aid[order], pos[order], vec[order] / norms[order, None]
    dup = (aid[1:] == aid[:-1]) & (pos[1:] == pos[:-1])
    if dup.any():
        i = int(np.argmax(dup))
        raise DataError(f"{path}: (article_id, position) = ({aid[i]}, {pos[i]}) appears more than once")
    uniq = np.unique(aid)
    if cfg.max_articles:  # the first N article ids in file order
        ids, first_row = np.unique(arrays["article_ids"].astype(np.int64), return_index=True)
        keep_ids = ids[np.argsort(first_row)][: cfg.max_articles]
        m = np.isin(aid, keep_ids)
        aid, pos, vec, order = aid[m], pos[m], vec[m], order[m]
        uniq = np.unique(aid)
    texts = arrays["texts"][order].astype(str).tolist() if "texts" in arrays else [""] * len(aid)
    texts_path = stage / "all_texts.jsonl"
    with open(texts_path, "w", encoding="utf-8") as out:
        for t in texts:
            out.write(json.dumps(t, ensure_ascii=False) + "\n")
    digests = (
        text_digests(texts)
        if "texts" in arrays
        else np.stack([np.frombuffer(hashlib.blake2b(v.tobytes(), digest_size=16).digest(), np.uint64) for v in vec])
    )
    # article ids are renumbered 0..A-1 in sorted order; articles.json keeps the file's id as source_id
    a_index = np.searchsorted(uniq, aid)
    n_chunks = np.bincount(a_index, minlength=len(uniq))
    return _Staged(
        np.stack([a_index, pos], axis=1).astype(np.int64),
        digests,
        [f"article {int(u)}" for u in uniq],
        n_chunks,
        texts_path,
        vectors=vec,
        counts={"articles_read": len(uniq), "articles_empty": 0},
        source_ids=uniq.tolist(),
    )


# --------------------------------------------------------------------------- the stage
class _Steps:
    """Wall seconds of each data-stage step: `done(name)` closes the step that started at the last call."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._t = time.time()

    def done(self, name: str) -> None:
        now = time.time()
        self.seconds[name] = round(now - self._t, 2)
        self._t = now


def prepare_data(cfg: Config, run_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    """Write every `data/` file of the run (see docs/DESIGN.md) and return the summary.

    Raises DataError (CorpusError, LeakageError) with the file/line/key at fault; on any failure
    `data/` is left as it was."""
    run_dir = Path(run_dir)
    remove_stale_staging(run_dir)
    stage = run_dir / f".data-staging-{os.getpid()}-{os.urandom(3).hex()}"
    stage.mkdir(parents=True)
    try:
        summary = _prepare(cfg, stage, progress)
        publish_dir(stage, run_dir / "data")
    finally:
        shutil.rmtree(stage, ignore_errors=True)  # after a publish: the previous data/, swapped out
    return summary


def remove_stale_staging(run_dir: str | Path) -> int:
    """Remove the staging and swapped-out `data/` folders a data stage left when its process was killed
    (its pid is gone): before a new data stage, and when the runner marks a run failed or interrupted.
    A live process's folders are never touched. -> how many were removed."""
    n = 0
    for old in [*Path(run_dir).glob(".data-staging-*"), *Path(run_dir).glob(".data-old-*")]:
        pid = int(old.name.split("-")[2]) if old.name.split("-")[2].isdigit() else 0
        if pid and not pid_alive(pid):
            shutil.rmtree(old, ignore_errors=True)
            n += 1
    return n


_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two directories (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    AT_FDCWD = -100
    if fn(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: the filesystem or kernel cannot exchange
        return False
    raise OSError(err, os.strerror(err), str(b))


def publish_dir(stage: Path, out: Path) -> None:
    """Make the complete directory `stage` become `out` in one atomic rename: a reader sees the old
    data/ or the new one, never a mix. An empty or missing `out` is replaced by rename(2) itself; a
    full one is swapped with renameat2(RENAME_EXCHANGE) (the old files end up in `stage`, removed by
    the caller). Where exchange is unsupported, the old data/ is first moved aside: a reader in that
    instant finds no data/ (refused as missing), still never a mix."""
    for p in stage.iterdir():  # the staging dir holds exactly the published files
        if p.name not in DATA_FILES + DISTRACTOR_FILES:
            p.unlink() if p.is_file() else shutil.rmtree(p)
    # in a run dir, the files' digests are recorded (and data/'s older records dropped) with the swap
    files = {out / p.name: p for p in stage.iterdir()}
    publish_recorded(files, lambda: _swap(stage, out), drop_prefix=f"{out.name}/")


def _swap(stage: Path, out: Path) -> None:
    try:
        os.replace(stage, out)  # atomic; works when out is missing or an empty directory
        return
    except OSError as exc:
        if exc.errno not in (39, 17):  # ENOTEMPTY, EEXIST: an earlier data/ to swap out
            raise
    if _exchange(stage, out):
        return
    aside = out.with_name(f".data-old-{os.getpid()}-{os.urandom(3).hex()}")
    os.replace(out, aside)
    os.replace(stage, out)
    os.replace(aside, stage)


def _prepare(cfg: Config, stage: Path, progress: bool) -> dict[str, Any]:
    d, K = cfg.data, cfg.data.context_len
    t0 = time.time()
    steps = _Steps()  # seconds of each step, in summary.json (benchmarks/bench_data.py prints them)
    staged = _stage_vectors(d, stage) if d.source == "vectors" else _stage_text(d, stage, progress)
    steps.done("corpus")  # read + sentence-split + chunk (or the chunk cache) + text digests
    n_extra, n_test = staged.n_extra, staged.n_test
    n_main = len(staged.titles) - n_extra - n_test
    # the main corpus is split exactly as without extra articles; those are all train; test_path's are test
    main_split = split_articles(staged.n_chunks[:n_main], d)
    art_split = np.concatenate([main_split, np.zeros(n_extra, np.int8), np.full(n_test, 2, np.int8)])
    origin = np.repeat(np.array([0, 1, 2], np.int8), [n_main, n_extra, n_test])  # main | extra | test_path
    art_keep = np.ones(len(art_split), bool)
    if n_test:  # data.test_path replaces the main corpus's test articles: they leave the run entirely
        art_keep[:n_main] = main_split != 2
    row_split = art_split[staged.keys[:, 0]]
    extra_row = origin[staged.keys[:, 0]] == 1
    # a text the main corpus has (in any split) is dropped from the extra articles, never from val/test
    keep = (
        dedup_across_splits(staged.digests, np.where(extra_row, 3, row_split).astype(np.int8))
        if d.dedup
        else np.ones(len(row_split), bool)
    )
    keep &= art_keep[staged.keys[:, 0]]
    keys, digests, split = staged.keys[keep], staged.digests[keep], row_split[keep]
    new_id = np.cumsum(art_keep) - 1  # article ids stay contiguous after the replaced articles left
    keys = np.column_stack([new_id[keys[:, 0]], keys[:, 1]])
    titles = [t for t, k in zip(staged.titles, art_keep) if k]
    art_split, origin = art_split[art_keep], origin[art_keep]
    steps.done("split_dedup")
    n_chunks = np.bincount(keys[:, 0], minlength=len(titles))
    ctx, tgt, wsplit = build_windows(keys, split, K)
    ctx, tgt, wsplit = limit_train_articles(ctx, tgt, wsplit, keys, d)
    steps.done("windows")
    if len(tgt) == 0:
        raise DataError(
            f"{d.path or d.source}: no article reaches K+1 = {K + 1} chunks (data.context_len={K}; "
            f"the longest of {len(n_chunks)} articles has {int(n_chunks.max())})"
        )
    for s, name in enumerate(SPLITS):
        if not (wsplit == s).any():
            dropped = int(((row_split == s) & ~keep).sum())
            if dropped:  # the split's chunks repeat text of an earlier split: a corpus of copies
                raise DataError(
                    f"{d.path or d.source}: split '{name}' has no window of K+1 = {K + 1} chunks because "
                    f"{dropped} of its {int((row_split == s).sum())} chunks duplicate text of an earlier "
                    f"split and were removed (data.dedup; {int((~keep).sum())} duplicates removed in "
                    "all); the corpus repeats articles — remove the copies or add distinct articles"
                )
            raise DataError(
                f"{d.path or d.source}: split '{name}' has no window of K+1 = {K + 1} chunks "
                f"({int((n_chunks >= K + 1).sum())} articles are long enough); use more articles"
            )
    with (
        atomic_path(stage / "bank_texts.jsonl") as tmp,
        open(tmp, "w", encoding="utf-8") as out,
        open(staged.texts_path, encoding="utf-8") as src,
    ):
        for line, k in zip(src, keep):
            if k:
                out.write(line)
    staged.texts_path.unlink()
    steps.done("write_texts")
    dtype = np.float16 if d.store_float16 else np.float32
    if staged.vectors is not None:
        atomic_save_npy(stage / "bank_vectors.npy", staged.vectors[keep].astype(dtype))
        embed = {"encoded": 0, "cache_hits": 0, "d_vec": staged.vectors.shape[1], "chunks_per_s": None}
    else:
        embed = embed_bank(d, digests, stage / "bank_texts.jsonl", stage / "bank_vectors.npy", dtype, progress)
    steps.done("embedding")
    atomic_save_npy(stage / "bank_keys.npy", keys)
    atomic_save_npy(stage / "bank_split.npy", split.astype(np.int8))
    per_art_windows = np.bincount(keys[tgt, 0], minlength=len(titles))
    articles = [
        {
            "article_id": a,
            "title": titles[a],
            "split": SPLITS[art_split[a]],
            "n_chunks": int(n_chunks[a]),
            "n_windows": int(per_art_windows[a]),
        }
        for a in range(len(titles))
    ]
    for rec, o in zip(articles, origin):
        if o == 1:
            rec["extra_train"] = True
    for j, rec in enumerate(a for a, o in zip(articles, origin) if o == 2):
        rec["test_path_index"] = d.test_first + j  # the article's index in data.test_path
    if staged.source_ids is not None:
        for rec, sid in zip(articles, staged.source_ids):
            rec["source_id"] = int(sid)
    atomic_write_json(stage / "articles.json", articles)
    atomic_save_npz(stage / "windows.npz", context_idx=ctx, target_idx=tgt, split=wsplit)
    D = int(np.load(stage / "bank_vectors.npy", mmap_mode="r").shape[1])
    steps.done("write_arrays")
    distract = stage_distractors(d, stage, digests, D, dtype, progress) if d.distractor_path else None
    if distract:  # bank-only chunks for the bank-size curve (lvmlib.data.distractors)
        steps.done("distractors")
    audit = audit_leakage(stage, require_no_shared_text=d.dedup)
    steps.done("audit")
    prep = Prepared(stage, _staging=True)
    words = chunk_word_counts(prep)
    pairs = pair_cosines(prep, n=5000, seed=d.split_seed)
    trivial = trivial_predictors(prep)
    copy_last = {s: copy_last_retrieval(prep, s, seed=d.split_seed) for s in ("val", "test")}
    steps.done("statistics")
    counts = {
        **staged.counts,
        "articles": len(titles),
        "main_test_articles_replaced": int((~art_keep).sum()),
        "articles_short": int((n_chunks < K + 1).sum()),
        "chunks": int(len(keys)),
        "windows": int(len(tgt)),
        "train_articles_used": int(len(np.unique(keys[tgt[wsplit == 0], 0]))),
        "duplicates_removed": int((~keep).sum()),
        "per_split": {
            name: {
                "articles": int((art_split == s).sum()),
                "chunks": int((split == s).sum()),
                "windows": int((wsplit == s).sum()),
            }
            for s, name in enumerate(SPLITS)
        },
    }
    summary = {
        "source": d.source,
        "path": d.path,
        "extra_train_path": d.extra_train_path or None,
        "test_path": (
            {"path": d.test_path, "first": d.test_first, "articles": n_test, "reserved": reserved_range(d.test_path)}
            if d.test_path
            else None
        ),
        "encoder": d.encoder,
        "encoder_max_length": d.encoder_max_length,
        "encoder_backend": embed.get("encoder_backend"),
        "chunking": d.chunking,
        "min_words": d.min_words,
        "max_words": d.max_words,
        "context_len": K,
        "d_vec": int(D),
        "dtype": np.dtype(dtype).name,
        "counts": counts,
        "chunk_words": {
            "mean": float(words.mean()),
            "median": float(np.median(words)),
            "p5": float(np.percentile(words, 5)),
            "p95": float(np.percentile(words, 95)),
            "min": int(words.min()),
            "max": int(words.max()),
        },
        "audit": audit,
        "trivial": trivial,
        "copy_last_retrieval": copy_last,
        "adjacent_cosine": float(pairs["adjacent"].mean()),
        "random_pair_cosine": float(pairs["random"].mean()),
        "embedding": embed,
        **({"distractors": distract} if distract else {}),
        "seconds": {**steps.seconds, "total": round(time.time() - t0, 2)},
    }
    atomic_write_json(stage / "summary.json", summary)
    return summary


# --------------------------------------------------------------------------- reading a prepared run
class Prepared:
    """The `data/` files of a run, memory-mapped. Rows index the bank; windows index rows."""

    def __init__(self, data_dir: str | Path, _staging: bool = False):
        self.dir = Path(data_dir)
        for name in DATA_FILES:
            if _staging and name == "summary.json":
                continue
            if not (self.dir / name).is_file():
                raise DataError(
                    f"{self.dir / name}: missing — run the data stage first "
                    f"(notebooks/01_data.ipynb or lvmlib.data.prepare.prepare_data)"
                )
        if not _staging:  # inside a run: each file as the data stage wrote it (IntegrityError names one that is not)
            check_files([self.dir / name for name in DATA_FILES])
        with self._reading("bank_vectors.npy"):
            self.bank_vectors = np.load(self.dir / "bank_vectors.npy", mmap_mode="r")  # (M, D)
        with self._reading("bank_keys.npy"):
            self.bank_keys = np.load(self.dir / "bank_keys.npy")  # (M, 2) article_id, position
        with self._reading("bank_split.npy"):
            self.bank_split = np.load(self.dir / "bank_split.npy")  # (M,) 0 train 1 val 2 test
        with self._reading("articles.json"):
            self.articles: list[dict[str, Any]] = json.loads((self.dir / "articles.json").read_text())
        with self._reading("windows.npz"), np.load(self.dir / "windows.npz") as w:
            self._ctx, self._tgt, self._wsplit = w["context_idx"], w["target_idx"], w["split"]
        self.d_vec = int(self.bank_vectors.shape[1])
        self.context_len = int(self._ctx.shape[1])
        self._offsets: np.ndarray | None = None

    @contextlib.contextmanager
    def _reading(self, name: str) -> Iterator[None]:
        """A file that cannot be parsed (a run made before digests, or none recorded): one DataError line naming
        it, not numpy's or json's own message."""
        try:
            yield
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
            if isinstance(exc, DataError):
                raise
            raise DataError(
                f"{self.dir / name}: unreadable (corrupted, truncated or overwritten: {type(exc).__name__}); "
                f"re-run the data stage: python -m lvmlib run --resume {self.dir.parent} --only 01_data"
            ) from None

    @property
    def summary(self) -> dict[str, Any]:
        return json.loads((self.dir / "summary.json").read_text())

    def __len__(self) -> int:
        return len(self.bank_keys)

    def windows(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """-> context_idx (n, K), target_idx (n,) bank rows of one split ('train' | 'val' | 'test')."""
        if split not in SPLITS:
            raise DataError(f"split {split!r}: must be one of {SPLITS}")
        m = self._wsplit == SPLITS.index(split)
        return self._ctx[m], self._tgt[m]

    def contexts(self, context_idx: np.ndarray) -> np.ndarray:
        """(n, K) rows -> (n, K, D) float32."""
        return np.asarray(self.bank_vectors[np.asarray(context_idx)], dtype=np.float32)

    def targets(self, target_idx: np.ndarray) -> np.ndarray:
        """(n,) rows -> (n, D) float32."""
        return np.asarray(self.bank_vectors[np.asarray(target_idx)], dtype=np.float32)

    def texts(self, rows) -> list[str]:
        """Chunk texts of bank rows (random access through a line-offset index)."""
        path = self.dir / "bank_texts.jsonl"
        if self._offsets is None:
            offs = [0]
            with open(path, "rb") as fh:
                for line in fh:
                    offs.append(offs[-1] + len(line))
            self._offsets = np.asarray(offs, dtype=np.int64)
        out = []
        with open(path, "rb") as fh:
            for r in np.atleast_1d(np.asarray(rows, dtype=np.int64)):
                fh.seek(self._offsets[r])
                out.append(json.loads(fh.readline()))
        return out


def load_prepared(run_dir: str | Path) -> Prepared:
    """The data stage's output of a run; DataError naming the missing file if the stage did not run."""
    return Prepared(Path(run_dir) / "data")


def chunk_word_counts(prep: Prepared) -> np.ndarray:
    """(M,) words per chunk (zeros for a vectors source without texts)."""
    with open(prep.dir / "bank_texts.jsonl", encoding="utf-8") as fh:
        return np.fromiter((len(json.loads(line).split()) for line in fh), dtype=np.int64, count=len(prep))
