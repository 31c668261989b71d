"""Tweaks: a stage notebook run outside the runner against a run is recorded and shown in its reports."""

import json
import os
from pathlib import Path

import nbformat
import pytest

from lvmlib.app.execute import RUNNER_ENV
from lvmlib.app.runner import notebook_config
from lvmlib.app.tweaks import SESSION_ENV
from lvmlib.core.config import dump_config, load_config
from lvmlib.report import tweaks
from lvmlib.report.pages import record_run, render_html

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def run(tmp_path, monkeypatch):
    """A run directory with params, manifest, an executed 04_eval notebook and its rendered report."""
    monkeypatch.delenv(RUNNER_ENV, raising=False)
    monkeypatch.delenv(SESSION_ENV, raising=False)
    run_dir, reports = tmp_path / "runs" / "r1", tmp_path / "reports"
    (run_dir / "notebooks").mkdir(parents=True)
    (run_dir / "params.yaml").write_text(dump_config(load_config(ROOT / "params/smoke.yaml")))
    (run_dir / "manifest.json").write_text(
        json.dumps(
            {
                "run_id": "r1",
                "status": "succeeded",
                "params_name": "smoke",
                "started_at": "2026-01-01T00:00:00",
                "reports_root": str(reports),
                "stages": {"04_eval": {"status": "succeeded", "seconds": 3.0}},
            }
        )
    )
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# 04 · Eval"), nbformat.v4.new_markdown_cell("## Summary\n\nR@5 1%")]
    nbformat.write(nb, str(run_dir / "notebooks" / "04_eval.ipynb"))
    render_html(run_dir / "notebooks" / "04_eval.ipynb", reports / "r1" / "04_eval.html")
    record_run(reports, run_dir)
    return run_dir


def _manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())


def test_a_notebook_run_by_hand_is_recorded_with_what_changed(run, monkeypatch):
    monkeypatch.setenv(SESSION_ENV, "notebooks/04_eval.ipynb")
    cfg = notebook_config("", str(run), ["eval.bootstrap=7"], stage="04_eval")
    assert cfg.eval.bootstrap == 7
    (t,) = _manifest(run)["tweaks"]
    assert t["stage"] == "04_eval" and t["via"] == "jupyter" and t["notebook"] == "notebooks/04_eval.ipynb"
    assert t["overrides"] == ["eval.bootstrap=7"] and t["changes"] == {"eval.bootstrap": [50, 7]}
    assert t["at"] and t["rendered_at"] is None
    assert tweaks.pending(_manifest(run), "04_eval") == t
    # the stage report says it predates the tweak and how to re-render it; the run page lists it
    page = (run.parent.parent / "reports/r1/04_eval.html").read_text()
    assert "Tweaked:" in page and "eval.bootstrap 50 → 7" in page and "not shown here" in page
    assert "--resume" in page and "--only 04_eval" in page
    run_page = (run.parent.parent / "reports/r1/index.html").read_text()
    assert "Tweaked outside the runner" in run_page and "report predates it" in run_page
    assert "tweaked" in (run.parent.parent / "reports/index.html").read_text()


def test_the_runners_own_kernels_record_nothing(run, monkeypatch):
    monkeypatch.setenv(RUNNER_ENV, "1")
    notebook_config("", str(run), ["eval.bootstrap=7"], stage="04_eval")
    assert "tweaks" not in _manifest(run)
    assert "Tweaked" not in (run.parent.parent / "reports/r1/04_eval.html").read_text()


def test_a_rerun_with_the_same_parameters_is_still_recorded(run):
    notebook_config("", str(run), [], stage="04_eval")
    (t,) = _manifest(run)["tweaks"]
    assert t["via"] == "kernel" and t["changes"] == {}
    assert "same parameters as the run" in tweaks.describe(t)


def test_settle_marks_the_tweak_shown_or_replaced(run):
    notebook_config("", str(run), ["eval.bootstrap=7"], stage="04_eval")
    notebook_config("", str(run), ["eval.bootstrap=9"], stage="04_eval")
    latest = tweaks.pending(_manifest(run), "04_eval")
    assert latest["overrides"] == ["eval.bootstrap=9"]
    m = tweaks.settle(run, "04_eval", latest)
    assert all(t["rendered_at"] for t in m["tweaks"]) and tweaks.pending(m, "04_eval") is None
    note = tweaks.report_note(m, "04_eval", run)
    assert note.count("shown in this report") == 2
    notebook_config("", str(run), ["eval.bootstrap=11"], stage="04_eval")
    m = tweaks.settle(run, "04_eval", None)  # the runner re-ran 04_eval with the run's own parameters
    assert m["tweaks"][-1]["superseded_at"] and tweaks.pending(m, "04_eval") is None
    assert "replaced" in tweaks.report_note(m, "04_eval", run)


def test_a_relative_run_dir_resolves_from_the_project_root(run, monkeypatch, tmp_path):
    """Jupyter starts a notebook's kernel in notebooks/; `runs/<id>` must mean what it means in a shell."""
    link = ROOT / "runs" / f"test-tweaks-{os.getpid()}"
    link.parent.mkdir(exist_ok=True)
    link.symlink_to(run, target_is_directory=True)
    try:
        monkeypatch.chdir(ROOT / "notebooks")
        notebook_config("", f"runs/{link.name}", [], stage="04_eval")
        assert Path.cwd() == ROOT
        assert len(_manifest(run)["tweaks"]) == 1
    finally:
        link.unlink()
