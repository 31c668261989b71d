"""Training's val_curve_recall_at_5 (lvmlib.train.validation.val_curve): the largest bank of evaluation's
bank-size curve on val, so it equals eval.json's curve row for the same checkpoint (`eval.split: val`);
absent without distractors; choosing it needs data.distractor_path."""

import numpy as np
import pytest
from test_evaluate import make_fake_run

from lvmlib import metrics as mt
from lvmlib.core.config import ConfigError, load_config
from lvmlib.core.errors import DataError
from lvmlib.data.prepare import load_prepared
from lvmlib.eval.evaluate import evaluate_run
from lvmlib.model.checkpoint import load_checkpoint
from lvmlib.train.loop import train
from lvmlib.train.losses import LVMLoss
from lvmlib.train.validation import val_curve, val_queries, validate

TRAIN = [
    "train.epochs=2",
    "train.batch_size=8",
    "train.lr=3e-3",
    "model.residual=last",  # predictions near the last context chunk: R@5 between 0 and 1 in the curve bank
    "train.warmup_steps=2",
    "train.threads=1",
    "train.device=cpu",
    "train.val_max_queries=0",
    "gates.threshold=0.0",
    "gates.lower=-1.0",
    "eval.split=val",
    "eval.bank_sizes=[0,10,-1]",
    "eval.bootstrap=0",
    "eval.curve_seed=5",
]
CURVE = ["data.distractor_path=d.jsonl", "train.best_metric=val_curve_recall_at_5"]


def distractors(run, n=150, noise=0.05, seed=7):
    """Distractors close to val chunks (so they beat some targets), written where the data stage would."""
    rng = np.random.default_rng(seed)
    bank = np.load(run / "data" / "bank_vectors.npy")
    rows = rng.choice(np.flatnonzero(np.load(run / "data" / "bank_split.npy") == 1), n)
    near = bank[rows] + noise * rng.normal(size=(n, bank.shape[1])) / np.sqrt(bank.shape[1])
    dist = mt.l2_normalize(near).astype(np.float32)
    np.save(run / "data" / "distractor_vectors.npy", dist)
    return dist


@pytest.fixture(scope="module")
def curve_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("val_curve_run")
    cfg = make_fake_run(run, overrides=[*TRAIN, *CURVE], checkpoint=False)
    distractors(run)
    history = train(cfg, run, progress=False)
    ev = evaluate_run(cfg, run, progress=False)
    return run, cfg, history, ev


def largest_curve_r5(ev):
    c = ev["bank_curve"]
    size = max(x["size"] for x in c["sizes"])
    assert size == c["distractor_chunks"]  # -1: every distractor
    row = next(r for r in c["rows"] if r["predictor"] == ev["primary_model"] and r["size"] == size)
    return row["recall_at_5"]


def test_val_curve_recall_equals_the_evaluations_largest_bank(curve_run):
    run, cfg, history, ev = curve_run
    assert ev["bank_curve"]["split"] == "val"
    assert all("val_curve_recall_at_5" in r for r in history)
    best = next(r for r in reversed(history) if r["is_best"])  # the epoch best.pt holds
    assert best["val_curve_recall_at_5"] == max(r["val_curve_recall_at_5"] for r in history)
    assert best["val_curve_bank_size"] == ev["bank_curve"]["held_out_chunks"] + ev["bank_curve"]["distractor_chunks"]
    assert 0.2 < best["val_curve_recall_at_5"] < 0.95  # neither floor nor ceiling: a mismatch would show
    assert best["val_curve_recall_at_5"] == pytest.approx(largest_curve_r5(ev), abs=1e-12)
    # the same through validate() on the loaded best.pt, so the match is not a coincidence of one number
    prep = load_prepared(run)
    model, _, _ = load_checkpoint(run / "best.pt", d_vec=prep.d_vec)
    q = val_queries(prep, cfg)
    assert len(q["tgt_idx"]) == len(prep.windows("val")[1])  # every val window
    out = validate(
        model.eval(), LVMLoss(cfg.loss, prep.d_vec), prep, q, cfg, "cpu", 16, False, curve=val_curve(prep, cfg, q)
    )
    assert out["val_curve_recall_at_5"] == pytest.approx(largest_curve_r5(ev), abs=1e-12)


def test_absent_without_distractors(curve_run, tmp_path):
    run = tmp_path / "plain"
    cfg = make_fake_run(run, overrides=TRAIN, checkpoint=False)
    history = train(cfg, run, progress=False)
    assert history and all("val_curve_recall_at_5" not in r for r in history)
    # distractor_path set but the data stage wrote none: refused, as evaluation refuses it
    cfg2 = load_config(
        None, [*TRAIN, *CURVE, "model.d_model=16", "model.n_layers=1", "model.d_state=4", "data.context_len=5"]
    )
    with pytest.raises(DataError, match="run the data stage"):
        train(cfg2, run, progress=False)


@pytest.mark.parametrize("key", ["train.best_metric", "train.early_stop_metric"])
def test_choosing_it_needs_distractor_path(key):
    with pytest.raises(ConfigError, match=f"{key}.*data.distractor_path") as e:
        load_config(None, [f"{key}=val_curve_recall_at_5"])
    assert len(str(e.value).strip().splitlines()) == 1
    cfg = load_config(None, [f"{key}=val_curve_recall_at_5", "data.distractor_path=d.jsonl"])
    assert cfg.train.best_metric in ("val_curve_recall_at_5", "val_cosine")
