"""Run the study: execute the notebooks in order with papermill, render HTML, keep the run index.

Each notebook receives only `params_path`, `run_dir` and `overrides` (02_train also `resume`); its
inputs are files in the run directory, so any notebook can be re-run alone against a run dir.
"""
from __future__ import annotations

import dataclasses
import html
import json
import os
import platform
import re
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from filelock import FileLock

from . import tweaks
from .gates import upgrade
from .config import Config, dump_config, load_config
from .errors import LvmError
from .runs import (PROJECT_ROOT, RunError, RunLock, atomic_write_json, atomic_write_text, check_run_id,
                   create_run_dir, new_run_id, now_iso, read_json, start_manifest, write_manifest)

NOTEBOOKS = ("01_data", "02_train", "03_gates", "04_eval")
KERNEL_NAME = "lvm-study"
RUNNER_ENV = "LVM_RUNNER"  # set in the kernels the runner starts
NOTEBOOK_DIR = PROJECT_ROOT / "notebooks"
RESERVED_PARAMS = ("params_path", "run_dir", "overrides", "resume")  # set by the runner, never by --param
INTERRUPT_GRACE_S = 20.0  # after Ctrl-C/SIGTERM, a kernel that has not stopped by then is killed


class StudyFailed(LvmError, RuntimeError):
    """A stage failed; the message is the one-line reason shown to the user."""


class StudyInterrupted(StudyFailed):
    """Ctrl-C or SIGTERM stopped the run; `signum` gives the exit status 128 + signum."""

    def __init__(self, line: str, signum: int):
        super().__init__(line)
        self.signum = signum


def notebook_config(params_path: str, run_dir: str, overrides: list[str] | None = None, stage: str = "") -> Config:
    """The config a notebook works with: the params file (or the run's resolved params.yaml) + overrides.

    Relative paths mean what they mean on the command line: a kernel that Jupyter started in
    notebooks/ moves to the project root when `run_dir` is found there. Outside the runner (Jupyter,
    papermill by hand) the call records a tweak of `stage` in the run (see `lvmlib.tweaks`).
    """
    if not run_dir:
        raise RunError("notebook parameter 'run_dir' is empty: pass -p run_dir runs/<run_id>")
    if not Path(run_dir).is_absolute() and not Path(run_dir).exists() and (PROJECT_ROOT / run_dir).exists():
        os.chdir(PROJECT_ROOT)
    path = params_path or str(Path(run_dir) / "params.yaml")
    cfg = load_config(path, list(overrides or []))
    if os.environ.get(RUNNER_ENV) != "1" and (Path(run_dir) / "manifest.json").is_file():
        tweaks.record_tweak(run_dir, stage, params_path, list(overrides or []), cfg)
    return cfg


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
_CR = re.compile(r"[^\n]*\r(?=[^\n])")  # text a later carriage return overwrote (progress bars)
BANNER_CSS = ("position:sticky;top:0;z-index:10;font:13px system-ui,sans-serif;padding:7px 14px;"
              "background:#f3f4f6;border-bottom:1px solid #d1d5db")
REPORT_CSS = ("<style>.lvm-banner a{color:#1d4ed8;text-decoration:none;margin-right:2px}"
              ".lvm-banner a:hover{text-decoration:underline}.lvm-banner .lvm-note{color:#6b7280;float:right}"
              ".jp-OutputArea-output img{max-width:100%;height:auto}"
              ".jp-RenderedHTMLCommon table{font-size:12.5px}"
              ".jp-OutputArea-output{overflow-x:auto}</style>")
# nbconvert's lab template minus the require.js and MathJax <script>s it fetches from a CDN: the reports
# need neither (no widgets, no TeX) and must open offline without errors.
OFFLINE_TEMPLATE = ("{%- extends 'index.html.j2' -%}"
                    "{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}"
                    "{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}")


def tidy_streams(nb) -> None:
    """Merge consecutive stdout/stderr chunks, keep what a terminal would show after carriage returns
    (a progress bar's final state, or nothing when it cleared itself), and drop blank stream outputs."""
    for cell in nb.cells:
        outputs, merged = cell.get("outputs", []), []
        for out in outputs:
            if (out.output_type == "stream" and merged and merged[-1].output_type == "stream"
                    and merged[-1].name == out.name):
                merged[-1].text += out.text
            else:
                merged.append(out)
        for out in merged:
            if out.output_type == "stream":
                out.text = _CR.sub("", out.text.replace("\r\n", "\n"))
                out.text = "\n".join(line.rstrip() for line in out.text.replace("\r", "").split("\n"))
        if outputs:
            cell.outputs = [o for o in merged if o.output_type != "stream" or o.text.strip()]


def summary_first(nb) -> bool:
    """Reading order: move the `## Summary` section (a markdown cell starting with that heading, or cells
    tagged `summary`, up to the next `## ` heading) right after the title cell. True if anything moved."""
    cells = nb.cells
    start = next((i for i, c in enumerate(cells) if "summary" in c.metadata.get("tags", []) or
                  (c.cell_type == "markdown" and c.source.lstrip().lower().startswith("## summary"))), None)
    first_output = next((i for i, c in enumerate(cells) if c.cell_type == "code" and c.get("outputs")), len(cells))
    if start is None or start < first_output or start == 0:
        return False  # no summary, or nothing with output comes before it
    end = start + 1
    while end < len(cells) and not (cells[end].cell_type == "markdown" and cells[end].source.lstrip().startswith("## ")) \
            and "summary" not in cells[end].metadata.get("tags", []):
        end += 1
    while end < len(cells) and "summary" in cells[end].metadata.get("tags", []):
        end += 1
    block = cells[start:end]
    if not any(c.cell_type == "code" and c.get("outputs") for c in block):
        return False  # the summary never ran (a failed notebook): keep the order papermill left
    nb.cells = cells[:1] + block + cells[1:start] + cells[end:]
    return True


def render_html(ipynb: Path, out_html: Path, nav: list[tuple[str, str]] | None = None,
                tweak_note: str = "") -> list[Path]:
    """Two renderings: `<name>.html` with code hidden (for reading: the summary section first, progress
    bars collapsed) and `<name>.code.html` with code, in execution order.

    `nav`: (label, href) links for the top bar; default: this run's page and the index of all runs.
    `tweak_note`: HTML shown under the banner on both pages (the tweaks of this stage, `tweaks.report_note`).
    """
    import nbformat
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter
    nav = nav if nav is not None else [("run", "index.html"), ("all runs", "../index.html")]
    written = []
    for exclude_input, path in ((True, out_html), (False, out_html.with_suffix(".code.html"))):
        nb = nbformat.read(str(ipynb), as_version=4)
        tidy_streams(nb)
        moved = summary_first(nb) if exclude_input else False
        exporter = HTMLExporter(exclude_input=exclude_input, exclude_input_prompt=True, exclude_output_prompt=True,
                                extra_loaders=[DictLoader({"lvm_report.html.j2": OFFLINE_TEMPLATE})],
                                template_file="lvm_report.html.j2")
        body, _ = exporter.from_notebook_node(nb)
        other = path.name.replace(".code.html", ".html") if not exclude_input else path.with_suffix(".code.html").name
        label = "hide code" if not exclude_input else "show code"
        links = " · ".join(f'<a href="{html.escape(h)}">{html.escape(t)}</a>' for t, h in nav)
        note = "summary shown first · code hidden" if moved else ("code hidden" if exclude_input else
                                                                  "code shown, in execution order")
        banner = (f'<div class="lvm-banner" style="{BANNER_CSS}">{links}{" · " if links else ""}'
                  f'<a href="{html.escape(other)}"><b>{label}</b></a><span class="lvm-note">{note}</span></div>')
        body = body.replace("</head>", REPORT_CSS + "</head>", 1)
        idx = body.find(">", body.find("<body")) + 1
        body = body[:idx] + banner + tweak_note + body[idx:]
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
    g, e = upgrade(out["gates"]) or {}, out["eval"] or {}
    best = ((e.get("gates") or {}).get("best_baseline") or {})
    return {"gate_epoch": g.get("gate_epoch"), "gate_val_cosine": g.get("gate_val_cosine"),
            "gate_decision": g.get("decision"),
            "gate_reason": g.get("reason"), "epochs_trained": g.get("epochs_trained"),
            "recall_at_5": e.get("recall_at_5"), "recall_at_5_ci": e.get("recall_at_5_ci"), "mrr": e.get("mrr"),
            "pred_target_cosine": e.get("pred_target_cosine"), "n_queries": e.get("n_queries"),
            "phase1_decision": e.get("decision"), "phase1_reason": (e.get("gates") or {}).get("reason"),
            "primary_description": e.get("primary_description"),
            "baseline_copy_last_r5": (e.get("baseline_copy_last") or {}).get("recall_at_5"),
            "best_baseline": best.get("name"), "best_baseline_r5": best.get("recall_at_5"),
            "best_baseline_cosine": best.get("pred_target_cosine"),
            "beats_best_baseline": e.get("beats_best_baseline")}


def record_run(reports_root: Path, run_dir: Path) -> None:
    """Write reports/<run_id>/run.json from the run's manifest and metrics, then rebuild the index."""
    manifest = read_json(run_dir / "manifest.json")
    rec = {k: manifest.get(k) for k in ("run_id", "params_name", "params_path", "overrides", "status",
                                        "started_at", "ended_at", "failure", "git_sha", "git_dirty")}
    rec["run_dir"] = str(run_dir)
    rec["kind"] = "run"
    rec["stages"] = manifest.get("stages", {})
    rec["tweaks"] = manifest.get("tweaks", [])
    rec.update(headline(run_dir))
    rec["run_id"] = run_dir.name  # reports are keyed by the run folder (a copied run is a new run)
    atomic_write_json(reports_root / rec["run_id"] / "run.json", rec)
    write_run_page(reports_root, rec)
    write_index(reports_root)


PAGE_CSS = ("body{font:15px/1.45 system-ui,sans-serif;color:#111;max-width:1200px;margin:1.5em auto;padding:0 1em}"
            "a{color:#1d4ed8}table{border-collapse:collapse}td,th{border-bottom:1px solid #e5e7eb;"
            "padding:6px 10px;text-align:left;vertical-align:top}th{background:#f3f4f6;font-weight:600}"
            "small{color:#4b5563}.ok{color:#15803d}.bad{color:#b91c1c}.run{color:#b45309}"
            ".card{display:inline-block;border:1px solid #e5e7eb;border-radius:8px;padding:8px 14px;margin:4px 8px 4px 0;"
            "min-width:120px}.card b{display:block;font-size:20px}.cmp td{background:#eff6ff}"
            ".summary{background:#f9fafb;border-left:4px solid #1d4ed8;padding:10px 14px;margin:1em 0}")
_STATUS_CLASS = {"succeeded": "ok", "failed": "bad", "running": "run", "interrupted": "run"}


def _fmt(v: Any, pct: bool = False) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.1%}" if pct else f"{v:.3f}"
    return html.escape(str(v))


def _secs(v: Any) -> str:
    return "—" if not isinstance(v, (int, float)) else f"{v:.0f} s" if v < 120 else f"{v / 60:.1f} min"


def _when(iso: str | None) -> str:
    """'2026-01-31T14:05:09+01:00' -> '2026-01-31 14:05' (the full stamp stays in run.json)."""
    return html.escape(iso[:16].replace("T", " ")) if iso else "—"


def _r5(rec: dict[str, Any]) -> str:
    ci = rec.get("recall_at_5_ci")
    txt = _fmt(rec.get("recall_at_5"), True)
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and None not in ci:
        txt += f" <small>[{ci[0]:.1%}–{ci[1]:.1%}]</small>"
    return txt


def _baseline(rec: dict[str, Any]) -> str:
    if rec.get("best_baseline"):
        return f"best baseline ({html.escape(str(rec['best_baseline']))}) {_fmt(rec.get('best_baseline_r5'), True)}"
    return f"copy-last {_fmt(rec.get('baseline_copy_last_r5'), True)}"


def _records(reports_root: Path, pattern: str) -> list[dict[str, Any]]:
    """Parse every JSON record under reports_root matching pattern; unreadable ones are skipped."""
    out = []
    for p in reports_root.glob(pattern):
        try:
            out.append(upgrade(json.loads(p.read_text())))  # a run.json of an older kit: today's names
        except (OSError, json.JSONDecodeError):
            continue
    return out


def write_run_page(reports_root: Path, rec: dict[str, Any]) -> None:
    """reports/<run_id>/index.html: summary numbers first, then the stage reports and comparisons."""
    st = str(rec.get("status"))
    stages = rec.get("stages") or {}
    tweaked = {t.get("stage") for t in rec.get("tweaks") or []}
    rows = "".join(
        f"<tr><td><a href='{n}.html'>{n}</a></td><td><a href='{n}.code.html'>with code</a></td>"
        f"<td class='{_STATUS_CLASS.get(stages.get(n, {}).get('status'), '')}'>"
        f"{html.escape(str(stages.get(n, {}).get('status', 'not run')))}"
        f"{' · <b class=run>tweaked</b>' if n in tweaked else ''}</td>"
        f"<td>{_secs(stages.get(n, {}).get('seconds'))}</td></tr>" for n in NOTEBOOKS)
    fail = f"<p class=bad><b>Failed:</b> {html.escape(str(rec['failure']))}</p>" if rec.get("failure") else ""
    cards = "".join(f"<span class=card><small>{label}</small><b>{value}</b><small>{note}</small></span>" for label, value, note in (
        (f"epoch-{rec.get('gate_epoch') or 2} val cosine", _fmt(rec.get("gate_val_cosine")), f"gate: {_fmt(rec.get('gate_decision'))}"),
        ("R@5", _r5(rec), _baseline(rec)),
        ("cosine", _fmt(rec.get("pred_target_cosine")), f"{_fmt(rec.get('n_queries'))} queries"),
        ("Phase 1", _fmt(rec.get("phase1_decision")), f"beats best baseline: {_fmt(rec.get('beats_best_baseline'))}")))
    reasons = "".join(f"<li>{html.escape(str(rec[k]))}</li>" for k in ("gate_reason", "phase1_reason") if rec.get(k))
    cmps = [c for c in _records(reports_root, "compare_*.json")
            if any(r.get("run_id") == rec["run_id"] for r in c.get("runs", []))]
    cmp_html = ("<h2>Compared in</h2><ul>" + "".join(
        f"<li><a href='../{html.escape(c['href'])}'>{html.escape(c['compare_id'])}</a> — "
        f"{html.escape(c.get('verdict', ''))}</li>" for c in cmps) + "</ul>") if cmps else ""
    sha = str(rec.get("git_sha") or "")[:10] + (" (dirty)" if rec.get("git_dirty") else "")
    page = (f"<!doctype html><meta charset=utf-8><title>{html.escape(rec['run_id'])}</title><style>{PAGE_CSS}</style>"
            f"<p><a href='../index.html'>all runs</a></p><h1>{html.escape(rec['run_id'])}</h1>"
            f"<p>status <b class='{_STATUS_CLASS.get(st, '')}'>{html.escape(st)}</b> · params "
            f"<b>{html.escape(str(rec.get('params_name')))}</b> · started {_when(rec.get('started_at'))}"
            f" · ended {_when(rec.get('ended_at'))} · git {html.escape(sha or '—')}</p>{fail}"
            f"<div class=summary>{cards}<ul>{reasons}</ul>"
            f"<small>{html.escape(str(rec.get('primary_description') or ''))}</small></div>"
            f"<h2>Reports</h2><table><tr><th>stage</th><th></th><th>status</th><th>time</th></tr>{rows}</table>"
            f"{tweaks.run_page_section(rec)}{cmp_html}")
    atomic_write_text(reports_root / rec["run_id"] / "index.html", page)


def write_index(reports_root: Path) -> Path:
    """reports/index.html: every run and comparison, newest first; readable with no server."""
    reports_root = Path(reports_root)
    reports_root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(reports_root / ".index.lock")):
        recs = (_records(reports_root, "*/run.json") + _records(reports_root, "compare_*.json")
                + _records(reports_root, "scaling_*.json"))
        recs.sort(key=lambda r: r.get("started_at") or "", reverse=True)
        rows = []
        for r in recs:
            if r.get("kind") in ("compare", "scaling"):
                runs = ", ".join(f"<a href='{html.escape(x['href'])}'>{html.escape(x.get('label') or x['run_id'])}</a>"
                                 if x.get("href") else html.escape(x.get("label") or x["run_id"])
                                 for x in r.get("runs", []))
                fail = f"<br><small class=bad>{html.escape(str(r['failure']))}</small>" if r.get("failure") else ""
                rows.append(f"<tr class=cmp><td><a href='{html.escape(r['href'])}'>{html.escape(r['compare_id'])}</a>"
                            f"<br><small>{'scaling curve over' if r['kind'] == 'scaling' else 'comparison of'} {runs}"
                            f"</small></td><td>{'scaling' if r['kind'] == 'scaling' else 'comparison'}</td>"
                            f"<td>{_when(r.get('started_at'))}</td>"
                            f"<td class='{_STATUS_CLASS.get(r.get('status', 'succeeded'), '')}'>"
                            f"<b>{html.escape(r.get('status', 'succeeded'))}</b></td>"
                            f"<td colspan=5>{html.escape(r.get('verdict', ''))}{fail}</td></tr>")
                continue
            st = r.get("status") or "?"
            rid = html.escape(r["run_id"])
            fail = f"<br><small>{html.escape(str(r['failure']))}</small>" if r.get("failure") else ""
            stages = " ".join(f"<a href='{rid}/{n}.html'>{n[:2]}</a>" for n in NOTEBOOKS
                              if (reports_root / r["run_id"] / f"{n}.html").is_file())
            rows.append(
                f"<tr><td><a href='{rid}/index.html'>{rid}</a><br><small>reports: {stages or '—'}</small></td>"
                f"<td>{html.escape(str(r.get('params_name')))}</td><td>{_when(r.get('started_at'))}</td>"
                f"<td class='{_STATUS_CLASS.get(st, '')}'><b>{html.escape(st)}</b>"
                f"{' <small class=run>tweaked</small>' if r.get('tweaks') else ''}{fail}</td>"
                f"<td>{_fmt(r.get('gate_val_cosine'))}<br><small>{_fmt(r.get('gate_decision'))}</small></td>"
                f"<td>{_r5(r)}<br><small>{_baseline(r)}</small></td>"
                f"<td>{_fmt(r.get('pred_target_cosine'))}</td><td>{_fmt(r.get('phase1_decision'))}</td>"
                f"<td>{_fmt(r.get('beats_best_baseline'))}</td></tr>")
        n_runs = sum(r.get("kind") not in ("compare", "scaling") for r in recs)
        page = (f"<!doctype html><meta charset=utf-8><title>lvm-study runs</title><style>{PAGE_CSS}</style>"
                f"<h1>lvm-study — runs</h1><p>{n_runs} run(s), {len(recs) - n_runs} comparison(s), newest first. "
                "R@5 (95% interval) and cosine: Phase-1 primary bank (global, context chunks excluded), beside the "
                "best trivial baseline on the same queries. Gate: val cosine at epoch 2 (bar 0.50). "
                "Comparisons (blue rows) answer which variant is better.</p>"
                "<table><tr><th>run</th><th>params</th><th>started</th><th>status</th><th>epoch-2 val cos</th>"
                "<th>R@5</th><th>cosine</th><th>Phase 1</th><th>beats best baseline</th></tr>"
                + "".join(rows) + "</table>")
        out = reports_root / "index.html"
        atomic_write_text(out, page)
    return out


# --------------------------------------------------------------------------- the study
def _execute(name: str, run_dir: Path, params_path: str, overrides: list[str], extra: dict[str, Any],
             output) -> None:
    src = NOTEBOOK_DIR / f"{name}.ipynb"
    if not src.is_file():
        raise StudyFailed(f"{src}: notebook missing")
    params = {"params_path": params_path, "run_dir": str(run_dir), "overrides": list(overrides), **extra}
    execute_notebook(src, run_dir / "notebooks" / f"{name}.ipynb", params, output=output)


class _Stop:
    """Ctrl-C / SIGTERM while the study runs. The kernel runs in a session of its own (jupyter_client),
    so a terminal's Ctrl-C never reaches it and the runner would wait for the cell to finish; instead
    the first signal interrupts the kernel at once (KeyboardInterrupt inside the running cell, so
    `finally` blocks clean up: the data stage's staging dir, a half-written file), and a kernel that
    has not stopped after INTERRUPT_GRACE_S, or a second signal, is killed."""
    signum: int | None = None
    km = None  # the KernelManager of the notebook being executed, if any
    executing = False

    @classmethod
    def _kernel_signal(cls, sig: int) -> bool:
        proc = getattr(getattr(cls.km, "provisioner", None), "process", None)
        if proc is None or proc.poll() is not None:
            return False
        try:
            os.killpg(os.getpgid(proc.pid), sig)  # the kernel and what it started (torchrun ranks)
        except OSError:
            return False
        return True

    @classmethod
    def handler(cls, signum, frame) -> None:
        first = cls.signum is None
        cls.signum = cls.signum or signum
        if cls.executing and cls._kernel_signal(signal.SIGINT if first else signal.SIGKILL):
            if first:
                threading.Thread(target=cls._watchdog, args=(cls.km,), daemon=True).start()
            return
        raise KeyboardInterrupt  # no kernel is running a cell: stop the runner where it is

    @classmethod
    def _watchdog(cls, km) -> None:
        deadline = time.monotonic() + INTERRUPT_GRACE_S
        while time.monotonic() < deadline:
            time.sleep(0.2)
            if cls.km is not km or not cls.executing:
                return
        if cls.km is km and cls.executing:
            cls._kernel_signal(signal.SIGKILL)


class _Signals:
    """Route SIGINT and SIGTERM to `_Stop.handler` while a study runs (main thread only)."""

    def __enter__(self):
        _Stop.signum, _Stop.km, _Stop.executing = None, None, False
        self.old = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.old[sig] = signal.signal(sig, _Stop.handler)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self.old.items():
            signal.signal(sig, old)


def execute_notebook(src: Path, out: Path, params: dict[str, Any], progress: bool = False,
                     output=None) -> None:
    """papermill with the project's kernel over local IPC sockets (not unencrypted TCP ports).

    The kernel gets `LVM_RUNNER=1` in its environment: `notebook_config` then knows the runner executes
    the notebook (anything else, Jupyter or papermill by hand, is recorded as a tweak of the run).
    `output`: a file-like that receives the kernel's stdout/stderr text as it arrives (the console's
    sink); None drops it (the executed notebook keeps it either way). `progress`: papermill's own
    per-cell bar and log, for debugging. Under `_Signals`, Ctrl-C/SIGTERM interrupt the kernel's running
    cell at once (see `_Stop`).
    """
    import shutil
    import tempfile

    import papermill as pm
    from jupyter_client.manager import KernelManager
    sock_dir = tempfile.mkdtemp(prefix="lvm-kernel-")
    km = KernelManager(kernel_name=ensure_kernel(), transport="ipc", ip=os.path.join(sock_dir, "k"))
    try:
        if _Stop.signum is not None:
            raise KeyboardInterrupt
        _Stop.km, _Stop.executing = km, True
        km.start_kernel(env={**os.environ, RUNNER_ENV: "1"}, cwd=str(PROJECT_ROOT))
        pm.execute_notebook(str(src), str(out), parameters=params, kernel_name=km.kernel_name, km=km,
                            progress_bar=progress, log_output=progress, cwd=str(PROJECT_ROOT),
                            stdout_file=output, stderr_file=output)
    finally:
        _Stop.executing = False
        if km.has_kernel:
            km.shutdown_kernel(now=True)
        _Stop.km = None
        shutil.rmtree(sock_dir, ignore_errors=True)


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
        if key in RESERVED_PARAMS:
            raise RunError(f"--param {key}={value!r}: '{key}' is set by `run` itself, not a user parameter "
                           "(the run directory is --run-id/--runs-root or --resume; params are PARAMS and --set)")
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


def _check_writable(path: Path, what: str) -> None:
    """Fail before anything is written when `path` cannot take files (a file in the way, read-only, full)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise RunError(f"{path}: cannot write {what} here ({exc.strerror or exc})") from None


def _check_resume_overrides(run_dir: Path, cfg: Config) -> None:
    """--resume keeps the model: last.pt/best.pt hold weights of the stored shape, so model.* overrides
    (other than the scan backend, a runtime choice) are refused before params.yaml is rewritten."""
    ckpts = [p.name for p in (run_dir / "last.pt", run_dir / "best.pt") if p.is_file()]
    if not ckpts:
        return
    old = load_config(run_dir / "params.yaml").model
    keys = [f.name for f in dataclasses.fields(old) if f.name != "scan"]
    changed = [f"model.{k} {getattr(old, k)!r} -> {getattr(cfg.model, k)!r}" for k in keys
               if getattr(old, k) != getattr(cfg.model, k)]
    if changed:
        raise RunError(f"{run_dir}: --resume cannot change the model of a run that has {' and '.join(ckpts)} "
                       f"({'; '.join(changed)}); start a new run instead")


def _check_reports_owner(reports_root: Path, run_id: str, run_dir: Path) -> None:
    """reports/<id>/ belongs to one run folder: refuse when it holds the reports of another folder
    that still exists (two runs roots with a folder of the same name); a moved run takes it over."""
    try:
        other = Path(json.loads((reports_root / run_id / "run.json").read_text()).get("run_dir") or "")
    except (OSError, ValueError, AttributeError):
        return
    if str(other) and other != run_dir and (other / "manifest.json").is_file() and not (
            run_dir.exists() and os.path.samefile(other, run_dir)):
        raise RunError(f"{reports_root / run_id}: holds the reports of another run folder ({other}); "
                       f"rename {run_dir} or pass another --reports-root")


def _mark_failed(run_dir: Path, reports_root: Path, stages: dict[str, Any], line: str,
                 status: str = "failed") -> str:
    """Record the failure in the manifest and the index (best effort on a full disk); -> the reason line."""
    try:
        write_manifest(run_dir, status=status, ended_at=now_iso(), stages=stages, failure=line)
    except OSError as exc:
        line += f" (the manifest could not be marked failed either: {exc})"
    try:
        record_run(reports_root, run_dir)
    except OSError:
        pass  # the manifest is the record; the next run rebuilds the index
    return line


def run_study(params_path: str | Path, overrides: list[str] | tuple[str, ...] = (), run_id: str | None = None,
              runs_root: str | Path = "runs", reports_root: str | Path = "reports", resume: str | Path | None = None,
              only: list[str] | None = None, progress: bool = True,
              notebook_params: dict[str, Any] | None = None, verbose: bool = False) -> Path:
    """Execute the notebooks in order; returns the run dir. Raises StudyFailed with a one-line reason
    (StudyInterrupted after Ctrl-C/SIGTERM: the run is marked `interrupted` and can be resumed).

    Terminal output (`console.Console`): `progress=False` prints only the closing summary, `verbose`
    adds every line the notebooks print to the per-stage lines and the live progress line."""
    from .console import Console
    con = Console("quiet" if not progress else "verbose" if verbose else "normal")
    reports_root = Path(reports_root).resolve()
    overrides = list(overrides)
    names = only or list(NOTEBOOKS)
    # Everything that can be checked is checked before anything is written.
    if resume:
        run_dir = Path(resume).resolve()
        if not (run_dir / "manifest.json").is_file():
            raise RunError(f"{run_dir}: not a run directory (no manifest.json) — cannot resume")
        old = read_json(run_dir / "manifest.json")  # a truncated manifest: one line naming it
        if not isinstance(old, dict):
            raise RunError(f"{run_dir / 'manifest.json'}: not a run manifest (a JSON object) — cannot resume")
        run_id = check_run_id(run_dir.name, "run folder")  # reports are keyed by the folder: a copy is a new run
        cfg = load_config(run_dir / "params.yaml", overrides)
    else:
        if run_id is not None:
            check_run_id(run_id)
        cfg = load_config(params_path, overrides)
        run_id = run_id or new_run_id(cfg.name)
    routed = check_notebook_params(names, dict(notebook_params or {}))
    if resume and overrides:
        _check_resume_overrides(run_dir, cfg)
    if resume:
        lock = RunLock(run_dir, "run --resume")  # refused while another process runs or trains it
        try:
            _check_writable(reports_root, "reports")
            _check_reports_owner(reports_root, run_id, run_dir)
            if overrides:  # e.g. --set train.epochs=20 to extend a finished run: keep it in the record
                atomic_write_text(run_dir / "params.yaml", dump_config(cfg))
            copied = {"copied_from": old.get("run_id")} if old.get("run_id") != run_id else {}
            write_manifest(run_dir, status="running", resumed_at=now_iso(), pid=os.getpid(), host=platform.node(),
                           failure=None, run_id=run_id, **copied)
        except BaseException:
            lock.release()
            raise
        params_arg = str(run_dir / "params.yaml")
    else:
        _check_writable(reports_root, "reports")
        _check_reports_owner(reports_root, run_id, Path(runs_root).resolve() / run_id)
        run_dir = create_run_dir(Path(runs_root).resolve(), run_id)
        lock = RunLock(run_dir, "run")
        try:
            atomic_write_text(run_dir / "params.yaml", dump_config(cfg))
            params_arg = str(Path(params_path).resolve())
            start_manifest(run_dir, run_id, params_arg, overrides, cfg.train.seed, cfg.name)
        except BaseException:
            lock.release()
            raise
    try:
        write_manifest(run_dir, reports_root=str(reports_root))  # where notebooks run by hand mark the reports
        with _Signals():
            _run_stages(run_dir, run_id, names, routed, reports_root, params_arg, overrides, resume, only, con)
    finally:
        lock.release()
    con.summary(headline(run_dir), _display_path(reports_root / "index.html"))
    return run_dir


def _run_stages(run_dir: Path, run_id: str, names: list[str], routed: dict[str, dict[str, Any]], reports_root: Path,
                params_arg: str, overrides: list[str], resume, only, con) -> None:
    stages: dict[str, Any] = read_json(run_dir / "manifest.json").get("stages", {})
    name = names[0]
    try:
        (reports_root / run_id).mkdir(parents=True, exist_ok=True)
        record_run(reports_root, run_dir)
        con.header(run_id, _display_path(run_dir))
        for name in names:
            if resume and not only and stages.get(name, {}).get("status") == "succeeded" and name != "02_train":
                con.skipped(name)
                continue
            con.stage_start(name)
            t0 = time.time()
            extra = {"resume": bool(resume)} if name == "02_train" else {}
            extra.update(routed[name])
            # Executing from the run's resolved params keeps re-runs honest; overrides already applied.
            # `--resume RUN --only NN` re-runs the latest tweak of NN made in Jupyter with its parameters.
            stage_params, stage_overrides = (params_arg, overrides) if not resume else (str(run_dir / "params.yaml"), [])
            tweak = tweaks.pending(read_json(run_dir / "manifest.json"), name) if resume and only else None
            if tweak is not None:
                stage_params = tweak["params_path"] or stage_params
                stage_overrides = list(tweak["overrides"])
            err: BaseException | None = None
            try:
                _execute(name, run_dir, stage_params, stage_overrides, extra, con.sink())
            except Exception as exc:  # papermill raises PapermillExecutionError for a failing cell
                err = exc
            except KeyboardInterrupt as exc:  # a signal while no cell ran (the kernel starting...)
                err = exc
            secs = round(time.time() - t0, 1)
            executed = run_dir / "notebooks" / f"{name}.ipynb"
            if executed.is_file():
                try:
                    manifest = tweaks.settle(run_dir, name, tweak) if err is None else read_json(
                        run_dir / "manifest.json")
                    render_html(executed, reports_root / run_id / f"{name}.html",
                                tweak_note=tweaks.report_note(manifest, name, run_dir))
                except OSError as exc:  # a full disk: the stage's report is lost, so the stage failed
                    err = err or exc
            if _Stop.signum is not None:
                stages[name] = {"status": "interrupted", "seconds": secs}
                raise _interrupted(run_dir, reports_root, stages, name)
            stages[name] = {"status": "failed" if err else "succeeded", "seconds": secs}
            if tweak is not None:
                stages[name]["tweak"] = tweak["at"]
            con.stage_end(name, stages[name]["status"], secs)
            if err is not None:
                raise StudyFailed(_mark_failed(run_dir, reports_root, stages, _failure_line(name, err))) from err
            write_manifest(run_dir, stages=stages)
        write_manifest(run_dir, status="succeeded", ended_at=now_iso(), stages=stages)
        record_run(reports_root, run_dir)
    except OSError as exc:  # the runner's own records (manifest, run page, index) could not be written
        line = f"writing the run's records failed: {type(exc).__name__}: {exc}"
        raise StudyFailed(_mark_failed(run_dir, reports_root, stages, line)) from exc
    except KeyboardInterrupt:  # a signal between stages
        raise _interrupted(run_dir, reports_root, stages, name) from None


def _interrupted(run_dir: Path, reports_root: Path, stages: dict[str, Any], name: str) -> StudyInterrupted:
    signum = _Stop.signum or signal.SIGINT
    how = "Ctrl-C (SIGINT)" if signum == signal.SIGINT else signal.Signals(signum).name
    kept = "last.pt holds the last completed epoch" if name == "02_train" else "files of completed stages are kept"
    line = f"{name}: interrupted by {how}; {kept}; continue with: python -m lvmlib run --resume {run_dir}"
    return StudyInterrupted(_mark_failed(run_dir, reports_root, stages, line, status="interrupted"), signum)


def _display_path(path: Path) -> str:
    """A path as the user would type it: relative to the working directory when inside it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
