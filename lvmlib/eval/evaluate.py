"""Phase-1 evaluation: every model and baseline on identical queries, over explicit banks, with checks.

Shapes: n eval queries (windows of the eval split), K context length, D vector width, M bank rows,
D' retrieval width (two_tower's learned space, else D).

Steps of `evaluate_run` (each logged; any failed check raises `SanityError` and nothing is written):
1. data: the run's `data/` (or `data_dir`: another prepared run/data dir, or a seed-format payload .npz);
2. sanity: every truth key and context key is in the bank; every context/target vector equals the
   bank vector at its key (the windows' own files and, when present, `payload.npz`); bank finite and
   L2-normalised; the oracle (query = true target) reaches R@1 >= eval.oracle_min_recall_at_1 in every
   bank, duplicates of the target counted as the target (how many there are is reported);
3. models: the run's checkpoint (or the baseline `model.kind` names), `extra_checkpoints`, and the
   baselines of `eval.baselines` fitted on train windows — all predict the same queries;
4. exact ranks in every bank (global | test | same_article), with and without the K context chunks,
   R@k, MRR, Contain@50, Eff@5, mean/median rank, cosine quartiles, 95% CIs resampling articles;
5. a second code path (`metrics.exact_search`, faiss or torch) must reproduce the primary ranks;
6. latency P50/P95 at batch 1: model forward, search, and both together;
7. the Phase-1 decision on the primary bank (`eval.primary_bank`, context excluded by default) via
   `gates.phase1_decision`, including whether the model beats the best baseline (paired CI).
Outputs: `eval.json` and `queries.csv` (one row per model x query) in `metrics/` (or `out_dir`).
"""

from __future__ import annotations

import dataclasses
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lvmlib import metrics as mt
from lvmlib.core.config import SPLITS, Config, ConfigError
from lvmlib.core.errors import ProtocolError, SanityError
from lvmlib.core.runs import atomic_write_json, atomic_write_text, check_files
from lvmlib.eval.curve import bank_curve
from lvmlib.eval.inputs import EvalData, check_bank, check_windows, load_eval_data
from lvmlib.eval.latency import measure_latency
from lvmlib.model.predict import model_bank, predict
from lvmlib.train.gates import phase1_decision

BANK_DESCRIPTIONS = {
    "global": "every chunk of the corpus (all splits)",
    "test": "every chunk of the evaluation-split articles",
    "same_article": "every chunk of the query's own article",
}


def _log(progress: bool, msg: str) -> None:
    if progress:
        print(f"[eval] {msg}", flush=True)


# --------------------------------------------------------------------------- models
@dataclasses.dataclass
class Entry:
    name: str
    role: str  # primary | extra | baseline
    model: torch.nn.Module
    source: str
    alpha_scores: dict[str, float] | None = None  # ridge with eval.ridge_alphas: val cosine per alpha


def _load_models(cfg: Config, run_dir: Path, data: EvalData, checkpoint, extra, fit_rows, device) -> list[Entry]:
    from lvmlib.model.checkpoint import load_checkpoint
    from lvmlib.model.models import BASELINE_KINDS, LastBlend, baseline, build_model

    entries: list[Entry] = []
    ckpt_path = Path(checkpoint) if checkpoint else run_dir / "best.pt"
    if ckpt_path.is_file() or checkpoint or cfg.model.kind not in BASELINE_KINDS:
        model, mcfg, _ = load_checkpoint(ckpt_path, d_vec=data.d_vec)
        if data.encoder and mcfg.data.encoder != data.encoder:
            raise SanityError(
                f"{ckpt_path}: trained on vectors of encoder {mcfg.data.encoder!r}, but {data.source} "
                f"was encoded with {data.encoder!r}"
            )
        name = mcfg.model.kind if mcfg.model.kind not in BASELINE_KINDS else f"{mcfg.model.kind}_run"
        source = str(ckpt_path)
        if cfg.eval.blend_last:
            model, name = LastBlend(model, cfg.eval.blend_last), f"{name}+last"
            source += f", blended with the last context vector (eval.blend_last {cfg.eval.blend_last:g})"
        entries.append(Entry(name, "primary", model, source))
    else:  # a run whose model *is* a closed-form baseline has no checkpoint to load
        entries.append(Entry(f"{cfg.model.kind}_run", "primary", build_model(cfg.model, data.d_vec), "fit at eval"))
    for name, path in (extra or {}).items():
        model, _, _ = load_checkpoint(Path(path), d_vec=data.d_vec)
        entries.append(Entry(name, "extra", model, str(path)))
    for kind in cfg.eval.baselines:
        entries.append(
            Entry(kind, "baseline", baseline(kind, data.d_vec, cfg.model.ridge_alpha, cfg.model.knn_k), "fit at eval")
        )
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise ConfigError(
            f"evaluate_run: model names must be unique, {dupes} repeat (rename extra_checkpoints); got {names}"
        )
    need_fit = [e for e in entries if not getattr(e.model, "trainable", True) and e.source == "fit at eval"]
    if need_fit:
        ctx_tr, tgt_tr = fit_rows
        if len(tgt_tr) == 0:
            raise SanityError(f"{data.source}: no train windows to fit the baselines {[e.name for e in need_fit]}")
        c = torch.from_numpy(data.contexts(ctx_tr))  # (n_fit, K, D)
        t = torch.from_numpy(np.asarray(data.bank_vectors[tgt_tr], np.float32))  # (n_fit, D)
        for e in need_fit:
            e.source = f"fit at eval on {len(tgt_tr)} train windows"
            if e.name == "ridge" and cfg.eval.ridge_alphas:  # one fit per alpha, the val-best kept
                e.model, e.alpha_scores = _ridge_on_val(cfg, data, c, t)
                e.source += f", alpha {e.model.alpha:g} chosen on val (best val cosine of {cfg.eval.ridge_alphas})"
            else:
                e.model.fit(c, t)
    for e in entries:
        e.model.to(device).eval()
    return entries


def _confirmatory_read(cfg: Config, data: EvalData, run_dir: Path) -> dict[str, Any] | None:
    """Test evaluations of a reserved article range (the confirmatory set, `data.test_path`) go through the
    ledger of `lvmlib.core.confirm` (a committed protocol, one study, reads counted); None for any other."""
    from lvmlib.core.confirm import LEDGER, record_read
    from lvmlib.core.runs import read_json

    d = getattr(data.prepared, "dir", None)
    if cfg.eval.split != "test" or d is None or not (Path(d) / "summary.json").is_file():
        return None
    test_set = read_json(Path(d) / "summary.json").get("test_path") or {}
    if not test_set.get("reserved"):
        return None
    e = cfg.eval
    if not e.protocol:
        raise ProtocolError(
            f"{d}: its test split is the confirmatory set ({test_set['path']}, articles from {test_set['first']:,}); "
            "set eval.protocol to the committed protocol and eval.study to the study this read belongs to"
        )
    return record_read(e.protocol, e.study, run_dir, test_set, e.force_read, e.ledger or LEDGER)


def _ridge_on_val(cfg: Config, data: EvalData, c: torch.Tensor, t: torch.Tensor):
    """eval.ridge_alphas: ridge refitted with the alpha of the best mean cosine on val windows (never the
    evaluated split's targets unless that split is val) -> (the ridge, {alpha: val cosine})."""
    from lvmlib.model.models import ridge_alpha_on_val

    ctx_v, tgt_v = data.window_rows["val"]
    if len(tgt_v) == 0:
        raise SanityError(f"{data.source}: no val windows to choose ridge's alpha on (eval.ridge_alphas)")
    vc = torch.from_numpy(data.contexts(ctx_v))  # (n_val, K, D)
    vt = torch.from_numpy(np.asarray(data.bank_vectors[tgt_v], np.float32))  # (n_val, D)
    model, scores = ridge_alpha_on_val(c, t, vc, vt, cfg.eval.ridge_alphas)
    return model, {f"{a:g}": s for a, s in zip(cfg.eval.ridge_alphas, scores)}


# --------------------------------------------------------------------------- the evaluation
def oracle_check(
    bank: np.ndarray, tgt_rows: np.ndarray, groups: np.ndarray, rank_kw: dict, min_r1: float
) -> dict[str, Any]:
    """Query = the true target vector must rank first in every bank and variant (duplicates of the
    target count as the target); raises SanityError below `min_r1`."""
    ranks = mt.target_ranks(np.asarray(bank[tgt_rows], np.float32), bank, tgt_rows, **rank_kw)
    gsize = np.bincount(groups, minlength=len(groups))
    out = {
        "min_recall_at_1": min_r1,
        "bank_rows_with_a_duplicate": int((gsize[groups] > 1).sum()),
        "queries_whose_target_has_duplicates": int((gsize[groups[tgt_rows]] > 1).sum()),
        "recall_at_1": {},
    }
    for b, r in ranks.items():
        for variant, rk in (("context_excluded", r.excluded), ("context_included", r.included)):
            r1 = mt.recall_at_k(rk, 1)
            out["recall_at_1"][f"{b}/{variant}"] = r1
            if r1 < min_r1:
                worst = int(np.argmax(rk))
                raise SanityError(
                    f"oracle check failed: query = true target reaches R@1 {r1:.4f} < {min_r1} in "
                    f"bank {b} ({variant}); e.g. query {worst} ranks {rk[worst]} — near-duplicate "
                    "vectors or a broken bank/search"
                )
    return out


def _score(ent: Entry, contexts, bank, tgt_rows, rank_kw, articles, cfg: Config, device):
    """One model on the shared queries -> (its eval.json record, per-query arrays, its bank)."""
    pred = predict(ent.model, contexts, device)  # (n, D')
    if not np.isfinite(pred).all():
        raise SanityError(f"model {ent.name}: {int((~np.isfinite(pred).all(1)).sum())} predictions are not finite")
    bank_m = model_bank(ent.model, bank, device, cfg.eval.search_chunk)  # (M, D')
    cos = mt.cosines(pred, np.asarray(bank_m[tgt_rows], np.float32))  # (n,)
    ranks = mt.target_ranks(mt.l2_normalize(pred), bank_m, tgt_rows, **rank_kw)
    pq = {"cosine": cos, "ranks": ranks, "pred": mt.l2_normalize(pred)}  # pred: searched again (primary), curve
    res: dict[str, Any] = {
        "role": ent.role,
        "kind": type(ent.model).__name__,
        "source": ent.source,
        "trainable": bool(getattr(ent.model, "trainable", True)),
        "retrieval_space": getattr(ent.model, "retrieval_space", "bank"),
        "n_params": int(sum(p.numel() for p in ent.model.parameters())),
        **({"ridge_alpha_val_cosine": ent.alpha_scores} if ent.alpha_scores else {}),
        **mt.cosine_summary(cos),
        "banks": {},
    }
    for b, r in ranks.items():
        res["banks"][b] = {}
        for variant, rk, size in (
            ("context_excluded", r.excluded, r.size_excluded),
            ("context_included", r.included, r.size_included),
        ):
            ci = mt.article_bootstrap(
                {"recall_at_5": rk <= 5, "mrr": 1.0 / rk}, articles, cfg.eval.bootstrap, cfg.train.seed
            )
            res["banks"][b][variant] = {
                **mt.rank_metrics(rk, cfg.eval.ks),
                "contrastive_accuracy": mt.fraction_farther(rk, size),
                "bank_size_mean": float(size.mean()),
                "recall_at_5_ci": ci["recall_at_5"],
                "mrr_ci": ci["mrr"],
            }
    return res, pq, bank_m


def safe_name(text: str) -> str:
    """`text` with every run of characters outside [A-Za-z0-9_.-] replaced by one '_' (folder names)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def _out_dir(cfg: Config, run_dir: Path, data_dir, out_dir) -> Path:
    if out_dir or cfg.eval.out_dir:
        return Path(out_dir or cfg.eval.out_dir)
    if data_dir:
        return run_dir / f"eval_{safe_name(Path(data_dir).stem) or 'data'}"
    return run_dir / "metrics"


def evaluate_run(
    cfg: Config,
    run_dir: str | Path,
    checkpoint: str | Path | None = None,
    data_dir: str | Path | None = None,
    extra_checkpoints: dict[str, str | Path] | None = None,
    progress: bool = True,
    out_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Phase-1 evaluation of a run -> the eval.json dict (also written, with queries.csv, to `out_dir`).

    checkpoint: the primary model (default run_dir/best.pt; a run whose model.kind is a baseline needs none).
    data_dir: evaluate on another prepared corpus (run dir, data dir or payload .npz) instead of the run's
        own `data/`; default cfg.eval.data_dir, then the run. Baselines are fitted on that corpus' train split.
    extra_checkpoints: {name: path} more trained models (V1, two-tower, AMN...) scored on the same queries.
    out_dir: default cfg.eval.out_dir, else run_dir/metrics (own data) or run_dir/eval_<name> (data_dir)."""
    t_start = time.time()
    e, run_dir = cfg.eval, Path(run_dir)
    data_dir = data_dir or e.data_dir or None
    out = _out_dir(cfg, run_dir, data_dir, out_dir)
    device = mt.resolve_device(cfg.train.device)
    backend = mt.search_backend(e.search_backend, device)
    _log(progress, f"data from {data_dir or run_dir}; device {device}, search backend {backend}")
    data = load_eval_data(data_dir or run_dir)
    confirmatory = _confirmatory_read(cfg, data, run_dir)
    split_code = SPLITS.index(e.split)
    sanity: dict[str, Any] = {"bank": check_bank(data.bank_vectors, e.search_chunk, data.source)}
    ctx_rows, tgt_rows, sanity["alignment"] = check_windows(data, e.split)
    n, K, M = len(tgt_rows), ctx_rows.shape[1], len(data.bank_keys)
    groups = mt.duplicate_groups(data.bank_vectors, e.search_chunk)
    gsize = np.bincount(groups, minlength=M)
    q_art = data.bank_keys[tgt_rows, 0]
    specs = {
        "global": None,
        "test": (data.bank_split.astype(np.int64), np.full(n, split_code)),
        "same_article": (data.bank_keys[:, 0], q_art),
    }
    specs = {b: specs[b] for b in e.banks}
    rank_kw = dict(banks=specs, exclude_rows=ctx_rows, groups=groups, chunk=e.search_chunk, device=device)

    t0 = time.time()
    sanity["oracle"] = oracle_check(data.bank_vectors, tgt_rows, groups, rank_kw, e.oracle_min_recall_at_1)
    _log(progress, f"sanity checks passed ({n} queries, bank {M} rows, oracle {time.time() - t0:.1f}s)")

    ctx_tr, tgt_tr = data.window_rows["train"]
    if e.baseline_fit_windows and len(tgt_tr) > e.baseline_fit_windows:
        sel = np.sort(np.random.default_rng(cfg.train.seed).choice(len(tgt_tr), e.baseline_fit_windows, False))
        ctx_tr, tgt_tr = ctx_tr[sel], tgt_tr[sel]
    entries = _load_models(cfg, run_dir, data, checkpoint, extra_checkpoints, (ctx_tr, tgt_tr), device)
    contexts = data.contexts(ctx_rows)  # (n, K, D)
    results, per_query, banks_of = {}, {}, {}
    for ent in entries:
        t0 = time.time()
        results[ent.name], per_query[ent.name], banks_of[ent.name] = _score(
            ent, contexts, data.bank_vectors, tgt_rows, rank_kw, q_art, cfg, device
        )
        _log(progress, f"{ent.name}: {time.time() - t0:.1f}s")

    curve = bank_curve(
        cfg,
        data,
        ctx_rows,
        tgt_rows,
        [(x.name, x.role, x.model) for x in entries],
        per_query,
        device,
        own_data=not data_dir,
        log=lambda m: _log(progress, m),
    )

    primary = entries[0].name
    pb, pv = e.primary_bank, ("context_excluded" if e.exclude_context else "context_included")
    pq = per_query[primary]
    # long enough to hold the top 50 after skipping every excluded row and the target's duplicates
    kk = min(M, mt.CONTAIN_K + K * int(gsize[groups[ctx_rows]].max()) + int(gsize[groups[tgt_rows]].max()))
    t0 = time.time()
    top_s, top_i = mt.exact_search(
        pq["pred"], banks_of[primary], kk, backend=backend, chunk=e.search_chunk, device=device
    )
    sanity["search_agreement"] = _search_agreement(
        top_i, tgt_rows, groups, ctx_rows, pq["ranks"]["global"] if "global" in pq["ranks"] else None, backend
    )
    _log(progress, f"search cross-check ({backend}, k={kk}): {time.time() - t0:.1f}s")

    lat_models = [x for x in entries if x.role != "baseline" or x.name == "copy_last"]
    nl = min(e.latency_queries, n)
    latency = (
        {
            x.name: measure_latency(
                x.model,
                contexts[:nl],
                banks_of[x.name],
                min(M, mt.CONTAIN_K + K),
                backend=backend,
                device=device,
                threads=e.latency_threads,
            )
            for x in lat_models
        }
        if nl
        else {}
    )

    base = [x.name for x in entries if x.role == "baseline"]
    decision = decide(results, per_query, primary, base, pb, pv, q_art, cfg)
    best = (decision.get("best_baseline") or {}).get("name")

    def headline(name: str) -> dict[str, Any]:
        m = results[name]["banks"][pb][pv]
        return {
            "pred_target_cosine": results[name]["pred_target_cosine"],
            "recall_at_1": m["recall_at_1"],
            "recall_at_5": m["recall_at_5"],
            "recall_at_10": m["recall_at_10"],
            "n_queries": n,
            "bank_size": M,
            "bank_size_mean": m["bank_size_mean"],
            "mrr": m["mrr"],
            "recall_at_5_ci": m["recall_at_5_ci"],
        }

    ev: dict[str, Any] = {
        **headline(primary),
        "baseline_copy_last": headline("copy_last") if "copy_last" in results else None,
        "decision": decision["decision"],
        "beats_best_baseline": decision.get("beats_best_baseline"),
        "best_baseline": best,
        "primary_model": primary,
        "primary_bank": pb,
        "primary_context": pv,
        "primary_description": f"{pb} bank ({BANK_DESCRIPTIONS[pb]}), "
        + (
            "the K context chunks of each query (and their duplicates) removed"
            if pv == "context_excluded"
            else "the context chunks kept"
        ),
        "gates": decision,
        "split": e.split,
        "confirmatory_read": confirmatory,  # None unless the test split is the confirmatory set
        "context_len": K,
        "data_source": data.source,
        "banks": {b: BANK_DESCRIPTIONS[b] for b in e.banks},
        "ks": sorted(set(e.ks)),
        "models": results,
        "sanity": sanity,
        "latency": latency,
        "search_backend": backend,
        "device": str(device),
        "n_articles": int(len(np.unique(q_art))),
        "bootstrap": e.bootstrap,
        "examples": _examples(
            data, ctx_rows, tgt_rows, top_s, top_i, groups, per_query, pb, pv, e.n_examples, cfg.train.seed
        ),
        **({"bank_curve": curve} if curve else {}),
        "out_dir": str(out),
        "queries_file": "queries.csv",
        "seconds": round(time.time() - t_start, 1),
    }
    _write(out, ev, per_query, data, tgt_rows)
    _log(
        progress,
        f"wrote {out / 'eval.json'}: {primary} R@5 {ev['recall_at_5']:.1%} ({pb}, {pv}) -> "
        f"{ev['decision']}; {decision['reason']}",
    )
    return ev


def decide(
    results: dict,
    per_query: dict,
    primary: str,
    baselines: list[str],
    bank: str,
    variant: str,
    articles: np.ndarray,
    cfg: Config,
) -> dict[str, Any]:
    """`gates.phase1_decision` for the primary model on (bank, variant), against the best baseline:
    the highest R@5 and, separately, the highest cosine among the baselines (possibly two different
    ones: the model must beat both numbers), with paired article-bootstrap CIs of the differences."""
    r5 = lambda m: results[m]["banks"][bank][variant]["recall_at_5"]
    cos = lambda m: results[m]["pred_target_cosine"]
    best = None
    if baselines:
        b_r5 = max(baselines, key=lambda b: (r5(b), cos(b)))
        b_cos = max(baselines, key=lambda b: (cos(b), r5(b)))
        rk_p = _variant(per_query[primary]["ranks"][bank], variant)
        rk_b = _variant(per_query[b_r5]["ranks"][bank], variant)
        diff = mt.article_bootstrap(
            {
                "recall_at_5": (rk_p <= 5).astype(float) - (rk_b <= 5),
                "cosine": per_query[primary]["cosine"] - per_query[b_cos]["cosine"],
            },
            articles,
            cfg.eval.bootstrap,
            cfg.train.seed,
        )
        best = {
            "name": b_r5 if b_r5 == b_cos else f"{b_r5} (R@5) / {b_cos} (cosine)",
            "name_recall_at_5": b_r5,
            "name_cosine": b_cos,
            "recall_at_5": r5(b_r5),
            "pred_target_cosine": cos(b_cos),
            "diff_recall_at_5": r5(primary) - r5(b_r5),
            "diff_recall_at_5_ci": diff["recall_at_5"],
            "diff_cosine": cos(primary) - cos(b_cos),
            "diff_cosine_ci": diff["cosine"],
        }
    out = phase1_decision(r5(primary), cos(primary), cfg.gates, best)
    if best is not None and best["diff_recall_at_5_ci"] is not None:
        out["beats_best_baseline_r5_ci_excludes_zero"] = bool(best["diff_recall_at_5_ci"][0] > 0)
    out["bank"], out["context"] = bank, variant
    return out


def _variant(r: mt.Ranks, variant: str) -> np.ndarray:
    return r.excluded if variant == "context_excluded" else r.included


def _search_agreement(top_i, tgt_rows, groups, ctx_rows, ranks, backend) -> dict[str, Any]:
    """The top-k lists of `exact_search` must place the target where the counted ranks do."""
    if ranks is None:
        return {"checked": False}
    lr = mt.rank_in_list(top_i, tgt_rows, groups, ctx_rows)
    cr = ranks.excluded
    inside = cr <= mt.CONTAIN_K
    agree = np.where(inside, lr == cr, (lr == 0) | (lr > mt.CONTAIN_K))
    frac = float(agree.mean())
    if frac < 0.99:
        i = int(np.flatnonzero(~agree)[0])
        raise SanityError(
            f"search ({backend}) and counted ranks disagree on {1 - frac:.1%} of queries (e.g. query "
            f"{i}: list rank {lr[i]}, counted rank {cr[i]})"
        )
    return {"checked": True, "backend": backend, "agreement": frac, "n_disagree": int((~agree).sum())}


def _examples(
    data, ctx_rows, tgt_rows, top_s, top_i, groups, per_query, bank, variant, n_examples, seed
) -> list[dict[str, Any]]:
    """A few queries with texts: context, truth, the primary model's top 3 (context rows skipped)."""
    n = len(tgt_rows)
    if not n_examples or data.prepared is None:
        return []
    pick = np.sort(np.random.default_rng(seed).choice(n, min(n, n_examples), replace=False))
    out = []
    for i in pick:
        excl = set(groups[ctx_rows[i]].tolist()) - {int(groups[tgt_rows[i]])}
        keep = [j for j in range(top_i.shape[1]) if groups[top_i[i, j]] not in excl][:3]
        rows = [int(top_i[i, j]) for j in keep]
        texts = data.texts(list(ctx_rows[i]) + [tgt_rows[i]] + rows)
        a, p = (int(x) for x in data.bank_keys[tgt_rows[i]])
        out.append(
            {
                "query": int(i),
                "article_id": a,
                "title": data.title(a),
                "target_position": p,
                "context_texts": texts[: len(ctx_rows[i])],
                "target_text": texts[len(ctx_rows[i])],
                "ranks": {m: int(_variant(v["ranks"][bank], variant)[i]) for m, v in per_query.items()},
                "retrieved": [
                    {
                        "row": r,
                        "score": float(top_s[i, j]),
                        "text": t,
                        "is_target": bool(groups[r] == groups[tgt_rows[i]]),
                        "article_id": int(data.bank_keys[r, 0]),
                        "position": int(data.bank_keys[r, 1]),
                    }
                    for r, j, t in zip(rows, keep, texts[len(ctx_rows[i]) + 1 :])
                ],
            }
        )
    return out


def _write(out: Path, ev: dict, per_query: dict, data: EvalData, tgt_rows: np.ndarray) -> None:
    import pandas as pd

    frames = []
    for name, v in per_query.items():
        df = pd.DataFrame(
            {
                "model": name,
                "query": np.arange(len(tgt_rows)),
                "article_id": data.bank_keys[tgt_rows, 0],
                "position": data.bank_keys[tgt_rows, 1],
                "target_row": tgt_rows,
                "cosine": v["cosine"],
            }
        )
        for b, r in v["ranks"].items():
            df[f"rank_{b}"] = r.excluded
            df[f"rank_{b}_incl_context"] = r.included
        frames.append(df)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "queries.csv", pd.concat(frames).to_csv(index=False, float_format="%.6g"))
    atomic_write_json(out / "eval.json", ev)


# --------------------------------------------------------------------------- reading results back
def load_queries(ev: dict[str, Any]):
    """The per-query table (pandas DataFrame) written next to eval.json."""
    import pandas as pd

    path = Path(ev["out_dir"]) / ev.get("queries_file", "queries.csv")
    check_files([path])  # in a run dir: as the evaluation wrote it
    return pd.read_csv(path)


def results_table(ev: dict[str, Any], context: str = "both"):
    """One row per model x bank (x context variant): the table a reviewer reads first."""
    import pandas as pd

    rows = []
    for name, res in ev["models"].items():
        for b, variants in res["banks"].items():
            for variant, m in variants.items():
                if context != "both" and variant != context:
                    continue
                rows.append(
                    {
                        "model": name,
                        "role": res["role"],
                        "bank": b,
                        "context": variant.replace("context_", ""),
                        "pred_target_cosine": res["pred_target_cosine"],
                        **{k: v for k, v in m.items() if not k.endswith("_ci")},
                        "recall_at_5_ci": m["recall_at_5_ci"],
                    }
                )
    return pd.DataFrame(rows)
