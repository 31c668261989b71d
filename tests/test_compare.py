"""Comparison of runs: the verdict generator on constructed cases, eval.json parsing, the paired
bootstrap, the study params pair, and `compare_runs` end to end on fixture run directories."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from lvmlib.analysis import compare
from lvmlib.app import studies
from lvmlib.core.config import dump_config, load_config
from lvmlib.core.errors import CompareFailed, RunError, StudyFailed
from lvmlib.metrics import article_bootstrap, rank_metrics

ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- fixtures: run dirs on disk
def _ranks(n, r5, rng):
    """n ranks of which a fraction r5 lands in the top 5 (exactly round(n * r5))."""
    hits = np.zeros(n, bool)
    hits[rng.choice(n, int(round(n * r5)), replace=False)] = True
    return np.where(hits, rng.integers(1, 6, n), rng.integers(6, 400, n))


def make_run(
    root: Path,
    name: str,
    params: str,
    r5: float,
    cos: float,
    val_cos: list[float],
    baselines=(("copy_last", 0.15, 0.42), ("context_mean", 0.12, 0.45)),
    n=400,
    n_articles=40,
    seed=0,
    status="succeeded",
) -> Path:
    """A run directory with the files the stages write, in their formats (metrics from real ranks)."""
    run = root / name
    (run / "metrics").mkdir(parents=True)
    cfg = load_config(ROOT / params)
    (run / "params.yaml").write_text(dump_config(cfg))
    (run / "manifest.json").write_text(
        json.dumps(
            {
                "run_id": name,
                "params_name": cfg.name,
                "status": status,
                "started_at": "2026-01-01T00:00:00",
                "stages": {
                    s: {"status": "succeeded", "seconds": 60.0} for s in ("01_data", "02_train", "03_gates", "04_eval")
                },
            }
        )
    )
    hist = [
        {
            "epoch": e + 1,
            "train_loss": 2.0 / (e + 1),
            "train_infonce": 1.5 / (e + 1),
            "train_ar_cosine": 0.5,
            "val_cosine": v,
            "val_recall_at_5": v / 3,
            "lr": 1e-3,
            "seconds": 10.0,
        }
        for e, v in enumerate(val_cos)
    ]
    (run / "history.json").write_text(json.dumps(hist))
    v2 = val_cos[1] if len(val_cos) > 1 else None
    (run / "gates.json").write_text(
        json.dumps(
            {
                "gate_epoch": 2,
                "gate_val_cosine": v2,
                "threshold": 0.5,
                "lower": 0.4,
                "passed": v2 is not None and v2 >= 0.5,
                "decision": "continue" if v2 and v2 >= 0.5 else "extend",
                "reason": "fixture",
                "stopped_by_tree": False,
            }
        )
    )
    articles = np.repeat(np.arange(n_articles), n // n_articles)
    positions = np.tile(np.arange(n // n_articles), n_articles) + 5
    models, frames = {}, []
    for mname, role, mr5, mcos in (("mamba", "primary", r5, cos), *((b, "baseline", r, c) for b, r, c in baselines)):
        mrng = np.random.default_rng(seed if role == "primary" else hash(mname) % 1000)  # baselines: same per run
        banks = {}
        for bank, factor in (("global", 1.0), ("test", 1.3), ("same_article", 2.5)):
            rk = _ranks(n, min(1.0, mr5 * factor), mrng)
            ci = article_bootstrap({"recall_at_5": rk <= 5, "mrr": 1.0 / rk}, articles, 200, 0)
            banks[bank] = {
                "context_excluded": {
                    **rank_metrics(rk),
                    "recall_at_5_ci": ci["recall_at_5"],
                    "mrr_ci": ci["mrr"],
                    "bank_size_mean": 3000.0,
                },
                "context_included": {
                    **rank_metrics(rk),
                    "recall_at_5_ci": ci["recall_at_5"],
                    "mrr_ci": ci["mrr"],
                    "bank_size_mean": 3005.0,
                },
            }
            if bank == "global":
                frames.append({"model": mname, "ranks": rk})
        models[mname] = {"role": role, "pred_target_cosine": mcos, "banks": banks}
    glob = models["mamba"]["banks"]["global"]["context_excluded"]
    best = max(
        (b for b in models if models[b]["role"] == "baseline"),
        key=lambda b: models[b]["banks"]["global"]["context_excluded"]["recall_at_5"],
    )
    ev = {
        "pred_target_cosine": cos,
        "recall_at_1": glob["recall_at_1"],
        "recall_at_5": glob["recall_at_5"],
        "recall_at_10": glob["recall_at_10"],
        "n_queries": n,
        "bank_size": 3000,
        "n_articles": n_articles,
        "baseline_copy_last": None,
        "decision": "proceed_phase_2" if r5 > 0.1 else "weak",
        "best_baseline": best,
        "primary_model": "mamba",
        "primary_bank": "global",
        "primary_context": "context_excluded",
        "models": models,
        "queries_file": "queries.csv",
    }
    (run / "metrics" / "eval.json").write_text(json.dumps(ev))
    lines = ["model,query,article_id,position,target_row,cosine,rank_global,rank_global_incl_context"]
    for f in frames:
        lines += [f"{f['model']},{i},{articles[i]},{positions[i]},{i},0.5,{r},{r}" for i, r in enumerate(f["ranks"])]
    (run / "metrics" / "queries.csv").write_text("\n".join(lines) + "\n")
    return run


@pytest.fixture
def pair(tmp_path):
    v1 = make_run(tmp_path / "runs", "r-v1", "params/study_v1.yaml", 0.08, 0.30, [0.30, 0.38, 0.41], seed=1)
    v2 = make_run(tmp_path / "runs", "r-v2", "params/study_v2.yaml", 0.30, 0.55, [0.45, 0.52, 0.58], seed=2)
    return v1, v2


def card(label, r5, ci, cos, base=("copy_last", 0.15, (0.13, 0.17), 0.42), n=1000):
    c = {
        "label": label,
        "evaluated": True,
        "status": "succeeded",
        "bank": "global",
        "n_queries": n,
        "recall_at_5": r5,
        "recall_at_5_ci": ci,
        "pred_target_cosine": cos,
    }
    if base:
        c["best_baseline"] = {
            "name": base[0],
            "recall_at_5": base[1],
            "recall_at_5_ci": base[2],
            "pred_target_cosine": base[3],
        }
    return c


# --------------------------------------------------------------------------- the verdict generator
def test_verdict_v2_better_beyond_intervals():
    v = compare.verdict([card("V1", 0.10, (0.08, 0.12), 0.30), card("V2", 0.25, (0.22, 0.28), 0.55)])
    assert v["better"] == "V2" and v["runner_up"] == "V1" and v["separated"] is True
    assert v["separation"] == "intervals" and v["delta_r5"] == pytest.approx(0.15)
    assert v["ratio"] == pytest.approx(2.5)
    assert v["beats_baseline"] == {"V1": False, "V2": True}
    t = v["text"]
    assert "**V2 is better.**" in t and "+15.0 points" in t and "2.5× as often" in t
    assert "do not overlap" in t and "25.0% [95% CI 22.0%–28.0%]" in t
    assert "Against the best trivial baseline, copy_last (R@5 15.0%, cosine 0.420) on the same queries" in t
    assert "V2 beats it clearly" in t and "V1 falls short on R@5 and cosine" in t
    assert "V2 better" in v["headline"] and "beyond the 95% intervals" in v["headline"]


def test_verdict_within_intervals_is_no_clear_winner():
    v = compare.verdict([card("V1", 0.20, (0.16, 0.24), 0.50), card("V2", 0.22, (0.18, 0.26), 0.52)])
    assert v["better"] == "V2" and v["separated"] is False
    assert "**No clear winner.**" in v["text"] and "intervals overlap" in v["text"] and "+2.0 points" in v["text"]
    assert "is better" not in v["text"] and "within the 95% intervals" in v["headline"]
    # input order does not matter
    w = compare.verdict([card("V2", 0.22, (0.18, 0.26), 0.52), card("V1", 0.20, (0.16, 0.24), 0.50)])
    assert (w["better"], w["separated"], w["delta_r5"]) == (v["better"], v["separated"], v["delta_r5"])


def test_verdict_neither_beats_the_baseline():
    base = ("context_mean", 0.40, (0.37, 0.43), 0.60)
    v = compare.verdict([card("V1", 0.10, (0.08, 0.12), 0.30, base), card("V2", 0.25, (0.22, 0.28), 0.55, base)])
    assert v["better"] == "V2" and v["beats_baseline"] == {"V1": False, "V2": False}
    assert "**Neither variant beats** the best trivial baseline, context_mean (R@5 40.0%" in v["text"]
    assert "V2 falls short on R@5 and cosine; V1 falls short on R@5 and cosine" in v["text"]
    # beats on R@5 but not on cosine is not beating it (the Phase-1 rule of gates.phase1_decision)
    base2 = ("copy_last", 0.20, (0.18, 0.22), 0.60)
    w = compare.verdict([card("V1", 0.10, (0.08, 0.12), 0.30, base2), card("V2", 0.25, (0.22, 0.28), 0.55, base2)])
    assert w["beats_baseline"]["V2"] is False and "V2 falls short on cosine;" in w["text"]


def test_paired_interval_decides_when_given():
    cards = [card("V1", 0.20, (0.16, 0.24), 0.5), card("V2", 0.23, (0.19, 0.27), 0.5)]
    # per-run intervals overlap, but the paired difference (same queries) excludes zero
    v = compare.verdict(cards, paired={"a": "V1", "b": "V2", "delta": -0.03, "ci": (-0.045, -0.015)})
    assert v["separated"] is True and v["separation"] == "paired" and v["better"] == "V2"
    assert "+1.5 to +4.5 points" in v["text"] and "excludes zero" in v["text"]
    v = compare.verdict(cards, paired={"a": "V2", "b": "V1", "delta": 0.03, "ci": (-0.01, 0.07)})
    assert v["separated"] is False and "includes zero" in v["text"]


def test_verdict_with_a_run_that_was_not_evaluated():
    failed = {"label": "V1", "evaluated": False, "status": "failed"}
    v = compare.verdict([failed, card("V2", 0.25, (0.22, 0.28), 0.55)])
    assert v["better"] is None and "Only V2 was evaluated" in v["text"] and "V1 has no Phase-1 evaluation" in v["text"]
    assert "status: failed" in v["text"]
    v = compare.verdict([failed])
    assert v["better"] is None and "nothing to compare" in v["text"]


def test_verdict_warns_when_the_queries_differ_and_without_intervals():
    nan = (float("nan"), float("nan"))
    v = compare.verdict([card("V1", 0.10, nan, 0.3), card("V2", 0.12, nan, 0.3)], same_queries=False)
    assert v["separated"] is None and "no confidence intervals were recorded" in v["text"]
    assert "different test queries" in v["text"] and "no intervals recorded" in v["headline"]


# --------------------------------------------------------------------------- reading run dirs
def test_eval_rows_and_scorecard_from_eval_json(pair):
    v1, v2 = compare.load_runs(list(pair))
    assert (v1.label, v2.label) == ("study_v1", "study_v2")
    rows = compare.eval_rows(v2)
    assert {(r["bank"], r["model"]) for r in rows} == {
        (b, m) for b in ("global", "test", "same_article") for m in ("model", "copy_last", "context_mean")
    }
    g = next(r for r in rows if r["bank"] == "global" and r["model"] == "model")
    assert g["primary"] and not g["is_baseline"] and g["recall_at_5"] == pytest.approx(0.30)
    assert g["recall_at_5_lo"] < 0.30 < g["recall_at_5_hi"] and g["pred_target_cosine"] == 0.55
    c = compare.scorecard(v2)
    # the best baseline per metric, as gates.phase1_decision: copy_last on R@5, context_mean on cosine
    assert c["best_baseline"]["name"] == "copy_last (R@5) / context_mean (cosine)"
    assert c["best_baseline"]["recall_at_5"] == pytest.approx(0.15)
    assert c["best_baseline"]["pred_target_cosine"] == pytest.approx(0.45)
    table = compare.phase1_table([v1, v2])
    # same queries: the baselines appear once, labelled as baselines
    assert sorted(table[table.bank == "global"]["name"]) == ["context_mean", "copy_last", "study_v1", "study_v2"]


def test_paired_difference_matches_a_direct_count(pair):
    v1, v2 = compare.load_runs(list(pair))
    p = compare.paired_difference(v2, v1, n_boot=300)
    ev1, ev2 = v1.eval["recall_at_5"], v2.eval["recall_at_5"]
    assert p["delta"] == pytest.approx(ev2 - ev1) and p["n_queries"] == 400 and p["n_articles"] == 40
    assert p["ci"][0] < p["delta"] < p["ci"][1] and p["ci"][0] > 0
    # different query sets cannot be paired
    q = v1.run_dir / "metrics" / "queries.csv"
    lines = q.read_text().splitlines()
    q.write_text("\n".join(ln for ln in lines if not ln.startswith("mamba,0,")) + "\n")  # one query fewer
    assert compare.paired_difference(v2, v1) is None


def test_versus_reference_pairs_every_run_with_the_reference(pair, tmp_path):
    v1, v2 = pair
    v3 = make_run(tmp_path / "runs", "r-v3", "params/study_v2.yaml", 0.10, 0.40, [0.4, 0.45], seed=3)
    runs = compare.load_runs([v2, v1, v3])
    res = compare.comparison(runs, n_boot=200, reference=str(v1))
    assert res["reference"] == runs[1].label
    rows = {r["run"]: r for r in res["vs_reference"]}
    assert len(rows) == 2 and runs[1].label not in rows
    for run in (runs[0], runs[2]):
        p = compare.paired_difference(run, runs[1], n_boot=200)
        assert rows[run.label]["diff_recall_at_5"] == pytest.approx(
            run.eval["recall_at_5"] - runs[1].eval["recall_at_5"]
        )
        assert rows[run.label]["diff_recall_at_5_ci"] == p["ci"]
        assert rows[run.label]["diff_cosine"] == pytest.approx(0.0)  # the fixture's per-query cosines are equal
    assert rows[runs[0].label]["diff_recall_at_5_ci"][0] > 0  # v2 clearly above v1
    with pytest.raises(CompareFailed, match="not one of the compared runs"):
        compare.comparison(runs, reference="no-such-run")


def test_compare_runs_with_a_reference_outside_the_list(pair, tmp_path):
    v1, v2 = pair
    reports = tmp_path / "reports"
    out = studies.compare_runs([v2], compare_id="ref", reports_root=reports, reference=v1)
    rec = json.loads((reports / "compare_ref.json").read_text())
    assert [r["run_id"] for r in rec["runs"]] == ["r-v1", "r-v2"]  # the reference is added, first
    assert rec["reference"] and len(rec["vs_reference"]) == 1 and rec["vs_reference"][0]["diff_recall_at_5_ci"][0] > 0
    assert "Against the reference" in out.read_text() and "No reference run given" not in out.read_text()


def test_params_diff_and_missing_files(pair, tmp_path):
    v1, v2 = compare.load_runs(list(pair))
    keys = {r["key"] for r in compare.params_diff([v1, v2])}
    assert keys == {"loss.lambda_con", "loss.lambda_ar", "loss.proj_head"}
    (v1.run_dir / "metrics" / "eval.json").unlink()
    (v1.run_dir / "gates.json").unlink()
    v1 = compare.load_run(v1.run_dir)
    assert v1.eval is None and compare.scorecard(v1)["evaluated"] is False
    assert compare.gates_rows([v1])[0]["reason"] == "no gates.json"
    with pytest.raises(RunError, match="not a run directory"):
        compare.load_run(tmp_path)


def test_a_run_written_before_the_gate_keys_were_renamed_still_compares(pair):
    """gates.json and history.json of runs on disk say `epoch2_val_cosine` and `extend_2_epochs`."""
    v1_dir, _ = pair
    old_gate = {
        "gate_epoch": 2,
        "epoch2_val_cosine": 0.45,
        "threshold": 0.5,
        "lower": 0.4,
        "passed": False,
        "decision": "extend_2_epochs",
        "reason": "old kit",
        "stopped_by_tree": False,
        "tree_log": [{"epoch": 2, "decision": "extend_2_epochs", "reason": "old kit"}],
    }
    (v1_dir / "gates.json").write_text(json.dumps(old_gate))
    hist = json.loads((v1_dir / "history.json").read_text())
    hist[1]["decision"] = "extend_2_epochs"
    (v1_dir / "history.json").write_text(json.dumps(hist))
    run = compare.load_run(v1_dir)
    assert run.gates["gate_val_cosine"] == 0.45 and "epoch2_val_cosine" not in run.gates
    assert run.gates["decision"] == "extend" and run.gates["tree_log"][0]["decision"] == "extend"
    assert run.history[1]["decision"] == "extend"
    row = compare.gates_rows([run])[0]
    assert (row["gate_val_cosine"], row["decision"]) == (0.45, "extend")
    summary = compare.summary_rows([run])[0]
    assert (summary["gate_val_cosine"], summary["gate_decision"]) == (0.45, "extend")


def test_a_runs_params_are_read_and_validated_by_config(pair):
    """compare reads params.yaml through lvmlib.core.config: a key the kit does not know is named, not ignored."""
    from lvmlib.core.config import ConfigError

    v1_dir, _ = pair
    text = (v1_dir / "params.yaml").read_text()
    assert (
        compare.load_run(v1_dir).config["loss"]["lambda_con"]
        == load_config(ROOT / "params/study_v1.yaml").loss.lambda_con
    )
    (v1_dir / "params.yaml").write_text(text.replace("train:\n", "train:\n  epohcs: 3\n", 1))
    with pytest.raises(ConfigError, match=r"params.yaml: unknown key 'train.epohcs'"):
        compare.load_run(v1_dir)


def test_study_params_pair_differs_only_in_the_loss():
    c1, c2 = (load_config(ROOT / f"params/study_v{i}.yaml") for i in (1, 2))
    assert c1.loss.proj_head == [512, 256] and (c1.loss.lambda_con, c1.loss.lambda_ar) == (0.70, 0.30)
    assert c2.loss.proj_head == [] and (c2.loss.lambda_con, c2.loss.lambda_ar) == (0.85, 0.15)
    d1, d2 = c1.to_dict(), c2.to_dict()
    for section in ("data", "model", "train", "gates", "eval"):
        assert d1[section] == d2[section], section
    for path in ("params/study_v1.yaml", "params/study_v2.yaml"):
        text = (ROOT / path).read_text()
        assert text.startswith("#") and "minutes" in text  # hypothesis and the measured time
        assert set(yaml.safe_load(text)) <= {"name", "description", "data", "model", "loss", "train", "gates", "eval"}


# --------------------------------------------------------------------------- end to end on fixture runs
def test_compare_runs_renders_html_json_and_index(pair, tmp_path):
    reports = tmp_path / "reports"
    out = studies.compare_runs(list(pair), compare_id="t1", reports_root=reports)
    assert out == reports / "compare_t1.html"
    page = out.read_text()
    code = (reports / "compare_t1.code.html").read_text()
    assert "study_v2 is better" in page
    assert "load_runs" in code and "load_runs" not in page  # code hidden / shown beside it
    assert page.count("data:image/png;base64") >= 4  # curves, other curves, intervals, R@k bars
    body = page.split("<body", 1)[1]
    assert body.index("study_v2 is better") < body.index("data:image/png")  # the summary comes first
    rec = json.loads((reports / "compare_t1.json").read_text())
    assert rec["kind"] == "compare" and rec["compare_id"] == "t1" and rec["href"] == "compare_t1.html"
    assert rec["status"] == "succeeded" and "study_v2 better" in rec["verdict"]
    assert [r["run_id"] for r in rec["runs"]] == ["r-v1", "r-v2"]
    saved = json.loads((reports / "compare_t1" / "compare.json").read_text())
    assert saved["verdict"]["better"] == "study_v2" and saved["paired"]["ci"][0] > 0
    index = (reports / "index.html").read_text()
    assert "compare_t1.html" in index and "study_v2 better" in index


def test_compare_with_an_unfinished_run(pair, tmp_path):
    v1, v2 = pair
    for f in ("metrics/eval.json", "metrics/queries.csv", "gates.json"):
        (v1 / f).unlink()
    m = json.loads((v1 / "manifest.json").read_text())
    (v1 / "manifest.json").write_text(json.dumps({**m, "status": "failed"}))
    out = studies.compare_runs([v1, v2], compare_id="t2", reports_root=tmp_path / "reports")
    page = out.read_text()
    assert "Only study_v2 was evaluated" in page and "study_v1 has no Phase-1 evaluation (status: failed)" in page
    assert page.count("data:image/png;base64") >= 4


def test_a_failing_comparison_is_recorded_and_named(pair, tmp_path, monkeypatch):
    import nbformat

    nb = nbformat.v4.new_notebook(
        metadata={"kernelspec": {"name": "lvm-study", "display_name": "lvm-study", "language": "python"}}
    )
    params = nbformat.v4.new_code_cell('run_dirs: list = []\ncompare_id: str = ""\nout_dir: str = ""')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [
        nbformat.v4.new_markdown_cell("# broken"),
        params,
        nbformat.v4.new_code_cell('raise ValueError("boom in the comparison")'),
    ]
    nbformat.write(nb, str(tmp_path / "broken.ipynb"))
    monkeypatch.setattr(studies, "COMPARE_NOTEBOOK", tmp_path / "broken.ipynb")
    reports = tmp_path / "reports"
    with pytest.raises(CompareFailed, match="05_compare.*ValueError: boom in the comparison"):
        studies.compare_runs(list(pair), compare_id="t3", reports_root=reports)
    rec = json.loads((reports / "compare_t3.json").read_text())
    assert rec["status"] == "failed" and "boom" in rec["failure"] and "comparison failed" in rec["verdict"]
    assert "boom in the comparison" in (reports / "compare_t3.html").read_text()  # papermill's error, rendered
    assert "boom in the comparison" in (reports / "index.html").read_text()


def test_pair_study_compares_what_ran_and_names_the_failure(tmp_path, monkeypatch):

    def fake_run_study(params, runs_root, reports_root, run_id, progress):  # stands in for 01..04
        v1 = "study_v1" in str(params)
        run = make_run(
            Path(runs_root),
            run_id,
            params,
            0.05 if v1 else 0.3,
            0.3,
            [0.3, 0.4],
            seed=int(v1),
            status="failed" if v1 else "succeeded",
        )
        if v1:
            (run / "metrics" / "eval.json").unlink()
            raise StudyFailed("02_train (cell 5): RuntimeError: out of memory")
        return run

    monkeypatch.setattr(studies, "run_study", fake_run_study)
    with pytest.raises(CompareFailed, match="study_v1: 02_train .*out of memory.*comparison of what ran"):
        studies.run_pair_study(
            ["params/study_v1.yaml", "params/study_v2.yaml"],
            runs_root=tmp_path / "runs",
            reports_root=tmp_path / "reports",
            progress=False,
        )
    (rec_path,) = (tmp_path / "reports").glob("compare_*-study-study_v1-vs-study_v2.json")
    rec = json.loads(rec_path.read_text())
    assert [r["label"] for r in rec["runs"]] == ["study_v1", "study_v2"] and "study_v2 only" in rec["verdict"]


def test_pair_study_validates_every_params_file_first(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("loss:\n  lambda_cn: 0.5\n")
    with pytest.raises(Exception, match="lambda_cn"):
        studies.run_pair_study(
            ["params/study_v1.yaml", str(bad)],
            runs_root=tmp_path / "runs",
            reports_root=tmp_path / "reports",
            progress=False,
        )
    assert not (tmp_path / "runs").exists()


def test_compare_runs_rejects_a_non_run_dir(tmp_path):
    with pytest.raises(RunError, match="no manifest.json"):
        studies.compare_runs([tmp_path], reports_root=tmp_path / "reports")
    assert not (tmp_path / "reports").exists()


def test_compare_notebook_contract():
    import nbformat

    nb = nbformat.read(str(ROOT / "notebooks/05_compare.ipynb"), as_version=4)
    assert nb.metadata["kernelspec"]["name"] == "lvm-study"
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and all(f"{p}:" in params[0].source for p in ("run_dirs", "compare_id", "out_dir"))
    heads = [c.source.splitlines()[0] for c in nb.cells if c.cell_type == "markdown"]
    assert heads.index("## Summary") < heads.index("## Training curves")
    for c in nb.cells:
        if c.cell_type == "code":
            assert not c.outputs and c.execution_count is None
            assert "def " not in c.source and "class " not in c.source  # logic lives in lvmlib


# --------------------------------------------------------------------------- rendering (lvmlib.app.runner)
def _nb(cells):
    import nbformat

    nb = nbformat.v4.new_notebook()
    for kind, src, outputs in cells:
        if kind == "md":
            nb.cells.append(nbformat.v4.new_markdown_cell(src))
        else:
            c = nbformat.v4.new_code_cell(src)
            c.outputs = [nbformat.v4.new_output("stream", name=n, text=t) for n, t in outputs]
            nb.cells.append(c)
    return nb


def test_summary_section_moves_first_only_when_it_ran():
    from lvmlib.report.pages import summary_first

    cells = [
        ("md", "# 01 · Title", []),
        ("code", "x = 1", [("stdout", "log\n")]),
        ("md", "## Detail", []),
        ("code", "plot()", [("stdout", "detail\n")]),
        ("md", "## Summary\nwords", []),
        ("code", "show()", [("stdout", "R@5 12%\n")]),
        ("md", "## Record", []),
        ("code", "rec()", []),
    ]
    nb = _nb(cells)
    assert summary_first(nb)
    order = [c.source.splitlines()[0] for c in nb.cells]
    assert order == ["# 01 · Title", "## Summary", "show()", "x = 1", "## Detail", "plot()", "## Record", "rec()"]
    ran_not = _nb(cells[:5] + [("code", "show()", [])] + cells[6:])  # a failed run: the summary is empty
    assert not summary_first(ran_not) and ran_not.cells[4].source.startswith("## Summary")
    already = _nb([cells[0], cells[4], cells[5], cells[2], cells[3]])  # summary first already: untouched
    assert not summary_first(already)


def test_progress_bars_collapse_to_what_a_terminal_shows():
    from lvmlib.report.pages import tidy_streams

    nb = _nb(
        [
            (
                "code",
                "train()",
                [
                    ("stdout", "start\n"),
                    ("stderr", "\repoch 1:  50%|##   | 1/2"),
                    ("stderr", "\repoch 1: 100%|#####| 2/2"),
                    ("stderr", "\r          \r"),
                    ("stdout", "epoch 1: loss 3.1\n"),
                    ("stderr", "\rbar 100%|#####| 2/2\n"),
                    ("stderr", "UserWarning: careful\n"),
                ],
            )
        ]
    )
    tidy_streams(nb)
    outs = [(o.name, o.text) for o in nb.cells[0].outputs]
    assert outs == [
        ("stdout", "start\n"),
        ("stdout", "epoch 1: loss 3.1\n"),
        ("stderr", "bar 100%|#####| 2/2\nUserWarning: careful\n"),
    ]


def test_reports_fetch_nothing_from_the_network(tmp_path):
    import re

    import nbformat

    from lvmlib.report.pages import render_html

    nb = _nb([("md", "# T", []), ("code", "1", [("stdout", "x\n")])])
    nbformat.write(nb, str(tmp_path / "t.ipynb"))
    out = render_html(tmp_path / "t.ipynb", tmp_path / "t.html", nav=[("home", "index.html")])
    for page in out:
        text = page.read_text()
        assert not re.findall(r'<script[^>]+src="https?:', text) and "MathJax" not in text
        assert 'href="index.html">home</a>' in text
    assert 'href="t.code.html"><b>show code</b>' in out[0].read_text()
    assert 'href="t.html"><b>hide code</b>' in out[1].read_text()


def test_labels_of_same_named_runs_use_the_generated_tail_or_the_whole_run_id(tmp_path):
    """Two runs of one params file: generated ids give 'name (abcd)'; ids chosen by hand (--run-id
    w1000-dropfirst) are shown whole, never cut to a meaningless tail such as 'irst'."""
    root = tmp_path / "runs"
    dirs = [
        make_run(root, rid, "params/study_v2.yaml", 0.1, 0.4, [0.4], seed=i)
        for i, rid in enumerate(
            ["20261203-072303-v2-0447", "20261203-072400-v2-9f1c", "w1000-dropfirst", "w1000-droplast"]
        )
    ]
    labels = [r.label for r in compare.load_runs(dirs)]
    name = labels[0].split(" (")[0]
    assert labels == [f"{name} (0447)", f"{name} (9f1c)", "w1000-dropfirst", "w1000-droplast"]


def test_beating_copy_lasts_cosine_is_not_beating_the_best_cosine_baseline(tmp_path):
    """R@5 above copy_last and cosine above copy_last's but below context_mean's: not 'beats it' (the
    run pages and eval.json say the same), although copy_last is the best baseline on R@5."""
    run = make_run(tmp_path / "runs", "r", "params/study_v2.yaml", 0.20, 0.44, [0.4, 0.44])
    card = compare.scorecard(compare.load_runs([run])[0])
    b = compare.beats_baseline(card)
    assert b["r5"] and not b["cosine"] and not b["beats"]


def test_small_cosine_differences_keep_their_digits():
    """A paired cosine difference of a few 1e-4 prints with 4 decimals (not -0.000 [-0.001, +0.000]);
    differences of 0.01 and more keep 3."""
    from lvmlib.plots.compare import _signed

    assert _signed(-0.00025, [-0.00085, 0.0003]) == "-0.0003"
    assert _signed(0.0003, [-0.00085, 0.0003]) == "+0.0003"
    assert _signed(0.0125) == "+0.013"
    assert _signed(0.004, [0.002, 0.012]) == "+0.004"
