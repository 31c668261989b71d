"""The bank-size curve (lvmlib.eval.curve, lvmlib.data.distractors): known ranks on a hand-built bank, a naive
loop on a fake run, nested seeded subsets, paired intervals, distractor filtering, eval.json unchanged
without distractors, and the smoke study end to end (slow)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from test_data import FakeST, cfg_for, make_corpus
from test_evaluate import make_fake_run

from lvmlib import metrics as mt
from lvmlib.core.config import ConfigError, load_config
from lvmlib.core.errors import DataError
from lvmlib.data import encoder
from lvmlib.data.prepare import load_prepared, prepare_data
from lvmlib.eval.curve import bank_curve, curve_banks, distractor_order, paired_curve, resolve_sizes
from lvmlib.eval.evaluate import evaluate_run
from lvmlib.eval.inputs import EvalData
from lvmlib.model.checkpoint import load_checkpoint
from lvmlib.model.predict import predict

ROOT = Path(__file__).resolve().parent.parent


def unit(*xs):
    v = np.asarray(xs, np.float64)
    return (v / np.linalg.norm(v)).astype(np.float32)


def hand_built(tmp_path):
    """One val query (K = 2) whose target ranks 2 among the held-out chunks; four distractors: one beats
    the target, one loses, one is a bit-copy of a context chunk (excluded with it), one a bit-copy of the
    target (finding it is finding the truth). A train chunk that would beat the target is not held out."""
    e0, e1, e2, e3 = np.eye(4, dtype=np.float32)
    bank = np.stack(
        [
            e0,  # 0 val, context (scores 1: excluded)
            e3,  # 1 val, context
            unit(0.8, 0.6, 0, 0),  # 2 val, the target: score 0.8
            unit(0.9, 0, np.sqrt(0.19), 0),  # 3 val: 0.9 beats the target
            unit(0.99, 0, 0, np.sqrt(1 - 0.99**2)),  # 4 train: would beat it, but is not held out
        ]
    )
    dist = np.stack([unit(0.95, 0, np.sqrt(1 - 0.95**2), 0), e1, e0.copy(), bank[2].copy()])
    np.save(tmp_path / "distractor_vectors.npy", dist)
    data = EvalData(
        source="hand-built",
        bank_vectors=bank,
        bank_keys=np.asarray([[0, 0], [0, 1], [0, 2], [0, 3], [1, 0]], np.int64),
        bank_split=np.asarray([1, 1, 1, 1, 0], np.int8),
        window_rows={},
        prepared=SimpleNamespace(dir=tmp_path),
    )
    return data, np.asarray([[0, 1]]), np.asarray([2])


def test_hand_built_bank_gives_the_known_ranks(tmp_path):
    data, ctx, tgt = hand_built(tmp_path)
    cfg = load_config(None, ["eval.split=val", "eval.bank_sizes=[0,1,2,3,-1]", "eval.bootstrap=0"])
    pred = {"m": {"pred": np.asarray([[1, 0, 0, 0]], np.float32)}}
    curve = bank_curve(cfg, data, ctx, tgt, [("m", "primary", None)], pred, "cpu")
    order = distractor_order(4, cfg.eval.curve_seed)
    for row in curve["rows"]:
        s = row["size"]
        rank = 2 + int(0 in order[:s])  # row 3, then distractor 0 once it joined
        assert (row["mean_rank"], row["mrr"], row["recall_at_1"]) == (rank, 1 / rank, 0.0), s
        assert row["n_bank"] == 4 + s and row["bank_size_mean"] == 4 + s - 2 - int(2 in order[:s])
    assert [x["size"] for x in curve["sizes"]] == [0, 1, 2, 3, 4]
    assert curve["held_out_chunks"] == 4 and curve["distractor_chunks"] == 4


def naive_ranks(bank, held, dist, order, s, q, ctx, tgt):
    """Rank by the study's definition, one query at a time, float64: rows = held-out + order[:s]."""
    rows = np.concatenate([bank[held], dist[order[:s]]]).astype(np.float64)
    raw = np.concatenate([bank[held], dist[order[:s]]])
    ranks = []
    for i in range(len(q)):
        t = raw[np.searchsorted(held, tgt[i])]
        ctx_vecs = bank[ctx[i]]
        same_t = (raw == t).all(1)
        excl = np.zeros(len(raw), bool)
        for c in ctx_vecs:
            excl |= (raw == c).all(1)
        excl &= ~same_t
        sc = rows @ q[i].astype(np.float64)
        ranks.append(1 + int(((sc >= float(t.astype(np.float64) @ q[i])) & ~same_t & ~excl).sum()))
    return np.asarray(ranks)


@pytest.fixture(scope="module")
def fake_curve(tmp_path_factory):
    run = tmp_path_factory.mktemp("curve_run")
    cfg = make_fake_run(run, overrides=["eval.bank_sizes=[0,10,40,1000]", "eval.curve_seed=3"])
    rng = np.random.default_rng(7)
    bank = np.load(run / "data" / "bank_vectors.npy")
    # distractors near the held-out chunks (so they compete) and a bit-copy of a train chunk
    near = bank[rng.choice(len(bank), 80)] + 0.35 * rng.normal(size=(80, bank.shape[1])) / np.sqrt(bank.shape[1])
    dist = mt.l2_normalize(np.concatenate([near, bank[:1]]))
    ev0 = evaluate_run(cfg, run, progress=False)
    q0 = (run / "metrics" / "queries.csv").read_text()
    np.save(run / "data" / "distractor_vectors.npy", dist)
    ev = evaluate_run(cfg, run, progress=False)
    return run, cfg, ev, ev0, q0, dist


def test_curve_equals_a_naive_loop_on_a_fake_run(fake_curve):
    run, cfg, ev, _, _, dist = fake_curve
    c = ev["bank_curve"]
    assert c["distractor_chunks"] == 81 and c["split"] == "test" and c["seed"] == 3
    assert [(x["requested"], x["size"], x["clipped"]) for x in c["sizes"]] == [
        (0, 0, False),
        (10, 10, False),
        (40, 40, False),
        (1000, 81, True),
    ]
    prep = load_prepared(run)
    ctx, tgt = prep.windows("test")
    bank = np.asarray(prep.bank_vectors)
    held = np.flatnonzero(prep.bank_split == 2)
    order = distractor_order(len(dist), 3)
    model, _, _ = load_checkpoint(run / "best.pt", d_vec=prep.d_vec)
    preds = {
        "copy_last": bank[ctx[:, -1]],
        "context_mean": bank[ctx].mean(1),
        ev["primary_model"]: predict(model.eval(), prep.contexts(ctx), "cpu"),
    }
    q_art = prep.bank_keys[tgt, 0]
    for name, p in preds.items():
        for s in (0, 10, 40, 81):
            rk = naive_ranks(bank, held, dist, order, s, mt.l2_normalize(p), ctx, tgt)
            row = next(r for r in c["rows"] if r["predictor"] == name and r["size"] == s)
            assert row["recall_at_5"] == pytest.approx((rk <= 5).mean()), (name, s)
            assert row["mrr"] == pytest.approx((1 / rk).mean()), (name, s)
            assert row["n_bank"] == len(held) + s
    # size 0 is the evaluation's own `test` bank, context excluded
    for name in preds:
        row0 = next(r for r in c["rows"] if r["predictor"] == name and r["size"] == 0)
        assert row0["recall_at_5"] == ev["models"][name]["banks"]["test"]["context_excluded"]["recall_at_5"]
    # paired: the bootstrap of the per-query differences, with the evaluation's draws
    p = paired_curve(ev, "copy_last")
    assert [r["size"] for r in p] == [0, 10, 40, 81]
    rk_m = naive_ranks(bank, held, dist, order, 81, mt.l2_normalize(preds[ev["primary_model"]]), ctx, tgt)
    cl = naive_ranks(bank, held, dist, order, 81, mt.l2_normalize(preds["copy_last"]), ctx, tgt)
    ci = mt.article_bootstrap(
        {"recall_at_5": (rk_m <= 5).astype(float) - (cl <= 5)}, q_art, cfg.eval.bootstrap, cfg.train.seed
    )
    assert p[-1]["diff_recall_at_5_ci"] == pytest.approx(ci["recall_at_5"])
    assert p[-1]["diff_recall_at_5"] == pytest.approx(((rk_m <= 5).astype(float) - (cl <= 5)).mean())
    assert {r["vs"] for r in c["paired"]} == {"copy_last", "ridge", "context_mean"}


def test_larger_banks_only_add_rivals(fake_curve):
    c = fake_curve[2]["bank_curve"]
    for name in {r["predictor"] for r in c["rows"]}:
        rows = sorted((r for r in c["rows"] if r["predictor"] == name), key=lambda r: r["size"])
        assert all(a["mean_rank"] <= b["mean_rank"] and a["mrr"] >= b["mrr"] for a, b in zip(rows, rows[1:])), name


@pytest.mark.parametrize("chunk", [7, 64, 1000])
def test_nested_prefix_banks_count_like_the_reference(chunk):
    """metrics.target_ranks counts prefix banks (the curve's nested sizes) from segment sums; across chunk
    borders, with duplicates, context exclusion and other bank kinds beside them, it equals the per-query loop."""
    rng = np.random.default_rng(1)
    M, n, D = 300, 25, 8
    bank = mt.l2_normalize(rng.normal(size=(M, D)))
    bank[250] = bank[3]  # a duplicate of a held-out row among the distractors
    tgt, ctx = rng.choice(60, n, replace=False), rng.choice(60, (n, 3))
    q = mt.l2_normalize(bank[tgt] + rng.normal(size=(n, D)))
    banks = curve_banks(distractor_order(M - 60, 2), [0, 5, 64, 240], n_held=60, n_queries=n)
    banks["every_other"] = ((np.arange(M) % 2) | (np.arange(M) < 60), np.ones(n, np.int64))  # columns
    banks["article"] = (np.arange(M) // 30, tgt // 30)  # pairs
    groups = mt.duplicate_groups(bank)
    fast = mt.target_ranks(q, bank, tgt, banks=banks, exclude_rows=ctx, groups=groups, chunk=chunk, device="cpu")
    ref = mt.target_ranks_ref(q, bank, tgt, banks=banks, exclude_rows=ctx, groups=groups)
    for b in banks:
        for f in ("excluded", "included", "size_excluded", "size_included"):
            assert (getattr(fast[b], f) == getattr(ref[b], f)).all(), (b, f)


def test_subsets_are_nested_and_seeded():
    o = distractor_order(50, 0)
    assert (o == distractor_order(50, 0)).all() and not (o == distractor_order(50, 1)).all()
    assert sorted(o) == list(range(50))
    banks = curve_banks(o, [0, 7, 20, 50], n_held=5, n_queries=3)
    members = {int(s): set(np.flatnonzero(lab == q[0])) for s, (lab, q) in banks.items()}
    for a, b in zip([0, 7, 20], [7, 20, 50]):
        assert members[a] < members[b]
        assert members[b] - members[a] == {5 + j for j in range(a, b)}  # the next distractors in join order
    assert members[0] == set(range(5))
    assert [(x["size"], x["clipped"]) for x in resolve_sizes([0, 10, 1000, -1], 50)] == [
        (0, False),
        (10, False),
        (50, True),
        (50, False),
    ]


def test_a_twin_of_copy_last_has_a_zero_paired_interval(fake_curve, tmp_path):
    """Paired: identical (noisy) predictions differ by exactly 0 in every draw, although each has a wide interval."""
    run, cfg, ev, *_ = fake_curve
    prep = load_prepared(run)
    ctx, tgt = prep.windows("test")
    data = EvalData("fake", prep.bank_vectors, prep.bank_keys, prep.bank_split, {}, prepared=prep)
    rng = np.random.default_rng(0)
    p = mt.l2_normalize(np.asarray(prep.bank_vectors)[ctx[:, -1]] + rng.normal(size=(len(ctx), prep.d_vec)) / 5)
    twins = [("twin", "primary", None), ("copy_last", "baseline", None)]
    c = bank_curve(cfg, data, ctx, tgt, twins, {"twin": {"pred": p}, "copy_last": {"pred": p}}, "cpu")
    for r in c["paired"]:
        assert r["diff_recall_at_5_ci"] == [0.0, 0.0] and r["diff_mrr_ci"] == [0.0, 0.0]
    assert all(r["mrr_ci"][1] - r["mrr_ci"][0] > 0.05 for r in c["rows"]), [r["mrr_ci"] for r in c["rows"]]


def test_without_distractors_eval_json_is_unchanged(fake_curve, tmp_path):
    run, cfg, ev, ev0, q0, _ = fake_curve
    assert "bank_curve" not in ev0
    drop = ("bank_curve", "seconds", "latency")  # latency and seconds are timings
    assert {k: v for k, v in ev.items() if k not in drop} == {k: v for k, v in ev0.items() if k not in drop}
    assert (run / "metrics" / "queries.csv").read_text() == q0
    # a run that asked for distractors but whose data stage wrote none is refused, not silently curve-less
    cfg2 = load_config(None, ["data.source=jsonl", "data.path=x.jsonl", "data.distractor_path=d.jsonl"])
    shutil.copytree(run, tmp_path / "run")
    (tmp_path / "run" / "data" / "distractor_vectors.npy").unlink()
    with pytest.raises(DataError, match="run the data stage"):
        evaluate_run(cfg2, tmp_path / "run", progress=False)


def test_bank_sizes_are_validated():
    for bad in ("[10,0]", "[0,0]", "[-1,5]", "[-2]", "[0,-1,-1]"):
        with pytest.raises(ConfigError, match="eval.bank_sizes"):
            load_config(None, [f"eval.bank_sizes={bad}"])
    assert load_config(None, ["eval.bank_sizes=[5,-1]"]).eval.bank_sizes == [5, -1]


def test_distractors_are_embedded_like_the_bank_and_never_repeat_a_bank_text(tmp_path, monkeypatch):
    st = FakeST()
    monkeypatch.setattr(encoder, "load_encoder", lambda name: st)
    make_corpus(tmp_path / "corpus.jsonl")
    main_texts = [json.loads(x)["paragraphs"][0] for x in (tmp_path / "corpus.jsonl").read_text().splitlines()]
    recs = [
        {"title": "D0", "paragraphs": [" ".join(f"Distractor zero says thing number {i} here." for i in range(6))]},
        {"title": "D1", "paragraphs": [main_texts[5]]},  # an article of the main corpus, word for word
        {"title": "D2", "paragraphs": ["Distractor two has one more sentence of words. " + main_texts[7]]},
    ]
    dpath = tmp_path / "distract.jsonl"
    dpath.write_text("".join(json.dumps(r) + "\n" for r in recs))
    cfg = cfg_for(tmp_path, tmp_path / "corpus.jsonl", distractor_path=str(dpath))
    summary = prepare_data(cfg, tmp_path / "run", progress=False)
    d = tmp_path / "run" / "data"
    bank_texts = set((d / "bank_texts.jsonl").read_text().splitlines())
    dist_texts = (d / "distractor_texts.jsonl").read_text().splitlines()
    vecs = np.load(d / "distractor_vectors.npy")
    assert dist_texts and not set(dist_texts) & bank_texts
    s = summary["distractors"]
    assert s["chunks"] == len(dist_texts) == len(vecs) == len(np.load(d / "distractor_keys.npy"))
    assert s["dropped_in_bank"] > 0 and s["chunks_read"] == s["chunks"] + s["dropped_in_bank"]
    # the run's encoder, the run's space: each vector is the encoder's vector of its text
    assert np.allclose(vecs, st.encode([json.loads(t) for t in dist_texts]), atol=1e-6)
    # first N articles only
    cfg1 = cfg_for(tmp_path, tmp_path / "corpus.jsonl", distractor_path=str(dpath), distractor_articles=1)
    assert prepare_data(cfg1, tmp_path / "run1", progress=False)["distractors"]["articles_read"] == 1
    # a run without distractors writes no distractor file and no summary key
    assert "distractors" not in prepare_data(cfg_for(tmp_path, tmp_path / "corpus.jsonl"), tmp_path / "r0", False)
    assert not list((tmp_path / "r0" / "data").glob("distractor*"))


@pytest.mark.slow
def test_smoke_run_with_distractors_has_the_curve_and_its_figure(tmp_path):
    """The smoke study with 20 distractor articles (their vectors come from the embedding cache after the
    first time, as the smoke corpus's do: the environment's cache, as for the `smoke_run` fixture)."""
    env = {**{k: v for k, v in os.environ.items() if k != "CI"}, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    sets = [
        "data.distractor_path=corpora/wiki_distract_2000.jsonl.gz",
        "data.distractor_articles=20",
        "eval.bank_sizes=[0,100,-1]",
    ]
    cmd = [sys.executable, "-m", "lvmlib", "run", "params/smoke.yaml", "--run-id", "curve", "--quiet"]
    cmd += ["--runs-root", str(tmp_path / "runs"), "--reports-root", str(tmp_path / "reports")]
    r = subprocess.run(
        cmd + [x for s in sets for x in ("--set", s)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    ev = json.loads((tmp_path / "runs" / "curve" / "metrics" / "eval.json").read_text())
    c = ev["bank_curve"]
    S = c["distractor_chunks"]
    assert S > 100 and [x["size"] for x in c["sizes"]] == [0, 100, S]
    assert {r["vs"] for r in c["paired"]} == {"copy_last", "ridge", "context_mean"}
    assert [r["size"] for r in paired_curve(ev, "ridge")] == [0, 100, S]
    html = (tmp_path / "reports" / "curve" / "04_eval.html").read_text()
    tail = html[html.index("Bank-size curve") :]
    assert "<img" in tail[: tail.index("Latency")]  # the figure, in its section
