"""Losses: InfoNCE against a naive loop, the false-negative mask on hand-built keys, V1/V2 composition,
the learnable temperature, and the gradient cache: parameter gradients equal one big batch (also
with a passage tower, with dropout replayed, and across 2 DDP processes under torchrun/gloo)."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from lvmlib.core.config import LossConfig, load_config
from lvmlib.train.losses import LVMLoss, MicroBatch, ar_cosine, cached_step, direct_step, false_negative_mask, info_nce

ROOT = Path(__file__).resolve().parent.parent


def naive_info_nce(q, k, tau, mask=None):
    """Row by row with Python floats: -log(exp(s_ii/tau) / sum_{j not masked} exp(s_ij/tau))."""
    q = [[x / math.sqrt(sum(y * y for y in v)) for x in v] for v in q.tolist()]
    k = [[x / math.sqrt(sum(y * y for y in v)) for x in v] for v in k.tolist()]
    total = 0.0
    for i in range(len(q)):
        s = [sum(a * b for a, b in zip(q[i], k[j])) / tau for j in range(len(k))]
        denom = sum(math.exp(s[j]) for j in range(len(k)) if j == i or mask is None or not mask[i][j])
        total += -(s[i] - math.log(denom))
    return total / len(q)


# --------------------------------------------------------------------------- InfoNCE
@pytest.mark.parametrize("B", [2, 7, 64])
def test_info_nce_uniform_logits_is_log_B(B):
    q = torch.ones(B, 8)
    k = torch.ones(B, 8)  # every logit equal
    assert float(info_nce(q, k, 1 / 0.07)) == pytest.approx(math.log(B), rel=1e-6)
    assert float(info_nce(q, k, 1 / 0.07, symmetric=True)) == pytest.approx(math.log(B), rel=1e-6)


def test_info_nce_masked_negatives_leave_the_denominator():
    B = 6
    mask = torch.zeros(B, B, dtype=torch.bool)
    mask[:, :2] = True  # columns 0, 1 masked for every row (the diagonal is never masked)
    loss = float(info_nce(torch.ones(B, 4), torch.ones(B, 4), 10.0, mask))
    expect = (2 * math.log(B - 1) + 4 * math.log(B - 2)) / B
    assert loss == pytest.approx(expect, rel=1e-6)


@pytest.mark.parametrize("tau", [0.07, 1.0])
def test_info_nce_equals_naive_loop(tau):
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(9, 5, generator=g), torch.randn(9, 5, generator=g) * 3.0
    assert float(info_nce(q, k, 1 / tau)) == pytest.approx(naive_info_nce(q, k, tau), rel=1e-5)
    mask = torch.rand(9, 9, generator=g) < 0.3
    ref = naive_info_nce(q, k, tau, (mask & ~torch.eye(9, dtype=torch.bool)).tolist())
    assert float(info_nce(q, k, 1 / tau, mask)) == pytest.approx(ref, rel=1e-5)
    sym = 0.5 * (naive_info_nce(q, k, tau) + naive_info_nce(k, q, tau))
    assert float(info_nce(q, k, 1 / tau, symmetric=True)) == pytest.approx(sym, rel=1e-5)


def test_info_nce_is_scale_invariant_and_rejects_ragged():
    q, k = torch.randn(5, 3), torch.randn(5, 3)
    assert float(info_nce(q * 7, k * 0.1, 5.0)) == pytest.approx(float(info_nce(q, k, 5.0)), rel=1e-6)
    with pytest.raises(ValueError, match="positives are on the diagonal"):
        info_nce(q, k[:4], 5.0)


def test_ar_cosine():
    p = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    t = torch.tensor([[2.0, 0.0], [1.0, 0.0]])
    assert float(ar_cosine(p, t)) == pytest.approx(0.5)  # mean(1 - 1, 1 - 0)


# --------------------------------------------------------------------------- false negatives
def test_false_negative_mask_hand_built():
    keys = torch.tensor([[0, 1], [0, 2], [0, 4], [1, 2], [2, 7], [0, 0]])  # (article, position)
    dup = torch.tensor([10, 11, 12, 13, 10, 14])  # row 4 has the same target vector as row 0
    m = false_negative_mask(keys, window=1, dup_ids=dup)
    expect = torch.zeros(6, 6, dtype=torch.bool)
    for i, j in [(0, 1), (0, 5), (0, 4), (1, 0)]:  # +-1 in article 0, and the duplicate pair
        expect[i, j] = expect[j, i] = True
    assert torch.equal(m, expect)
    m2 = false_negative_mask(keys, window=2)  # no dup ids: positions within 2 in the same article
    assert m2[1, 2] and m2[1, 5] and not m2[0, 4] and not m2[0, 2] and not m2.diagonal().any()
    assert not false_negative_mask(keys, window=0).any()  # only the positive itself, which stays


def test_loss_mask_is_configurable():
    keys = torch.tensor([[0, 1], [0, 2]])
    assert LVMLoss(LossConfig(mask_false_negatives=False), 4).mask(keys) is None
    assert LVMLoss(LossConfig(), 4).mask(keys)[0, 1]


def test_duplicate_targets_share_a_group_exactly():
    """The trainer masks exact-duplicate targets with `metrics.duplicate_groups` of the bank, taken at the
    target rows: byte-identical rows share a group, a vector one ulp away does not."""
    from lvmlib.metrics import duplicate_groups

    v = np.array([[1, 2], [3, 4], [1, 2], [1, 2.001], [1, 2]], dtype=np.float32)
    ids = duplicate_groups(v)[np.array([0, 1, 2, 3])]
    assert ids[0] == ids[2] and len({ids[0], ids[1], ids[3]}) == 3


# --------------------------------------------------------------------------- V1, V2, temperature
def test_v2_and_v1_composition():
    g = torch.Generator().manual_seed(1)
    p, t = torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g)
    v2 = LVMLoss(LossConfig(), 16)
    out = v2(p, t)
    assert v2.head is None
    assert float(out["infonce"]) == pytest.approx(naive_info_nce(p, t, 0.07), rel=1e-5)
    assert float(out["loss"]) == pytest.approx(0.85 * float(out["infonce"]) + 0.15 * float(ar_cosine(p, t)), rel=1e-6)
    v1 = LVMLoss(LossConfig(lambda_con=0.7, lambda_ar=0.3, proj_head=[12, 6]), 16)
    widths = [(m.in_features, m.out_features) for m in v1.head if isinstance(m, nn.Linear)]
    assert widths == [(16, 12), (12, 6)]  # D -> 512 -> 256 style
    out1 = v1(p, t)
    with torch.no_grad():
        ref = naive_info_nce(v1.head(p), v1.head(t), 0.07)
    assert float(out1["infonce"].detach()) == pytest.approx(ref, rel=1e-5)  # InfoNCE in the head's space
    assert float(out1["ar_cosine"]) == pytest.approx(float(ar_cosine(p, t)), rel=1e-6)  # cosine on the raw output
    out1["loss"].backward()
    assert all(q.grad is not None and q.grad.abs().sum() > 0 for q in v1.head.parameters())


def test_learnable_temperature():
    loss = LVMLoss(LossConfig(learn_temperature=True), 8)
    assert isinstance(loss.logit_scale, nn.Parameter)
    assert loss.temperature == pytest.approx(0.07, rel=1e-6)
    out = loss(torch.randn(6, 8), torch.randn(6, 8))
    out["loss"].backward()
    assert loss.logit_scale.grad is not None and loss.logit_scale.grad != 0
    with torch.no_grad():
        loss.logit_scale.fill_(math.log(1000.0))
    assert float(loss.scale().detach()) == 100.0  # clamped as CLIP
    fixed = LVMLoss(LossConfig(), 8)
    assert not any(True for _ in fixed.parameters())  # nothing to learn in V2


# --------------------------------------------------------------------------- gradient cache
class _Enc(nn.Module):
    """encode(ctx, tgt) -> (pred, key) over a model; key_tower=True sends targets through encode_bank."""

    def __init__(self, model, key_tower=False):
        super().__init__()
        self.model, self.key_tower = model, key_tower

    def forward(self, ctx, tgt):
        return self.model(ctx), (self.model.encode_bank(tgt) if self.key_tower else tgt)


class _MLP(nn.Module):
    def __init__(self, d, dropout=0.0):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(5 * d, 32), nn.GELU(), nn.Dropout(dropout), nn.Linear(32, d))

    def forward(self, ctx):
        return self.net(ctx)

    def encode_bank(self, v):
        return v


def _batch(n, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    ctx, tgt = torch.randn(n, 5, d, generator=g), torch.randn(n, d, generator=g)
    keys = torch.stack([torch.randint(0, 3, (n,), generator=g), torch.randint(0, 6, (n,), generator=g)], 1)
    dup = torch.arange(n)
    dup[-1] = 0  # one exact duplicate pair
    return ctx, tgt, keys, dup


def _micro(ctx, tgt, keys, dup, b):
    return [MicroBatch(ctx[s : s + b], tgt[s : s + b], keys[s : s + b], dup[s : s + b]) for s in range(0, len(ctx), b)]


def _grads(*modules):
    return [p.grad.clone() for m in modules for p in m.parameters()]


def _big_batch(enc, loss_fn, ctx, tgt, keys, dup):
    pred, key = enc(ctx, tgt)
    out = loss_fn(pred, key, loss_fn.mask(keys, dup))
    out["loss"].backward()
    return out


def _tiny(kind):
    from lvmlib.model.models import build_model

    cfg = load_config(None, [f"model.kind={kind}", "model.d_model=16", "model.n_layers=2", "model.d_state=4"])
    torch.manual_seed(0)
    return build_model(cfg.model, 8)


@pytest.mark.parametrize("kind", ["mlp", "mamba", "two_tower"])
@pytest.mark.parametrize(
    "loss_cfg", [LossConfig(), LossConfig(proj_head=[12, 6], symmetric=True, learn_temperature=True)]
)
def test_gradient_cache_equals_one_big_batch(kind, loss_cfg):
    d, b, accum = 8, 4, 3
    ctx, tgt, keys, dup = _batch(b * accum, d)
    tower = kind == "two_tower"
    results = []
    for mode in ("big", "cached"):
        torch.manual_seed(0)
        model = _MLP(d) if kind == "mlp" else _tiny(kind)
        torch.manual_seed(1)
        loss_fn = LVMLoss(loss_cfg, d)
        enc = _Enc(model, tower)
        if mode == "big":
            out = _big_batch(enc, loss_fn, ctx, tgt, keys, dup)
            stats = {k: float(v.detach()) for k, v in out.items()}
        else:
            stats = cached_step(enc, loss_fn, _micro(ctx, tgt, keys, dup, b), key_tower=tower)
        results.append((stats, _grads(model, loss_fn)))
    (s_big, g_big), (s_c, g_c) = results
    assert s_c == pytest.approx(s_big, rel=1e-5)
    assert len(g_big) == len(g_c) and len(g_big) > 0
    for a, c in zip(g_big, g_c):
        torch.testing.assert_close(c, a, rtol=1e-4, atol=1e-6)
    if tower:  # the passage tower gets gradients: targets are not stop-grad for two_tower
        assert any(p.grad.abs().sum() > 0 for p in model.passage.parameters())


def test_gradient_cache_differs_from_naive_accumulation():
    """The reason for the cache: per-micro-batch InfoNCE (b-1 negatives) is another objective."""
    d, b = 8, 4
    ctx, tgt, keys, dup = _batch(12, d)
    outs = []
    for step in (cached_step, direct_step):
        torch.manual_seed(0)
        model = _MLP(d)
        outs.append((step(_Enc(model), LVMLoss(LossConfig(), d), _micro(ctx, tgt, keys, dup, b)), _grads(model)))
    assert outs[0][0]["infonce"] > outs[1][0]["infonce"] + 0.5  # 11 negatives vs 3
    assert not torch.allclose(outs[0][1][0], outs[1][1][0])


def test_gradient_cache_replays_dropout():
    d, b = 8, 4
    ctx, tgt, keys, dup = _batch(12, d)
    torch.manual_seed(0)
    model = _MLP(d, dropout=0.5)
    loss_fn = LVMLoss(LossConfig(), d)
    torch.manual_seed(123)
    preds = [model(ctx[s : s + b]) for s in range(0, 12, b)]  # the same RNG order as the cache's pass 1
    out = loss_fn(torch.cat(preds), tgt, loss_fn.mask(keys, dup))
    out["loss"].backward()
    g_ref, rng_ref = _grads(model), torch.get_rng_state()
    model.zero_grad()
    torch.manual_seed(123)
    stats = cached_step(_Enc(model), loss_fn, _micro(ctx, tgt, keys, dup, b))
    assert stats["loss"] == pytest.approx(out["loss"].item(), rel=1e-6)
    for a, c in zip(g_ref, _grads(model)):
        torch.testing.assert_close(c, a, rtol=1e-4, atol=1e-6)
    assert torch.equal(torch.get_rng_state(), rng_ref)  # randomness consumed once, as without the cache


def test_gradient_cache_nonfinite_loss_touches_no_gradient():
    d = 8
    ctx, tgt, keys, dup = _batch(8, d)
    tgt[0] = float("nan")
    model = _MLP(d)
    stats = cached_step(_Enc(model), LVMLoss(LossConfig(), d), _micro(ctx, tgt, keys, dup, 4))
    assert not math.isfinite(stats["loss"])
    assert all(p.grad is None for p in model.parameters())


# --------------------------------------------------------------------------- DDP (torchrun, gloo)
WORKER = textwrap.dedent("""
    import sys, torch, torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    sys.path.insert(0, sys.argv[2])
    from test_losses import _batch, _micro, _tiny, _Enc
    from lvmlib.core.config import LossConfig
    from lvmlib.train.losses import LVMLoss, cached_step
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    out = {}
    for kind in ("mamba", "two_tower"):
        model = _tiny(kind)
        torch.manual_seed(1)
        loss_fn = LVMLoss(LossConfig(proj_head=[12, 6], symmetric=True, learn_temperature=True), 8)
        tower = kind == "two_tower"
        enc = _Enc(model, tower)
        ddp = DDP(enc, broadcast_buffers=False)
        ctx, tgt, keys, dup = _batch(16, 8)  # the global batch; this rank takes its half
        n = 16 // world
        sl = slice(rank * n, (rank + 1) * n)
        micro = _micro(ctx[sl], tgt[sl], keys[sl], dup[sl], 4)
        sync = lambda last: __import__("contextlib").nullcontext() if last else ddp.no_sync()
        stats = cached_step(ddp, loss_fn, micro, key_tower=tower, sync=sync, embed=enc)
        out[kind] = {"stats": stats, "model": [p.grad for p in model.parameters()],
                     "loss": [p.grad for p in loss_fn.parameters()]}
    torch.save(out, f"{sys.argv[1]}/rank{rank}.pt")
    dist.destroy_process_group()
""")


@pytest.mark.slow
def test_ddp_two_processes_equal_single_process(tmp_path):
    (tmp_path / "worker.py").write_text(WORKER)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(tmp_path / "worker.py"),
        str(tmp_path),
        str(Path(__file__).parent),
    ]
    res = subprocess.run(
        cmd,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        env={**__import__("os").environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for kind in ("mamba", "two_tower"):
        model = _tiny(kind)
        torch.manual_seed(1)
        loss_fn = LVMLoss(LossConfig(proj_head=[12, 6], symmetric=True, learn_temperature=True), 8)
        out = _big_batch(_Enc(model, kind == "two_tower"), loss_fn, *_batch(16, 8))  # one process, 16 samples
        for r in ranks:
            assert r[kind]["stats"]["loss"] == pytest.approx(float(out["loss"].detach()), rel=1e-5)
            for a, c in zip(_grads(model), r[kind]["model"]):
                torch.testing.assert_close(c, a, rtol=1e-4, atol=1e-6)
            for a, c in zip(_grads(loss_fn), r[kind]["loss"]):
                torch.testing.assert_close(c, a, rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------- bank negatives
def _naive_bank_loss(q, target, vectors, train_rows, groups, ctx_rows, tgt_rows, scale, log_weight=0.0):
    """One query at a time, float64: softmax over [target] + every train row not sharing a group with
    the query's target or any of its context rows (their logits + log_weight)."""
    total = 0.0
    for i in range(len(q)):
        qi = q[i].double() / q[i].double().norm()
        ti = target[i].double() / target[i].double().norm()
        pos = scale * float(qi @ ti)
        banned = {int(groups[r]) for r in [tgt_rows[i], *ctx_rows[i]]}
        logits = [pos]
        for r in train_rows:
            if int(groups[r]) in banned:
                continue
            v = torch.from_numpy(np.asarray(vectors[r], np.float64))
            logits.append(scale * float(qi @ (v / v.norm())) + log_weight)
        total += float(torch.logsumexp(torch.tensor(logits), 0)) - pos
    return total / len(q)


def test_bank_info_nce_matches_a_naive_loop():
    from lvmlib.metrics import duplicate_groups
    from lvmlib.train.losses import BankNegatives, bank_info_nce

    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(60, 8)).astype(np.float32)
    vectors[7] = vectors[3]  # a duplicate of a context row
    vectors[30] = vectors[12]  # a duplicate of a target
    groups = duplicate_groups(vectors)
    train_rows = np.arange(0, 45)  # rows 45.. are val/test: never negatives
    ctx_rows = np.array([[1, 2, 3, 4, 5], [8, 9, 10, 11, 12], [40, 41, 42, 43, 44]])
    tgt_rows = np.array([6, 13, 12])  # query 2's target has a duplicate (row 30) in the train bank
    neg = BankNegatives(vectors, train_rows, groups)
    q = torch.from_numpy(rng.normal(size=(3, 8)).astype(np.float32)).requires_grad_()
    target = torch.from_numpy(vectors[tgt_rows])
    got = bank_info_nce(q, target, neg.bank, 1 / 0.07, neg.exclusions(ctx_rows, tgt_rows))
    want = _naive_bank_loss(q.detach(), target, vectors, train_rows, groups, ctx_rows, tgt_rows, 1 / 0.07)
    assert float(got.detach()) == pytest.approx(want, rel=1e-5)
    qi, cols = neg.exclusions(ctx_rows, tgt_rows)
    assert 7 in cols[qi == 0].tolist()  # the duplicate of context row 3 is masked for query 0
    assert 30 in cols[qi == 2].tolist() and 30 not in cols[qi == 0].tolist()  # target duplicate: query 2 only
    got.backward()
    assert torch.isfinite(q.grad).all() and q.grad.abs().sum() > 0


def test_sampled_bank_is_the_naive_loss_over_the_drawn_rows():
    """loss.bank_sample: a step's negatives are a uniform draw of S of the M train rows, each logit + log(M/S);
    the exclusions (context rows, duplicates, the target's group) are mapped into the draw exactly."""
    from lvmlib.metrics import duplicate_groups
    from lvmlib.train.losses import BankNegatives, bank_info_nce

    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(60, 8)).astype(np.float32)
    vectors[7] = vectors[3]
    vectors[30] = vectors[12]
    groups = duplicate_groups(vectors)
    train_rows = np.arange(0, 45)
    ctx_rows = np.array([[1, 2, 3, 4, 5], [8, 9, 10, 11, 12], [40, 41, 42, 43, 44]])
    tgt_rows = np.array([6, 13, 12])
    neg = BankNegatives(vectors, train_rows, groups)
    q = torch.from_numpy(rng.normal(size=(3, 8)).astype(np.float32))
    target = torch.from_numpy(vectors[tgt_rows])
    seen_excluded = 0
    for seed in range(20):
        neg.draw(np.random.default_rng(seed), 20)
        assert neg.active.shape == (20, 8) and len(set(neg.cols.tolist())) == 20
        drawn = train_rows[neg.cols]
        exclude = neg.exclusions(ctx_rows, tgt_rows)
        seen_excluded += len(exclude[0])
        got = bank_info_nce(q, target, neg.active, 1 / 0.07, exclude, neg.log_weight)
        want = _naive_bank_loss(q, target, vectors, drawn, groups, ctx_rows, tgt_rows, 1 / 0.07, np.log(45 / 20))
        assert float(got) == pytest.approx(want, rel=1e-5), seed
    assert seen_excluded > 0  # the draws did hit excluded rows, so the mapping was exercised
    neg.draw(np.random.default_rng(0), 45)  # S >= M: every row, exact
    assert neg.cols is None and neg.active is neg.bank and neg.log_weight == 0.0


def test_sampled_bank_estimates_the_whole_banks_softmax_mass():
    """Scaled by M/S, a uniform draw's exp-sum is an unbiased estimate of the whole bank's: the mean over
    draws lands on it (within 2%), while the unscaled sum would be S/M of it."""
    from lvmlib.train.losses import BankNegatives

    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(2000, 16)).astype(np.float32)
    neg = BankNegatives(vectors, np.arange(2000), np.arange(2000))
    q = F.normalize(torch.from_numpy(rng.normal(size=(16,)).astype(np.float32)), dim=0) * 5.0
    full = float(torch.exp(neg.bank @ q).sum())
    est = []
    for seed in range(400):
        neg.draw(np.random.default_rng(seed), 100)
        est.append(float(torch.exp(neg.active @ q).sum()) * np.exp(neg.log_weight))
    assert np.mean(est) == pytest.approx(full, rel=0.02)


def test_bank_zeroes_near_zero_entries_without_changing_the_loss():
    """MiniLM's ~1e-38 dimensions become exact zeros in the negatives' bank (their products with softmax
    gradients are subnormal, which slowed the backward sgemm 12x); loss and gradient do not move."""
    from lvmlib.metrics import duplicate_groups
    from lvmlib.train.losses import TINY, BankNegatives, bank_info_nce

    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(50, 8)).astype(np.float32)
    vectors[:, 2] = 0
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors[:, 2] = np.float32(1.5e-38) * np.sign(rng.normal(size=50))  # a "dead" dimension, as in MiniLM
    neg = BankNegatives(vectors, np.arange(40), duplicate_groups(vectors))
    assert (neg.bank[:, 2] == 0).all() and (neg.bank.abs() >= TINY).sum() == 40 * 7
    ctx_rows, tgt_rows = np.array([[0, 1, 2, 3, 4], [10, 11, 12, 13, 14]]), np.array([5, 15])
    target = torch.from_numpy(vectors[tgt_rows])
    grads, q0 = [], torch.from_numpy(rng.normal(size=(2, 8)).astype(np.float32))
    for bank in (neg.bank, torch.from_numpy(vectors[:40])):  # flushed, and the raw rows
        q = q0.clone().requires_grad_()
        loss = bank_info_nce(q, target, bank, 1 / 0.07, neg.exclusions(ctx_rows, tgt_rows))
        loss.backward()
        grads.append((float(loss.detach()), q.grad.clone()))
    assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-6)
    assert torch.allclose(grads[0][1], grads[1][1], rtol=1e-5, atol=1e-9)


def test_bank_loss_gradient_equals_one_big_batch():
    """Per-sample negatives: accumulating micro-batches (direct_step) equals one batch of everything."""
    from lvmlib.core.config import LossConfig
    from lvmlib.metrics import duplicate_groups
    from lvmlib.train.losses import BankNegatives, LVMLoss, MicroBatch, direct_step

    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(80, 6)).astype(np.float32)
    ctx_rows = rng.integers(0, 60, size=(16, 5))
    tgt_rows = rng.integers(0, 60, size=16)
    lin = torch.nn.Linear(6, 6)
    enc = lambda ctx, tgt: (lin(ctx.mean(1)), tgt)
    loss = LVMLoss(LossConfig(negatives="bank"), 6)
    loss.bank = BankNegatives(vectors, np.arange(60), duplicate_groups(vectors))

    def micro(sl):
        return MicroBatch(
            torch.from_numpy(vectors[ctx_rows[sl]]),
            torch.from_numpy(vectors[tgt_rows[sl]]),
            torch.zeros(len(tgt_rows[sl]), 2, dtype=torch.long),
            rows=(ctx_rows[sl], tgt_rows[sl]),
        )

    direct_step(enc, loss, [micro(slice(0, 16))])
    g_big = lin.weight.grad.clone()
    lin.weight.grad = None
    lin.bias.grad = None
    direct_step(enc, loss, [micro(slice(0, 8)), micro(slice(8, 16))])
    assert torch.allclose(lin.weight.grad, g_big, atol=1e-6)


def test_bank_negatives_refuse_heads_and_two_tower():
    from lvmlib.core.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="loss.negatives"):
        load_config(None, ["loss.negatives=bank", "loss.proj_head=[8, 4]"])
    with pytest.raises(ConfigError, match="loss.negatives"):
        load_config(None, ["loss.negatives=bank", "model.kind=two_tower"])


def test_bf16_bank_matches_the_float32_loss_and_gradient():
    """loss.bank_dtype = bfloat16: the bank is stored in bf16 and both matmuls run in bf16; on MiniLM-like
    unit vectors (a shared direction, 384-D) the loss is the float32 one within 1e-3 relative and the
    query gradient points the same way (cosine > 0.999), the exclusions still masked."""
    from lvmlib.metrics import duplicate_groups
    from lvmlib.train.losses import BankNegatives, bank_info_nce

    rng = np.random.default_rng(5)
    common = rng.normal(size=384)
    vectors = (rng.normal(size=(3000, 384)) + 1.5 * common).astype(np.float32)
    vectors[7] = vectors[3]
    groups = duplicate_groups(vectors)
    ctx_rows = rng.integers(0, 3000, size=(64, 5))
    tgt_rows = rng.integers(0, 3000, size=64)
    ctx_rows[0, 0] = 3
    q0 = torch.from_numpy(vectors[tgt_rows] + 0.8 * rng.normal(size=(64, 384)).astype(np.float32))
    target = torch.from_numpy(vectors[tgt_rows])
    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        neg = BankNegatives(vectors, np.arange(3000), groups, dtype=str(dtype).removeprefix("torch."))
        assert neg.bank.dtype == dtype
        q = q0.clone().requires_grad_(True)
        loss = bank_info_nce(q, target, neg.active, 1 / 0.07, neg.exclusions(ctx_rows, tgt_rows))
        loss.backward()
        assert q.grad.dtype == torch.float32
        out[dtype] = (float(loss.detach()), q.grad.clone())
    (l32, g32), (l16, g16) = out[torch.float32], out[torch.bfloat16]
    assert l16 == pytest.approx(l32, rel=1e-3)
    assert l16 != l32  # bf16 did run (a rounding that changed nothing would make this test vacuous)
    assert float(F.cosine_similarity(g16.ravel(), g32.ravel(), dim=0)) > 0.999
    # masking survives bf16: excluding every column but the positive leaves log(1) = 0 per query
    neg = BankNegatives(vectors[:50], np.arange(50), np.arange(50), dtype="bfloat16")
    every = (torch.arange(4).repeat_interleave(50), torch.arange(50).repeat(4))
    zero = bank_info_nce(q0[:4], target[:4], neg.active, 1 / 0.07, every)
    assert float(zero) == pytest.approx(0.0, abs=1e-6)
