"""Recording a tweak: a stage notebook run outside the runner is appended to the manifest and its reports re-rendered.

What a tweak record holds, and how reports show it, is `lvmlib.report.tweaks`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lvmlib.core.config import Config
from lvmlib.core.runs import now_iso, update_manifest
from lvmlib.report.tweaks import config_changes, report_note, reports_dir

SESSION_ENV = "JPY_SESSION_NAME"  # set by jupyter_server for a notebook's kernel: the notebook's path


def record_tweak(
    run_dir: str | Path, stage: str, params_path: str, overrides: list[str], cfg: Config
) -> dict[str, Any]:
    """Append a tweak to the manifest, mark the stage's report as older than it, update the run page."""
    run_dir = Path(run_dir)
    session = os.environ.get(SESSION_ENV, "")
    tweak = {
        "stage": stage or "unknown",
        "at": now_iso(),
        "via": "jupyter" if session else "kernel",
        "notebook": session,
        "params_path": params_path,
        "overrides": list(overrides),
        "changes": config_changes(run_dir, cfg),
        "rendered_at": None,
    }
    manifest = update_manifest(run_dir, lambda m: m.setdefault("tweaks", []).append(tweak))
    refresh_reports(run_dir, manifest, stage)
    return tweak


def refresh_reports(run_dir: Path, manifest: dict[str, Any], stage: str) -> None:
    """Re-render the stage's report (from the runner's executed copy) with the tweak banner, then the
    run page and index. Nothing to do for a run that has no reports yet."""
    from lvmlib.report.pages import record_run, render_html

    out = reports_dir(manifest)
    executed = run_dir / "notebooks" / f"{stage}.ipynb"
    if not out.is_dir():
        return
    try:
        if executed.is_file() and (out / f"{stage}.html").is_file():
            render_html(executed, out / f"{stage}.html", tweak_note=report_note(manifest, stage, run_dir))
        record_run(out.parent, run_dir)
    except OSError as exc:  # the tweak is recorded; a report that cannot be rewritten must not stop the work
        print(
            f"note: tweak recorded in {run_dir / 'manifest.json'}, but the reports in {out} could not be "
            f"updated ({exc})"
        )
