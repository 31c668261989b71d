"""The confirmatory study (issue 27): its file, the pooled and corrected analysis, and `python -m lvmlib confirm`
(every run, resumed after a crash without redoing finished ones, then reports/confirmatory.html)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from tiny_runs import ROOT, tiny_overrides, vectors_npz

from lvmlib.analysis import confirmatory
from lvmlib.app.confirm import confirm_study
from lvmlib.core.config import ConfigError
from lvmlib.core.errors import ProtocolError, RunError
from lvmlib.core.study import load_study, study_runs
from lvmlib.metrics import article_bootstrap

BASE = {
    "study": "s1",
    "protocol": "docs/confirmatory.md",
    "n_boot": 400,
    "predictors": [
        {"id": "H", "role": "headline", "params": "params/smoke.yaml", "seeds": [0, 1]},
        {"id": "B5", "params": "params/smoke.yaml", "set": ["model.kind=context_mix"]},
        {"id": "S", "role": "secondary", "params": "params/smoke.yaml"},
    ],
    "baselines": [{"id": "B1", "name": "copy_last"}],
    "family": ["B1", "B5"],
}


def _write(tmp_path, data, name="study.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


# --------------------------------------------------------------------------- the study file
def test_the_study_lists_its_runs_headline_first_with_seed_study_and_protocol(tmp_path):
    study = load_study(_write(tmp_path, {**BASE, "common": ["eval.latency_queries=0"]}))
    runs = study_runs(study)
    assert [r["run_id"] for r in runs] == ["s1-H-s0", "s1-H-s1", "s1-B5-s0", "s1-S-s0"]
    b5 = runs[2]["overrides"]
    assert b5[:2] == ["eval.latency_queries=0", "model.kind=context_mix"]  # common, then its own
    assert "train.seed=0" in b5 and "eval.study=s1" in b5 and {"eval.protocol": "docs/confirmatory.md"} in b5
    assert study.m == 2 and study.headline.id == "H"


@pytest.mark.parametrize(
    "change, message",
    [
        ({"colour": "blue"}, "key 'colour': unknown key"),
        ({"alpha": 1.5}, "key 'alpha': Input should be less than 1"),
        ({"family": ["B9"]}, "family lists 'B9': not a baseline or a non-headline predictor id"),
        ({"family": ["B1", "S"]}, "family lists 'S', a secondary predictor"),
        ({"baselines": [{"id": "B1", "name": "parrot"}]}, "key 'baselines.0.name'"),
        ({"baselines": [{"id": "H", "name": "copy_last"}]}, "id 'H' is used twice"),
        (
            {"predictors": [{**BASE["predictors"][0], "role": "learned"}, BASE["predictors"][1]]},
            "exactly one predictor has role: headline, found 0",
        ),
        ({"common": ["train.epochs=0"]}, "params/smoke.yaml + --set train.epochs=0"),
    ],
)
def test_a_bad_study_file_is_one_line_naming_the_file_and_key(tmp_path, change, message):
    p = _write(tmp_path, {**BASE, **change})
    with pytest.raises(ConfigError) as exc:
        load_study(p)
    line = str(exc.value)
    assert message in line and "\n" not in line
    assert str(p) in line or "params/smoke.yaml" in line


def test_the_committed_study_is_the_protocols():
    """params/confirm.yaml: the headline, B1-B6 as the family (m = 6), three seeds each, S secondary, the
    confirmatory range as the test set, every run under docs/confirmatory.md."""
    study = load_study(ROOT / "params" / "confirm.yaml")
    assert study.protocol == "docs/confirmatory.md" and study.family == ["B1", "B2", "B3", "B4", "B5", "B6"]
    assert study.headline.params == "params/wiki1000_x800.yaml" and study.headline.seeds == [0, 1, 2]
    assert [b.name for b in study.baselines] == ["copy_last", "context_mean", "ridge", "knn_successor"]
    assert {p.id: p.role for p in study.predictors} == {
        "H": "headline",
        "B5": "learned",
        "B6": "learned",
        "S": "secondary",
    }
    assert {"data.test_first=2500", "data.test_articles=500", "eval.primary_bank=test"} <= set(study.common)
    assert len(study_runs(study)) == 10


def test_a_missing_study_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"nope.yaml: study file not found"):
        load_study(tmp_path / "nope.yaml")


# --------------------------------------------------------------------------- the analysis, on made-up runs
def _fake_run(root: Path, run_id: str, model: str, ranks: dict[str, np.ndarray], arts, pos, cos=None):
    """A finished run as the analysis reads it: metrics/eval.json and queries.csv (ranks per predictor)."""
    d = root / run_id
    (d / "metrics").mkdir(parents=True)
    frames = []
    for name, r in ranks.items():
        frames.append(
            pd.DataFrame(
                {
                    "model": name,
                    "article_id": arts,
                    "position": pos,
                    "cosine": (cos if cos is not None else np.full(len(r), 0.5)) if name == model else 0.4,
                    "rank_test": r,
                    "rank_global": r * 3,
                }
            )
        )
    pd.concat(frames).to_csv(d / "metrics" / "queries.csv", index=False)
    bank = {
        "context_excluded": {"recall_at_5": 0.3, "recall_at_5_ci": [0.2, 0.4], "mrr": 0.2, "contrastive_accuracy": 0.1}
    }
    models = {
        n: {
            "role": "primary" if n == model else "baseline",
            "pred_target_cosine": 0.5,
            "l2_to_target": 1.0,
            "banks": {"test": bank, "global": bank},
        }
        for n in ranks
    }
    ev = {"primary_model": model, "queries_file": "queries.csv", "models": models, "confirmatory_read": None}
    (d / "metrics" / "eval.json").write_text(json.dumps(ev))
    return d


def _fake_study(tmp_path, n_art=30, per=10, seed=0, shift=0):
    rng = np.random.default_rng(seed)
    arts, pos = np.repeat(np.arange(n_art), per), np.tile(np.arange(per), n_art)
    n = len(arts)
    base = rng.integers(1, 12, size=n)  # copy_last's ranks
    study = load_study(_write(tmp_path, {**BASE, "predictors": BASE["predictors"][:2], "family": ["B1", "B5"]}))
    runs = tmp_path / "runs"
    heads = []
    for s in (0, 1):
        h = np.maximum(1, base - shift - rng.integers(0, 3, size=n))
        heads.append(h)
        _fake_run(runs, f"s1-H-s{s}", "mamba", {"mamba": h, "copy_last": base}, arts, pos)
    mix = rng.integers(1, 12, size=n)
    _fake_run(runs, "s1-B5-s0", "context_mix", {"context_mix": mix, "copy_last": base}, arts, pos)
    return study, runs, arts, heads, base, mix


def test_seeds_are_pooled_per_query_and_the_family_interval_is_bonferroni(tmp_path):
    study, runs, arts, heads, base, mix = _fake_study(tmp_path, shift=2)
    res = confirmatory.analyse(study, confirmatory.load(study, runs))
    pooled = ((heads[0] <= 5).astype(float) + (heads[1] <= 5)) / 2
    fam = {r["vs"]: r for r in res["family"]}
    assert fam["B1"]["delta"] == pytest.approx(pooled.mean() - (base <= 5).mean())
    assert fam["B5"]["delta"] == pytest.approx(pooled.mean() - (mix <= 5).mean())
    assert fam["B1"]["level"] == pytest.approx(1 - 0.05 / 2)
    same = article_bootstrap({"B1": pooled - (base <= 5)}, arts, n_boot=400, seed=0, alpha=0.05 / 2)["B1"]
    wide95 = article_bootstrap({"B1": pooled - (base <= 5)}, arts, n_boot=400, seed=0, alpha=0.05)["B1"]
    assert fam["B1"]["ci"] == pytest.approx(same)
    assert fam["B1"]["ci"][0] < wide95[0] and fam["B1"]["ci"][1] > wide95[1]  # corrected: wider than 95%
    assert fam["B1"]["verdict"] == "beats"  # shifted ranks: the headline finds more targets
    assert res["answer"].startswith("On 30 test articles (300 queries; no read recorded")
    assert "beats copy_last on R@5 in the test bank: +" in res["answer"] and "97.50% interval" in res["answer"]
    row = {p["id"]: p for p in res["predictors"]}
    assert row["H"]["seeds"] == 2 and row["B1"]["kind"] == "closed form"
    assert row["H"]["macro_recall"] == pytest.approx(pooled.reshape(30, 10).mean(1).mean())
    assert {(s["predictor"], s["seed"]) for s in res["seeds"]} == {("H", 0), ("H", 1), ("B5", 0)}
    assert {r["metric"] for r in res["secondary"]} == {"cos", "mrr", "global"}


def test_verdict_words():
    assert confirmatory.verdict([0.01, 0.03]) == "beats"
    assert confirmatory.verdict([-0.03, -0.01]) == "loses to"
    assert confirmatory.verdict([-0.01, 0.02]) == "not distinguishable from"


def test_runs_that_scored_other_queries_or_are_unfinished_are_refused(tmp_path):
    study, runs, *_ = _fake_study(tmp_path)
    q = runs / "s1-B5-s0" / "metrics" / "queries.csv"
    df = pd.read_csv(q)
    df.loc[df["position"] == 0, "position"] = 99
    df.to_csv(q, index=False)
    with pytest.raises(RunError, match=r"s1-B5-s0: scored other queries than s1-H-s0"):
        confirmatory.load(study, runs)
    (runs / "s1-B5-s0" / "metrics" / "eval.json").unlink()
    with pytest.raises(RunError, match=r"s1-B5-s0: no metrics/eval.json — run `python -m lvmlib confirm`"):
        confirmatory.load(study, runs)


def test_a_baseline_that_differs_between_the_headlines_runs_is_refused(tmp_path):
    study, runs, *_ = _fake_study(tmp_path)
    q = runs / "s1-H-s1" / "metrics" / "queries.csv"
    df = pd.read_csv(q)
    df.loc[df["model"] == "copy_last", "rank_test"] += 1
    df.to_csv(q, index=False)
    with pytest.raises(RunError, match="baseline copy_last: its ranks differ between the runs of H"):
        confirmatory.load(study, runs)


# --------------------------------------------------------------------------- the protocol, before any run
def test_a_reserved_test_range_needs_a_committed_protocol_before_anything_runs(tmp_path):
    proto = tmp_path / "protocol.md"  # not in any git repository: not committed
    proto.write_text("# a protocol\n")
    common = [
        "data.test_path=corpora/wiki_extra_3000.jsonl.gz",
        "data.test_first=2500",
        "data.test_articles=500",
    ]
    p = _write(tmp_path, {**BASE, "protocol": str(proto), "common": common})
    with pytest.raises(ProtocolError, match=r"protocol.md: not committed as it is on disk"):
        confirm_study(p, runs_root=tmp_path / "runs", reports_root=tmp_path / "reports", progress=False)
    assert not (tmp_path / "runs").exists()
    p = _write(tmp_path, {**BASE, "protocol": str(tmp_path / "missing.md"), "common": common})
    with pytest.raises(ProtocolError, match=r"missing.md: protocol file not found"):
        confirm_study(p, runs_root=tmp_path / "runs", reports_root=tmp_path / "reports", progress=False)


def test_a_second_study_under_a_read_protocol_is_refused_before_anything_runs(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    proto = repo / "protocol.md"
    proto.write_text("# a protocol\n")
    git = lambda *a: subprocess.run(["git", *a], cwd=repo, check=True, capture_output=True)
    git("init", "-q")
    git("add", "protocol.md")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "protocol")
    from lvmlib.core.confirm import protocol_digest

    ledger = tmp_path / "reads.jsonl"
    ledger.write_text(json.dumps({"study": "earlier", "sha256": protocol_digest(proto), "time": "t"}) + "\n")
    common = [
        "data.test_path=corpora/wiki_extra_3000.jsonl.gz",
        "data.test_first=2500",
        "data.test_articles=500",
        f"eval.ledger={ledger}",
    ]
    p = _write(tmp_path, {**BASE, "protocol": str(proto), "common": common})
    with pytest.raises(ProtocolError, match=r"already read under .*protocol.md by study 'earlier'.*force_read: true"):
        confirm_study(p, runs_root=tmp_path / "runs", reports_root=tmp_path / "reports", progress=False)
    assert not (tmp_path / "runs").exists()
    p = _write(tmp_path, {**BASE, "protocol": str(proto), "common": common, "force_read": True})
    confirm_study(p, runs_root=tmp_path / "runs", reports_root=tmp_path / "reports", progress=False, dry_run=True)


# --------------------------------------------------------------------------- the command, for real
def _cli(tmp_path: Path, study: Path, cache: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", LVM_CACHE_DIR=str(cache))
    args = ["--runs-root", str(tmp_path / "runs"), "--reports-root", str(tmp_path / "reports")]
    return subprocess.Popen(
        [sys.executable, "-m", "lvmlib", "confirm", str(study), *args, *extra],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.slow
def test_confirm_runs_every_run_resumes_after_a_crash_and_renders_the_report(tmp_path, lvm_cache):
    """Three tiny runs (headline x 2 seeds, the mixture); SIGTERM while the second trains; the same command
    again, two runs at a time (--jobs 2), keeps the first, resumes the second and starts the third in processes of
    their own, then renders the page; a third call trains nothing."""
    npz = vectors_npz(tmp_path / "corpus.npz")
    study = _write(
        tmp_path,
        {
            "study": "cft",
            "protocol": "docs/confirmatory.md",
            "n_boot": 200,
            "common": [*tiny_overrides(npz), "train.epochs=3", "eval.primary_bank=test", "eval.latency_queries=0"],
            "predictors": [
                {
                    "id": "H",
                    "role": "headline",
                    "params": "params/smoke.yaml",
                    "seeds": [0, 1],
                    "set": ["eval.baselines=[copy_last,context_mean]"],
                },
                {
                    "id": "B5",
                    "params": "params/smoke.yaml",
                    "set": ["model.kind=context_mix", "eval.baselines=[copy_last]"],
                },
            ],
            "baselines": [{"id": "B1", "name": "copy_last"}, {"id": "B2", "name": "context_mean"}],
            "family": ["B1", "B2", "B5"],
        },
    )
    runs = tmp_path / "runs"
    proc = _cli(tmp_path, study, lvm_cache)
    deadline = time.time() + 600
    while not (runs / "cft-H-s1" / "last.pt").is_file():  # the second run has trained an epoch
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read() if proc.poll() is not None else ""
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode != 0
    assert "cft-H-s1:" in out and "python -m lvmlib confirm" in out, out[-2000:]
    first = (runs / "cft-H-s0" / "manifest.json").read_bytes()
    assert json.loads((runs / "cft-H-s1" / "manifest.json").read_text())["status"] == "interrupted"
    assert not (runs / "cft-B5-s0").exists()

    proc = _cli(tmp_path, study, lvm_cache, "--jobs", "2")
    out = proc.communicate(timeout=900)[0]
    assert proc.returncode == 0, out[-3000:]
    assert "[1/3] cft-H-s0: finished earlier, kept" in out and out.count(": finished in ") == 2
    assert "[2/3] cft-H-s1: resuming (interrupted)" in out and "[3/3] cft-B5-s0: starting" in out
    assert (runs / "cft-H-s0" / "manifest.json").read_bytes() == first  # the finished run was not touched
    rec = json.loads((tmp_path / "reports" / "confirmatory" / "confirm.json").read_text())
    assert rec["answer"].startswith("On ") and "copy_last on R@5 in the test bank" in rec["answer"]
    assert [f["vs"] for f in rec["family"]] == ["B1", "B2", "B5"] and rec["m"] == 3
    assert {(s["predictor"], s["seed"]) for s in rec["seeds"]} == {("H", 0), ("H", 1), ("B5", 0)}
    html = (tmp_path / "reports" / "confirmatory.html").read_text()
    assert rec["answer"].split(":")[0] in html and "<img" in html
    index = (tmp_path / "reports" / "index.html").read_text()
    assert "confirm cft" in index and "confirmatory" in index

    stamps = {p: p.stat().st_mtime_ns for p in runs.glob("*/manifest.json")}
    proc = _cli(tmp_path, study, lvm_cache)
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0 and out.count("finished earlier, kept") == 3, out[-2000:]
    assert stamps == {p: p.stat().st_mtime_ns for p in runs.glob("*/manifest.json")}
