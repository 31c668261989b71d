"""Tweaks: a stage notebook re-run outside the runner (JupyterLab, or executed by hand) against a run.

Such a re-run rewrites the stage's files in the run directory, so the run keeps a record of it and
its reports say so. `notebook_config` (every notebook's first call) records one tweak in
`manifest.json["tweaks"]` when the kernel was not started by the runner:

    {"stage": "04_eval", "at": ISO time, "via": "jupyter" | "kernel", "notebook": path in Jupyter,
     "params_path": "...", "overrides": [...], "changes": {"eval.bootstrap": [1000, 2000]},
     "rendered_at": null}

`changes` is every resolved setting that differs from the run's `params.yaml`. The stage's existing
report is then re-rendered with a banner saying it predates the tweak, and the run page lists it.
`python -m lvmlib run --resume RUN --only NN` re-executes NN with the latest open tweak's
parameters and renders its report, which then names the tweak it shows (`rendered_at` is set); any
other runner execution of NN replaces open tweaks with the run's own parameters (`superseded_at`).
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from lvmlib.core.config import Config, load_config
from lvmlib.core.paths import PROJECT_ROOT
from lvmlib.core.runs import now_iso, update_manifest


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_changes(run_dir: str | Path, cfg: Config) -> dict[str, list[Any]]:
    """{"section.key": [value in the run's params.yaml, value now]} for every setting that differs."""
    old = _flat(load_config(Path(run_dir) / "params.yaml").to_dict())
    new = _flat(cfg.to_dict())
    return {k: [old.get(k), v] for k, v in new.items() if old.get(k) != v}


def reports_dir(manifest: dict[str, Any]) -> Path:
    """Where the run's reports are: the runner records `reports_root`; older runs used ./reports."""
    return Path(manifest.get("reports_root") or PROJECT_ROOT / "reports") / manifest["run_id"]


def pending(manifest: dict[str, Any], stage: str) -> dict[str, Any] | None:
    """The latest tweak of `stage` that no report shows and no later runner execution replaced."""
    todo = [t for t in manifest.get("tweaks", []) if t.get("stage") == stage and _open(t)]
    return todo[-1] if todo else None


def _open(t: dict[str, Any]) -> bool:
    return not t.get("rendered_at") and not t.get("superseded_at")


def settle(run_dir: str | Path, stage: str, shown: dict[str, Any] | None) -> dict[str, Any]:
    """After the runner executed `stage`: the tweak it re-ran (`shown`) and earlier open ones are now in
    the report (`rendered_at`); without one, every open tweak was replaced by the run's own parameters
    (`superseded_at`)."""
    stamp = now_iso()

    def change(m: dict[str, Any]) -> None:
        for t in m.get("tweaks", []):
            if t.get("stage") == stage and _open(t):
                if shown is not None and t.get("at", "") <= shown["at"]:
                    t["rendered_at"] = stamp
                elif shown is None:
                    t["superseded_at"] = stamp

    return update_manifest(run_dir, change)


def describe(t: dict[str, Any]) -> str:
    """'Jupyter (notebooks/04_eval.ipynb), 2026-12-02 20:40: eval.bootstrap 1000 → 2000' (plain text)."""
    who = f"Jupyter ({t['notebook']})" if t.get("via") == "jupyter" else "a kernel outside the runner"
    ch = t.get("changes") or {}
    what = "; ".join(f"{k} {old!r} → {new!r}" for k, (old, new) in ch.items()) or "same parameters as the run"
    extra = f", params file {t['params_path']}" if t.get("params_path") else ""
    return f"{who}, {str(t.get('at', ''))[:16].replace('T', ' ')}: {what}{extra}"


NOTE_CSS = (
    "margin:0;padding:8px 14px;font:13px system-ui,sans-serif;background:#fef3c7;"
    "border-bottom:1px solid #f59e0b;color:#78350f"
)


def report_note(manifest: dict[str, Any], stage: str, run_dir: str | Path) -> str:
    """HTML under a stage report's banner: what was tweaked, and whether this report shows it."""
    mine = [t for t in manifest.get("tweaks", []) if t.get("stage") == stage]
    if not mine:
        return ""
    try:
        shown = Path(run_dir).resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        shown = Path(run_dir)
    run = html.escape(str(shown))
    items = []
    for t in reversed(mine[-5:]):
        state = (
            "shown in this report"
            if t.get("rendered_at")
            else "replaced: the runner re-ran this stage with the run's own parameters afterwards"
            if t.get("superseded_at")
            else f"<b>not shown here</b>: the run's files now come from it; re-render with "
            f"<code>python -m lvmlib run --resume {run} --only {html.escape(stage)}</code>"
        )
        items.append(f"<li>{html.escape(describe(t))} — {state}</li>")
    more = f" ({len(mine) - 5} earlier not listed)" if len(mine) > 5 else ""
    return (
        f'<div class="lvm-tweaks" style="{NOTE_CSS}"><b>Tweaked:</b> this stage was re-run outside the '
        f"runner{more}<ul style='margin:4px 0 0 18px;padding:0'>{''.join(items)}</ul></div>"
    )


def _state(t: dict[str, Any]) -> str:
    return (
        "shown in the report"
        if t.get("rendered_at")
        else "replaced by a later runner execution"
        if t.get("superseded_at")
        else "report predates it"
    )


def run_page_section(manifest: dict[str, Any]) -> str:
    """HTML table of every tweak of the run, for its page ('' when there is none)."""
    tw = manifest.get("tweaks") or []
    if not tw:
        return ""
    rows = "".join(
        f"<tr><td><a href='{html.escape(t['stage'])}.html'>{html.escape(t['stage'])}</a></td>"
        f"<td>{html.escape(describe(t))}</td><td>{html.escape(', '.join(t.get('overrides') or []) or '—')}</td>"
        f"<td class='{'run' if _open(t) else 'ok'}'>"
        f"{_state(t)}</td></tr>"
        for t in reversed(tw)
    )
    return (
        "<h2>Tweaked outside the runner</h2><p><small>Stage notebooks re-run against this run in Jupyter or "
        "by hand; their files in the run directory now come from the latest one.</small></p>"
        "<table><tr><th>stage</th><th>who, when, what changed</th><th>overrides</th><th>report</th></tr>"
        f"{rows}</table>"
    )
