"""Phase-1 evaluation on a small fake run: the eval.json contract, the sanity checks that must stop it,
payload-only evaluation, extra checkpoints, and the notebook end to end (slow)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from lvmlib.app import studies
from lvmlib.core.config import Config, dump_config, load_config
from lvmlib.core.errors import SanityError
from lvmlib.core.runs import atomic_save_npz
from lvmlib.data.payload import save_npz_streaming
from lvmlib.data.splits import build_windows
from lvmlib.eval import evaluate as ev_mod
from lvmlib.eval.evaluate import evaluate_run
from lvmlib.eval.inputs import check_alignment
from lvmlib.model.checkpoint import save_checkpoint
from lvmlib.model.models import build_model

ROOT = Path(__file__).resolve().parent.parent
REQUIRED = ("pred_target_cosine", "recall_at_1", "recall_at_5", "recall_at_10", "n_queries", "bank_size")


def make_fake_run(
    run_dir, n_articles=30, d_vec=32, K=5, seed=0, kind="mamba", overrides=(), checkpoint=True, dtype=np.float32
):
    """A run dir in the DESIGN.md layout: random-walk unit vectors per article (so copying the last
    context is a real baseline), texts, windows, payload, params.yaml and an untrained best.pt."""
    run_dir = Path(run_dir)
    (run_dir / "data").mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics").mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    keys, vecs, texts, articles = [], [], [], []
    for a in range(n_articles):
        n = int(rng.integers(K + 2, K + 12))
        v = rng.normal(size=d_vec)
        for p in range(n):
            v = v / np.linalg.norm(v)
            keys.append((a, p))
            vecs.append(v.copy())
            texts.append(f"article {a} chunk {p}")
            v = v + 0.6 * rng.normal(size=d_vec) / np.sqrt(d_vec)
        split = "train" if a < int(0.6 * n_articles) else ("val" if a < int(0.8 * n_articles) else "test")
        articles.append({"article_id": a, "title": f"Title {a}", "split": split, "n_chunks": n})
    keys = np.asarray(keys, np.int64)
    bank = np.asarray(vecs, dtype)
    bank[3] = bank[40]  # one duplicated chunk (the same text twice in the corpus)
    texts[3] = texts[40]
    code = {"train": 0, "val": 1, "test": 2}
    bank_split = np.asarray([code[articles[a]["split"]] for a in keys[:, 0]], np.int8)
    ctx, tgt, wsplit = build_windows(keys, bank_split, K)
    d = run_dir / "data"
    np.save(d / "bank_vectors.npy", bank)
    np.save(d / "bank_keys.npy", keys)
    np.save(d / "bank_split.npy", bank_split)
    (d / "bank_texts.jsonl").write_text("".join(json.dumps(t) + "\n" for t in texts))
    (d / "articles.json").write_text(json.dumps(articles))
    atomic_save_npz(d / "windows.npz", context_idx=ctx, target_idx=tgt, split=wsplit)
    D = d_vec
    save_npz_streaming(
        d / "payload.npz",
        {
            "context_sequences": ((len(tgt), K, D), dtype, lambda s, e: bank[ctx[s:e]]),
            "target_vectors": ((len(tgt), D), dtype, lambda s, e: bank[tgt[s:e]]),
            "truth_keys": ((len(tgt), 2), np.int64, lambda s, e: keys[tgt[s:e]]),
            "split": ((len(tgt),), np.int8, lambda s, e: wsplit[s:e]),
        },
    )
    cfg = load_config(
        None,
        [
            f"model.kind={kind}",
            "model.d_model=16",
            "model.n_layers=1",
            "model.d_state=4",
            "eval.bootstrap=50",
            "eval.latency_queries=5",
            "eval.n_examples=2",
            "eval.search_chunk=97",
            f"data.context_len={K}",
            *overrides,
        ],
    )
    (d / "summary.json").write_text(json.dumps({"encoder": cfg.data.encoder, "d_vec": D}))
    (run_dir / "params.yaml").write_text(dump_config(cfg))
    if checkpoint:
        torch.manual_seed(seed)
        save_checkpoint(run_dir / "best.pt", build_model(cfg.model, D), cfg, D)
    return cfg


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    run = tmp_path_factory.mktemp("fake_run")
    cfg = make_fake_run(run)
    ev = evaluate_run(cfg, run, progress=False)
    return run, cfg, ev


def test_eval_json_has_the_contract_keys(fake):
    run, cfg, ev = fake
    on_disk = json.loads((run / "metrics" / "eval.json").read_text())
    assert on_disk["recall_at_5"] == ev["recall_at_5"]
    for k in REQUIRED:
        assert k in on_disk and np.isfinite(on_disk[k]), k
        assert k in on_disk["baseline_copy_last"], k
    assert on_disk["decision"] in ("proceed_phase_2", "weak", "option_4_or_5")
    assert on_disk["primary_bank"] == "global" and on_disk["primary_context"] == "context_excluded"
    assert on_disk["bank_size"] == len(np.load(run / "data" / "bank_keys.npy"))
    n_test = int((np.load(run / "data" / "windows.npz")["split"] == 2).sum())
    assert on_disk["n_queries"] == n_test
    assert isinstance(on_disk["beats_best_baseline"], bool)
    assert on_disk["gates"]["best_baseline"]["name_recall_at_5"] in cfg.eval.baselines


def test_every_model_bank_and_variant_is_reported(fake):
    _, cfg, ev = fake
    assert set(ev["models"]) == {"mamba", *cfg.eval.baselines}
    for name, res in ev["models"].items():
        assert set(res["banks"]) == set(cfg.eval.banks)
        for b, variants in res["banks"].items():
            for variant in ("context_excluded", "context_included"):
                m = variants[variant]
                for k in (
                    "recall_at_1",
                    "recall_at_5",
                    "recall_at_50",
                    "mrr",
                    "contain_at_50",
                    "eff_at_5",
                    "mean_rank",
                    "median_rank",
                ):
                    assert k in m, (name, b, variant, k)
                lo, hi = m["recall_at_5_ci"]
                assert lo <= m["recall_at_5"] <= hi
    # copy-last "retrieves" its own input when the context stays in the bank
    cl = ev["models"]["copy_last"]["banks"]["global"]
    assert cl["context_included"]["recall_at_1"] == 0.0
    assert cl["context_excluded"]["recall_at_5"] > cl["context_included"]["recall_at_5"] - 1e-9


def test_queries_table_matches_the_json(fake):
    import pandas as pd

    run, cfg, ev = fake
    q = pd.read_csv(run / "metrics" / "queries.csv")
    assert len(q) == ev["n_queries"] * len(ev["models"])
    prim = q[q.model == ev["primary_model"]]
    assert abs((prim.rank_global <= 5).mean() - ev["recall_at_5"]) < 1e-12
    assert abs(prim.cosine.mean() - ev["pred_target_cosine"]) < 1e-5
    assert {"article_id", "position", "rank_same_article_incl_context"} <= set(q.columns)
    # the Large Concept Model metrics beside R@k, from the same per-query numbers
    rec = ev["models"][ev["primary_model"]]
    assert rec["l2_to_target"] == pytest.approx(
        np.sqrt(np.clip(2 - 2 * prim.cosine.to_numpy(), 0, None)).mean(), abs=1e-5
    )
    held = rec["banks"]["test"]["context_excluded"]
    assert held["recall_at_1"] <= held["contrastive_accuracy"] <= 1.0


def test_sanity_and_latency_recorded(fake):
    _, _, ev = fake
    s = ev["sanity"]
    assert all(v == 1.0 for v in s["oracle"]["recall_at_1"].values())
    assert s["oracle"]["bank_rows_with_a_duplicate"] == 2
    assert s["search_agreement"]["agreement"] == 1.0
    assert s["alignment"]["payload"]["max_abs_diff_context"] == 0.0
    lat = ev["latency"]["mamba"]
    for part in ("forward_ms", "search_ms", "total_ms"):
        assert 0 < lat[part]["p50"] <= lat[part]["p95"]
    assert ev["examples"] and len(ev["examples"][0]["retrieved"]) == 3
    assert ev["examples"][0]["context_texts"][0].startswith("article ")


def test_decision_uses_the_gates_and_names_the_best_baseline(fake):
    _, cfg, ev = fake
    g = ev["gates"]
    assert g["decision"] == ev["decision"] and g["recall_at_5"] == ev["recall_at_5"]
    assert g["best_baseline"]["name"] == ev["best_baseline"]
    assert len(g["best_baseline"]["diff_recall_at_5_ci"]) == 2


def test_best_baseline_takes_the_best_r5_and_the_best_cosine_separately():
    from lvmlib.metrics import Ranks

    cfg = Config()
    cfg.eval.bootstrap = 200
    n = 80
    art = np.repeat(np.arange(20), 4)

    def model(r5, cos, rank_hit):
        ranks = np.where(np.arange(n) < r5 * n, rank_hit, 100)
        r5 = float((ranks <= 5).mean())
        res = {"pred_target_cosine": cos, "banks": {"global": {"context_excluded": {"recall_at_5": r5}}}}
        pq = {"cosine": np.full(n, cos), "ranks": {"global": Ranks(ranks, ranks, ranks, ranks)}}
        return res, pq

    parts = {"m": model(0.6, 0.45, 1), "copy_last": model(0.25, 0.43, 1), "context_mean": model(0.1, 0.52, 1)}
    results = {k: v[0] for k, v in parts.items()}
    per_query = {k: v[1] for k, v in parts.items()}
    d = ev_mod.decide(results, per_query, "m", ["copy_last", "context_mean"], "global", "context_excluded", art, cfg)
    bb = d["best_baseline"]
    assert bb["name_recall_at_5"] == "copy_last" and bb["name_cosine"] == "context_mean"
    assert bb["recall_at_5"] == 0.25 and bb["pred_target_cosine"] == 0.52
    assert d["decision"] == "proceed_phase_2" and d["beats_best_baseline_r5"] and not d["beats_best_baseline"]
    assert d["beats_best_baseline_r5_ci_excludes_zero"]
    assert bb["diff_cosine_ci"] == pytest.approx([0.45 - 0.52] * 2)


def _copy(src, dst):
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("metrics", "eval_*"))
    return dst


def test_corrupted_context_stops_the_evaluation(fake, tmp_path):
    run, cfg, _ = fake
    run2 = _copy(run, tmp_path / "r")
    path = run2 / "data" / "payload.npz"
    with np.load(path) as z:
        arrays = {k: z[k].copy() for k in z.files}
    i = int(np.flatnonzero(arrays["split"] == 2)[3])
    arrays["context_sequences"][i, 2] = -arrays["context_sequences"][i, 2]  # a context from "another space"
    atomic_save_npz(path, **arrays)
    with pytest.raises(SanityError, match=r"context vector of window \d+ .*differs from the bank"):
        evaluate_run(cfg, run2, progress=False)
    assert not (run2 / "metrics" / "eval.json").exists()


def test_missing_truth_key_stops_the_evaluation(fake, tmp_path):
    run, cfg, _ = fake
    run2 = _copy(run, tmp_path / "r")
    path = run2 / "data" / "payload.npz"
    with np.load(path) as z:
        arrays = {k: z[k].copy() for k in z.files}
    i = int(np.flatnonzero(arrays["split"] == 2)[0])
    arrays["truth_keys"][i] = (999, 7)
    atomic_save_npz(path, **arrays)
    with pytest.raises(SanityError, match=r"truth key \(article 999, position 7\) .* not in the bank"):
        evaluate_run(cfg, run2, progress=False)


def test_check_alignment_on_hand_built_windows():
    keys = np.array([[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]])
    bank = np.eye(6, dtype=np.float32)
    tk = np.array([[0, 2], [1, 2]])
    ctx = bank[[[0, 1], [3, 4]]]
    rep = check_alignment(bank, keys, tk, ctx, bank[[2, 5]])
    assert rep["target_rows"].tolist() == [2, 5] and rep["context_rows"].tolist() == [[0, 1], [3, 4]]
    with pytest.raises(SanityError, match="context key \\(article 1, position 0\\) of window 1"):
        check_alignment(bank, keys[[0, 1, 2, 4, 5]], tk, ctx)
    bad = ctx.copy()
    bad[1, 1, 0] += 0.01
    with pytest.raises(SanityError, match="window 1"):
        check_alignment(bank, keys, tk, bad)
    with pytest.raises(SanityError, match="target vector of window 0"):
        check_alignment(bank, keys, tk, ctx, bank[[1, 5]])


def test_unnormalised_bank_stops_the_evaluation(fake, tmp_path):
    run, cfg, _ = fake
    run2 = _copy(run, tmp_path / "r")
    np.save(run2 / "data" / "bank_vectors.npy", 2 * np.load(run2 / "data" / "bank_vectors.npy"))
    with pytest.raises(SanityError, match="not L2-normalised"):
        evaluate_run(cfg, run2, progress=False)


def test_payload_alone_gives_the_same_numbers(fake, tmp_path):
    run, cfg, ev = fake
    ev2 = evaluate_run(cfg, run, data_dir=run / "data" / "payload.npz", progress=False, out_dir=tmp_path / "o")
    assert ev2["bank_size"] == ev["bank_size"]  # every article is long enough: the bank is rebuilt whole
    for k in REQUIRED:
        assert ev2[k] == pytest.approx(ev[k]), k
    assert ev2["examples"] == []  # a payload carries no texts
    assert (tmp_path / "o" / "eval.json").is_file()


def test_data_dir_output_goes_beside_not_over_the_runs_own(fake, tmp_path):
    run, cfg, _ = fake
    other = tmp_path / "other"
    make_fake_run(other, n_articles=20, seed=3, checkpoint=False)
    before = (run / "metrics" / "eval.json").read_text()
    ev = evaluate_run(cfg, run, data_dir=other, progress=False)
    assert Path(ev["out_dir"]) == run / "eval_other" and (run / "eval_other" / "queries.csv").is_file()
    assert (run / "metrics" / "eval.json").read_text() == before
    shutil.rmtree(run / "eval_other")


def test_extra_checkpoints_and_two_tower_in_one_table(fake, tmp_path):
    run, cfg, _ = fake
    tt_cfg = load_config(
        None, ["model.kind=two_tower", "model.d_model=16", "model.n_layers=1", "model.d_state=4", "model.tower_dim=24"]
    )
    torch.manual_seed(1)
    save_checkpoint(tmp_path / "tt.pt", build_model(tt_cfg.model, 32), tt_cfg, 32)
    amn_cfg = load_config(None, ["model.kind=amn", "model.amn_hidden=16"])
    save_checkpoint(tmp_path / "amn.pt", build_model(amn_cfg.model, 32), amn_cfg, 32)
    ev = evaluate_run(
        cfg,
        run,
        extra_checkpoints={"two_tower": tmp_path / "tt.pt", "amn": tmp_path / "amn.pt"},
        progress=False,
        out_dir=tmp_path / "o",
    )
    assert ev["models"]["two_tower"]["retrieval_space"] == "learned"
    assert ev["models"]["amn"]["role"] == "extra" and "amn" in ev["latency"]
    tab = ev_mod.results_table(ev)
    assert set(tab.model) == {"mamba", "two_tower", "amn", *cfg.eval.baselines}
    assert len(tab) == len(ev["models"]) * 3 * 2


def test_a_baseline_run_needs_no_checkpoint(tmp_path):
    cfg = make_fake_run(tmp_path / "r", kind="ridge", checkpoint=False, overrides=["eval.baselines=[copy_last]"])
    ev = evaluate_run(cfg, tmp_path / "r", progress=False)
    assert ev["primary_model"] == "ridge_run" and ev["best_baseline"] == "copy_last"
    assert "fit at eval on" in ev["models"]["ridge_run"]["source"]


def test_ridge_alpha_is_chosen_on_val_and_knn_successor_is_scored(tmp_path):
    """eval.ridge_alphas: the ridge baseline is the alpha of the best val cosine (recorded per alpha), fitted on
    the same train windows; knn_successor joins the same queries."""
    from lvmlib.eval.inputs import load_eval_data
    from lvmlib.model.models import Ridge

    alphas = [0.01, 1.0, 1000.0]
    cfg = make_fake_run(
        tmp_path / "r", overrides=[f"eval.ridge_alphas={alphas}", "eval.baselines=[copy_last, ridge, knn_successor]"]
    )
    ev = evaluate_run(cfg, tmp_path / "r", progress=False)
    rec = ev["models"]["ridge"]
    scores = rec["ridge_alpha_val_cosine"]
    assert list(scores) == ["0.01", "1", "1000"]
    best = max(scores, key=scores.get)
    assert f"alpha {best} chosen on val" in rec["source"]
    data = load_eval_data(tmp_path / "r")  # the val cosine of the chosen alpha, recomputed by hand
    ctx, tgt = data.window_rows["train"]
    vc, vt = data.window_rows["val"]
    m = Ridge(data.d_vec, float(best)).fit(
        torch.from_numpy(data.contexts(ctx)), torch.from_numpy(data.bank_vectors[tgt])
    )
    with torch.no_grad():
        cos = torch.nn.functional.cosine_similarity(
            m(torch.from_numpy(data.contexts(vc))), torch.from_numpy(data.bank_vectors[vt])
        )
    assert scores[best] == pytest.approx(float(cos.mean()), abs=1e-5)
    assert np.isfinite(ev["models"]["knn_successor"]["pred_target_cosine"])


def test_a_float16_bank_evaluates_like_float32(fake, tmp_path):
    _, _, ev32 = fake
    cfg = make_fake_run(tmp_path / "r", dtype=np.float16)
    ev = evaluate_run(cfg, tmp_path / "r", progress=False)
    assert ev["sanity"]["oracle"]["recall_at_1"]["global/context_excluded"] == 1.0
    assert ev["baseline_copy_last"]["recall_at_5"] == pytest.approx(ev32["baseline_copy_last"]["recall_at_5"], abs=0.02)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    from lvmlib.core.errors import CheckpointError

    cfg = make_fake_run(tmp_path / "r", checkpoint=False)
    with pytest.raises(CheckpointError, match="best.pt: checkpoint file not found"):
        evaluate_run(cfg, tmp_path / "r", progress=False)


def test_checkpoint_of_another_encoder_is_refused(tmp_path):
    cfg = make_fake_run(tmp_path / "r")
    (tmp_path / "r" / "data" / "summary.json").write_text(json.dumps({"encoder": "another-encoder"}))
    with pytest.raises(SanityError, match="another-encoder"):
        evaluate_run(cfg, tmp_path / "r", progress=False)


@pytest.mark.slow
def test_notebook_runs_against_a_fake_run(tmp_path):
    import papermill as pm

    from lvmlib.app.execute import ensure_kernel
    from lvmlib.core.paths import NOTEBOOK_DIR

    make_fake_run(tmp_path / "r")
    out = tmp_path / "04_eval.ipynb"
    pm.execute_notebook(
        str(NOTEBOOK_DIR / "04_eval.ipynb"),
        str(out),
        kernel_name=ensure_kernel(),
        parameters={"params_path": "", "run_dir": str(tmp_path / "r"), "overrides": []},
        progress_bar=False,
        cwd=str(ROOT),
    )
    ev = json.loads((tmp_path / "r" / "metrics" / "eval.json").read_text())
    assert all(np.isfinite(ev[k]) for k in REQUIRED)
    text = out.read_text()
    assert "Traceback" not in text and "image/png" in text


@pytest.mark.slow
def test_evaluate_elsewhere_renders_the_report_for_another_corpus(tmp_path):
    make_fake_run(tmp_path / "r")
    make_fake_run(tmp_path / "dev", n_articles=20, seed=5, checkpoint=False)
    out = studies.evaluate_elsewhere(
        tmp_path / "r", tmp_path / "dev" / "data" / "payload.npz", reports_root=tmp_path / "reports", progress=False
    )
    assert out == (tmp_path / "r" / "eval_payload").resolve()
    ev = json.loads((out / "eval.json").read_text())
    assert ev["data_source"].endswith("dev/data/payload.npz") and np.isfinite(ev["recall_at_5"])
    assert (out / "queries.csv").is_file() and (out / "04_eval.ipynb").is_file()
    assert (tmp_path / "reports" / "r" / "eval_payload.html").is_file()
    assert not (tmp_path / "r" / "metrics" / "eval.json").exists()  # the run's own evaluation is untouched
