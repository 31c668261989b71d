"""Retrieval metrics on hand-built cases, the fast ranker against its per-query specification, faiss
against torch search, chunking, duplicates, and the article-level bootstrap."""

import numpy as np
import pytest
import torch

from lvmlib import metrics as mt
from lvmlib.core.errors import BackendError

needs_faiss = pytest.mark.skipif(not mt.faiss_available(), reason="faiss not installed")


def unit(*rows):
    return mt.l2_normalize(np.asarray(rows, np.float32))


# 2-D bank: angles 0, 30, 60, 90, 120 degrees (rows 0..4)
ANG = np.deg2rad([0, 30, 60, 90, 120])
BANK = unit(*[(np.cos(a), np.sin(a)) for a in ANG])


def test_ranks_on_a_hand_built_bank():
    q = unit((1, 0), (1, 0), (0, 1))  # scores vs rows: cos(angle)
    r = mt.target_ranks(q, BANK, np.array([0, 2, 4]))["global"]
    # query 0 -> row 0 is the best; query 1 -> rows 0 and 1 beat row 2; query 2 (90°) -> 3 (90°) beats,
    # rows 2 (60°) and 4 (120°) tie at cos 30°: the tie counts against the model
    assert r.included.tolist() == [1, 3, 3]
    assert r.size_included.tolist() == [5, 5, 5]


def test_ties_count_against_the_model():
    zero = np.zeros((1, 2), np.float32)  # a constant/zero prediction scores 0 everywhere
    r = mt.target_ranks(zero, BANK, np.array([2]))["global"]
    assert r.included.tolist() == [5]  # last, never first
    assert mt.target_ranks_ref(zero, BANK, np.array([2]))["global"].included.tolist() == [5]


def test_nan_queries_are_refused():
    q = unit((1, 0))
    q[0, 0] = np.nan
    with pytest.raises(ValueError, match="not finite"):
        mt.target_ranks(q, BANK, np.array([0]))


def test_excluding_the_context_rows():
    # copy-last: the query is the last context row (row 1, 30°), target row 2 (60°)
    q = BANK[[1]]
    ctx = np.array([[0, 1]])
    r = mt.target_ranks(q, BANK, np.array([2]), exclude_rows=ctx)["global"]
    assert r.included.tolist() == [3]  # its own input (row 1) outranks the target, row 0 (cos 30°) ties
    assert r.excluded.tolist() == [1]  # ... and both leave with the context
    assert r.size_excluded.tolist() == [3]


def test_duplicates_of_the_target_are_the_target_and_context_duplicates_are_excluded():
    bank = np.concatenate([BANK, BANK[[2, 1]]])  # row 5 = copy of row 2 (target), row 6 = copy of row 1
    groups = mt.duplicate_groups(bank)
    assert groups.tolist() == [0, 1, 2, 3, 4, 2, 1]
    q = bank[[2]]  # oracle for target 2
    r = mt.target_ranks(q, bank, np.array([2]), groups=groups)["global"]
    assert r.included.tolist() == [1]
    r = mt.target_ranks(q, bank, np.array([5]), groups=groups)["global"]
    assert r.included.tolist() == [1]
    # without groups the duplicate ties with the target and counts against it
    assert mt.target_ranks(q, bank, np.array([2]))["global"].included.tolist() == [2]
    # copy-last with a duplicated last context row: both copies leave the bank
    r = mt.target_ranks(bank[[1]], bank, np.array([2]), exclude_rows=np.array([[0, 1]]), groups=groups)["global"]
    assert r.included.tolist() == [4]  # rows 1 and 6 (score 1) beat the target, row 0 ties with it
    assert r.excluded.tolist() == [1]
    assert r.size_excluded.tolist() == [7 - 3]


def test_a_context_row_identical_to_the_target_is_not_excluded():
    bank = np.concatenate([BANK, BANK[[3]]])  # row 5 = copy of row 3
    groups = mt.duplicate_groups(bank)
    r = mt.target_ranks(bank[[3]], bank, np.array([3]), exclude_rows=np.array([[5]]), groups=groups)["global"]
    assert r.excluded.tolist() == [1] and r.size_excluded.tolist() == [6]


def test_duplicate_groups_float16_and_many_sets():
    rng = np.random.default_rng(0)
    bank = rng.normal(size=(50, 7)).astype(np.float16)
    bank[10] = bank[3]
    bank[20] = bank[3]
    bank[41] = bank[40]
    g = mt.duplicate_groups(bank, chunk=8)
    expect = np.arange(50)
    expect[[10, 20]] = 3
    expect[41] = 40
    assert g.tolist() == expect.tolist()


def test_duplicate_groups_terminates_on_nan_rows():
    # A diverged model's predictions can be all-NaN; NaN != NaN as floats, so a float comparison would
    # never empty the bucket. Rows are grouped by their bits instead.
    bank = np.full((4, 3), np.nan, np.float32)
    bank[2] = [1.0, 2.0, 3.0]
    assert mt.duplicate_groups(bank).tolist() == [0, 0, 2, 0]


def test_label_banks_and_targets_outside_their_bank():
    art = np.array([0, 0, 0, 1, 1])
    q = unit((0, 1))
    r = mt.target_ranks(q, BANK, np.array([4]), banks={"same_article": (art, np.array([1]))})["same_article"]
    assert r.included.tolist() == [2] and r.size_included.tolist() == [2]  # only rows 3 and 4; row 3 wins
    with pytest.raises(ValueError, match="not in its bank"):
        mt.target_ranks(q, BANK, np.array([4]), banks={"same_article": (art, np.array([0]))})


def _random_case(seed, M=700, D=12, n=90, K=5, n_art=25):
    rng = np.random.default_rng(seed)
    bank = mt.l2_normalize(rng.normal(size=(M, D)))
    bank[[10, 11]] = bank[200]
    bank[300] = bank[301]
    art = np.sort(rng.integers(0, n_art, M))
    split = (art % 3).astype(np.int64)
    tgt = rng.choice(np.arange(K, M), n, replace=False)
    tgt[:3] = [200, 301, 11]
    ctx = tgt[:, None] - K + np.arange(K)
    q = rng.normal(size=(n, D)).astype(np.float32)
    q[3:8] = bank[tgt[3:8]]  # oracles
    q[8:12] = bank[ctx[8:12, -1]]  # copy-last
    banks = {"global": None, "test": (split, split[tgt]), "same_article": (art, art[tgt])}
    return q, bank, tgt, ctx, mt.duplicate_groups(bank), banks


@pytest.mark.parametrize("chunk", [700, 64, 7])
@pytest.mark.parametrize("seed", [0, 1])
def test_fast_ranks_equal_the_reference_loop_for_any_chunking(chunk, seed):
    q, bank, tgt, ctx, groups, banks = _random_case(seed)
    fast = mt.target_ranks(q, bank, tgt, banks=banks, exclude_rows=ctx, groups=groups, chunk=chunk)
    ref = mt.target_ranks_ref(q, bank, tgt, banks=banks, exclude_rows=ctx, groups=groups)
    for b in banks:
        for f in ("excluded", "included", "size_excluded", "size_included"):
            assert getattr(fast[b], f).tolist() == getattr(ref[b], f).tolist(), (b, f)
    assert (fast["global"].excluded[3:8] == 1).all()


def test_small_query_blocks_equal_one_block(monkeypatch):
    q, bank, tgt, ctx, groups, banks = _random_case(2)
    one = mt.target_ranks(q, bank, tgt, banks=banks, exclude_rows=ctx, groups=groups)
    monkeypatch.setattr(mt, "BLOCK_ELEMS", 700 * 13)  # 13 queries per block
    many = mt.target_ranks(q, bank, tgt, banks=banks, exclude_rows=ctx, groups=groups)
    for b in banks:
        assert one[b].excluded.tolist() == many[b].excluded.tolist()


def test_oracle_reaches_recall_at_1_in_every_bank_despite_duplicates():
    _, bank, tgt, ctx, groups, banks = _random_case(3)
    r = mt.target_ranks(bank[tgt], bank, tgt, banks=banks, exclude_rows=ctx, groups=groups)
    for b in banks:
        assert mt.recall_at_k(r[b].excluded, 1) == 1.0 and mt.recall_at_k(r[b].included, 1) == 1.0


@pytest.mark.parametrize("backend", ["torch", pytest.param("faiss", marks=needs_faiss)])
def test_chunked_search_equals_unchunked(backend):
    q, bank, *_ = _random_case(4)
    s1, i1 = mt.exact_search(q, bank, 20, backend=backend, chunk=10**6)
    s2, i2 = mt.exact_search(q, bank, 20, backend=backend, chunk=33)
    np.testing.assert_allclose(s1, s2, atol=1e-6)
    assert (i1 == i2).all()
    full = q @ bank.T
    np.testing.assert_allclose(s1, -np.sort(-full, axis=1)[:, :20], atol=1e-5)


@needs_faiss
def test_faiss_and_torch_give_identical_lists_and_ranks():
    q, bank, tgt, ctx, groups, _ = _random_case(5, M=3000, D=32, n=200)
    bank[[10, 11, 300]] = mt.l2_normalize(np.random.default_rng(9).normal(size=(3, 32)))  # no exact ties here
    groups = mt.duplicate_groups(bank)
    _, i_f = mt.exact_search(q, bank, 60, backend="faiss", chunk=1000)
    _, i_t = mt.exact_search(q, bank, 60, backend="torch", chunk=512)
    assert (i_f == i_t).all()
    r_f = mt.rank_in_list(i_f, tgt, groups, ctx)
    r_t = mt.rank_in_list(i_t, tgt, groups, ctx)
    assert r_f.tolist() == r_t.tolist()
    counted = mt.target_ranks(q, bank, tgt, exclude_rows=ctx, groups=groups)["global"].excluded
    inside = counted <= 50
    assert inside.sum() > 5
    assert (r_f[inside] == counted[inside]).all()


def test_rank_in_list_skips_excluded_and_finds_duplicates():
    groups = np.array([0, 1, 2, 3, 1])
    rows = np.array([[4, 1, 3, 2], [0, 3, 2, 1], [0, 1, 3, 3]])
    r = mt.rank_in_list(rows, np.array([2, 1, 2]), groups, exclude_rows=np.array([[1], [0], [3]]))
    # q0: rows 4 and 1 are group 1 (excluded) -> 3 is rival 1, 2 is rank 2; q1: 0 excluded, 3 rival, 2 rival,
    # 1 is the target -> 3; q2: target absent -> 0
    assert r.tolist() == [2, 3, 0]


def test_rank_metrics_by_hand():
    ranks = np.array([1, 2, 5, 6, 50, 51, 1000, 3])
    m = mt.rank_metrics(ranks, ks=(1, 5, 10))
    assert m["recall_at_1"] == 1 / 8 and m["recall_at_5"] == 4 / 8 and m["recall_at_10"] == 5 / 8
    assert m["contain_at_50"] == 6 / 8 and m["eff_at_5"] == pytest.approx((4 / 8) / (6 / 8))
    assert m["mrr"] == pytest.approx(np.mean(1 / ranks))
    assert m["mean_rank"] == ranks.mean() and m["median_rank"] == 5.5
    assert np.isnan(mt.rank_metrics(np.array([60, 70]))["eff_at_5"])


def test_cosine_summary():
    c = mt.cosines(unit((1, 0), (0, 1)), unit((1, 0), (1, 0)))
    assert c.tolist() == [1.0, 0.0]
    s = mt.cosine_summary(np.array([0.0, 0.25, 0.5, 0.75, 1.0]))
    assert s["pred_target_cosine"] == 0.5 and s["cosine_q25"] == 0.25 and s["cosine_q75"] == 0.75


def test_bootstrap_resamples_articles_not_windows():
    # article A: 100 hits, article B: 100 misses. Resampling windows would give a narrow CI around 0.5;
    # resampling the two articles gives {A,A}=1, {A,B}=0.5, {B,B}=0: a CI spanning [0, 1].
    hits = np.r_[np.ones(100), np.zeros(100)]
    art = np.r_[np.zeros(100), np.ones(100)]
    ci = mt.article_bootstrap({"r": hits}, art, n_boot=2000, seed=0)["r"]
    assert ci == [0.0, 1.0]
    by_window = mt.article_bootstrap({"r": hits}, np.arange(200), n_boot=2000, seed=0)["r"]
    assert 0.4 < by_window[0] < 0.5 < by_window[1] < 0.6
    # one article per query and the same numbers for every query -> a degenerate CI at the mean
    assert mt.article_bootstrap({"r": np.full(10, 0.3)}, np.arange(10), 100)["r"] == pytest.approx([0.3, 0.3])
    assert mt.article_bootstrap({"r": hits}, art, n_boot=0)["r"] is None


def test_bootstrap_paired_difference_and_determinism():
    rng = np.random.default_rng(0)
    art = rng.integers(0, 40, 400)
    a = (rng.random(400) < 0.6).astype(float)
    b = a.copy()
    b[:40] = 0  # b is worse on 40 queries, never better
    one = mt.article_bootstrap({"a": a, "b": b, "diff": a - b}, art, 500, seed=1)
    two = mt.article_bootstrap({"a": a, "b": b, "diff": a - b}, art, 500, seed=1)
    assert one == two
    assert one["diff"][0] > 0  # same draws for both -> the paired CI excludes zero
    assert one["a"][0] <= a.mean() <= one["a"][1]


def test_backend_resolution(monkeypatch):
    assert mt.search_backend("torch") == "torch"
    assert mt.search_backend("auto", "cpu") == ("faiss" if mt.faiss_available() else "torch")
    with pytest.raises(
        BackendError, match="eval.search_backend = 'annoy': not a backend; choose one of auto, faiss, torch"
    ):
        mt.search_backend("annoy")
    monkeypatch.setattr(mt, "faiss_available", lambda: True)
    assert mt.search_backend("auto", torch.device("cuda")) == "torch"  # search on the GPU
    assert mt.search_backend("auto", torch.device("cpu")) == "faiss"
    monkeypatch.setattr(mt, "faiss_available", lambda: False)
    assert mt.search_backend("auto", torch.device("cpu")) == "torch"
    with pytest.raises(BackendError, match="eval.search_backend = 'faiss' cannot run here: faiss is not importable"):
        mt.search_backend("faiss")


def test_device_resolution(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert mt.resolve_device("auto") == mt.resolve_device(None) == torch.device("cpu")
    assert mt.resolve_device(torch.device("cuda")) == torch.device("cuda")  # a torch.device is taken as given
    with pytest.raises(BackendError, match="train.device = 'cuda' cannot run here: torch sees no CUDA device"):
        mt.resolve_device("cuda")
    with pytest.raises(BackendError, match="train.device = 'tpu': not a backend; choose one of auto, cpu, cuda"):
        mt.resolve_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert mt.resolve_device("auto") == mt.resolve_device("cuda") == torch.device("cuda")


def test_lcm_metrics_l2_to_target_and_contrastive_accuracy():
    from lvmlib.metrics import cosine_summary, fraction_farther

    assert cosine_summary(np.array([1.0, 0.0]))["l2_to_target"] == pytest.approx(np.sqrt(2) / 2)
    assert cosine_summary(np.array([-1.0]))["l2_to_target"] == pytest.approx(2.0)
    assert fraction_farther(np.array([1, 3]), np.array([5, 5])) == pytest.approx((1.0 + 0.5) / 2)
    assert fraction_farther(np.array([5]), np.array([5])) == 0.0  # the target is the farthest row
