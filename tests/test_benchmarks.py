"""The issue-26 benchmarks run end to end on a tiny prepared run (their numbers there mean nothing; that they
run, time both recipes and print the ratio line does)."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str) -> str:
    r = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return r.stdout


def test_bench_recipe_times_old_and_new_in_one_run(tiny_run):
    out = _run(
        "benchmarks/bench_recipe.py",
        str(tiny_run),
        "--params",
        str(tiny_run / "params.yaml"),
        "--windows",
        "128",
        "--rounds",
        "1",
        "--old-set",
        "loss.negatives=bank",
        "train.epochs=3",
        "--new-set",
        "loss.negatives=bank",
        "loss.bank_dtype=bfloat16",
        "train.epochs=3",
        "train.stop_epoch=1",  # trains 1 of its schedule's 3 epochs: the table counts 1
    )
    rows = re.findall(r"^\| 1 \| (old|new) \| \d+ \| [\d.]+ \| (\d) \|", out, re.M)
    assert rows == [("old", "3"), ("new", "1")], out
    assert re.search(r"old / new, median of 1 round\(s\): an epoch [\d.]+x, the whole training [\d.]+x", out)


def test_profile_step_recipe_columns(tmp_path):
    out = _run(
        "benchmarks/profile_step.py",
        "--recipe",
        "params/smoke.yaml",
        "--set",
        "loss.negatives=bank;loss.bank_sample=0",
        "--set",
        "loss.negatives=bank;loss.bank_sample=64",
        "--bank",
        "512",
        "--steps",
        "1",
        "--threads",
        "1",
    )
    assert "| loss.negatives=bank;loss.bank_sample=0: ms | % | loss.negatives=bank;loss.bank_sample=64: ms | % |" in out
    bank = re.search(r"^\| bank loss \| (\d+) \| \d+ % \| (\d+) \| \d+ % \|", out, re.M)
    assert bank, out
