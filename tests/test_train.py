"""Training loop: augmentation statistics, schedule shape, the end-to-end contract of 02_train
(history keys, best.pt / last.pt / train.log), the decision tree, NaN handling, SIGKILL + resume,
status while training, closed-form baselines and DDP (torchrun, gloo, 2 processes).

Every test builds a tiny fake run dir (the DESIGN.md `data/` files from random unit vectors), so
nothing here depends on the encoder or the corpus.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lvmlib.core.config import dump_config, load_config
from lvmlib.core.runs import atomic_save_npy, atomic_save_npz, atomic_write_json, atomic_write_text
from lvmlib.train import loop as T
from lvmlib.train import status as run_status

ROOT = Path(__file__).resolve().parent.parent
D = 16  # vector width of the fake bank
K = 5


# --------------------------------------------------------------------------- fake run dir
def make_run_dir(
    run_dir: Path, n_articles: int = 30, n_chunks: int = 14, d: int = D, seed: int = 0, overrides: tuple[str, ...] = ()
) -> Path:
    """The data/ files of DESIGN.md from random walks on the unit sphere (one walk per article, so the
    next vector is predictable from the context) + params.yaml with a tiny Mamba."""
    rng = np.random.default_rng(seed)
    vecs, keys, split, articles = [], [], [], []
    names = ("train", "val", "test")
    for a in range(n_articles):
        s = 0 if a < int(0.6 * n_articles) else 1 if a < int(0.8 * n_articles) else 2
        v = rng.normal(size=d)
        for p in range(n_chunks):
            v = v / np.linalg.norm(v)
            vecs.append(v.copy())
            keys.append((a, p))
            split.append(s)
            v = v + 0.6 * rng.normal(size=d) / math.sqrt(d) * 2
        articles.append({"article_id": a, "title": f"article {a}", "split": names[s], "n_chunks": n_chunks})
    bank = np.asarray(vecs, dtype=np.float32)  # (M, D)
    keys_a = np.asarray(keys, dtype=np.int64)  # (M, 2)
    split_a = np.asarray(split, dtype=np.int8)  # (M)
    ctx, tgt, wsplit = [], [], []
    for a in range(n_articles):
        base = a * n_chunks
        for p in range(K, n_chunks):
            ctx.append(np.arange(base + p - K, base + p))
            tgt.append(base + p)
            wsplit.append(split_a[base + p])
    ctx_a, tgt_a, ws = np.asarray(ctx, np.int64), np.asarray(tgt, np.int64), np.asarray(wsplit, np.int8)
    data = run_dir / "data"
    atomic_save_npy(data / "bank_vectors.npy", bank)
    atomic_save_npy(data / "bank_keys.npy", keys_a)
    atomic_save_npy(data / "bank_split.npy", split_a)
    atomic_write_text(data / "bank_texts.jsonl", "".join(json.dumps(f"chunk {i}") + "\n" for i in range(len(bank))))
    atomic_write_json(data / "articles.json", articles)
    atomic_save_npz(data / "windows.npz", context_idx=ctx_a, target_idx=tgt_a, split=ws)
    atomic_save_npz(
        data / "payload.npz",
        context_sequences=bank[ctx_a],
        target_vectors=bank[tgt_a],
        truth_keys=keys_a[tgt_a],
        split=ws,
    )
    atomic_write_json(data / "summary.json", {"fake": True})
    cfg = load_config(
        None,
        [
            "model.d_model=16",
            "model.n_layers=1",
            "model.d_state=4",
            "model.expand=2",
            "train.epochs=3",
            "train.batch_size=16",
            "train.grad_accum=2",
            "train.warmup_steps=2",
            "train.threads=1",
            "gates.threshold=0.0",
            "gates.lower=-1.0",
            *overrides,
        ],
    )
    atomic_write_text(run_dir / "params.yaml", dump_config(cfg))
    return run_dir


def cfg_of(run_dir: Path, *overrides: str):
    return load_config(run_dir / "params.yaml", list(overrides))


def strip_timing(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in T.TIMING_KEYS} for r in history]


@pytest.fixture
def run_dir(tmp_path):
    return make_run_dir(tmp_path / "run")


# --------------------------------------------------------------------------- pieces
def test_augment_rates_and_shapes():
    rng = np.random.default_rng(0)
    ctx = np.random.default_rng(1).normal(size=(20000, K, 4)).astype(np.float32) + 5.0  # never 0 by chance
    out, info = T.augment(ctx, rng, article_dropout=0.2, span_corruption=0.1)
    assert out.shape == ctx.shape and not np.shares_memory(out, ctx)
    assert 0.19 < info["dropped"].mean() < 0.21 and 0.09 < info["corrupted"].mean() < 0.11
    # dropout zeroes exactly the last k positions, k uniform in 1..K
    ks = info["drop_k"][info["dropped"]]
    assert set(np.unique(ks)) == set(range(1, K + 1))
    assert np.all(np.abs(np.bincount(ks, minlength=K + 1)[1:] / ks.size - 1 / K) < 0.03)
    zero_pos = (out == 0).all(axis=2)  # (n, K)
    assert np.array_equal(zero_pos.sum(1), info["drop_k"])
    assert np.array_equal(zero_pos, np.arange(K)[None] >= (K - info["drop_k"])[:, None])
    # corruption changes exactly one position (outside the dropped tail) to another sample's vector
    keep = ~info["dropped"]
    changed = (out != ctx).any(axis=2)[keep]  # (n_keep, K)
    assert np.array_equal(changed.sum(1), info["corrupted"][keep].astype(int))
    rows, pos = np.nonzero((out != ctx).any(axis=2) & ~zero_pos)
    for r, p in zip(rows[:50], pos[:50]):  # the replacement is position p of some other sample
        src = np.flatnonzero((ctx[:, p] == out[r, p]).all(axis=1))
        assert src.size == 1 and src[0] != r
    # untouched samples are bit-identical
    clean = ~info["dropped"] & ~info["corrupted"]
    assert np.array_equal(out[clean], ctx[clean])


def test_augment_off_is_identity():
    ctx = np.random.default_rng(1).normal(size=(100, K, 4)).astype(np.float32)
    out, info = T.augment(ctx, np.random.default_rng(0), 0.0, 0.0)
    assert np.array_equal(out, ctx) and not info["dropped"].any() and not info["corrupted"].any()


def test_lr_schedule_shape():
    warm, total = 10, 100
    f = [T.lr_factor(s, warm, total, 0.1) for s in range(total + 5)]
    assert f[0] == pytest.approx(0.1) and f[warm - 1] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(f[: warm - 1], f[1:warm]))  # linear warmup up
    assert f[warm] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[warm:total], f[warm + 1 : total + 1]))  # cosine down
    assert f[warm + (total - warm) // 2] == pytest.approx(0.1 + 0.9 * 0.5, abs=1e-6)  # half-way point
    assert f[total] == pytest.approx(0.1) and f[-1] == pytest.approx(0.1)  # floor, and stays there
    assert T.lr_factor(0, 0, 10) == pytest.approx(1.0)


def test_validation_sees_clean_windows(tmp_path):
    """Every training sample augmented (p = 1), yet val_cosine is that of clean val windows."""
    from lvmlib.data.prepare import load_prepared
    from lvmlib.model.checkpoint import load_checkpoint

    run_dir = make_run_dir(
        tmp_path / "run", overrides=("train.epochs=1", "train.article_dropout=1.0", "train.span_corruption=1.0")
    )
    history = T.train(cfg_of(run_dir), run_dir, progress=False)
    model, cfg, _ = load_checkpoint(run_dir / "last.pt")
    prep = load_prepared(run_dir)
    q = T.val_queries(prep, cfg)
    with torch.no_grad():
        pred = model.eval()(torch.from_numpy(prep.contexts(q["ctx_idx"])))
        cos = torch.nn.functional.cosine_similarity(pred, torch.from_numpy(prep.targets(q["tgt_idx"])), dim=-1)
    assert history[0]["val_cosine"] == pytest.approx(float(cos.mean()), rel=1e-5)
    ctx, _ = T.augment(prep.contexts(q["ctx_idx"]), np.random.default_rng(0), 1.0, 1.0)
    with torch.no_grad():
        cos_aug = torch.nn.functional.cosine_similarity(
            model(torch.from_numpy(ctx)), torch.from_numpy(prep.targets(q["tgt_idx"])), dim=-1
        )
    assert abs(float(cos_aug.mean()) - history[0]["val_cosine"]) > 1e-3  # the check can tell the two apart


def test_val_queries_cap_is_a_seeded_sample(run_dir):
    from lvmlib.data.prepare import load_prepared

    prep = load_prepared(run_dir)
    every = T.val_queries(prep, cfg_of(run_dir))
    assert len(every["tgt_idx"]) == len(prep.windows("val")[1])
    a = T.val_queries(prep, cfg_of(run_dir, "train.val_max_queries=10"))
    b = T.val_queries(prep, cfg_of(run_dir, "train.val_max_queries=10"))
    assert len(a["tgt_idx"]) == 10 and (a["tgt_idx"] == b["tgt_idx"]).all()
    assert np.isin(a["tgt_idx"], every["tgt_idx"]).all()


def test_validation_equals_evaluation_on_the_val_split(tmp_path):
    """The same checkpoint gives the same val R@k / MRR from the training loop and from 04_eval's code
    (evaluate_run on the val split, primary bank = global, context excluded, ties against the model)."""
    from lvmlib.eval.evaluate import evaluate_run

    run_dir = make_run_dir(tmp_path / "run", overrides=("train.epochs=2", "train.best_metric=val_mrr"))
    history = T.train(cfg_of(run_dir), run_dir, progress=False)
    best = next(r for r in reversed(history) if r["is_best"])
    cfg = cfg_of(run_dir, "eval.split=val", "eval.bootstrap=0", "eval.latency_queries=0", "eval.baselines=[copy_last]")
    ev = evaluate_run(cfg, run_dir, progress=False, out_dir=tmp_path / "ev")
    assert ev["primary_bank"] == "global" and ev["primary_context"] == "context_excluded"
    assert ev["n_queries"] == best["n_val_queries"]
    assert best["val_recall_at_5"] == ev["recall_at_5"]
    assert best["val_recall_at_1"] == ev["recall_at_1"]
    assert best["val_mrr"] == pytest.approx(ev["mrr"], rel=1e-9)
    assert best["val_cosine"] == pytest.approx(ev["pred_target_cosine"], rel=1e-5)


def test_val_infonce_uses_one_fixed_shuffle(tmp_path):
    """val_infonce ranks in shuffled batches (not article order), the same shuffle every call."""
    from lvmlib.data.prepare import load_prepared
    from lvmlib.model.models import build_model
    from lvmlib.train.losses import LVMLoss

    run_dir = make_run_dir(tmp_path / "run", n_articles=60)
    cfg = cfg_of(run_dir)
    prep = load_prepared(run_dir)
    torch.manual_seed(0)
    model = build_model(cfg.model, D)
    loss = LVMLoss(cfg.loss, D)
    q = T.val_queries(prep, cfg)
    a = T.validate(model, loss, prep, q, cfg, "cpu", 8, False, recall=False)
    b = T.validate(model, loss, prep, q, cfg, "cpu", 8, False, recall=False)
    assert a["val_infonce"] == b["val_infonce"]
    ordered = dict(q)  # by hand: the same windows in article order give another number
    perm = np.random.default_rng(cfg.train.seed).permutation(len(q["tgt_idx"]))
    inv = np.argsort(perm)
    ordered = {k: v[inv] for k, v in q.items()}  # un-shuffled so that the fixed shuffle yields article order
    c = T.validate(model, loss, prep, ordered, cfg, "cpu", 8, False, recall=False)
    with torch.no_grad():
        P = model.eval()(torch.from_numpy(prep.contexts(q["ctx_idx"])))
        Tt = torch.from_numpy(prep.targets(q["tgt_idx"]))
        meta = torch.from_numpy(np.asarray(prep.bank_keys)[q["tgt_idx"]])
        want = sum(
            float(loss.contrastive(P[s : s + 8], Tt[s : s + 8], loss.mask(meta[s : s + 8]))) * len(P[s : s + 8])
            for s in range(0, len(P), 8)
            if len(P[s : s + 8]) >= 2
        ) / len(P)
    assert c["val_infonce"] == pytest.approx(want, rel=1e-5)
    assert c["val_infonce"] != pytest.approx(a["val_infonce"], rel=1e-3)


def test_article_dropout_positions_first_keeps_the_last_chunk():
    ctx = np.random.default_rng(1).normal(size=(4000, K, 4)).astype(np.float32) + 5.0
    out, info = T.augment(ctx, np.random.default_rng(0), 1.0, 0.0, positions="first")
    zero = (out == 0).all(-1)  # (b, K)
    assert (zero.sum(1) == info["drop_k"]).all()
    for k in range(1, K + 1):
        rows = info["drop_k"] == k
        assert zero[rows][:, :k].all() and not zero[rows][:, k:].any()
    out_l, info_l = T.augment(ctx, np.random.default_rng(0), 1.0, 0.0, positions="last")
    assert (out_l == 0).all(-1)[:, -1].all() and not (out == 0).all(-1)[info["drop_k"] < K, -1].any()
    with pytest.raises(ValueError, match="positions"):
        T.augment(ctx, np.random.default_rng(0), 1.0, 0.0, positions="middle")


def test_bank_negatives_train_and_never_see_the_context(tmp_path):
    run_dir = make_run_dir(tmp_path / "run", overrides=("loss.negatives=bank", "model.residual=last", "train.epochs=2"))
    history = T.train(cfg_of(run_dir), run_dir, progress=False)
    assert all(math.isfinite(r["train_loss"]) for r in history)
    log = (run_dir / "train.log").read_text()
    assert "bank negatives: 252 train chunks per query" in log  # 18 train articles x 14 chunks


def test_sampled_bank_negatives_train_draw_per_step_and_resume_identically(tmp_path):
    """loss.bank_sample draws from the augmentation generator (kept in last.pt): a run resumed after epoch 1
    ends bit-identical to one trained straight through, and the draw changes the training."""
    over = ("loss.negatives=bank", "model.residual=last", "train.epochs=2", "loss.bank_sample=64")
    straight = make_run_dir(tmp_path / "straight", overrides=over)
    h = T.train(cfg_of(straight), straight, progress=False)
    assert "bank negatives: 64 of 252 train chunks, drawn afresh every step" in (straight / "train.log").read_text()
    assert all(math.isfinite(r["train_loss"]) for r in h)
    split = tmp_path / "split"  # the same run stopped after epoch 1: its last.pt is straight's last.prev.pt
    shutil.copytree(straight, split)
    shutil.copy(straight / "last.prev.pt", split / "last.pt")
    T.train(cfg_of(split), split, resume=True, progress=False)
    full = make_run_dir(tmp_path / "full", overrides=over[:3])
    h_full = T.train(cfg_of(full), full, progress=False)
    assert h[0]["train_loss"] != h_full[0]["train_loss"]  # 64 drawn rows are not the 252
    a = torch.load(straight / "last.pt", weights_only=True)["model"]
    b = torch.load(split / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- the loop
HISTORY_KEYS = {
    "epoch",
    "train_loss",
    "train_infonce",
    "train_ar_cosine",
    "val_cosine",
    "lr",
    "seconds",
    "val_infonce",
    "val_recall_at_5",
    "val_recall_at_1",
    "val_mrr",
    "seq_per_s",
    "decision",
    "decision_reason",
    "decision_stop",
}


def test_train_writes_the_contract(run_dir):
    from lvmlib.model.checkpoint import load_checkpoint

    history = T.train(cfg_of(run_dir), run_dir, progress=False)
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert json.loads((run_dir / "history.json").read_text()) == history
    for r in history:
        assert HISTORY_KEYS <= set(r), HISTORY_KEYS - set(r)
        for k in ("train_loss", "train_infonce", "train_ar_cosine", "val_cosine", "val_infonce", "lr"):
            assert math.isfinite(r[k])
        assert 0.0 <= r["val_recall_at_5"] <= 1.0 and r["seq_per_s"] > 0
        assert r["train_loss"] == pytest.approx(0.85 * r["train_infonce"] + 0.15 * r["train_ar_cosine"], rel=1e-5)
    assert history[-1]["stop_reason"] == "completed"
    assert history[0]["decision"] is None and history[1]["decision"] == "continue"  # gates lowered to 0
    assert history[2]["train_loss"] < history[0]["train_loss"]  # it learns
    model, cfg, ck = load_checkpoint(run_dir / "best.pt")  # torch.load(weights_only=True) inside
    best = max(history, key=lambda r: r["val_cosine"])
    assert ck["epoch"] == best["epoch"] and ck["value"] == pytest.approx(best["val_cosine"])
    assert cfg.model.d_model == 16
    last = torch.load(run_dir / "last.pt", weights_only=True)
    assert last["epoch"] == 3 and {"optimizer", "scheduler", "rng", "train_state", "history"} <= set(last)
    log = (run_dir / "train.log").read_text()
    assert "start pid" in log and "epoch 3:" in log and "done: 3 epoch(s)" in log
    # the lr was stepped per optimizer step: warmup 2 then cosine to 0 over 3 epochs
    steps = history[-1]["steps"]
    assert history[-1]["lr"] == pytest.approx(1e-3 * T.lr_factor(steps - 1, 2, steps), rel=1e-6)
    summary = run_status.training_summary(run_dir)
    assert summary["epochs_trained"] == 3 and summary["n_params"] > 0 and summary["stop_reason"] == "completed"


def test_decision_tree_stops_in_the_loop(tmp_path):
    run_dir = make_run_dir(tmp_path / "run", overrides=("gates.threshold=0.999", "gates.lower=0.99", "train.epochs=4"))
    history = T.train(cfg_of(run_dir), run_dir, progress=False)
    assert len(history) == 2  # stopped right after the epoch-2 gate
    assert history[-1]["decision"] == "stop_option_4" and history[-1]["decision_stop"] is True
    assert history[-1]["stop_reason"] == "decision_tree" and history[0]["decision_stop"] is False
    assert "Option 4" in history[-1]["decision_reason"]


def test_early_stopping_patience(tmp_path):
    # lr 0 -> val metrics never improve after epoch 1 -> stop after `patience` more epochs
    run_dir = make_run_dir(
        tmp_path / "run",
        overrides=(
            "train.lr=1.0e-12",
            "train.patience=2",
            "train.epochs=6",
            "train.decision_tree=false",
            "train.article_dropout=0",
            "train.span_corruption=0",
        ),
    )
    history = T.train(cfg_of(run_dir), run_dir, progress=False)
    assert [r["bad_epochs"] for r in history][-1] == 2
    assert history[-1]["stop_reason"] == "early_stopping" and len(history) < 6


def test_nan_loss_stops_and_keeps_last_good_checkpoint(run_dir, monkeypatch):
    calls = {"n": 0}
    real = T.cached_step
    steps_per_epoch = None

    def poisoned(*a, **kw):
        out = real(*a, **kw)
        calls["n"] += 1
        if calls["n"] > steps_per_epoch:  # from the first step of epoch 2 on
            out["loss"] = float("nan")
        return out

    monkeypatch.setattr(T, "cached_step", poisoned)
    cfg = cfg_of(run_dir)
    n_train = int((np.load(run_dir / "data/windows.npz")["split"] == 0).sum())
    steps_per_epoch = n_train // (cfg.train.batch_size * cfg.train.grad_accum)
    with pytest.raises(T.TrainingDiverged, match=r"loss is nan at epoch 2, optimizer step 1; last good checkpoint"):
        T.train(cfg, run_dir, progress=False)
    last = torch.load(run_dir / "last.pt", weights_only=True)
    assert last["epoch"] == 1 and all(torch.isfinite(v).all() for v in last["model"].values())
    assert [r["epoch"] for r in json.loads((run_dir / "history.json").read_text())] == [1]
    assert "ERROR training diverged" in (run_dir / "train.log").read_text()
    assert json.loads((run_dir / "train_progress.json").read_text())["state"] == "diverged"
    assert "diverged" in run_status.status(run_dir)


def test_closed_form_baseline_fits_and_saves(tmp_path):
    from lvmlib.model.checkpoint import load_checkpoint

    run_dir = make_run_dir(tmp_path / "run", overrides=("model.kind=ridge",))
    history = T.train(cfg_of(run_dir), run_dir, progress=False)
    assert len(history) == 1 and history[0]["closed_form"] and math.isfinite(history[0]["val_cosine"])
    model, _, _ = load_checkpoint(run_dir / "best.pt")
    assert model.weight.shape == (K * D, D)  # the fitted map was saved, so eval can load it


@pytest.mark.parametrize(
    "overrides",
    [
        ("model.kind=two_tower", "model.tower_dim=8"),
        ("loss.proj_head=[12, 6]", "loss.lambda_con=0.7", "loss.lambda_ar=0.3", "loss.learn_temperature=true"),
        ("train.negatives=micro_batch",),
        ("model.kind=gru",),
        ("model.kind=transformer", "model.residual=last"),
        ("model.kind=context_mix", "loss.negatives=bank"),
        ("loss.negatives=bank", "loss.bank_dtype=bfloat16", "model.residual=context_mix"),
    ],
)
def test_variants_train(tmp_path, overrides):
    run_dir = make_run_dir(tmp_path / "run", overrides=("train.epochs=2", *overrides))
    history = T.train(cfg_of(run_dir), run_dir, progress=False)
    assert len(history) == 2 and all(math.isfinite(r["train_loss"]) and math.isfinite(r["val_cosine"]) for r in history)
    loss_state = torch.load(run_dir / "last.pt", weights_only=True)["loss_state"]
    if "loss.learn_temperature=true" in overrides:  # the loss's own parameters were optimised too
        assert history[-1]["temperature"] != pytest.approx(0.07, abs=1e-7)
        assert "head.0.weight" in loss_state


def test_plots_draw_the_gate_line(run_dir):
    from lvmlib.plots import training as plots

    history = T.train(cfg_of(run_dir, "train.epochs=2"), run_dir, progress=False)
    fig = plots.val_cosine_curve(history, 0.50, 0.40, 2)
    ys = [ln.get_ydata()[0] for ln in fig.axes[0].lines if len(set(ln.get_ydata())) == 1]
    assert 0.50 in ys and 0.40 in ys
    for f in (plots.loss_curves(history), plots.recall_curve(history), plots.lr_curve(history, 2, 2, 1e-3)):
        assert f.axes and f.axes[0].lines


# --------------------------------------------------------------------------- resume after SIGKILL
def _launch(run_dir: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "lvmlib.train", str(run_dir), "--no-progress", *extra],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


@pytest.mark.slow
def test_sigkill_after_epoch_1_then_resume_equals_uninterrupted(tmp_path):
    # big enough that an epoch takes ~0.5 s, so the kill lands inside epoch 2
    big = dict(n_articles=120, n_chunks=20, overrides=("train.epochs=4", "model.d_model=48", "model.n_layers=2"))
    ref = make_run_dir(tmp_path / "ref", **big)
    killed = make_run_dir(tmp_path / "killed", **big)
    p = _launch(ref)
    assert p.wait(timeout=300) == 0, p.stdout.read().decode()
    proc = _launch(killed)
    deadline = time.time() + 300
    while time.time() < deadline:  # kill as soon as epoch 1 is on disk (mid-epoch 2)
        h = run_status.read_json_or_none(killed / "history.json")
        if h and len(h) >= 1 and (killed / "last.pt").is_file():
            break
        time.sleep(0.01)
    assert proc.poll() is None, "training finished before it could be killed"
    assert "alive" in run_status.status(killed)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert len(json.loads((killed / "history.json").read_text())) < 4
    assert "not running" in run_status.status(killed)
    p = _launch(killed, "--resume")
    assert p.wait(timeout=300) == 0, p.stdout.read().decode()
    h_ref = json.loads((ref / "history.json").read_text())
    h_res = json.loads((killed / "history.json").read_text())
    assert strip_timing(h_res) == strip_timing(h_ref)
    a = torch.load(ref / "last.pt", weights_only=True)["model"]
    b = torch.load(killed / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert "resume from" in (killed / "train.log").read_text()


def test_resume_of_a_finished_run_extends_it(run_dir):
    h3 = T.train(cfg_of(run_dir, "train.epochs=2"), run_dir, progress=False)
    h4 = T.train(cfg_of(run_dir, "train.epochs=3"), run_dir, resume=True, progress=False)
    assert [r["epoch"] for r in h4] == [1, 2, 3]
    h3[-1].pop("stop_reason")  # epoch 2 was the end of the first run only
    assert strip_timing(h4[:2]) == strip_timing(h3) and h4[-1]["stop_reason"] == "completed"


def test_status_reports_history_and_gate(run_dir):
    assert "no training process" in run_status.status(run_dir)
    T.train(cfg_of(run_dir), run_dir, progress=False)
    text = run_status.status(run_dir)
    assert "epochs done: 3/3" in text and "epoch-2 gate: continue" in text and "sequences/s" in text
    assert text.count("\n") >= 3 + 3 and "not running" in text
    cli = subprocess.run(
        [sys.executable, "-m", "lvmlib", "status", str(run_dir)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert cli.returncode == 0 and "epochs done: 3/3" in cli.stdout


def test_a_resumed_history_keeps_epoch_seconds_and_status_gives_an_eta(run_dir, monkeypatch):
    """last.pt's history carries each epoch's `seconds` (a resume restores it; it once lacked them, and `status`
    of a resumed run died with KeyError 'seconds'); a history without them still gets an ETA."""
    T.train(cfg_of(run_dir), run_dir, progress=False)
    last = torch.load(run_dir / "last.pt", weights_only=True)
    assert all(r["seconds"] > 0 for r in last["history"])
    history = json.loads((run_dir / "history.json").read_text())
    for r in history:
        del r["seconds"]
    (run_dir / "history.json").write_text(json.dumps(history[:1]))
    progress = json.loads((run_dir / "train_progress.json").read_text())
    progress.update(
        pid=os.getpid(), host=platform.node(), state="running", epoch=2, step=1, epoch_started_at=time.time()
    )
    (run_dir / "train_progress.json").write_text(json.dumps(progress))
    monkeypatch.setattr(run_status, "lock_state", lambda _: (None, None))  # no run lock: the pid decides (ours)
    assert "ETA <= " in run_status.status(run_dir)


# --------------------------------------------------------------------------- DDP
@pytest.mark.slow
def test_torchrun_two_processes_trains(tmp_path):
    run_dir = make_run_dir(tmp_path / "run", overrides=("train.nproc=2", "train.epochs=2"))
    history = T.train(cfg_of(run_dir), run_dir, progress=False)  # launches torchrun (gloo on CPU)
    assert [r["epoch"] for r in history] == [1, 2] and math.isfinite(history[-1]["val_cosine"])
    last = torch.load(run_dir / "last.pt", weights_only=True)
    assert len(last["rng"]) == 2  # both ranks' RNG streams are kept for resume
    assert "x2" in (run_dir / "train.log").read_text()


def test_stop_epoch_ends_early_on_the_full_schedule(tmp_path):
    """train.stop_epoch = 2 with train.epochs = 4: the run is the first two epochs of the 4-epoch run (same
    lr schedule, same draws: identical history but timing, identical weights), stop reason stop_epoch;
    resumed with stop_epoch 0 it goes on to the 4-epoch run's end."""
    over = ("loss.negatives=bank", "model.residual=last", "train.epochs=4", "train.patience=10")
    full = make_run_dir(tmp_path / "full", overrides=over)
    h_full = T.train(cfg_of(full), full, progress=False)
    short = make_run_dir(tmp_path / "short", overrides=(*over, "train.stop_epoch=2"))
    h = T.train(cfg_of(short), short, progress=False)
    assert len(h_full) == 4 and len(h) == 2 and h[-1]["stop_reason"] == "stop_epoch"
    a, b = strip_timing(h), strip_timing(h_full[:2])
    for r in (*a, *b):
        r.pop("stop_reason", None)
    assert a == b
    assert h[-1]["lr"] == h_full[1]["lr"] > h_full[-1]["lr"]  # the schedule still spans 4 epochs
    h2 = T.train(cfg_of(short, "train.stop_epoch=0"), short, resume=True, progress=False)
    assert len(h2) == 4 and h2[-1]["stop_reason"] == "completed"
    x = torch.load(short / "last.pt", weights_only=True)["model"]
    y = torch.load(full / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(x[k], y[k]) for k in x)
