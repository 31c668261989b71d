"""Run the study: execute the notebooks in order with papermill, render HTML, keep the run index.

Each notebook receives only `params_path`, `run_dir` and `overrides` (02_train also `resume`); its
inputs are files in the run directory, so any notebook can be re-run alone against a run dir.
"""
from __future__ import annotations

import html
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from filelock import FileLock

from .config import Config, dump_config, load_config
from .runs import (PROJECT_ROOT, RunError, atomic_write_json, atomic_write_text, create_run_dir,
                   new_run_id, now_iso, read_json, start_manifest, write_manifest)

NOTEBOOKS = ("01_data", "02_train", "03_gates", "04_eval")
KERNEL_NAME = "lvm-study"
NOTEBOOK_DIR = PROJECT_ROOT / "notebooks"


class StudyFailed(RuntimeError):
    """A stage failed; the message is the one-line reason shown to the user."""


def notebook_config(params_path: str, run_dir: str, overrides: list[str] | None = None) -> Config:
    """The config a notebook works with: the params file (or the run's resolved params.yaml) + overrides."""
    if not run_dir:
        raise RunError("notebook parameter 'run_dir' is empty: pass -p run_dir runs/<run_id>")
    path = params_path or str(Path(run_dir) / "params.yaml")
    return load_config(path, list(overrides or []))


def ensure_kernel() -> str:
    """Make sure the `lvm-study` kernelspec exists and points at this interpreter."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
    try:
        spec = KernelSpecManager().get_kernel_spec(KERNEL_NAME)
        if Path(spec.argv[0]).resolve() == Path(sys.executable).resolve():
            return KERNEL_NAME
    except NoSuchKernel:
        pass
    from ipykernel.kernelspec import install
    install(kernel_name=KERNEL_NAME, display_name="lvm-study", prefix=sys.prefix)
    return KERNEL_NAME


# --------------------------------------------------------------------------- HTML rendering
def render_html(ipynb: Path, out_html: Path) -> list[Path]:
    """Two renderings: `<name>.html` with code hidden (for reading), `<name>.code.html` with code."""
    import nbformat
    from nbconvert import HTMLExporter
    nb = nbformat.read(str(ipynb), as_version=4)
    written = []
    for exclude_input, path in ((True, out_html), (False, out_html.with_suffix(".code.html"))):
        exporter = HTMLExporter(exclude_input=exclude_input, exclude_input_prompt=True, exclude_output_prompt=True)
        body, _ = exporter.from_notebook_node(nb)
        other = path.name.replace(".code.html", ".html") if not exclude_input else path.with_suffix(".code.html").name
        label = "hide code" if not exclude_input else "show code"
        banner = (f'<div style="font:13px sans-serif;padding:6px 12px;background:#f3f4f6;border-bottom:1px solid #ddd">'
                  f'<a href="index.html">run</a> · <a href="../index.html">all runs</a> · '
                  f'<a href="{html.escape(other)}">{label}</a></div>')
        idx = body.find(">", body.find("<body")) + 1
        body = body[:idx] + banner + body[idx:]
        atomic_write_text(path, body)
        written.append(path)
    return written


# --------------------------------------------------------------------------- index
def headline(run_dir: Path) -> dict[str, Any]:
    """Key numbers of a run for the index (missing files simply give no number)."""
    out: dict[str, Any] = {}
    for name, path in (("gates", run_dir / "gates.json"), ("eval", run_dir / "metrics" / "eval.json")):
        try:
            out[name] = read_json(path)
        except RunError:
            out[name] = None
    g, e = out["gates"] or {}, out["eval"] or {}
    return {"epoch2_val_cosine": g.get("epoch2_val_cosine"), "gate_decision": g.get("decision"),
            "recall_at_5": e.get("recall_at_5"), "pred_target_cosine": e.get("pred_target_cosine"),
            "phase1_decision": e.get("decision"),
            "baseline_copy_last_r5": (e.get("baseline_copy_last") or {}).get("recall_at_5"),
            "beats_best_baseline": e.get("beats_best_baseline")}


def record_run(reports_root: Path, run_dir: Path) -> None:
    """Write reports/<run_id>/run.json from the run's manifest and metrics, then rebuild the index."""
    manifest = read_json(run_dir / "manifest.json")
    rec = {k: manifest.get(k) for k in ("run_id", "params_name", "params_path", "overrides", "status",
                                        "started_at", "ended_at", "failure", "git_sha", "git_dirty")}
    rec["run_dir"] = str(run_dir)
    rec["kind"] = "run"
    rec["stages"] = manifest.get("stages", {})
    rec.update(headline(run_dir))
    atomic_write_json(reports_root / manifest["run_id"] / "run.json", rec)
    write_run_page(reports_root, rec)
    write_index(reports_root)


def write_run_page(reports_root: Path, rec: dict[str, Any]) -> None:
    rows = "".join(
        f'<li><a href="{n}.html">{n}</a> (<a href="{n}.code.html">with code</a>) — '
        f'{html.escape(str(rec["stages"].get(n, {}).get("status", "not run")))}</li>' for n in NOTEBOOKS)
    fail = f'<p style="color:#b91c1c"><b>Failed:</b> {html.escape(str(rec["failure"]))}</p>' if rec.get("failure") else ""
    page = (f"<!doctype html><meta charset=utf-8><title>{html.escape(rec['run_id'])}</title>"
            f"<body style='font:15px sans-serif;max-width:900px;margin:2em auto'>"
            f"<p><a href='../index.html'>all runs</a></p><h1>{html.escape(rec['run_id'])}</h1>"
            f"<p>status <b>{html.escape(str(rec['status']))}</b> · params {html.escape(str(rec['params_name']))}</p>"
            f"{fail}<ol>{rows}</ol></body>")
    atomic_write_text(reports_root / rec["run_id"] / "index.html", page)


def _fmt(v: Any, pct: bool = False) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.1%}" if pct else f"{v:.3f}"
    return html.escape(str(v))


def write_index(reports_root: Path) -> Path:
    """reports/index.html: every run and comparison, newest first; readable with no server."""
    reports_root = Path(reports_root)
    reports_root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(reports_root / ".index.lock")):
        recs = []
        for p in reports_root.glob("*/run.json"):
            try:
                recs.append(json.loads(p.read_text()))
            except (OSError, json.JSONDecodeError):
                continue
        for p in reports_root.glob("compare_*.json"):
            try:
                recs.append(json.loads(p.read_text()))
            except (OSError, json.JSONDecodeError):
                continue
        recs.sort(key=lambda r: r.get("started_at") or "", reverse=True)
        colour = {"succeeded": "#15803d", "failed": "#b91c1c", "running": "#b45309"}
        rows = []
        for r in recs:
            if r.get("kind") == "compare":
                rows.append(f"<tr><td><a href='{html.escape(r['href'])}'>{html.escape(r['compare_id'])}</a></td>"
                            f"<td>comparison</td><td>{html.escape(r.get('started_at') or '')}</td>"
                            f"<td colspan=6>{html.escape(r.get('verdict', ''))}</td></tr>")
                continue
            st = r.get("status") or "?"
            fail = f"<br><small>{html.escape(str(r['failure']))}</small>" if r.get("failure") else ""
            rows.append(
                f"<tr><td><a href='{html.escape(r['run_id'])}/index.html'>{html.escape(r['run_id'])}</a></td>"
                f"<td>{html.escape(str(r.get('params_name')))}</td><td>{html.escape(r.get('started_at') or '')}</td>"
                f"<td style='color:{colour.get(st, '#000')}'><b>{html.escape(st)}</b>{fail}</td>"
                f"<td>{_fmt(r.get('epoch2_val_cosine'))}<br><small>{_fmt(r.get('gate_decision'))}</small></td>"
                f"<td>{_fmt(r.get('recall_at_5'), True)}<br><small>copy-last {_fmt(r.get('baseline_copy_last_r5'), True)}</small></td>"
                f"<td>{_fmt(r.get('pred_target_cosine'))}</td><td>{_fmt(r.get('phase1_decision'))}</td>"
                f"<td>{_fmt(r.get('beats_best_baseline'))}</td></tr>")
        page = ("<!doctype html><meta charset=utf-8><title>lvm-study runs</title>"
                "<style>body{font:15px sans-serif;margin:2em}table{border-collapse:collapse}"
                "td,th{border-bottom:1px solid #ddd;padding:6px 10px;text-align:left;vertical-align:top}"
                "th{background:#f3f4f6}</style><h1>lvm-study — runs</h1>"
                "<p>Newest first. R@5 and cosine: Phase-1 primary bank (global, context chunks excluded). "
                "Gate: val cosine at epoch 2 (bar 0.50).</p>"
                "<table><tr><th>run</th><th>params</th><th>started</th><th>status</th><th>epoch-2 val cos</th>"
                "<th>R@5</th><th>cosine</th><th>Phase 1</th><th>beats best baseline</th></tr>"
                + "".join(rows) + "</table>")
        out = reports_root / "index.html"
        atomic_write_text(out, page)
    return out


# --------------------------------------------------------------------------- the study
def _execute(name: str, run_dir: Path, params_path: str, overrides: list[str], extra: dict[str, Any],
             progress: bool) -> None:
    import papermill as pm
    src = NOTEBOOK_DIR / f"{name}.ipynb"
    if not src.is_file():
        raise StudyFailed(f"{src}: notebook missing")
    params = {"params_path": params_path, "run_dir": str(run_dir), "overrides": list(overrides), **extra}
    pm.execute_notebook(str(src), str(run_dir / "notebooks" / f"{name}.ipynb"), parameters=params,
                        kernel_name=ensure_kernel(), progress_bar=progress, log_output=progress,
                        cwd=str(PROJECT_ROOT), stdout_file=None, stderr_file=None)


def check_notebook_params(names: list[str], notebook_params: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Route `--param key=value` to the notebooks that declare `key`; unknown names are an error."""
    import papermill as pm
    unknown = [n for n in names if n not in NOTEBOOKS]
    if unknown:
        raise RunError(f"unknown notebook(s) {unknown}; the study's notebooks are {list(NOTEBOOKS)}")
    missing = [str(NOTEBOOK_DIR / f"{n}.ipynb") for n in names if not (NOTEBOOK_DIR / f"{n}.ipynb").is_file()]
    if missing:
        raise RunError(f"notebook file(s) missing: {', '.join(missing)}")
    declared = {n: set(pm.inspect_notebook(str(NOTEBOOK_DIR / f"{n}.ipynb"))) for n in names}
    routed: dict[str, dict[str, Any]] = {n: {} for n in names}
    for key, value in notebook_params.items():
        takers = [n for n in names if key in declared[n]]
        if not takers:
            known = sorted(set().union(*declared.values()))
            raise RunError(f"notebook parameter '{key}' (value {value!r}) does not exist in {', '.join(names)}; "
                           f"declared parameters: {', '.join(known)}")
        for n in takers:
            routed[n][key] = value
    return routed


def _failure_line(name: str, exc: BaseException) -> str:
    ename = getattr(exc, "ename", type(exc).__name__)
    evalue = getattr(exc, "evalue", str(exc))
    first = str(evalue).strip().splitlines()[0] if str(evalue).strip() else ""
    cell = getattr(exc, "exec_count", None)
    where = f" (cell {cell})" if cell is not None else ""
    return f"{name}{where}: {ename}: {first}"


def run_study(params_path: str | Path, overrides: list[str] | tuple[str, ...] = (), run_id: str | None = None,
              runs_root: str | Path = "runs", reports_root: str | Path = "reports", resume: str | Path | None = None,
              only: list[str] | None = None, progress: bool = True,
              notebook_params: dict[str, Any] | None = None) -> Path:
    """Execute the notebooks in order; returns the run dir. Raises StudyFailed with a one-line reason."""
    reports_root = Path(reports_root).resolve()
    overrides = list(overrides)
    names = only or list(NOTEBOOKS)
    # Everything that can be checked is checked before anything is written.
    if resume:
        run_dir = Path(resume).resolve()
        if not (run_dir / "manifest.json").is_file():
            raise RunError(f"{run_dir}: not a run directory (no manifest.json) — cannot resume")
        cfg = load_config(run_dir / "params.yaml", overrides)
    else:
        cfg = load_config(params_path, overrides)
    routed = check_notebook_params(names, dict(notebook_params or {}))
    if resume:
        if overrides:  # e.g. --set train.epochs=20 to extend a finished run: keep it in the record
            atomic_write_text(run_dir / "params.yaml", dump_config(cfg))
        params_arg = str(run_dir / "params.yaml")
        manifest = write_manifest(run_dir, status="running", resumed_at=now_iso(), pid=os.getpid(), failure=None)
        run_id = manifest["run_id"]
    else:
        run_id = run_id or new_run_id(cfg.name)
        run_dir = create_run_dir(Path(runs_root).resolve(), run_id)
        atomic_write_text(run_dir / "params.yaml", dump_config(cfg))
        params_arg = str(Path(params_path).resolve())
        start_manifest(run_dir, run_id, params_arg, overrides, cfg.train.seed, cfg.name)
    (reports_root / run_id).mkdir(parents=True, exist_ok=True)
    record_run(reports_root, run_dir)
    stages = read_json(run_dir / "manifest.json").get("stages", {})
    for i, name in enumerate(names, 1):
        if resume and stages.get(name, {}).get("status") == "succeeded" and name != "02_train":
            print(f"[lvm-study] {i}/{len(names)} {name}: done earlier, skipped", flush=True)
            continue
        print(f"[lvm-study] {i}/{len(names)} {name} → {run_dir.name}", flush=True)
        t0 = time.time()
        extra = {"resume": bool(resume)} if name == "02_train" else {}
        extra.update(routed[name])
        # Executing from the run's resolved params keeps re-runs honest; overrides already applied.
        err: BaseException | None = None
        try:
            _execute(name, run_dir, params_arg if not resume else str(run_dir / "params.yaml"),
                     overrides if not resume else [], extra, progress)
        except Exception as exc:  # papermill raises PapermillExecutionError for a failing cell
            err = exc
        secs = round(time.time() - t0, 1)
        executed = run_dir / "notebooks" / f"{name}.ipynb"
        if executed.is_file():
            render_html(executed, reports_root / run_id / f"{name}.html")
        stages[name] = {"status": "failed" if err else "succeeded", "seconds": secs}
        if err is not None:
            line = _failure_line(name, err)
            write_manifest(run_dir, status="failed", ended_at=now_iso(), stages=stages, failure=line)
            record_run(reports_root, run_dir)
            raise StudyFailed(line) from err
        write_manifest(run_dir, stages=stages)
        print(f"[lvm-study] {name} done in {secs:.1f}s", flush=True)
    write_manifest(run_dir, status="succeeded", ended_at=now_iso(), stages=stages)
    record_run(reports_root, run_dir)
    print(f"[lvm-study] run {run_id} succeeded — reports: {reports_root / run_id / 'index.html'}", flush=True)
    return run_dir
