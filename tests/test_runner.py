"""The runner: notebooks' contract, the smoke study end to end, and the failure path."""

import json
import math
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from lvmlib.core.paths import NOTEBOOK_DIR, NOTEBOOKS
from lvmlib.report.pages import write_index

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_contract(name):
    nb = nbformat.read(str(NOTEBOOK_DIR / f"{name}.ipynb"), as_version=4)
    assert nb.metadata["kernelspec"]["name"] == "lvm-study"
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, "exactly one papermill parameters cell"
    import papermill as pm

    declared = pm.inspect_notebook(str(NOTEBOOK_DIR / f"{name}.ipynb"))  # papermill's own parser
    assert {"params_path", "run_dir", "overrides"} <= set(declared), declared
    assert len(declared) == len(params[0].source.strip().splitlines()), "a parameter line papermill cannot parse"
    for c in nb.cells:  # committed without outputs
        if c.cell_type == "code":
            assert not c.outputs and c.execution_count is None, f"{name}: strip outputs before committing"


ALL_NOTEBOOKS = sorted(p.stem for p in NOTEBOOK_DIR.glob("*.ipynb"))


@pytest.mark.parametrize("name", ALL_NOTEBOOKS)
def test_notebooks_hold_no_logic(name):
    """Logic lives in lvmlib: no notebook cell defines a function or class (05/06 included)."""
    nb = nbformat.read(str(NOTEBOOK_DIR / f"{name}.ipynb"), as_version=4)
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    assert code, name
    for src in code:
        for line in src.splitlines():
            assert not line.lstrip().startswith(("def ", "class ", "async def ", "lambda")), f"{name}: {line!r}"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_stage_notebooks_set_up_and_record_through_lvmlib(name):
    """Each stage notebook's first code cell after the parameters is one `notebook.setup` call (plus
    imports); its closing cell is one `notebook.record` call for that stage."""
    from lvmlib.app import notebook

    nb = nbformat.read(str(NOTEBOOK_DIR / f"{name}.ipynb"), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code" and "parameters" not in c.metadata.get("tags", [])]
    calls = [line for line in code[0].source.splitlines() if line and not line.startswith(("import ", "from "))]
    assert calls[0] == f'cfg = notebook.setup(params_path, run_dir, overrides, stage="{name}")', calls
    last = code[-1].source.strip()
    assert last.startswith(f'notebook.record("{name}", run_dir, ') and len(last.splitlines()) == 1, last
    assert name in notebook.RECORDS
    assert all("notebook_config" not in c.source for c in code), "the setup goes through notebook.setup"


def test_record_prints_each_stages_headline(tmp_path, capsys):
    from lvmlib.app import notebook

    gate = {"gate_val_cosine": 0.41, "threshold": 0.5, "passed": False, "decision": "extend", "reason": "r"}
    notebook.record("03_gates", tmp_path, gate)
    assert json.loads(capsys.readouterr().out) == {
        k: gate[k] for k in ("gate_val_cosine", "threshold", "passed", "decision")
    }
    summary = {"n_params": 10, "epochs_trained": 2}
    notebook.record("02_train", tmp_path, summary)
    assert json.loads((tmp_path / "metrics" / "train.json").read_text()) == summary
    assert json.loads(capsys.readouterr().out) == summary


def test_index_lists_runs_newest_first(tmp_path):
    for rid, t, st in (("old", "2026-01-01T00:00:00", "succeeded"), ("new", "2026-02-01T00:00:00", "failed")):
        (tmp_path / rid).mkdir()
        (tmp_path / rid / "run.json").write_text(
            json.dumps(
                {
                    "run_id": rid,
                    "kind": "run",
                    "started_at": t,
                    "status": st,
                    "params_name": "p",
                    "failure": "01_data: boom" if st == "failed" else None,
                    "recall_at_5": 0.25,
                }
            )
        )
    html = write_index(tmp_path).read_text()
    assert html.index("new/index.html") < html.index("old/index.html")
    assert "01_data: boom" in html and "25.0%" in html


def test_index_reads_an_older_kits_run_json(tmp_path):
    """reports/<id>/run.json written before issue 14 holds `epoch2_val_cosine` and `extend_2_epochs`."""
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "run.json").write_text(
        json.dumps(
            {
                "run_id": "old",
                "kind": "run",
                "started_at": "2026-01-01T00:00:00",
                "status": "succeeded",
                "params_name": "p",
                "epoch2_val_cosine": 0.4321,
                "gate_decision": "extend_2_epochs",
            }
        )
    )
    html = write_index(tmp_path).read_text()
    assert "0.432" in html and "<small>extend</small>" in html and "extend_2_epochs" not in html


def _run(args, tmp_path, env_extra=None):
    import os

    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.update(env_extra or {})
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "lvmlib",
            "run",
            *args,
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
        timeout=1200,
    )


def test_bad_params_fail_before_any_run_dir(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochz: 2\n")
    r = _run([str(bad)], tmp_path)
    assert r.returncode == 2 and "train.epochz" in r.stderr and "bad.yaml" in r.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_failing_stage_marks_run_failed_and_renders_the_notebook(tmp_path):
    missing = tmp_path / "nope.jsonl"
    r = _run(
        ["params/smoke.yaml", "--set", "data.source=jsonl", "--set", f"data.path={missing}", "--run-id", "broken"],
        tmp_path,
    )
    assert r.returncode == 1, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert "FAILED" in last and "01_data" in last and "nope.jsonl" in last
    manifest = json.loads((tmp_path / "runs/broken/manifest.json").read_text())
    assert manifest["status"] == "failed" and "01_data" in manifest["failure"]
    page = (tmp_path / "reports/broken/01_data.html").read_text()
    assert "nope.jsonl" in page  # papermill's error banner and traceback are rendered
    assert not (tmp_path / "reports/broken/02_train.html").exists()
    assert "failed" in (tmp_path / "reports/index.html").read_text()


@pytest.mark.slow
def test_smoke_study_end_to_end(tmp_path):
    r = _run(["params/smoke.yaml", "--run-id", "smoke"], tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    run = tmp_path / "runs/smoke"
    for f in (
        "params.yaml",
        "manifest.json",
        "history.json",
        "best.pt",
        "last.pt",
        "train.log",
        "gates.json",
        "metrics/eval.json",
        *[f"notebooks/{n}.ipynb" for n in NOTEBOOKS],
    ):
        assert (run / f).is_file(), f
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "succeeded" and manifest["git_sha"] and manifest["ended_at"]
    assert {"torch", "numpy"} <= set(manifest["packages"])
    history = json.loads((run / "history.json").read_text())
    assert len(history) >= 2
    for rec in history:
        for k in ("epoch", "train_loss", "train_infonce", "train_ar_cosine", "val_cosine", "lr", "seconds"):
            assert k in rec and math.isfinite(rec[k]), (k, rec)
    gates = json.loads((run / "gates.json").read_text())
    assert gates["decision"] in ("continue", "extend", "stop_option_4")
    assert gates["threshold"] == 0.5 and isinstance(gates["passed"], bool)
    ev = json.loads((run / "metrics/eval.json").read_text())
    for k in ("pred_target_cosine", "recall_at_1", "recall_at_5", "recall_at_10"):
        lo = -1.0 if k == "pred_target_cosine" else 0.0  # a cosine may be negative; a recall is a fraction
        assert math.isfinite(ev[k]) and lo <= ev[k] <= 1, (k, ev[k])
        assert math.isfinite(ev["baseline_copy_last"][k])
    assert ev["n_queries"] > 0 and ev["bank_size"] > ev["n_queries"]
    assert ev["decision"] in ("proceed_phase_2", "weak", "option_4_or_5")
    for n in NOTEBOOKS:
        assert (tmp_path / "reports/smoke" / f"{n}.html").stat().st_size > 10_000
        assert (tmp_path / "reports/smoke" / f"{n}.code.html").is_file()
    index = (tmp_path / "reports/index.html").read_text()
    assert "smoke/index.html" in index and "succeeded" in index
    # any notebook can be re-run alone against the run dir (inputs are files, not kernel state)
    r2 = subprocess.run(
        [
            sys.executable,
            "-m",
            "papermill",
            "notebooks/03_gates.ipynb",
            str(tmp_path / "g.ipynb"),
            "-k",
            "lvm-study",
            "-p",
            "run_dir",
            str(run),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert r2.returncode == 0, r2.stderr[-2000:]


def test_unknown_notebook_parameter_is_named(tmp_path):
    r = _run(["params/smoke.yaml", "--only", "03_gates", "--param", "n_exampels=3"], tmp_path)
    assert r.returncode == 2 and "n_exampels" in r.stderr and "03_gates" in r.stderr
    assert not (tmp_path / "runs").exists()


def test_unknown_notebook_name_is_named(tmp_path):
    r = _run(["params/smoke.yaml", "--only", "09_magic"], tmp_path)
    assert r.returncode == 2 and "09_magic" in r.stderr


@pytest.mark.slow
def test_ctrl_c_marks_the_run_interrupted(tmp_path):
    import os
    import signal
    import time

    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lvmlib",
            "run",
            "params/smoke.yaml",
            "--run-id",
            "ctrlc",
            "--runs-root",
            str(tmp_path / "runs"),
            "--reports-root",
            str(tmp_path / "reports"),
            "--quiet",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    manifest = tmp_path / "runs/ctrlc/manifest.json"
    deadline = time.time() + 120
    while not manifest.is_file() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(2.0)  # inside 01_data
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, err[-2000:]
    m = json.loads(manifest.read_text())
    assert m["status"] == "interrupted" and "interrupted by Ctrl-C" in m["failure"], m["failure"]
    assert "<b>interrupted</b>" in (tmp_path / "reports/index.html").read_text()
