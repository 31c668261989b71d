"""The scaling study: sizes parsing, trend and verdict on hand-built tables, and the command end to end
on the smoke corpus (numbers there mean nothing; the files, the fixed held-out queries and the page do)."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lvmlib.analysis import scaling
from lvmlib.core.errors import ScalingFailed
from lvmlib.plots import scaling as plots_scaling

ROOT = Path(__file__).resolve().parent.parent


def test_parse_sizes():
    assert scaling.parse_sizes("300, 100,1000,100") == [100, 300, 1000]
    for bad in ("100,x", "0", "100,-3", ""):
        with pytest.raises(ValueError, match="--articles"):
            scaling.parse_sizes(bad)


def test_trend_and_crossing():
    n = np.array([100, 1000, 10000])
    fit = scaling.trend(n, 0.1 + 0.05 * np.log10(n))
    assert fit == pytest.approx((0.1, 0.05))
    assert scaling.crossing(fit, 0.3) == pytest.approx(1e4)
    assert scaling.crossing((0.3, -0.01), 0.4) is None
    assert scaling.trend(np.array([100, 100]), np.array([0.1, 0.2])) is None


def _table(model_r5, model_cos, sizes=(100, 300, 800), ci_lo=None):
    rows = []
    for i, n in enumerate(sizes):
        rows.append(
            {
                "n_articles": n,
                "n_train_windows": 100 * n,
                "run_id": f"r{n}",
                "predictor": "model",
                "recall_at_5": model_r5[i],
                "recall_at_5_lo": model_r5[i] - 0.02,
                "recall_at_5_hi": model_r5[i] + 0.02,
                "mrr": 0.1,
                "cosine": model_cos[i],
            }
        )
        for name, r5, cos in (("copy_last", 0.25, 0.42), ("context_mean", 0.15, 0.49), ("ridge", 0.2, 0.45)):
            lo = ci_lo[i] if ci_lo is not None else model_r5[i] - r5 - 0.02
            rows.append(
                {
                    "n_articles": n,
                    "n_train_windows": 100 * n,
                    "run_id": f"r{n}",
                    "predictor": name,
                    "recall_at_5": r5,
                    "recall_at_5_lo": r5 - 0.02,
                    "recall_at_5_hi": r5 + 0.02,
                    "mrr": 0.1,
                    "cosine": cos,
                    "diff_recall_at_5": model_r5[i] - r5,
                    "diff_recall_at_5_ci": (lo, model_r5[i] - r5 + 0.02),
                    "diff_cosine": model_cos[i] - cos,
                    "diff_cosine_ci": (model_cos[i] - cos - 0.01, model_cos[i] - cos + 0.01),
                }
            )
    return pd.DataFrame(rows)


def test_verdict_says_where_the_trend_crosses():
    v = scaling.verdict(_table([0.10, 0.15, 0.20], [0.40, 0.44, 0.47]))
    r5 = v["metrics"]["recall_at_5"]
    assert r5["best_constant_baseline"] == "copy_last" and not r5["beats_at_largest"]
    assert r5["crossing_articles"] > 800 and "by extrapolation" in v["text"][0] and "closes" in v["text"][0]
    cos = v["metrics"]["cosine"]
    assert cos["best_constant_baseline"] == "context_mean" and not cos["beats_at_largest"]


def test_verdict_when_the_trend_crosses_inside_but_the_last_point_ties():
    """The dev corpus's round-2 cosine: the log-linear line passes context_mean inside the measured range,
    the measured 800-article point only ties it -> the verdict says the curve bends under its trend."""
    v = scaling.verdict(_table([0.10, 0.15, 0.20], [0.42, 0.48, 0.49]))
    cos = v["metrics"]["cosine"]
    assert not cos["beats_at_largest"] and cos["crossing_articles"] < 800
    assert "inside the measured range" in v["text"][1] and "bends under its log-linear trend" in v["text"][1]
    assert "bends" not in v["text"][0]  # R@5 crosses by extrapolation: no such sentence


def test_verdict_when_the_model_wins_and_when_it_falls():
    v = scaling.verdict(_table([0.22, 0.27, 0.31], [0.47, 0.50, 0.53]))
    assert v["metrics"]["recall_at_5"]["beats_at_largest"] and "beats copy_last at 800" in v["text"][0]
    assert v["metrics"]["cosine"]["beats_at_largest"]
    v = scaling.verdict(_table([0.12, 0.11, 0.10], [0.40, 0.40, 0.39]))
    assert "does not close" in v["text"][0] and "flat or falling" in v["text"][0]


def test_verdict_says_when_the_last_step_widens_the_gap():
    """The dev corpus's cosine with 1,600 articles: -0.070, -0.012, -0.000, -0.002 -> closing overall,
    not in the last step."""
    v = scaling.verdict(_table([0.10, 0.15, 0.20, 0.21], [0.42, 0.478, 0.4896, 0.488], sizes=(100, 300, 800, 1600)))
    assert "closes" in v["text"][1] and "stopped closing" in v["text"][1]
    assert "stopped closing" not in v["text"][0]  # R@5 kept rising


def test_gap_panel_draws_the_line_the_verdict_fits():
    """The figure's dashed trend is the verdict's fit of the paired gaps (not a fit of the model's own
    values): at every size the dashed line sits where a + b log10 N of `verdict` puts it."""
    import matplotlib

    matplotlib.use("Agg")
    t = _table([0.10, 0.15, 0.20], [0.42, 0.48, 0.49])
    v = scaling.verdict(t)
    fig = plots_scaling.scaling_curves(t)
    for col, metric in enumerate(("recall_at_5", "cosine")):
        gx = fig.axes[2 + col] if len(fig.axes) == 4 else None
        assert gx is not None and "model −" in gx.get_ylabel()
        dashed = [ln for ln in gx.get_lines() if ln.get_linestyle() == "--"]
        assert len(dashed) == 1
        a, b = v["metrics"][metric]["fit"]
        x, y = dashed[0].get_data()
        assert np.allclose(y, a + b * np.log10(x))
        points = [ln for ln in gx.get_lines() if ln.get_marker() == "o"][0].get_data()[1]
        assert np.allclose(points, v["metrics"][metric]["gaps"])
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_verdict_uses_paired_gaps_when_the_bank_grows():
    """With extra training articles the bank grows, and copy_last's R@5 falls at the largest size: the
    gaps are the paired differences at each size (not the model against an averaged level)."""
    t = _table([0.10, 0.15, 0.20], [0.42, 0.46, 0.48], sizes=(100, 300, 1600))
    t["bank_chunks"] = t["n_articles"].map({100: 1000, 300: 1000, 1600: 1800})
    last = (t["n_articles"] == 1600) & (t["predictor"] == "copy_last")
    t.loc[last, "recall_at_5"] = 0.18  # the bigger bank
    t.loc[last, "diff_recall_at_5"] = 0.02
    t.loc[last, "diff_recall_at_5_ci"] = pd.Series([(0.01, 0.03)], index=t.index[last])
    v = scaling.verdict(t)
    r5 = v["metrics"]["recall_at_5"]
    assert r5["gaps"] == pytest.approx([0.10 - 0.25, 0.15 - 0.25, 0.02])
    assert r5["beats_at_largest"] and r5["baseline_level"] == pytest.approx(0.18)
    assert "1,000 to 1,800 chunks" in v["text"][0] and "chunks" not in v["text"][1]
    assert "bank chunks" in plots_scaling.format_table(t).columns


def test_scaling_notebook_contract():
    import nbformat
    import papermill as pm

    nb = nbformat.read(str(ROOT / "notebooks/06_scaling.ipynb"), as_version=4)
    assert nb.cells[0].source.startswith("# 06")
    declared = pm.inspect_notebook(str(ROOT / "notebooks/06_scaling.ipynb"))
    assert {"run_dirs", "scaling_id", "out_dir", "metrics_dir"} <= set(declared)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "def " not in code and "class " not in code  # logic lives in lvmlib
    assert all(not c.outputs for c in nb.cells if c.cell_type == "code")


@pytest.mark.slow
def test_scaling_command_on_the_smoke_corpus(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "lvmlib",
            "scaling",
            "params/smoke.yaml",
            "--articles",
            "3,6",
            "--set",
            "train.epochs=1",
            "--id",
            "tiny",
            "--runs-root",
            str(tmp_path / "runs"),
            "--reports-root",
            str(tmp_path / "reports"),
            "--quiet",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=1500,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rec = json.loads((tmp_path / "reports/scaling_tiny/scaling.json").read_text())
    sizes = sorted({row["n_articles"] for row in rec["rows"]})
    assert sizes == [3, 6]
    assert {row["predictor"] for row in rec["rows"]} == {"model", "copy_last", "context_mean", "ridge"}
    for row in rec["rows"]:
        assert 0.0 <= row["recall_at_5"] <= 1.0 and math.isfinite(row["cosine"])
    copy = [row for row in rec["rows"] if row["predictor"] == "copy_last"]
    assert copy[0]["recall_at_5"] == copy[1]["recall_at_5"]  # same held-out queries at every size
    assert rec["verdict"]["text"] and (tmp_path / "reports/scaling_tiny.html").stat().st_size > 10_000
    held = rec["heldout"]  # the held-out section: copy_last flat on the test bank, the answer in words
    assert held["bank"] == "test" and held["sizes"] == [3, 6] and "copy_last's R@5 is" in held["text"]
    assert 0 <= held["level"] <= 1 and held["target"] == pytest.approx(2 * held["level"])
    index = (tmp_path / "reports/index.html").read_text()
    assert "scaling_tiny.html" in index
    runs = sorted((tmp_path / "runs").iterdir())
    assert len(runs) == 2
    used = sorted(json.loads((d / "data/summary.json").read_text())["counts"]["train_articles_used"] for d in runs)
    assert used == [3, 6]
    # the page again from the finished runs, without training (scaling --runs)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "lvmlib",
            "scaling",
            "--runs",
            *map(str, runs),
            "--id",
            "again",
            "--reports-root",
            str(tmp_path / "reports"),
            "--quiet",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    again = json.loads((tmp_path / "reports/scaling_again/scaling.json").read_text())
    assert again["rows"] == rec["rows"]
    # --metrics-dir: the page from another evaluation folder of each run (select's metrics_val)
    args = [sys.executable, "-m", "lvmlib", "scaling", "--runs", *map(str, runs), "--metrics-dir", "metrics_val"]
    args += ["--id", "val", "--reports-root", str(tmp_path / "reports"), "--quiet"]
    r = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 2 and "metrics_val/eval.json" in r.stderr and "not an evaluated run" in r.stderr
    for d in runs:
        shutil.copytree(d / "metrics", d / "metrics_val")
    r = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((tmp_path / "reports/scaling_val/scaling.json").read_text())["rows"] == rec["rows"]
    r = subprocess.run(
        [sys.executable, "-m", "lvmlib", "scaling", "--runs", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert r.returncode == 2 and "no metrics/eval.json" in r.stderr
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "lvmlib",
            "scaling",
            "params/smoke.yaml",
            "--articles",
            "3,500",
            "--runs-root",
            str(tmp_path / "runs2"),
            "--reports-root",
            str(tmp_path / "reports2"),
            "--quiet",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert r.returncode != 0 and "train_articles = 500" in r.stderr  # the largest size runs first and fails fast


def _held_out_study(model_hits_per_size, base_hits=4, n_art=50, per_art=20, noise=None):
    """Hand-built runs: every article has `per_art` queries; the model hits `h` of them at each size (or h + the
    article's noise at that size), copy_last `base_hits`, on the 'test' bank (rank 1 = hit, 100 = miss)."""
    import pandas as pd

    study = []
    for j, (n, h) in enumerate(model_hits_per_size.items()):
        rows = []
        for a in range(n_art):
            hm = h + (noise[j, a] if noise is not None else 0)
            for i in range(per_art):
                q = a * per_art + i
                rows.append(dict(model="model", query=q, article_id=a, rank_test=1 if i < hm else 100))
                rows.append(dict(model="copy_last", query=q, article_id=a, rank_test=1 if i < base_hits else 100))
        ev = {"primary_model": "model", "primary_context": "context_excluded", "primary_bank": "global"}
        study.append({"run_dir": f"r{n}", "n_articles": n, "eval": ev, "queries": pd.DataFrame(rows)})
    return study


def test_multiple_of_baseline_solves_the_log_trend_for_twice_copy_last():
    """copy_last 20%, the model 25% at 100 and 30% at 1,000 articles: +5 points per decade from 0.15 + 0.05 log10 N,
    so 40% (2x) needs 10^5 articles; identical articles leave no bootstrap spread."""
    res = scaling.multiple_of_baseline(_held_out_study({100: 5, 1000: 6}), n_boot=200)
    assert res["level"] == pytest.approx(0.2) and res["target"] == pytest.approx(0.4)
    assert res["fit"] == pytest.approx((0.15, 0.05))
    assert res["articles"] == pytest.approx(1e5) and res["articles_ci"] == pytest.approx((1e5, 1e5))
    assert not res["reached"] and "about 100,000 training articles" in res["text"]
    flat = scaling.multiple_of_baseline(_held_out_study({100: 6, 1000: 5}), n_boot=50)
    assert flat["articles"] is None and "never gets there" in flat["text"]
    there = scaling.multiple_of_baseline(_held_out_study({100: 8, 1000: 9}), n_boot=50)
    assert there["reached"] and "already there" in there["text"]


def test_multiple_of_baseline_interval_spreads_with_article_noise_and_holds_the_point():
    noise = np.random.default_rng(0).integers(-2, 3, (3, 50))
    res = scaling.multiple_of_baseline(_held_out_study({100: 5, 300: 5, 1000: 7}, noise=noise), n_boot=300)
    lo, hi = res["articles_ci"]
    assert lo < res["articles"] and (hi is None or res["articles"] < hi)
    assert res["slope_ci"][0] < res["fit"][1] < res["slope_ci"][1]
    with pytest.raises(ScalingFailed, match="two or more"):
        scaling.multiple_of_baseline(_held_out_study({100: 5}))


def test_reading_note_names_the_primary_bank_and_the_split_of_the_queries():
    ev = {"split": "val", "primary_description": "test bank (every chunk of the evaluation-split articles)"}
    note = scaling.reading_note([{"eval": {"split": "test"}}, {"eval": ev}])
    assert "(test bank (every chunk of the evaluation-split articles))" in note and "the val articles' windows" in note
    assert "bootstrap over val articles" in note
