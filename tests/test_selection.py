"""`python -m lvmlib select`: the val-only recipe pick (z from paired intervals, the min-z rule) on
constructed cards, and end to end on a tiny trained run (every val window, reuse, --force, bad input)."""

import json
import math
import shutil

import pytest
from tiny_runs import CliFailed, cli

from lvmlib.analysis.selection import pick, select, table, val_card, with_curve, with_z, z_score
from lvmlib.core.errors import RequestError
from lvmlib.core.runs import atomic_write_json, read_json
from lvmlib.data.prepare import load_prepared


def _card(run, d_r5, ci_r5, d_cos, ci_cos):
    return with_z(
        {
            "run": run,
            "n": 100,
            "epoch": 1,
            "mrr": 0.1,
            "r5": 0.2,
            "b_r5_name": "copy_last",
            "d_r5": d_r5,
            "ci_r5": ci_r5,
            "cos": 0.5,
            "b_cos_name": "context_mean",
            "d_cos": d_cos,
            "ci_cos": ci_cos,
        }
    )


def test_z_is_the_difference_over_the_interval_se():
    assert z_score(0.01, [-0.0096, 0.0296]) == pytest.approx(1.0)  # SE = 0.0392 / 3.92
    assert z_score(-0.02, [-0.04, 0.0]) == pytest.approx(-1.96)
    assert z_score(0.0, [0.0, 0.0]) == 0.0 and z_score(0.1, [0.1, 0.1]) == math.inf


def test_pick_maximises_the_weaker_half_and_needs_both_above_zero():
    strong_r5_tied_cos = _card("a", 0.03, [0.01, 0.05], -0.0003, [-0.002, 0.0015])  # min z < 0
    balanced = _card("b", 0.012, [0.002, 0.022], 0.01, [0.008, 0.012])  # z_r5 2.35, z_cos 9.8
    weaker = _card("c", 0.007, [-0.003, 0.017], 0.01, [0.008, 0.012])  # z_r5 1.37
    assert pick([strong_r5_tied_cos, weaker, balanced])["run"] == "b"
    assert pick([strong_r5_tied_cos]) is None
    assert "| b | 1 |" in table([balanced]) and "+2.35 |" in table([balanced])


def test_select_scores_every_val_window_and_reuses_it(tiny_run, tmp_path):
    run = tmp_path / "r1"
    shutil.copytree(tiny_run, run)
    out = select([run], rule="bank")
    ev = read_json(run / "metrics_val" / "eval.json")
    assert ev["split"] == "val"
    assert ev["n_queries"] == len(load_prepared(run).windows("val")[1]) > 0  # every val window, not a sample
    card = val_card(run)
    assert card["d_r5"] == ev["gates"]["best_baseline"]["diff_recall_at_5"]
    assert f"| r1 | {card['epoch']} | {ev['mrr']:.4f} |" in out
    assert out.splitlines()[-1].startswith("pick: ")
    mtime = (run / "metrics_val" / "eval.json").stat().st_mtime_ns
    select([run], rule="bank")  # reused
    assert (run / "metrics_val" / "eval.json").stat().st_mtime_ns == mtime
    cli("select", run, "--force", "--rule", "bank")  # re-evaluated, through the CLI
    assert (run / "metrics_val" / "eval.json").stat().st_mtime_ns != mtime


def test_select_refuses_an_untrained_run_and_a_test_evaluation_in_place_of_val(tiny_run, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    with pytest.raises(CliFailed, match="bare: no best.pt"):
        cli("select", bare)
    run = tmp_path / "r2"
    shutil.copytree(tiny_run, run)
    (run / "metrics_val").mkdir()
    (run / "metrics_val" / "eval.json").write_text('{"split": "test"}')
    with pytest.raises(RequestError, match="metrics_val/eval.json: split 'test', expected 'val'"):
        select([run], rule="bank")


def _curve_ev(paired: list[tuple[int, float, list[float]]]) -> dict:
    """An eval.json holding only a bank-size curve of the primary model against copy_last."""
    return {
        "primary_model": "mamba",
        "bank_curve": {
            "paired": [
                {
                    "size": size,
                    "n_bank": 100 + size,
                    "model": "mamba",
                    "vs": "copy_last",
                    "diff_recall_at_5": d,
                    "diff_recall_at_5_ci": ci,
                }
                for size, d, ci in paired
            ]
        },
    }


def test_the_curve_rule_reads_the_largest_bank_and_disqualifies_a_significant_loss_anywhere():
    base = {"z_cos": 5.0}
    good = with_curve(dict(base), _curve_ev([(0, -0.01, [-0.03, 0.01]), (1000, 0.02, [0.0098, 0.0302])]), "x")
    assert good["curve_size"] == 1000 and good["worse_at"] == []
    assert good["z_big"] == pytest.approx(0.02 / (0.0204 / 3.92)) and good["min_z"] == pytest.approx(good["z_big"])
    # the same edge in the largest bank, but significantly below copy_last in the smallest: out
    lost = with_curve(dict(base), _curve_ev([(1000, 0.02, [0.0098, 0.0302]), (0, -0.03, [-0.05, -0.01])]), "x")
    assert lost["worse_at"] == [0] and lost["min_z"] == -math.inf
    assert pick([dict(lost, run="lost"), dict(good, run="good")])["run"] == "good"
    assert pick([dict(lost, run="lost")]) is None
    # the cosine half still bounds the score
    weak_cos = with_curve({"z_cos": 0.5}, _curve_ev([(0, 0.05, [0.04, 0.06])]), "x")
    assert weak_cos["min_z"] == 0.5


def test_the_curve_rule_refuses_a_run_without_a_curve_naming_the_fix():
    with pytest.raises(RequestError, match="no bank-size curve.*data.distractor_path.*--rule bank"):
        with_curve({"z_cos": 1.0}, {"primary_model": "mamba"}, "runs/x/metrics_val/eval.json")


def test_select_by_the_curve_prints_its_table_and_pick(tiny_run, tmp_path):
    run = tmp_path / "r3"
    shutil.copytree(tiny_run, run)
    with pytest.raises(CliFailed, match="no bank-size curve"):
        cli("select", run)  # the default rule needs a curve; the tiny run was prepared without distractors
    ev = read_json(run / "metrics_val" / "eval.json")  # written by the val evaluation above
    ev.update(_curve_ev([(0, 0.01, [0.001, 0.019]), (500, 0.03, [0.01, 0.05])]))
    atomic_write_json(run / "metrics_val" / "eval.json", ev)  # as the evaluation writes it (digest recorded)
    out = select([run])
    assert "largest bank (distractors / rows)" in out and "| 500 / 600 | +3.00 [+1.00, +5.00] |" in out
    assert "| no size |" in out
    assert "| +1.0* / +3.0* |" in out and "(sizes, distractors added: 0 / 500)" in out  # the whole curve, per size
    png = tmp_path / "curves.png"
    cli("select", run, "--figure", png)
    assert png.stat().st_size > 5000  # one line per run, drawn
    with pytest.raises(RequestError, match="select --rule 'nope'"):
        select([run], rule="nope")


def test_select_reference_pairs_every_run_with_it_on_the_same_val_queries(tiny_run, tmp_path):
    """Two copies of one trained run score the same val queries alike: paired Δ exactly 0 with a zero-width
    interval (a pairing that failed would print 'not paired'); a reference outside the runs is refused."""
    a, b = tmp_path / "ra", tmp_path / "rb"
    shutil.copytree(tiny_run, a)
    shutil.copytree(tiny_run, b)
    out = select([a, b], rule="bank", reference=a)
    tail = out.split("paired on val, minus ")[1].splitlines()
    n = len(load_prepared(a).windows("val")[1])
    assert tail[3].startswith("| rb | +0.00 [+0.00, +0.00] | +0.0000 [+0.0000, +0.0000] | ")
    assert f"| {n:,} / " in tail[3] and len(tail) == 4
    with pytest.raises(RequestError, match="--reference .*: not one of the runs given"):
        select([a], rule="bank", reference=b)


def test_select_data_scores_every_run_on_another_prepared_dir_in_its_own_folder(tiny_run, tmp_path):
    """--data: the val evaluation reads that prepared dir (here a copy of the run's own data, so the numbers
    match the run's own val evaluation exactly) and lands in RUN/metrics_val_<name>/, beside metrics_val/."""
    run, other = tmp_path / "rd", tmp_path / "prepared-elsewhere"
    shutil.copytree(tiny_run, run)
    shutil.copytree(tiny_run / "data", other / "data")
    own = select([run], rule="bank")
    there = select([run], rule="bank", data=other)
    assert (run / "metrics_val_prepared-elsewhere" / "eval.json").is_file()
    ev = read_json(run / "metrics_val_prepared-elsewhere" / "eval.json")
    assert ev["split"] == "val" and "prepared-elsewhere" in json.dumps(ev)
    assert own.splitlines()[3] == there.splitlines()[3]  # same run row: same data, same numbers
    assert "paired on val" in select([run, run], rule="bank", reference=run, data=other)
    # eval.* overrides for the val evaluation only: fewer baselines, the same numbers for those kept
    lean = select([run], rule="bank", data=other, force=True, overrides=["eval.baselines=[copy_last, context_mean]"])
    ev = read_json(run / "metrics_val_prepared-elsewhere" / "eval.json")
    assert set(ev["models"]) == {ev["primary_model"], "copy_last", "context_mean"}
    assert lean.splitlines()[3].split("|")[3:5] == there.splitlines()[3].split("|")[3:5]  # val MRR, R@5
    with pytest.raises(RequestError, match="select --set train.epochs=3: only eval"):
        select([run], rule="bank", force=True, overrides=["train.epochs=3"])


def test_select_tag_scores_a_blended_variant_beside_the_plain_one(tiny_run, tmp_path):
    """--set eval.blend_last=1 --tag blend: the primary model blended with the last context vector, in its own
    folder and row; the plain evaluation stays as it was. beta 0 would be the model; a huge beta is copy_last."""
    run = tmp_path / "rb"
    shutil.copytree(tiny_run, run)
    select([run], rule="bank")
    plain = read_json(run / "metrics_val" / "eval.json")
    out = select([run], rule="bank", overrides=["eval.blend_last=1.0"], tag="blend")
    ev = read_json(run / "metrics_val_blend" / "eval.json")
    assert "| rb+blend |" in out and ev["primary_model"] == plain["primary_model"] + "+last"
    assert "eval.blend_last 1" in ev["models"][ev["primary_model"]]["source"]
    assert read_json(run / "metrics_val" / "eval.json") == plain
    select([run], rule="bank", overrides=["eval.blend_last=10000.0"], tag="huge")
    huge = read_json(run / "metrics_val_huge" / "eval.json")
    m, c = huge["models"][huge["primary_model"]], huge["models"]["copy_last"]
    assert m["pred_target_cosine"] == pytest.approx(c["pred_target_cosine"], abs=1e-3)


def test_select_pools_average_seeds_per_query_then_pair_the_pools(monkeypatch):
    """versus_pools: each pool's hit@5 and cosine are averaged over its runs per val query, then every pool minus
    the first, paired: hand-built ranks for 2 + 2 runs over 4 queries of 2 articles."""
    import pandas as pd

    import lvmlib.analysis.compare as C
    from lvmlib.analysis.selection import parse_pools, versus_pools

    ranks = {  # run -> (ranks, cosines) for queries (article, position) (1,5) (1,6) (2,5) (2,6)
        "r0": ([1, 9, 3, 20], [0.5, 0.4, 0.6, 0.3]),
        "r1": ([2, 4, 30, 20], [0.5, 0.6, 0.4, 0.3]),
        "c0": ([1, 1, 1, 20], [0.6, 0.4, 0.6, 0.3]),
        "c1": ([9, 4, 3, 5], [0.5, 0.6, 0.6, 0.5]),
    }

    def frame(run):
        r, c = ranks[run]
        return pd.DataFrame(
            {"article_id": [2, 2, 1, 1], "position": [5, 6, 5, 6], "rank": r[2:] + r[:2], "cosine": c[2:] + c[:2]}
        )  # stored out of order: the pooling sorts by query

    monkeypatch.setattr(C, "load_run", lambda run, metrics_dir: run)
    monkeypatch.setattr(C, "primary_ranks", lambda run, bank=None: frame(run))
    out = versus_pools({"R": ["r0", "r1"], "C": ["c0", "c1"]})
    lines = out.splitlines()
    # hit@5 per query (1,5) (1,6) (2,5) (2,6), mean of the seeds: R 1, .5, .5, 0 -> 50%; C .5, 1, 1, .5 -> 75%
    assert lines[3].startswith("| R | 2 | 50.00% | – | ")
    assert lines[4].startswith("| C | 2 | 75.00% | +25.00 [")
    cos_r, cos_c = (
        (0.5 + 0.5 + 0.4 + 0.6 + 0.6 + 0.4 + 0.3 + 0.3) / 8,
        (0.6 + 0.5 + 0.4 + 0.6 + 0.6 + 0.6 + 0.3 + 0.5) / 8,
    )
    assert f"| {cos_c:.4f} | {cos_c - cos_r:+.4f} [" in lines[4]
    with pytest.raises(RequestError, match="--pool 'R': expected NAME=RUN"):
        parse_pools(["R"], ["r0"])
    with pytest.raises(RequestError, match="r9 is not one of the runs given"):
        parse_pools(["R=r0", "C=r9"], ["r0"])
    with pytest.raises(RequestError, match="two pools or more"):
        parse_pools(["R=r0"], ["r0"])
